"""Accelerator checks that run on a CPU-only machine: lowering only, nothing executes on a GPU
or TPU. A function traced here (or on a GPU or TPU host) and lowered for cuda, rocm or tpu
holds XLA's own operations and no CPU custom call, whatever host traced it; the same traced
function lowered for the CPU keeps the CPU formulations and the native kernels (their
fusions too); an accelerator host builds no native kernel and passes no compiler option;
the project's train and eval steps partition over 8 devices; ``jax.export`` takes a model
for cuda, tpu and cpu; initial weights come from a key whose algorithm every lowering names.
"""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn
from jax import export
from jax.sharding import AbstractMesh
from test_native import needs_cxx

import zoo
from train import step as T
from zoo import layers
from zoo.backend import conv, native, options, prng

ACCELERATORS = ("cuda", "rocm", "tpu")
ROOT = Path(__file__).resolve().parents[1]


def custom_calls(text: str) -> set[str]:
    """The custom-call targets of a StableHLO module's text."""
    return set(re.findall(r"custom_call @([\w.]+)", text))


def spatial_kernels(variables) -> int:
    """The model's kxk (not 1x1) convolution kernels: XLA's convolutions on an accelerator
    (1x1 ones are matrix products on every platform)."""
    return sum(1 for path, leaf in jax.tree_util.tree_leaves_with_path(variables["params"])
               if path[-1].key == "kernel" and leaf.ndim == 4 and leaf.shape[:2] != (1, 1))


def _infer_and_train(model):
    def infer(v, x):
        return model.apply(v, x)

    def train(v, x):
        def loss(params):
            out, new = model.apply({**v, "params": params}, x, train=True,
                                   mutable=["batch_stats"], rngs={"dropout": jax.random.key(0)})
            return sum(jnp.sum(jnp.square(o.astype(jnp.float32)))
                       for o in jax.tree.leaves(out)), new

        (value, new), grads = jax.value_and_grad(loss, has_aux=True)(v["params"])
        return value, grads, new

    return infer, train


@needs_cxx
def test_one_trace_lowers_to_each_platforms_formulation(monkeypatch):
    """MobileNetV2 traced once on this CPU host: lowered for the CPU, the native depthwise
    kernels with the batch norm fused; for cuda, rocm and tpu, one XLA convolution per kxk
    layer (the stem and 17 depthwise) and no custom call (before, the host's formulation
    was baked in at trace time: 1 convolution and the CPU's shifted multiply-adds)."""
    monkeypatch.setenv("ZOO_NATIVE", "on")
    model = zoo.create("mobilenetv2", num_classes=5)
    x = jnp.zeros((2, 32, 32, 3))
    v = jax.eval_shape(model.init, jax.random.key(0), x)
    traced = jax.jit(lambda v, x: model.apply(v, x)).trace(v, x)
    cpu = traced.lower(lowering_platforms=("cpu",)).as_text()
    assert "zoo_depthwise_forward_act" in cpu and "stablehlo.convolution" not in cpu
    assert spatial_kernels(v) == 18
    for platform in ACCELERATORS:
        text = traced.lower(lowering_platforms=(platform,)).as_text()
        assert custom_calls(text) == set(), platform
        assert text.count("stablehlo.convolution") == 18, platform


def test_layer_impl_and_use_impl_still_force_one_formulation_everywhere():
    """A forced formulation is the same on every platform: no platform branch at all."""
    x, w = jnp.ones((1, 8, 8, 4)), jnp.ones((3, 3, 4, 4))
    with conv.use_impl("xla"):
        jaxpr = str(jax.make_jaxpr(lambda x, w: conv.conv(x, w))(x, w))
    assert "cond" not in jaxpr and "conv_general_dilated" in jaxpr
    assert conv.platform_formulations("spatial", "matmul") == {"default": "matmul"}
    table = conv.platform_formulations("spatial")
    assert table["cpu"] == "mixed" and table["cuda"] == table["tpu"] == table["default"] == "xla"


def test_compiler_options_are_empty_off_cpu():
    """GPU and TPU compile with XLA's defaults; the options `import zoo` puts in $XLA_FLAGS
    (read by every backend) are CPU flags only."""
    for backend in ("gpu", "cuda", "rocm", "tpu", "METAL"):
        assert options.compiler_options(backend) == {}, backend
    assert options.COMPILER_OPTIONS["cpu"] and all(
        key.startswith("xla_cpu_") for key in options.COMPILER_OPTIONS["cpu"])
    assert set(options.COMPILER_OPTIONS) == {"cpu"}


