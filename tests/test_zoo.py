"""Registry contracts and per-model tests, parametrised over ``zoo.list_models()``.

Every model registered later is picked up automatically: parameter parity with its
reference, parameter groups, input validation, feature taps, shapes, determinism, batch
norm. The registry-wide checks are functions of a model name (``check_*``, all of them in
:data:`REGISTRY_CHECKS`), so a model registered elsewhere runs the very same assertions
(tests/test_add_model.py).
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import model_params, small_size, traced_params
from flax import traverse_util

import zoo


def count(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def abstract_vars(model, size: int, channels: int = 3):
    x = jax.ShapeDtypeStruct((1, size, size, channels), jnp.float32)
    return jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x), x)


def paths(tree) -> list[str]:
    return ["/".join(k) for k in traverse_util.flatten_dict(dict(tree))]


def assert_outputs(out, name: str, n: int, num_classes: int) -> None:
    """Classifiers return ``(n, classes)`` logits; detectors raw predictions (zoo/yolo.py):
    a tuple of per-scale ``(n, h, w, anchors, 5 + C)`` arrays, or YOLOv1's ``(n, S, S, 5B + C)``.
    """
    if zoo.spec(name).task == "classification":
        chex.assert_shape(out, (n, num_classes))
        return
    if isinstance(out, tuple):
        assert out and all(o.ndim == 5 and o.shape[0] == n and o.shape[-1] == 5 + num_classes
                           for o in out), [o.shape for o in out]
        assert [o.shape[1] for o in out] == sorted(o.shape[1] for o in out), "coarsest first"
    else:
        assert out.ndim == 4 and out.shape[0] == n
        assert out.shape[-1] > num_classes and (out.shape[-1] - num_classes) % 5 == 0


# ---------------------------------------------------------------- registry


def test_first_families_registered():
    expected = {"vgg16", "vgg19", "resnet50", "resnet101", "resnet152", "resnet50v2",
                "resnet101v2", "resnet152v2", "resnet18", "resnet34", "alexnet",
                "squeezenet1_0", "squeezenet1_1"}
    assert expected <= set(zoo.list_models())
    assert zoo.list_models("^resnet1") == ["resnet101", "resnet101v2", "resnet152",
                                            "resnet152v2", "resnet18"]


def test_unknown_model_suggests_close_matches():
    with pytest.raises(ValueError, match=r"unknown model 'resnet5'.*resnet50"):
        zoo.create("resnet5")
    with pytest.raises(ValueError, match="unknown model"):
        zoo.spec("not-a-model")


def test_duplicate_registration_raises():
    with pytest.raises(ValueError, match="already registered"):
        zoo.register(zoo.spec("resnet50"))


def test_unknown_option_names_the_option_and_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['alpha'\].*in_channels"):
        zoo.create("resnet18", alpha=0.5)


@pytest.mark.parametrize("kwargs, msg", [
    (dict(pooling="mean"), "pooling must be"),
    (dict(num_classes=-3), "num_classes must be"),
    (dict(num_classes=2.5), "num_classes must be"),
])
def test_bad_create_arguments(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        zoo.create("resnet18", **kwargs)


def test_normalize_matches_keras_preprocessing():
    from keras.applications import resnet50, resnet_v2

    img = np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    np.testing.assert_allclose(zoo.spec("resnet50").normalize(img),
                               resnet50.preprocess_input(img.copy()), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(zoo.spec("resnet50v2").normalize(img),
                               resnet_v2.preprocess_input(img.copy()), rtol=1e-5, atol=1e-5)
    torch_mean = np.array([0.485, 0.456, 0.406])
    torch_std = np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(zoo.spec("resnet18").normalize(img),
                               (img / 255 - torch_mean) / torch_std, rtol=1e-5, atol=1e-5)


def test_unregister_removes_a_model():
    spec = zoo.unregister("squeezenet1_0")
    try:
        assert "squeezenet1_0" not in zoo.list_models()
        with pytest.raises(ValueError, match="unknown model"):
            zoo.unregister("squeezenet1_0")
    finally:
        zoo.register(spec)
    assert zoo.spec("squeezenet1_0") is spec


# ------------------------------------------------------------- per model
# Each check_* is one registry-wide contract for one model; the parametrised tests below
# call them over the registry.


def check_parameter_count(name: str) -> None:
    """Parameters (+ BN statistics for Keras/Darknet) equal the reference's figure."""
    spec = zoo.spec(name)
    v = abstract_vars(zoo.create(name), spec.input_size)
    params, stats = count(v["params"]), count(v.get("batch_stats", {}))
    # Keras and Darknet count BN moving statistics; torchvision's figure parameters only.
    total = params + stats if spec.counts_batch_stats else params
    assert total == spec.reference_params


