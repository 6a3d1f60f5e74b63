"""What :mod:`zoo.layers` calls: each operation in the formulation the platform gets, with the
fusions of :mod:`zoo.backend.fusion`."""

from __future__ import annotations

import jax

from zoo.backend import conv as _conv
from zoo.backend import fusion as _fusion
from zoo.backend.conv import Padding
from zoo.backend.norm import normalize_batch  # noqa: F401
from zoo.backend.precision import add_bias  # noqa: F401


def conv(x: jax.Array, kernel: jax.Array, strides=(1, 1), padding: Padding = "SAME",
         dilation=(1, 1), groups: int = 1, impl: str | None = None) -> jax.Array:
    """Convolution of NHWC ``x`` by an HWIO ``kernel`` (``I = in / groups``), no bias."""
    y = _conv.conv(x, kernel, strides, padding, dilation, groups, impl)
    pads = _conv.normalize_padding(padding)
    if (kernel.shape[:2] == (1, 1) and groups == 1 and _conv.pair(strides) == (1, 1)
            and (isinstance(pads, str) or not any(sum(pads, ())))
            and _conv.uses("avgpool", "matmul")):
        _fusion.remember(y, _fusion.Pointwise(x, kernel, impl))
    return y


def depthwise_conv(x: jax.Array, kernel: jax.Array, strides=(1, 1), padding: Padding = "SAME",
                   dilation=(1, 1), impl: str | None = None) -> jax.Array:
    """Depthwise convolution, ``kernel (kh, kw, C, multiplier)``, no bias."""
    strides, dilation = _conv.pair(strides), _conv.pair(dilation)
    return _fusion.depthwise(x, kernel, strides, _conv.normalize_padding(padding), dilation, impl)


def max_pool(x: jax.Array, window, strides, padding: Padding = "VALID",
             impl: str | None = None) -> jax.Array:
    """Max pooling (padding with -inf; 'SAME' as TensorFlow)."""
    return _fusion.max_pool(x, window, strides, padding, impl)


def avg_pool(x: jax.Array, window: int, stride: int, padding: Padding = "VALID",
             impl: str | None = None) -> jax.Array:
    """Average pooling, padded cells counted (``flax.linen.avg_pool``'s default); of a
    bias-free 1x1 conv's output, on CPU, the pool taken first
    (:func:`zoo.backend.fusion.pooled_pointwise`)."""
    if window == stride and _conv.normalize_padding(padding) == "VALID":
        pooled = _fusion.pooled_pointwise(x, window, impl)
        if pooled is not None:
            return pooled
    return _conv.avg_pool(x, window, stride, padding, impl)


def remember_activation(y, x, ingredients, act=None) -> jax.Array:
    """Tell the backend that ``y`` is ``act((x - center) * scale + shift)`` (an inference batch
    norm and its activation), ``(center, scale, shift) = ingredients()``, called only where
    the backend fuses: a depthwise conv or max pool reading ``y`` may then fuse them."""
    return _fusion.remember_activation(y, x, ingredients, act)