# A host whose JAX default backend is a GPU or TPU, as far as the zoo can tell (the zoo asks
# jax.default_backend(); this CPU machine cannot start a real one), with no C++ compiler
# visible and an empty cache: trace each model's inference and a training step, lower them
# for cuda, rocm and tpu, and report what the modules hold and what the zoo did.
_ACCELERATOR_HOST = textwrap.dedent("""
    import json, sys, warnings
    warnings.simplefilter("always")
    import jax
    backend, names, modes = sys.argv[1], sys.argv[2].split(","), sys.argv[3].split(",")
    jax.default_backend = lambda: backend
    import jax.numpy as jnp
    import zoo
    from test_accelerators import _infer_and_train, custom_calls, spatial_kernels
    report = {"compiler_options": zoo.compiler_options(), "models": {}}
    with warnings.catch_warnings(record=True) as caught:
        for name in names:
            spec = zoo.spec(name)
            size = max(spec.min_size, 32)
            model = zoo.create(name)
            x = jnp.zeros((2, size, size, 3))
            v = jax.eval_shape(model.init, jax.random.key(0), x)
            fns = dict(zip(("infer", "train"), _infer_and_train(model)))
            entry = report["models"][name] = {"kernels": spatial_kernels(v)}
            for mode in modes:
                traced = jax.jit(fns[mode]).trace(v, x)
                for platform in ("cuda", "rocm", "tpu"):
                    text = traced.lower(lowering_platforms=(platform,)).as_text()
                    entry[f"{mode} {platform}"] = {
                        "custom_calls": sorted(custom_calls(text)), "zoo": "zoo_" in text,
                        "convolutions": text.count("stablehlo.convolution")}
            print(name, file=sys.stderr, flush=True)
    report["warnings"] = [str(w.message) for w in caught if "zoo" in str(w.message)]
    print(json.dumps(report))
""")


def run_as_accelerator_host(backend: str, names, modes, tmp_path) -> dict:
    """:data:`_ACCELERATOR_HOST` in a fresh interpreter: no compiler on PATH, ``$CXX``
    pointing nowhere, ``$TRANSFER_ZOO_CACHE`` an empty folder; its report, after checking
    that the cache stayed empty."""
    cache, bare = tmp_path / "cache", tmp_path / "bin"
    cache.mkdir()
    bare.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("ZOO_NATIVE", "ZOO_CONV_IMPL")}
    env.update(PATH=str(bare), CXX=str(tmp_path / "no-compiler" / "c++"),
               TRANSFER_ZOO_CACHE=str(cache), JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]))
    done = subprocess.run([sys.executable, "-c", _ACCELERATOR_HOST, backend, ",".join(names),
                           ",".join(modes)], env=env, capture_output=True, text=True,
                          timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert list(cache.iterdir()) == [], "an accelerator host built (or tried) a native kernel"
    return json.loads(done.stdout.strip().splitlines()[-1])


def check_accelerator_report(report: dict, modes) -> None:
    assert report["compiler_options"] == {}
    assert report["warnings"] == []  # no failed build, no fallback warning: nothing was tried
    for name, entry in report["models"].items():
        for mode in modes:
            for platform in ACCELERATORS:
                lowered = entry[f"{mode} {platform}"]
                assert lowered["custom_calls"] == [] and not lowered["zoo"], (name, mode, platform)
                if mode == "infer":
                    assert lowered["convolutions"] == entry["kernels"], (name, platform, lowered)
                else:  # forward, input and kernel gradients: XLA's convolutions, never fewer
                    assert lowered["convolutions"] >= 2 * entry["kernels"], (name, platform)


def test_accelerator_host_lowers_without_cpu_kernels(tmp_path):
    """As on a GPU host: MobileNetV2's inference and training step lower for cuda, rocm and
    tpu with one convolution per kxk layer, no custom call, no compiler option, and no
    attempt to build the native kernels (no compiler, an empty cache: none is made)."""
    report = run_as_accelerator_host("gpu", ["mobilenetv2"], ["infer", "train"], tmp_path)
    check_accelerator_report(report, ["infer", "train"])


# one model per family (zoo/<family>.py)
FAMILY_MODELS = ("alexnet", "darknet53", "densenet121", "googlenet", "inception_v3",
                 "mobilenetv2", "resnet50", "squeezenet1_1", "vgg16", "xception", "yolov3_tiny")


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["gpu", "tpu"])
def test_every_family_lowers_for_accelerators_from_an_accelerator_host(backend, tmp_path):
    """One model per family, traced as on a GPU and as on a TPU host: inference and a
    training step lowered for cuda, rocm and tpu, XLA's operations only."""
    assert {zoo.spec(n).family for n in FAMILY_MODELS} == {
        zoo.spec(n).family for n in zoo.list_models()}
    report = run_as_accelerator_host(backend, FAMILY_MODELS, ["infer", "train"], tmp_path)
    assert set(report["models"]) == set(FAMILY_MODELS)
    check_accelerator_report(report, ["infer", "train"])


