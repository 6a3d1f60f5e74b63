"""The backend's fusions (zoo.backend.fusion), invisible to the models: an inference batch norm
and its ReLU / ReLU6 applied by the native depthwise conv or max pool as they read their
input, and a bias-free 1x1 conv moved after the average pool that follows it. The same
numbers and gradients as the unfused layers, only where the CPU formulations run (float32,
native kernels, not under ``use_impl("xla")``); models only ever see arrays."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from test_mobile import assert_same_function
from test_native import lowered, needs_cxx

import zoo
from zoo import layers
from zoo.backend import conv, fusion, native

ACTS = {"relu": jax.nn.relu, "relu6": jax.nn.relu6, "none": None}


def _vectors(c: int):
    """Random statistics: a negative scale, centres away from the data, clipping that bites."""
    keys = jax.random.split(jax.random.PRNGKey(7), 3)
    return (0.5 * jax.random.normal(keys[0], (c,)), 2 * jax.random.normal(keys[1], (c,)),
            jax.random.normal(keys[2], (c,)))


def _activated(x, vectors, act):
    """``act(BN(x))`` computed as a batch norm layer does, and remembered by the backend."""
    y = fusion.activate(x, *vectors, act)
    return fusion.remember_activation(y, x, lambda: vectors, act)


# kernel, stride, dilation, padding, (height, width), channels, act: the column blocks of the
# 3x3 kernel (strides 1 and 2, wide rows, a half vector of channels), the generic loop
# (dilation, 5x5), 'valid' and asymmetric pads; ReLU, ReLU6, the batch norm alone
FUSED_DEPTHWISE_CASES = [
    (3, 1, 1, "SAME", (7, 29), 56, "relu"),
    (3, 2, 1, "SAME", (9, 31), 40, "relu6"),
    (3, 2, 1, ((0, 1), (0, 1)), (8, 10), 24, "relu6"),
    (3, 1, 2, "SAME", (8, 9), 33, "none"),
    (5, 1, 1, "VALID", (9, 11), 12, "relu"),
]


@pytest.mark.parametrize("kernel, stride, dilation, padding, size, channels, act",
                         FUSED_DEPTHWISE_CASES)
def test_fused_depthwise_equals_unfused(native_mode, kernel, stride, dilation, padding,
                                        size, channels, act):
    """Values and the gradients of input, kernel and the batch norm's vectors, against the
    activation computed by XLA first (zero padding is the activated input's: a batch norm
    shift would otherwise leak into the border)."""
    act = ACTS[act]
    k, s, d = (conv.pair(v) for v in (kernel, stride, dilation))
    x = 2 * jax.random.normal(jax.random.PRNGKey(0), (3, *size, channels))
    w = jax.random.normal(jax.random.PRNGKey(1), (*k, channels, 1))
    vectors = _vectors(channels)
    pads = conv.normalize_padding(padding)

    def fused(w, x, vectors=vectors):
        return fusion.depthwise(_activated(x, vectors, act), w, s, pads, d)

    def unfused(w, x, vectors=vectors):
        return conv.shift_depthwise(fusion.activate(x, *vectors, act), w, s, pads, d)

    assert_same_function(fused, unfused, w, x)

    def grads(f):
        return jax.jit(jax.grad(lambda v, w, x: jnp.sum(jnp.sin(f(w, x, v)))))(vectors, w, x)

    for a, b in zip(grads(fused), grads(unfused), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    text = lowered(fused, w, x)
    assert ("zoo_depthwise_forward_act" in text) == (native_mode == "on")
    assert "zoo_" not in lowered(fused, w, x, platforms=("cuda",))


@pytest.mark.parametrize("window, stride, padding, size, act", [
    (3, 2, "SAME", (15, 20), "none"), (3, 2, "VALID", (9, 10), "relu"),
    (2, 2, "SAME", (7, 9), "relu6")])
def test_fused_max_pool_equals_unfused(native_mode, window, stride, padding, size, act):
    """Bit for bit, the gradients included (padding is -inf after the activation: a
    negative scale turns the input's minimum into the window's maximum)."""
    act = ACTS[act]
    x = jnp.round(2 * jax.random.normal(jax.random.PRNGKey(0), (2, *size, 37)))
    vectors = tuple(jnp.round(v) for v in _vectors(37))

    def run(fused: bool):
        def pool(vectors, x):
            a = _activated(x, vectors, act) if fused else fusion.activate(x, *vectors, act)
            y = fusion.max_pool(a, window, stride, padding)
            return jnp.sum(y * (1 + jnp.arange(y.size).reshape(y.shape) % 97)), y
        (_, y), g = jax.jit(jax.value_and_grad(pool, (0, 1), has_aux=True))(vectors, x)
        return y, g

    (y, g), (y_ref, g_ref) = run(True), run(False)
    np.testing.assert_array_equal(y, y_ref)
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_ref), strict=True):
        np.testing.assert_array_equal(a, b)
    text = lowered(lambda x: fusion.max_pool(_activated(x, vectors, act), window, stride,
                                             padding), x)
    assert ("zoo_max_pool_act" in text) == (native_mode == "on")


class _BNDepthwise(nn.Module):
    """BN (+ act) then a depthwise conv; ``edit`` changes the BN's output first, as a user
    editing a model might (the backend must then compute the edited array, not the BN's)."""

    act: object = None
    edit: object = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        y = layers.batch_norm(epsilon=1e-3, momentum=0.99, dtype=None, name="bn", act=self.act)(
            x, use_running_average=not train)
        if self.edit is not None:
            y = self.edit(y)
        return layers.DepthwiseConv(3, use_bias=False, name="dw")(y)


def _random_variables(module, x, **kwargs):
    v = module.init(jax.random.PRNGKey(0), x, **kwargs)
    leaves, tree = jax.tree.flatten(v)
    keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
    return jax.tree.unflatten(tree, [jnp.abs(jax.random.normal(k, a.shape)) + 0.1
                                     for k, a in zip(keys, leaves, strict=True)])


EDITS = {
    "none": None,
    "add": lambda y: y + 1,
    "concat": lambda y: jnp.concatenate([y, y], axis=-1),
    "slice": lambda y: jnp.pad(y[:, ::2], ((0, 0), (0, y.shape[1] - y[:, ::2].shape[1]),
                                           (0, 0), (0, 0))),
}


@needs_cxx
@pytest.mark.parametrize("edit", EDITS)
@pytest.mark.parametrize("act", ["relu", "relu6", "none"])
def test_models_see_arrays_whatever_they_do_with_them(monkeypatch, act, edit):
    """A batch norm's output is an array: arithmetic, concatenation and slicing work, and the
    result is the unfused one, in inference (fused where nothing was edited), in training and
    under XLA's formulations; what trains through a frozen (inference) batch norm gets the
    unfused gradients."""
    monkeypatch.setenv("ZOO_NATIVE", "on")
    module = _BNDepthwise(ACTS[act], EDITS[edit])
    x = jax.random.normal(jax.random.PRNGKey(2), (2, 7, 9, 6))
    v = _random_variables(module, x)

    def loss(params, x):
        return jnp.sum(jnp.sin(module.apply({**v, "params": params}, x)))

    run = jax.jit(jax.value_and_grad(loss))
    with conv.use_impl("xla"):
        ref = run(v["params"], x)
    out = run(v["params"], x)
    for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(ref), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    text = lowered(lambda v, x: module.apply(v, x), v, x)
    assert ("zoo_depthwise_forward_act" in text) == (edit == "none")
    (y, _), (y_ref, _) = (module.apply(v, x, train=True, mutable=["batch_stats"]),
                          nn.apply(lambda m: m(x, train=True), module, mutable=["batch_stats"])(v))
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)