def check_spec(name: str) -> None:
    spec = zoo.spec(name)
    assert spec.min_size <= spec.input_size
    assert spec.head == "head" and spec.group_names[-1] == "head"
    assert len(set(spec.group_names)) == len(spec.group_names)
    assert len(spec.mean) == len(spec.std) == 3 and min(spec.std) > 0


def check_groups(name: str) -> None:
    """Every parameter and statistic is in exactly one group; no group is empty."""
    spec = zoo.spec(name)
    v = abstract_vars(zoo.create(name), small_size(name))
    all_paths = paths(v["params"]) + paths(v.get("batch_stats", {}))
    groups = [spec.group_of(p) for p in all_paths]  # raises unless exactly one group matches
    assert set(groups) == set(spec.group_names), "every group holds some parameters"
    heads = [p for p, g in zip(all_paths, groups, strict=True) if g == "head"]
    assert heads and all(p.startswith("head/") for p in heads)


def check_top_options(name: str) -> None:
    """num_classes changes the head only; num_classes=None and include_top=False drop it."""
    spec = zoo.spec(name)
    full = abstract_vars(zoo.create(name), small_size(name))
    ten = abstract_vars(zoo.create(name, num_classes=10), small_size(name))
    none = abstract_vars(zoo.create(name, num_classes=None), small_size(name))
    notop = abstract_vars(zoo.create(name, include_top=False), small_size(name))
    flat = {k: v.shape for k, v in traverse_util.flatten_dict(dict(full)).items()}
    flat10 = {k: v.shape for k, v in traverse_util.flatten_dict(dict(ten)).items()}
    assert {k for k in flat if flat[k] != flat10[k]} == {
        k for k in flat if k[1] == spec.head
    }, "num_classes changes exactly the head's shapes"
    assert "head" not in none["params"] and "head" not in notop["params"]
    assert set(paths(none["params"])) == {p for p in paths(full["params"])
                                          if not p.startswith("head/")}
    assert set(paths(notop["params"])) <= set(paths(none["params"]))


def check_input_validation(name: str) -> None:
    spec = zoo.spec(name)
    model = zoo.create(name)
    s = spec.min_size
    with pytest.raises(ValueError, match="rank 4"):
        jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x),
                       jax.ShapeDtypeStruct((s, s, 3), jnp.float32))
    with pytest.raises(ValueError, match="built for 3-channel input, got 1"):
        abstract_vars(model, max(s, 64), channels=1)
    with pytest.raises(ValueError, match="NCHW"):
        jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x),
                       jax.ShapeDtypeStruct((1, 3, max(s, 64), max(s, 64)), jnp.float32))
    if s > 1:
        with pytest.raises(ValueError, match=f"at least {s}x{s}"):
            abstract_vars(model, s - 1)
    # the minimum itself is accepted, with and without top
    out = jax.eval_shape(lambda v, x: model.apply(v, x), abstract_vars(model, s),
                         jax.ShapeDtypeStruct((1, s, s, 3), jnp.float32))
    assert_outputs(out, name, 1, spec.num_classes)
    abstract_vars(zoo.create(name, include_top=False), s)


def check_other_channel_counts(name: str) -> None:
    v = abstract_vars(zoo.create(name, in_channels=1), small_size(name), channels=1)
    kernels = [x for x in jax.tree.leaves(v["params"]) if x.ndim == 4]
    assert sum(k.shape[2] == 1 for k in kernels) >= 1, "the first conv takes one channel"


