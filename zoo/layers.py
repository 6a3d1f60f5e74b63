"""Small building blocks shared by two or more model families.

Every convolution in the zoo goes through :class:`Conv`, :class:`DepthwiseConv` or
:class:`SeparableConv` (defined in :mod:`zoo.conv`, re-exported here), so the
formulation (XLA's native convolution, a matrix product, shifted multiply-adds) is
chosen in one place, per backend. The parameter layout never depends on the
formulation, so a checkpoint moves freely between CPU, GPU and TPU.

Batch normalisation is always called with ``use_running_average`` as a *call*
argument (never a module attribute), so the trainer can run frozen parts in
inference mode by intercepting the call, without the models knowing about freezing.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from zoo.conv import (  # noqa: F401  (re-exported: every family uses layers.Conv)
    CONV_IMPLS,
    Conv,
    DepthwiseConv,
    Padding,
    SeparableConv,
    _pair,
    conv_impl,
    conv_init,
    formulation,
)
from zoo.conv import max_pool as _max_pool
from zoo.conv import normalize_padding as _padding


def batch_norm(*, epsilon: float, momentum: float, dtype: Any, name: str, scale: bool = True):
    """BatchNorm with explicit epsilon and momentum (Keras meaning of momentum).

    Call it as ``bn(x, use_running_average=not train)``. PyTorch momentum ``m`` is
    Flax/Keras momentum ``1 - m``.
    """
    return nn.BatchNorm(
        epsilon=epsilon, momentum=momentum, dtype=dtype, use_scale=scale, name=name,
        use_fast_variance=False,
    )


def pad(x: jax.Array, p: int | tuple[tuple[int, int], tuple[int, int]]) -> jax.Array:
    """Zero padding of the spatial axes (Keras ``ZeroPadding2D``)."""
    pads = ((p, p), (p, p)) if isinstance(p, int) else p
    return jnp.pad(x, ((0, 0), *pads, (0, 0)))


def max_pool(x, window: int, stride: int, padding: Padding = "VALID", ceil_mode: bool = False):
    """Max pooling. ``ceil_mode`` follows PyTorch (a last, partial window is kept).

    The backend's formulation (:func:`zoo.conv.max_pool`): on CPU its gradient is computed
    from shifted views, not by XLA's select-and-scatter."""
    pads = _padding(padding)
    if ceil_mode:
        if isinstance(pads, str):
            raise ValueError("ceil_mode needs explicit (int) padding, as in PyTorch")
        pads = tuple(
            (lo, hi + _ceil_extra(size, window, stride, lo, hi))
            for size, (lo, hi) in zip(x.shape[1:3], pads, strict=True)
        )
    return _max_pool(x, window, stride, pads)


def _ceil_extra(size: int, k: int, s: int, lo: int, hi: int) -> int:
    """Extra right padding that turns floor-mode pooling into PyTorch's ceil mode."""
    total = size + lo + hi
    out = -(-(total - k) // s) + 1
    if (out - 1) * s >= size + lo:  # PyTorch drops a window that starts in the padding
        out -= 1
    return max(0, (out - 1) * s + k - total)


def avg_pool(x, window: int, stride: int, padding: Padding = "VALID") -> jax.Array:
    return nn.avg_pool(x, (window, window), strides=(stride, stride), padding=_padding(padding))


def adaptive_avg_pool(x: jax.Array, out_size: int | tuple[int, int]) -> jax.Array:
    """PyTorch ``AdaptiveAvgPool2d``: bin i covers [floor(i*n/o), ceil((i+1)*n/o))."""
    oh, ow = _pair(out_size)
    mh = _adaptive_matrix(x.shape[1], oh)
    mw = _adaptive_matrix(x.shape[2], ow)
    return jnp.einsum("oh,nhwc,pw->nopc", mh.astype(x.dtype), x, mw.astype(x.dtype))


def _adaptive_matrix(n: int, o: int) -> np.ndarray:
    m = np.zeros((o, n), np.float32)
    for i in range(o):
        lo, hi = (i * n) // o, -(-((i + 1) * n) // o)
        m[i, lo:hi] = 1.0 / (hi - lo)
    return m


def global_pool(x: jax.Array, kind: str = "avg") -> jax.Array:
    """Global average or max pooling of NHWC feature maps to (N, C)."""
    if kind == "avg":
        return jnp.mean(x, axis=(1, 2))
    if kind == "max":
        return jnp.max(x, axis=(1, 2))
    raise ValueError(f"pooling must be None, 'avg' or 'max', got {kind!r}")


def check_input(x: jax.Array, *, model: str, in_channels: int, min_size: int) -> None:
    """Raise a ValueError that names the problem for a badly shaped input batch."""
    shape = tuple(x.shape)
    if x.ndim != 4:
        hint = " (add a batch axis: x[None])" if x.ndim == 3 else ""
        raise ValueError(
            f"{model} expects a batch of NHWC images of rank 4, got rank {x.ndim} "
            f"with shape {shape}{hint}"
        )
    if shape[-1] != in_channels:
        hint = (
            " (the input looks NCHW: transpose it to NHWC with x.transpose(0, 2, 3, 1))"
            if shape[1] == in_channels
            else f" (build the model with in_channels={shape[-1]} to change it)"
        )
        raise ValueError(
            f"{model} was built for {in_channels}-channel input, got {shape[-1]} channels "
            f"in shape {shape}{hint}"
        )
    if min(shape[1:3]) < min_size:
        raise ValueError(
            f"{model} needs images of at least {min_size}x{min_size} pixels, got "
            f"{shape[1]}x{shape[2]} (shape {shape}); resize the images up"
        )


def pool_features(x: jax.Array, pooling: str | None) -> jax.Array:
    """The ``include_top=False`` output of keras.applications: the feature map, or pooled."""
    return x if pooling is None else global_pool(x, pooling)


def classifier(
    x: jax.Array, *, num_classes: int | None, dtype: Any, name: str = "head"
) -> jax.Array:
    """The final Dense layer, or the pooled features themselves when num_classes is None."""
    if not num_classes:
        return x
    return nn.Dense(num_classes, dtype=dtype, name=name)(x)


def pooled_top(x: jax.Array, *, include_top: bool, pooling: str | None,
               num_classes: int | None, dtype: Any) -> jax.Array:
    """The top of most keras.applications models: without top the feature map (or pooled, as
    ``pooling`` says); with top global average pooling and the ``head`` Dense layer."""
    if not include_top:
        return pool_features(x, pooling)
    return classifier(global_pool(x, "avg"), num_classes=num_classes, dtype=dtype)