@needs_cxx
def test_batch_norm_is_remembered_only_in_inference_on_native_float32(monkeypatch):
    monkeypatch.setenv("ZOO_NATIVE", "on")
    bn = layers.batch_norm(epsilon=1e-3, momentum=0.99, dtype=None, name="bn", act=jax.nn.relu6)
    x = jax.random.normal(jax.random.PRNGKey(2), (2, 5, 5, 6))
    v = _random_variables(bn, x, use_running_average=True)
    flax_bn = nn.BatchNorm(use_running_average=True, epsilon=1e-3, momentum=0.99)
    expected = jax.nn.relu6(flax_bn.apply(v, x))
    seen = {}

    def probe(v, x, train=False, dtype=jnp.float32):
        y = bn.apply(v, x.astype(dtype), use_running_average=not train,
                     mutable=["batch_stats"] if train else False)
        y = y[0] if train else y
        seen["remembered"] = fusion.recall(y)
        return y

    np.testing.assert_allclose(jax.jit(probe)(v, x), expected, rtol=1e-6, atol=1e-6)
    a = seen["remembered"]
    assert isinstance(a, fusion.Activation) and a.act is jax.nn.relu6
    jax.jit(probe, static_argnums=(2, 3))(v, x, True, jnp.float32)
    assert seen["remembered"] is None  # training mode: batch statistics, nothing to fuse
    jax.jit(probe, static_argnums=(2, 3))(v, x, False, jnp.bfloat16)
    assert seen["remembered"] is None  # the native kernels are float32
    with conv.use_impl("xla"):  # what viz traces, and GPU/TPU: plain layers
        np.testing.assert_allclose(jax.jit(probe)(v, x), expected, rtol=1e-6, atol=1e-6)
        assert seen["remembered"] is None
    probe(v, x)
    assert seen["remembered"] is None  # eager arrays are never remembered
    monkeypatch.setenv("ZOO_NATIVE", "off")
    jax.jit(probe)(v, jnp.ones_like(x))
    assert seen["remembered"] is None