@pytest.mark.slow
@needs_cxx
@pytest.mark.parametrize("name", ["resnet50", "xception", "densenet121"])
def test_cpu_traced_models_lower_for_accelerators_without_cpu_kernels(monkeypatch, name):
    """Traced on this CPU host with the native kernels on: the training step's CPU lowering
    has them, its cuda, rocm and tpu lowerings none and XLA's convolutions."""
    monkeypatch.setenv("ZOO_NATIVE", "on")
    model = zoo.create(name, num_classes=5)
    size = max(zoo.spec(name).min_size, 32)
    x = jnp.zeros((2, size, size, 3))
    v = jax.eval_shape(model.init, jax.random.key(0), x)
    infer, train = _infer_and_train(model)
    for fn in (infer, train):
        traced = jax.jit(fn).trace(v, x)
        assert "zoo_" in traced.lower(lowering_platforms=("cpu",)).as_text()
        for platform in ACCELERATORS:
            text = traced.lower(lowering_platforms=(platform,)).as_text()
            assert custom_calls(text) == set(), (name, platform)
            assert text.count("stablehlo.convolution") >= spatial_kernels(v)


def _project_steps(name: str, dtype, size: int = 32, batch: int = 16, tta: str = ""):
    """The project's jitted train and eval steps (train.step) on an abstract 8-device mesh,
    and abstract arguments sharded as the loop shards them."""
    mesh = AbstractMesh((8,), ("data",))
    model = zoo.create(name, num_classes=5, dtype=dtype)
    v = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, size, size, 3)))
    tx = optax.sgd(0.1, momentum=0.9)
    state = jax.eval_shape(lambda v: T.create_state(v, tx, 0), {
        "params": v["params"], "batch_stats": v["batch_stats"]})
    train, evaluate = T.jit_steps(
        T.make_train_step(model, tx, lambda path: True, lambda x: x / 127.5 - 1),
        T.make_eval_step(model, lambda x: x / 127.5 - 1, tta=tta), mesh)
    batch = {"image": jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32),
             "label": jax.ShapeDtypeStruct((batch,), jnp.int32),
             "mask": jax.ShapeDtypeStruct((batch,), jnp.float32)}
    return train, evaluate, state, batch


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_project_steps_partition_over_8_devices_for_cuda_and_tpu(dtype):
    """train.step's train and eval steps (jit_steps: batch split along 'data', state
    replicated) on an AbstractMesh of 8 devices lower for cuda and tpu into 8 partitions,
    with no custom call."""
    train, evaluate, state, batch = _project_steps("mobilenetv2", getattr(jnp, dtype))
    for fn in (train, evaluate):
        traced = fn.trace(state, batch)
        for platform in ("cuda", "tpu"):
            text = traced.lower(lowering_platforms=(platform,)).as_text()
            assert re.findall(r"mhlo.num_partitions = (\d+)", text) == ["8"], platform
            assert custom_calls(text) == set(), platform
            if dtype == "bfloat16":
                assert "stablehlo.convolution" in text and "bf16" in text


def test_test_time_augmented_eval_step_partitions_over_8_devices_for_cuda_and_tpu():
    """The dihedral eval step (8 views of each image in one batch) keeps the batch split
    along 'data' and returns one probability row per image, for cuda and tpu."""
    _, evaluate, state, batch = _project_steps("resnet18", jnp.float32, tta="dihedral")
    traced = evaluate.trace(state, batch)
    assert traced.out_info.shape == (16, 5)
    for platform in ("cuda", "tpu"):
        text = traced.lower(lowering_platforms=(platform,)).as_text()
        assert re.findall(r"mhlo.num_partitions = (\d+)", text) == ["8"], platform
        assert custom_calls(text) == set(), platform
        assert "tensor<128x32x32x3xf32>" in text, platform  # 8 views x 16 images


