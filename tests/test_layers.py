"""Shared layers: each conv formulation equals XLA's convolution; pooling equals the references."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference as R
from flax import linen as nn

from zoo import layers
from zoo.backend.conv import normalize_padding


def xla_conv(x, w, stride, padding):
    return jax.lax.conv_general_dilated(x, w, (stride, stride), normalize_padding(padding),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("padding", ["SAME", "VALID", 0, ((1, 0), (0, 2))])
@pytest.mark.parametrize("size, features", [(7, 6), (8, 3)])
def test_conv1x1_matmul_equals_xla_forward_and_gradient(stride, padding, size, features):
    """features 6 > 5 input channels and 3 < 5: the kernel gradient transposes either side."""
    kx, kw = jax.random.split(jax.random.PRNGKey(0))
    x = jax.random.normal(kx, (2, size, size, 5))
    conv = layers.Conv(features, 1, stride, padding=padding, impl="matmul")
    v = conv.init(kw, x)
    w, b = v["params"]["kernel"], v["params"]["bias"]

    def ours(w, x):
        return jnp.sum(jnp.sin(conv.apply({"params": {"kernel": w, "bias": b}}, x)))

    def ref(w, x):
        return jnp.sum(jnp.sin(xla_conv(x, w, stride, padding) + b))

    np.testing.assert_allclose(conv.apply(v, x), xla_conv(x, w, stride, padding) + b,
                               rtol=1e-5, atol=1e-5)
    for g1, g2 in zip(jax.grad(ours, (0, 1))(w, x), jax.grad(ref, (0, 1))(w, x), strict=True):
        np.testing.assert_allclose(g1, g2, rtol=1e-4, atol=1e-5)


def test_parameter_layout_does_not_depend_on_the_formulation(monkeypatch):
    x = jnp.ones((1, 8, 8, 3))
    shapes = []
    for impl in ("xla", "matmul", "auto"):
        monkeypatch.setenv("ZOO_CONV_IMPL", impl)
        v = layers.Conv(4, 1).init(jax.random.PRNGKey(0), x)
        shapes.append(jax.tree.map(lambda a: (a.shape, a.dtype), v))
    assert shapes[0] == shapes[1] == shapes[2]
    assert shapes[0]["params"]["kernel"][0] == (1, 1, 3, 4)
    monkeypatch.setenv("ZOO_CONV_IMPL", "winograd")
    with pytest.raises(ValueError, match="ZOO_CONV_IMPL"):
        layers.Conv(4, 1).init(jax.random.PRNGKey(0), x)


@pytest.mark.parametrize("size", [7, 8])
def test_same_padding_at_stride_2_is_keras_same(size):
    import keras

    x = np.random.default_rng(0).normal(size=(1, size, size, 3)).astype("float32")
    kconv = keras.layers.Conv2D(4, 3, strides=2, padding="same")
    ref = np.asarray(kconv(x))
    kernel, bias = (np.asarray(w) for w in kconv.weights)
    ours = layers.Conv(4, 3, 2, padding="SAME").apply(
        {"params": {"kernel": kernel, "bias": bias}}, x)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not R.HAVE_TORCH, reason="torch not installed: `make test` installs it")
@pytest.mark.parametrize("size", [13, 14, 15, 16, 17])
def test_pooling_matches_torch(size):
    import torch
    import torch.nn.functional as F

    x = np.random.default_rng(size).normal(size=(2, size, size, 3)).astype("float32")
    t = torch.from_numpy(x.transpose(0, 3, 1, 2))
    to_nhwc = lambda y: y.numpy().transpose(0, 2, 3, 1)  # noqa: E731
    np.testing.assert_array_equal(layers.max_pool(x, 3, 2, padding=0, ceil_mode=True),
                                  to_nhwc(F.max_pool2d(t, 3, 2, ceil_mode=True)))
    np.testing.assert_array_equal(layers.max_pool(x, 3, 2, padding=1),
                                  to_nhwc(F.max_pool2d(t, 3, 2, padding=1)))
    for out in (1, 5, 6, 7):
        np.testing.assert_allclose(layers.adaptive_avg_pool(x, out),
                                   to_nhwc(F.adaptive_avg_pool2d(t, out)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("window, stride, padding", [(2, 2, "VALID"), (3, 3, "VALID"),
                                                     (2, 2, "SAME"), (3, 2, "VALID")])
@pytest.mark.parametrize("size", [7, 8])
def test_avg_pool_equals_flax(window, stride, padding, size):
    """Non-overlapping windows take a reshape (odd sizes drop the last row, as 'VALID')."""
    x = jax.random.normal(jax.random.PRNGKey(size), (2, size, size + 1, 3))

    def pooled(f, x):
        return f(x), jax.grad(lambda x: jnp.sum(jnp.sin(f(x))))(x)

    ours = pooled(lambda x: layers.avg_pool(x, window, stride, padding), x)
    ref = pooled(lambda x: nn.avg_pool(x, (window, window), (stride, stride), padding), x)
    for a, b in zip(ours, ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="smaller than the pooling window"):
        layers.avg_pool(x[:, :1], 2, 2)


def test_global_pool_rejects_unknown_kind():
    with pytest.raises(ValueError, match="pooling must be"):
        layers.global_pool(jnp.ones((1, 2, 2, 3)), "median")


@pytest.mark.parametrize("scale, dtype", [(True, jnp.float32), (False, jnp.float32),
                                          (True, jnp.bfloat16)])
def test_batch_norm_training_equals_flax(scale, dtype):
    """Our BatchNorm's hand-written training gradient: Flax's numbers (outputs, running
    statistics, gradients wrt input, scale and bias), in float32 and bfloat16."""
    from flax import linen as nn

    x = (3 + 2 * jax.random.normal(jax.random.PRNGKey(0), (4, 5, 6, 7))).astype(dtype)
    kw = dict(epsilon=1e-3, momentum=0.9, use_scale=scale, dtype=dtype)
    ours, ref = layers.BatchNorm(**kw), nn.BatchNorm(use_fast_variance=False, **kw)
    v = ref.init(jax.random.PRNGKey(1), x, use_running_average=True)
    assert jax.tree.structure(ours.init(jax.random.PRNGKey(1), x, use_running_average=False)) \
        == jax.tree.structure(v)
    v = {"params": jax.tree.map(lambda a: a + 0.5, v["params"]), "batch_stats": v["batch_stats"]}
    w = jnp.cos(jnp.arange(x.size, dtype=jnp.float32).reshape(x.shape))

    def run(mod):
        def loss(params, x):
            y, upd = mod.apply({**v, "params": params}, x, use_running_average=False,
                               mutable=["batch_stats"])
            return jnp.sum(jnp.sin(y.astype(jnp.float32)) * w), (y, upd)
        return jax.jit(jax.value_and_grad(loss, (0, 1), has_aux=True))(v["params"], x)

    (l1, (y1, s1)), g1 = run(ours)
    (l2, (y2, s2)), g2 = run(ref)
    tol = 1e-5 if dtype == jnp.float32 else 2e-2
    assert y1.dtype == y2.dtype == dtype
    for a, b in zip(jax.tree.leaves((y1, s1, g1)), jax.tree.leaves((y2, s2, g2)), strict=True):
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32),
                                   rtol=tol, atol=tol)
    # inference mode is Flax's own code
    np.testing.assert_array_equal(ours.apply(v, x, use_running_average=True),
                                  ref.apply(v, x, use_running_average=True))


@pytest.mark.parametrize("padding", ["SAME", "VALID", 1])
def test_grouped_conv_is_flax_conv(padding):
    """``Conv(feature_group_count=g)``: flax.linen.Conv's parameters and numbers."""
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 9, 9, 12))
    ours = layers.Conv(8, 3, 2, padding, feature_group_count=4)
    ref = nn.Conv(8, (3, 3), (2, 2), padding=padding, feature_group_count=4)
    v = ours.init(jax.random.PRNGKey(1), x)
    assert jax.tree.map(jnp.shape, v) == jax.tree.map(jnp.shape, ref.init(
        jax.random.PRNGKey(1), x))
    np.testing.assert_allclose(ours.apply(v, x), ref.apply(v, x), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="do not split into 5 groups"):
        layers.Conv(10, 3, feature_group_count=5).init(jax.random.PRNGKey(1), x)
