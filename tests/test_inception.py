"""Family tests for the Inceptions (v1 GoogLeNet, v2 BN-Inception, v3, ResNet-v2) and DenseNet.

The registry-wide tests (test_zoo.py, test_parity.py) cover parameter and output parity;
these cover what is particular to these families: BN-Inception's parameter count derived
from the paper's table, GoogLeNet's auxiliary heads against torchvision, the renumbering
of Keras' auto-named layers, and the reference preprocessing.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference as R
from test_parity import assert_logits_match, keras_parity

import zoo
from zoo import googlenet
from zoo.weights import convert

needs_torch = pytest.mark.skipif(not R.HAVE_TORCH, reason="torch/torchvision not installed")


def count(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def abstract_vars(model, size: int):
    x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    return jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x), x)


# ------------------------------------------------------------ BN-Inception

# Ioffe & Szegedy 2015 (arXiv:1502.03167), Figure 5, one row per Inception module:
# #1x1, #3x3 reduce, #3x3, double #3x3 reduce, double #3x3, pool, pool projection
# (None: "pass through"), and the output depth the table states. Stride-2 modules: 3c, 4e.
PAPER_TABLE = {
    "3a": (64, 64, 64, 64, 96, "avg", 32, 256),
    "3b": (64, 64, 96, 64, 96, "avg", 64, 320),
    "3c": (0, 128, 160, 64, 96, "max", None, 576),
    "4a": (224, 64, 96, 96, 128, "avg", 128, 576),
    "4b": (192, 96, 128, 96, 128, "avg", 128, 576),
    "4c": (160, 128, 160, 128, 160, "avg", 128, 576),
    "4d": (96, 128, 192, 160, 192, "avg", 128, 576),
    "4e": (0, 128, 192, 192, 256, "max", None, 1024),
    "5a": (352, 192, 320, 160, 224, "avg", 128, 1024),
    "5b": (352, 192, 320, 192, 224, "max", 128, 1024),
}
# The rows' widths do not add up to the stated depths from 4c on (4c: 160+160+160+128 =
# 608, not 576). TF-slim's inception_v2 (and zoo/googlenet.py) take projections of 96
# in 4c and 4d, which makes every stated depth hold.
SLIM_FIX = {"4c": 96, "4d": 96}


def bn_inception_count(table, num_classes: int = 1000) -> tuple[int, dict[str, int]]:
    """Parameters of BN-Inception from its table: convs without bias + BN (gamma, beta)."""
    conv = lambda k, cin, cout: k * k * cin * cout + 2 * cout  # noqa: E731
    # stem: 7x7/2 conv 64; max pool; 1x1 reduce 64 then 3x3 conv 192; max pool
    total = conv(7, 3, 64) + conv(1, 64, 64) + conv(3, 64, 192)
    depth, depths = 192, {}
    for name, (c1, r3, c3, rd, cd, _pool, proj, _) in table.items():
        total += (conv(1, depth, c1) if c1 else 0) + conv(1, depth, r3) + conv(3, r3, c3)
        total += conv(1, depth, rd) + conv(3, rd, cd) + conv(3, cd, cd)
        total += conv(1, depth, proj) if proj else 0
        depth = c1 + c3 + cd + (proj if proj else depth)  # a pass-through keeps the input
        depths[name] = depth
    return total + depth * num_classes + num_classes, depths


def test_bn_inception_parameter_count_is_derived_from_the_paper_table():
    _, literal = bn_inception_count(PAPER_TABLE)
    assert (literal["4c"], literal["4e"]) == (608, 1056), "the table as printed is inconsistent"
    fixed = {k: (*row[:6], SLIM_FIX.get(k, row[6]), row[7]) for k, row in PAPER_TABLE.items()}
    expected, depths = bn_inception_count(fixed)
    assert depths == {k: row[7] for k, row in PAPER_TABLE.items()}, "stated depths hold"
    assert expected == 11_194_984 == zoo.spec("inception_v2").reference_params
    v = abstract_vars(zoo.create("inception_v2"), 224)
    assert count(v["params"]) == expected
    # BN statistics: one mean and one variance per BN channel, i.e. per gamma
    gammas = sum(int(np.prod(a.shape)) for p, a in jax.tree_util.tree_leaves_with_path(
        v["params"]) if jax.tree_util.keystr(p).endswith("['scale']"))
    assert count(v["batch_stats"]) == 2 * gammas


def test_bn_inception_feature_map_and_options():
    model = zoo.create("inception_v2", include_top=False)
    out = jax.eval_shape(lambda v, x: model.apply(v, x), abstract_vars(model, 224),
                         jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32))
    assert out.shape == (1, 7, 7, 1024)
    with pytest.raises(ValueError, match="aux_logits"):
        abstract_vars(zoo.create("inception_v2", aux_logits=True), 224)


# ---------------------------------------------------------- GoogLeNet aux


def test_googlenet_aux_heads_are_optional_and_in_the_head_group():
    spec = zoo.spec("googlenet")
    plain = abstract_vars(zoo.create("googlenet"), 224)
    aux = abstract_vars(zoo.create("googlenet", aux_logits=True), 224)
    assert "aux1" not in plain["params"] and {"aux1", "aux2"} <= set(aux["params"])
    # torchvision GoogLeNet(aux_logits=True): 13,004,888 parameters
    assert count(aux["params"]) == 13_004_888
    for path in ("aux1/fc2/kernel", "aux2/conv/conv/kernel", "head/kernel"):
        assert spec.group_of(path) == "head"
    with pytest.raises(ValueError, match="aux_logits"):
        abstract_vars(zoo.create("googlenet", aux_logits=True, include_top=False), 224)


def test_googlenet_returns_aux_logits_only_in_training():
    model = zoo.create("googlenet", num_classes=5, aux_logits=True)
    x = jnp.zeros((2, 64, 64, 3))
    v = abstract_vars(model, 64)
    out = jax.eval_shape(lambda v, x: model.apply(v, x), v, x)
    assert out.shape == (2, 5)
    train_out, _ = jax.eval_shape(
        lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"],
                                 rngs={"dropout": jax.random.PRNGKey(0)}), v, x)
    assert isinstance(train_out, googlenet.GoogLeNetOutputs)
    assert [o.shape for o in train_out] == [(2, 5)] * 3


@needs_torch
def test_googlenet_aux_heads_match_torchvision_in_training():
    """Training mode (batch statistics), dropout off: logits and both aux logits agree."""
    import torch

    size = 64
    tmodel = R.torch_model("googlenet", num_classes=10, aux_logits=True, dropout=0.0,
                           dropout_aux=0.0).train()
    model = zoo.create("googlenet", num_classes=10, aux_logits=True, dropout=0.0,
                       aux_dropout=0.0)
    x = np.random.default_rng(0).normal(size=(4, size, size, 3)).astype("float32")
    target = abstract_vars(model, size)
    names = googlenet.torch_names(model)
    variables = convert.from_torch(R.torch_state(tmodel), names, target)
    with torch.no_grad():
        ref = tmodel(torch.from_numpy(x.transpose(0, 3, 1, 2)))
    ours, _ = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(
        variables, x)
    for a, b in zip(ours, (ref.logits, ref.aux_logits2, ref.aux_logits1), strict=True):
        assert_logits_match(a, b.numpy())


def test_googlenet_normalisation_is_torchvision_transform_input():
    """Pretrained torchvision GoogLeNet: ImageNet mean/std, then ``transform_input``."""
    img = np.random.default_rng(0).uniform(0, 255, (2, 4, 4, 3)).astype("float32")
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    x = (img / 255 - mean) / std
    transformed = x * (std / 0.5) + (mean - 0.5) / 0.5
    np.testing.assert_allclose(zoo.spec("googlenet").normalize(img), transformed,
                               rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------ Keras side


@pytest.mark.parametrize("name, module", [("densenet121", "densenet"),
                                          ("inception_v3", "inception_v3"),
                                          ("inception_resnet_v2", "inception_resnet_v2")])
def test_normalisation_matches_keras_preprocess_input(name, module):
    import importlib

    pre = importlib.import_module(f"keras.applications.{module}").preprocess_input
    img = np.random.default_rng(0).uniform(0, 255, (2, 4, 4, 3)).astype("float32")
    np.testing.assert_allclose(zoo.spec(name).normalize(img), pre(img.copy()),
                               rtol=1e-5, atol=1e-5)


def test_keras_auto_names_are_renumbered_by_creation_order():
    w = {"kernel": np.zeros(1)}
    keras2 = {"conv2d_1": w, "conv2d_2": w, "batch_normalization_1": w, "mixed0": {}}
    assert convert.renumber_keras_auto_names(keras2).keys() == keras2.keys()
    fresh = {"conv2d": 1, "conv2d_1": 2, "batch_normalization": 3, "predictions": 4}
    assert convert.renumber_keras_auto_names(fresh) == {
        "conv2d_1": 1, "conv2d_2": 2, "batch_normalization_1": 3, "predictions": 4}
    # a session that built other models first; creation order is the counter's order
    later = {"conv2d_110": 2, "conv2d_95": 1, "block35_1_conv": 5, "conv_7b_bn": 6}
    assert convert.renumber_keras_auto_names(later) == {
        "conv2d_2": 2, "conv2d_1": 1, "block35_1_conv": 5, "conv_7b_bn": 6}


def test_inception_v3_name_map_counts_keras_layers():
    from zoo import inception

    names = inception.keras_names(zoo.create("inception_v3"))
    assert sum(k.startswith("conv2d_") for k in names) == 94  # PITFALLS: 94 Conv2D
    irv2 = inception.keras_names(zoo.create("inception_resnet_v2"))
    assert sum(k.startswith("block") for k in irv2) == 40  # 10 + 20 + 10 residual blocks


@pytest.mark.parametrize("name, pooling", [
    pytest.param("densenet121", None, marks=pytest.mark.slow),
    pytest.param("inception_v3", "max", marks=pytest.mark.slow),
    pytest.param("inception_resnet_v2", "avg", marks=pytest.mark.slow),
])
def test_keras_parity_without_top(name, pooling):
    keras_parity(name, include_top=False, pooling=pooling)