class _Small(nn.Module):
    """A stem conv (native), a batch norm with ReLU6 read by a depthwise conv (fused) and a
    max pool: the CPU's kernels in a few layers."""

    @nn.compact
    def __call__(self, x):
        x = layers.Conv(8, 3, 2, use_bias=False, name="stem")(x)
        bn = layers.batch_norm(epsilon=1e-3, momentum=0.99, dtype=jnp.float32, name="bn",
                               act=jax.nn.relu6)
        x = layers.DepthwiseConv(3, name="dw")(bn(x, use_running_average=True))
        return layers.max_pool(x, 3, 2, "SAME")


def _exportable(concrete: bool = True, model=None):
    """A model's jitted inference (a fresh function: traced anew), its variables (or their
    shapes) and an input."""
    model = model or _Small()
    x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
    init = jax.jit(model.init) if concrete else functools.partial(jax.eval_shape, model.init)
    return jax.jit(lambda v, x: model.apply(v, x)), init(jax.random.key(0), x), x


def test_export_for_accelerators_has_no_custom_call():
    f, v, x = _exportable(concrete=False, model=zoo.create("mobilenetv2", num_classes=3))
    exported = export.export(f, platforms=("cuda", "tpu"))(v, x)
    assert exported.platforms == ("cuda", "tpu")
    assert custom_calls(exported.mlir_module()) == set()


@needs_cxx
def test_export_for_cpu_takes_the_native_kernels_with_their_checks(monkeypatch):
    """``jax.export`` refuses the kernels' custom calls by itself (its error names one);
    with ``native.export_checks()`` the CPU artifact holds them and computes what the jitted
    function does; traced with the kernels off it is portable (no custom call at all)."""
    monkeypatch.setenv("ZOO_NATIVE", "on")
    f, v, x = _exportable()
    expected = f(v, x)
    with pytest.raises(ValueError, match="zoo_"):
        export.export(f, platforms=("cpu",))(v, x)
    exported = export.export(f, platforms=("cpu",), disabled_checks=native.export_checks())(v, x)
    assert "zoo_depthwise_forward_act" in exported.mlir_module()
    np.testing.assert_allclose(exported.call(v, x), expected, rtol=1e-5, atol=1e-5)
    both = export.export(f, platforms=("cpu", "cuda"),
                         disabled_checks=native.export_checks())(v, x)
    np.testing.assert_allclose(both.call(v, x), expected, rtol=1e-5, atol=1e-5)
    with native.use_mode("off"):
        fresh, _, _ = _exportable(concrete=False)
        portable = export.export(fresh, platforms=("cpu",))(v, x)
    assert custom_calls(portable.mlir_module()) == set()
    np.testing.assert_allclose(portable.call(v, x), expected, rtol=1e-4, atol=1e-4)


def test_init_key_draws_the_cpus_rbg_bits_and_names_philox_everywhere():
    """The initial weights are those of an rbg key on the CPU (every run so far), and each
    lowering names the algorithm (Philox) instead of the backend's DEFAULT."""
    for seed in (0, 42):
        ours, rbg = prng.init_key(seed), jax.random.key(seed, impl="rbg")

        def draws(k):
            return (jax.random.normal(k, (64,)), jax.random.normal(jax.random.split(k)[1], (8,)),
                    jax.random.uniform(jax.random.fold_in(k, 3), (8,)))

        for a, b in zip(jax.jit(draws)(ours), jax.jit(draws)(rbg), strict=True):
            np.testing.assert_array_equal(a, b)
    model = zoo.create("resnet18", num_classes=3)
    init = jax.jit(lambda k: model.init({"params": k, "dropout": k}, jnp.zeros((1, 32, 32, 3))))
    traced = init.trace(prng.init_key(0))
    for platform in ("cpu", *ACCELERATORS):
        algorithms = set(re.findall(r"algorithm\s*=\s*(\w+)",
                                    traced.lower(lowering_platforms=(platform,)).as_text()))
        assert algorithms == {"PHILOX"}, (platform, algorithms)
    rbg_text = jax.jit(lambda k: jax.random.normal(k, (3,))).trace(
        jax.random.key(0, impl="rbg")).lower(lowering_platforms=("tpu",)).as_text()
    assert "DEFAULT" in rbg_text  # what the plain rbg key leaves to each backend