def check_feature_taps(name: str) -> None:
    """A classifier's ``features_only`` model gives one map per spec tap, of the tap's
    stride and channels, with the variables of ``include_top=False`` (traced only)."""
    spec = zoo.spec(name)
    taps = spec.feature_info()
    if spec.task != "classification":
        return
    assert taps, f"{name}: a classifier names its feature taps (ModelSpec.feature_taps)"
    model = zoo.create(name, features_only=True)
    assert model.feature_info == taps
    size, step = small_size(name), max(t.stride for t in taps)
    variables, shapes = [], []
    for side in (size, size + step):
        x = jax.ShapeDtypeStruct((1, side, side, 3), jnp.float32)
        variables.append(jax.eval_shape(model.init, jax.random.key(0), x))
        shapes.append([o.shape for o in jax.eval_shape(model.apply, variables[-1], x)])
    for tap, a, b in zip(taps, *shapes, strict=True):
        # an input `step` pixels larger makes a stride-s map step/s larger, whatever the
        # padding ('valid' convs, ceil-mode pools) does at the borders
        assert (b[1] - a[1], b[2] - a[2]) == (step // tap.stride,) * 2, (name, tap, a, b)
        assert a[-1] == tap.channels, (name, tap, a)
    notop = abstract_vars(zoo.create(name, include_top=False), size)
    assert jax.tree.map(lambda v: v.shape, variables[0]) == \
        jax.tree.map(lambda v: v.shape, notop), "the variables of include_top=False"


REGISTRY_CHECKS = (check_parameter_count, check_spec, check_groups, check_top_options,
                   check_input_validation, check_other_channel_counts, check_feature_taps)


@pytest.mark.parametrize("name", zoo.list_models())
def test_parameter_count_matches_reference(name):
    check_parameter_count(name)


@pytest.mark.parametrize("name", zoo.list_models())
def test_spec_is_consistent(name):
    check_spec(name)


@pytest.mark.parametrize("name", traced_params())
def test_groups_partition_the_parameters(name):
    check_groups(name)


@pytest.mark.parametrize("name", traced_params())
def test_top_options_change_only_the_top(name):
    check_top_options(name)


@pytest.mark.parametrize("name", traced_params())
def test_input_validation(name):
    check_input_validation(name)


@pytest.mark.parametrize("name", traced_params())
def test_other_channel_counts(name):
    check_other_channel_counts(name)


@pytest.mark.parametrize("name", traced_params())
def test_feature_taps(name):
    check_feature_taps(name)


def test_features_only_api():
    """out_indices pick taps (negative ones too), finest first; the taps follow options."""
    feats = zoo.create("resnet50", features_only=True, out_indices=(1, -2, -1))
    assert [(t.module, t.stride, t.channels) for t in feats.feature_info] == [
        ("stage2", 8, 512), ("stage3", 16, 1024), ("stage4", 32, 2048)]
    x = jnp.ones((1, 64, 64, 3))
    v = jax.jit(feats.init)(jax.random.key(0), x)
    maps = jax.jit(feats.apply)(v, x)
    backbone = zoo.create("resnet50", include_top=False)
    np.testing.assert_array_equal(maps[-1], jax.jit(backbone.apply)(v, x))
    assert [m.shape for m in maps] == [(1, 8, 8, 512), (1, 4, 4, 1024), (1, 2, 2, 2048)]
    thin = zoo.create("mobilenetv2", features_only=True, alpha=0.35)
    assert [t.channels for t in thin.feature_info] == [8, 8, 16, 32, 1280]
    assert [t.channels for t in zoo.spec("mobilenetv2").feature_info()] == [16, 24, 32, 96, 1280]
    with pytest.raises(ValueError, match="out_indices"):
        _ = zoo.create("resnet50", features_only=True, out_indices=(4,)).feature_info
    with pytest.raises(ValueError, match="leave include_top"):
        zoo.create("resnet50", features_only=True, pooling="avg")
    with pytest.raises(ValueError, match="features_only"):
        zoo.create("resnet50", out_indices=(1,))
    with pytest.raises(ValueError, match="unknown option"):
        zoo.create("resnet50", features_only=True, alpha=0.5)


def _fns(model):
    def infer(v, x):
        return model.apply(v, x, train=False)

    def train(v, x):
        return model.apply(v, x, train=True, mutable=["batch_stats"],
                           rngs={"dropout": jax.random.PRNGKey(2)})

    def stats_after_inference(v, x):
        return model.apply(v, x, train=False, mutable=["batch_stats"])[1]["batch_stats"]

    return infer, train, stats_after_inference


def _setup(name, batch: int = 2):
    size = small_size(name)
    model = zoo.create(name, num_classes=7)
    x = jax.random.normal(jax.random.PRNGKey(1), (batch, size, size, 3))
    return model, x, jax.jit(model.init)(jax.random.PRNGKey(0), x)


@pytest.mark.parametrize("name", model_params(quick={"resnet18"}))
def test_shapes_determinism_and_batchnorm(name):
    """Shapes in both modes, same key -> same variables, BN semantics (jitted)."""
    model, x, v1 = _setup(name)
    infer, train, stats_after_inference = (jax.jit(f) for f in _fns(model))
    jax.tree.map(np.testing.assert_array_equal, v1,
                 jax.jit(model.init)(jax.random.PRNGKey(0), x))
    logits = infer(v1, x)
    assert_outputs(logits, name, 2, 7)
    chex.assert_type(jax.tree.leaves(logits), jnp.float32)
    chex.assert_trees_all_equal(infer(v1, x), logits)

    logits, updates = train(v1, x)
    assert_outputs(logits, name, 2, 7)
    chex.assert_tree_all_finite(logits)
    if "batch_stats" in v1:
        before = traverse_util.flatten_dict(dict(v1["batch_stats"]))
        after = traverse_util.flatten_dict(dict(updates["batch_stats"]))
        assert before.keys() == after.keys()
        assert all(not np.array_equal(before[k], after[k]) for k in before), \
            "train=True moves every BN statistic"
        jax.tree.map(np.testing.assert_array_equal, stats_after_inference(v1, x),
                     v1["batch_stats"])
    else:
        assert not updates.get("batch_stats")


# Eager execution compiles every primitive separately (minutes for a DenseNet on 2 cores):
# a few cheap models check jit == eager in the quick loop, the others in the slow suite.
# Eager and jitted programs fuse and order float32 operations differently, so they agree to
# rounding, measured against each output's scale (1e-4, as the parity tests): random-init
# logits reach the thousands, where 1e-5 absolute is below float32 resolution. Training
# mode normalises by batch statistics, which amplifies rounding: batch 8, not 2 (batch norm
# over the 2 values of a 1x1 map at the minimum size is ill-conditioned: O(1) differences
# in deep BN nets at batch 2), and a 1e-3 bound.
# A real eager/jit difference (a Python branch on a traced value, a dropout key, a BN mode)
# moves outputs by O(scale).
def assert_close_to_scale(a, b, rel: float):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        scale = max(float(np.abs(y).max()), 1e-6)
        assert np.abs(x - y).max() <= rel * scale, (np.abs(x - y).max(), scale)


@pytest.mark.parametrize("name", model_params(quick={"resnet18"}))
def test_eager_matches_jit(name):
    model, x, v = _setup(name, batch=8)
    infer, train, _ = _fns(model)
    assert_close_to_scale(infer(v, x), jax.jit(infer)(v, x), rel=1e-4)
    assert_close_to_scale(train(v, x), jax.jit(train)(v, x), rel=1e-3)


def test_bfloat16_compute_keeps_float32_parameters():
    model = zoo.create("resnet18", num_classes=3, dtype=jnp.bfloat16)
    x = jnp.ones((1, 32, 32, 3))
    v = jax.jit(model.init)(jax.random.PRNGKey(0), x)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(v))
    assert jax.jit(model.apply)(v, x).dtype == jnp.bfloat16


@pytest.mark.parametrize("pooling, shape", [(None, (1, 2, 2, 512)), ("avg", (1, 512)),
                                            ("max", (1, 512))])
def test_include_top_false_pooling(pooling, shape):
    model = zoo.create("vgg16", include_top=False, pooling=pooling)
    out = jax.eval_shape(lambda v, x: model.apply(v, x), abstract_vars(model, 64),
                         jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32))
    assert out.shape == shape


def test_models_script_prints_exact_parity():
    from tests.cli import run_script

    out = run_script("models", "--pattern", "^squeezenet").stdout
    assert out.count("| exact |") == 2 and "MISMATCH" not in out
    none = run_script("models", "--pattern", "^nothing-matches", check=False)
    assert none.returncode == 1 and "Traceback" not in none.stderr
    assert "no model matches '^nothing-matches'; models: alexnet" in none.stderr