def test_recall_answers_only_for_the_very_value():
    """Keyed by identity, gone with the value: a new array with the same id is unknown."""
    seen = []

    def f(x):
        y = fusion.remember(x * 2, "how")
        seen.append((fusion.recall(y), fusion.recall(x * 2), fusion.recall(y + 0)))
        return y

    jax.jit(f)(jnp.ones(3))
    assert seen == [("how", None, None)]
    assert not fusion._MEMORY  # the tracer went when its trace ended


class _Transition(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = layers.Conv(5, 1, use_bias=False, name="conv")(nn.relu(x))
        return layers.avg_pool(x, 2, 2)


def test_transition_conv_runs_on_pooled_pixels():
    """DenseNet's transition in Keras' order (1x1 conv, then 2x2 average pool): compiled in
    the CPU formulations, the conv's matrix products run on the pooled pixels, forward and
    backward (a quarter of the work of the order written); the same numbers as XLA's
    formulations."""
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 10, 12))
    v = _Transition().init(jax.random.PRNGKey(1), x)

    def loss(params, x):
        return jnp.sum(jnp.sin(_Transition().apply({"params": params}, x)))

    for impl in ("auto", "xla"):
        with conv.use_impl(impl):
            text = jax.jit(jax.grad(loss, (0, 1))).lower(v["params"], x).compile().as_text()
            grads = jax.jit(jax.grad(loss, (0, 1)))(v["params"], x)
        rows = {line.split("=")[1].split("[")[1].split(",")[0] for line in text.splitlines()
                if " dot(" in line or " convolution(" in line}
        if impl == "auto" and jax.default_backend() == "cpu":
            assert "160" not in rows and "40" in rows, rows  # 2*8*10 pixels, 2*4*5
        if impl == "auto":
            ours = grads
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(grads), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@needs_cxx
@pytest.mark.parametrize("name, depthwise, pool", [
    ("xception", True, True), ("mobilenet", True, False), ("mobilenetv2", True, False),
    ("resnet50", False, True), ("densenet121", False, True)])
def test_models_fuse_into_native_kernels_in_inference_only(monkeypatch, name, depthwise, pool):
    """Inference lowers to the fused kernels (depthwise convs; the max pools after a batch
    norm and ReLU: Xception's entry flow, the ResNet and DenseNet stems), training to none
    of them; the GPU lowering of the same function has no custom call at all."""
    monkeypatch.setenv("ZOO_NATIVE", "on")
    assert native.available()
    size = 71 if name == "xception" else 32
    model = zoo.create(name, num_classes=3)
    x = jnp.zeros((1, size, size, 3))
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
    infer = lowered(lambda v, x: model.apply(v, x), variables, x)
    assert ("zoo_depthwise_forward_act" in infer) == depthwise
    assert ("zoo_max_pool_act" in infer) == pool
    train = lowered(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"],
                                             rngs={"dropout": jax.random.PRNGKey(0)}),
                    variables, x)
    assert ("zoo_depthwise_forward(" in train) == depthwise and "_act" not in train
    assert ("zoo_max_pool(" in train) == pool
    assert "zoo_" not in lowered(lambda v, x: model.apply(v, x), variables, x,
                                 platforms=("cuda",))


@needs_cxx
def test_compiled_cpu_program_keeps_the_fusions_with_the_branch_inlined(monkeypatch):
    """The layers are platform branches (``lax.platform_dependent``); compiled for the CPU
    only the CPU's remains, inlined: no conditional, and the fused kernel of every
    depthwise conv (a branch that read the unfused array instead would hand it a zero
    gradient: test_transition_conv_runs_on_pooled_pixels sees the products it costs)."""
    monkeypatch.setenv("ZOO_NATIVE", "on")
    model = zoo.create("mobilenetv2", num_classes=3)
    x = jnp.zeros((2, 32, 32, 3))
    v = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
    text = jax.jit(lambda v, x: model.apply(v, x)).lower(v, x).compile().as_text()
    assert " conditional(" not in text
    assert text.count('custom_call_target="zoo_depthwise_forward_act"') == 17
    assert 'custom_call_target="zoo_conv"' in text
