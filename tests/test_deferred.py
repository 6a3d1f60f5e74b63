"""Deferred activations (zoo.backend.conv.Deferred): an inference batch norm and a ReLU / ReLU6
applied by the native depthwise conv or max pool as they read their input. The same
numbers and gradients as the unfused layers, only where the native kernels run (float32,
the CPU, not under ``use_impl("xla")``), and nothing changes in training mode."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from test_mobile import assert_same_function
from test_native import lowered, needs_cxx

import zoo
from zoo.backend import conv
from zoo import layers

INF = float("inf")


def _deferred(c: int, bounds) -> conv.Deferred:
    """Random statistics: a negative scale, centres away from the data, clipping that bites."""
    keys = jax.random.split(jax.random.PRNGKey(7), 3)
    center = 0.5 * jax.random.normal(keys[0], (c,))
    scale = 2 * jax.random.normal(keys[1], (c,))
    shift = jax.random.normal(keys[2], (c,))
    return conv.Deferred(jnp.zeros((1, 1, 1, c)), center, scale, shift, *bounds)


# kernel, stride, dilation, padding, (height, width), channels, (lo, hi): the column blocks
# of the 3x3 kernel (strides 1 and 2, wide rows, a half vector of channels), the generic
# loop (dilation, 5x5), 'valid' and asymmetric pads; ReLU, ReLU6, the batch norm alone
DEFERRED_DEPTHWISE_CASES = [
    (3, 1, 1, "SAME", (7, 29), 56, (0.0, INF)),
    (3, 2, 1, "SAME", (9, 31), 40, (0.0, 6.0)),
    (3, 2, 1, ((0, 1), (0, 1)), (8, 10), 24, (0.0, 6.0)),
    (3, 1, 2, "SAME", (8, 9), 33, (-INF, INF)),
    (5, 1, 1, "VALID", (9, 11), 12, (0.0, INF)),
]


@pytest.mark.parametrize("kernel, stride, dilation, padding, size, channels, bounds",
                         DEFERRED_DEPTHWISE_CASES)
def test_deferred_depthwise_equals_unfused(native_mode, kernel, stride, dilation, padding,
                                           size, channels, bounds):
    """Values and the gradients of input, kernel and the batch norm's vectors, against the
    activation computed by XLA first (zero padding is the activated input's: a batch norm
    shift would otherwise leak into the border)."""
    k, s, d = (conv._pair(v) for v in (kernel, stride, dilation))
    x = 2 * jax.random.normal(jax.random.PRNGKey(0), (3, *size, channels))
    w = jax.random.normal(jax.random.PRNGKey(1), (*k, channels, 1))
    base = _deferred(channels, bounds)
    pads = conv.normalize_padding(padding)

    def fused(w, x):
        return conv.deferred_depthwise(base.replace(x=x), w, s, pads, d)

    def unfused(w, x):
        return conv.shift_depthwise(base.replace(x=x).value(), w, s, pads, d)

    assert_same_function(fused, unfused, w, x)
    vectors = (base.center, base.scale, base.shift)

    def loss(f):
        def of(vectors, w, x):
            d_ = conv.Deferred(x, *vectors, *bounds)
            y = (conv.deferred_depthwise(d_, w, s, pads, d) if f == "fused"
                 else conv.shift_depthwise(d_.value(), w, s, pads, d))
            return jnp.sum(jnp.sin(y))
        return jax.jit(jax.grad(of))(vectors, w, x)

    for a, b in zip(loss("fused"), loss("unfused"), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    text = lowered(fused, w, x)
    assert ("zoo_depthwise_forward_act" in text) == (native_mode == "on")
    assert "zoo_" not in lowered(fused, w, x, platforms=("cuda",))


@pytest.mark.parametrize("window, stride, padding, size, bounds", [
    (3, 2, "SAME", (15, 20), (-INF, INF)), (3, 2, "VALID", (9, 10), (0.0, INF)),
    (2, 2, "SAME", (7, 9), (0.0, 6.0))])
def test_deferred_max_pool_equals_unfused(native_mode, window, stride, padding, size, bounds):
    """Bit for bit, the gradients included (padding is -inf after the activation: a
    negative scale turns the input's minimum into the window's maximum)."""
    window, stride = conv._pair(window), conv._pair(stride)
    x = jnp.round(2 * jax.random.normal(jax.random.PRNGKey(0), (2, *size, 37)))
    base = _deferred(37, bounds)
    base = base.replace(center=jnp.round(base.center), scale=jnp.round(base.scale),
                        shift=jnp.round(base.shift))

    def run(fused: bool):
        def pool(vectors, x):
            d = conv.Deferred(x, *vectors, *bounds)
            y = conv.max_pool(d if fused else d.value(), window, stride, padding)
            return jnp.sum(y * (1 + jnp.arange(y.size).reshape(y.shape) % 97)), y
        vectors = (base.center, base.scale, base.shift)
        (_, y), g = jax.jit(jax.value_and_grad(pool, (0, 1), has_aux=True))(vectors, x)
        return y, g

    (y, g), (y_ref, g_ref) = run(True), run(False)
    np.testing.assert_array_equal(y, y_ref)
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_ref), strict=True):
        np.testing.assert_array_equal(a, b)
    text = lowered(lambda x: conv.max_pool(base.replace(x=x), window, stride, padding), x)
    assert ("zoo_max_pool_act" in text) == (native_mode == "on")


class _BN(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool, defer: bool):
        return layers.batch_norm(epsilon=1e-3, momentum=0.99, dtype=None, name="bn")(
            x, use_running_average=not train, defer=defer)


def _bn_variables(c: int):
    x = jnp.zeros((1, 4, 4, c))
    v = _BN().init(jax.random.PRNGKey(0), x, train=False, defer=False)
    keys = jax.random.split(jax.random.PRNGKey(1), 4)
    random = {"params": {"bn": {"scale": jax.random.normal(keys[0], (c,)),
                                "bias": jax.random.normal(keys[1], (c,))}},
              "batch_stats": {"bn": {"mean": jax.random.normal(keys[2], (c,)),
                                     "var": jnp.exp(jax.random.normal(keys[3], (c,)))}}}
    assert jax.tree.structure(random) == jax.tree.structure(v)  # Flax's variables
    return random


@needs_cxx
def test_batch_norm_defers_only_in_inference_on_native_float32(monkeypatch):
    monkeypatch.setenv("ZOO_NATIVE", "on")
    variables = _bn_variables(6)
    x = jax.random.normal(jax.random.PRNGKey(2), (2, 5, 5, 6))
    flax_bn = nn.BatchNorm(use_running_average=True, epsilon=1e-3, momentum=0.99, name="bn")
    expected = nn.Sequential([flax_bn]).apply(
        {k: {"layers_0": v["bn"]} for k, v in variables.items()}, x)
    d = _BN().apply(variables, x, train=False, defer=True)
    assert isinstance(d, conv.Deferred)
    np.testing.assert_allclose(d.value(), expected, rtol=1e-6, atol=1e-6)
    assert (d.lo, d.hi) == (-INF, INF)
    # every case where it must not defer: an array, the same numbers
    assert not isinstance(_BN().apply(variables, x, train=False, defer=False), conv.Deferred)
    y, _ = _BN().apply(variables, x, train=True, defer=True, mutable=["batch_stats"])
    assert isinstance(y, jax.Array)
    with conv.use_impl("xla"):  # what viz traces: one batch-norm node, not a fused one
        np.testing.assert_allclose(_BN().apply(variables, x, train=False, defer=True),
                                   expected, rtol=1e-6, atol=1e-6)
    half = _BN().apply(variables, x.astype(jnp.bfloat16), train=False, defer=True)
    assert isinstance(half, jax.Array)
    monkeypatch.setenv("ZOO_NATIVE", "off")
    assert isinstance(_BN().apply(variables, x, train=False, defer=True), jax.Array)


@needs_cxx
def test_relu_of_deferred_values(monkeypatch):
    monkeypatch.setenv("ZOO_NATIVE", "on")
    x = jnp.linspace(-10, 10, 2 * 3 * 3 * 4).reshape(2, 3, 3, 4)
    assert isinstance(layers.relu(x), jax.Array)  # not asked to defer
    r = layers.relu(x, defer=True)
    assert isinstance(r, conv.Deferred) and (r.lo, r.hi) == (0.0, INF)
    np.testing.assert_array_equal(r.value(), jnp.maximum(x, 0))
    r6 = layers.relu(r, 6)  # ReLU6 of ReLU: one clip
    assert (r6.lo, r6.hi) == (0.0, 6.0)
    np.testing.assert_array_equal(r6.value(), jnp.clip(x, 0, 6))
    np.testing.assert_array_equal(layers.relu(x, 6), jnp.clip(x, 0, 6))
    below = conv.Deferred(x, jnp.zeros(4), jnp.ones(4), jnp.zeros(4), -INF, -1.0)
    np.testing.assert_array_equal(layers.relu(below), jnp.zeros_like(x))  # disjoint ranges
    with pytest.raises(TypeError):  # anything else must ask for the value
        jnp.add(r, 1)


@needs_cxx
@pytest.mark.parametrize("name, depthwise, pool", [
    ("xception", True, True), ("mobilenet", True, False), ("mobilenetv2", True, False),
    ("resnet50", False, True), ("densenet121", False, True)])
def test_models_defer_into_native_kernels_in_inference_only(monkeypatch, name, depthwise,
                                                            pool):
    """Inference lowers to the fused kernels (depthwise convs; the max pools after a batch
    norm and ReLU: Xception's entry flow, the ResNet and DenseNet stems), training to none
    of them; the GPU lowering of the same function has no custom call at all."""
    monkeypatch.setenv("ZOO_NATIVE", "on")
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
