"""Small building blocks shared by two or more model families.

Every convolution in the zoo goes through :class:`Conv`, :class:`DepthwiseConv` or
:class:`SeparableConv` (defined in :mod:`zoo.backend.conv`, re-exported here), so the
formulation (XLA's native convolution, a matrix product, shifted multiply-adds) is
chosen in one place, per backend. The parameter layout never depends on the
formulation, so a checkpoint moves freely between CPU, GPU and TPU.

Batch normalisation is always called with ``use_running_average`` as a *call*
argument (never a module attribute), so the trainer can run frozen parts in
inference mode by intercepting the call, without the models knowing about freezing.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from zoo.backend.conv import (  # noqa: F401  (re-exported: every family uses layers.Conv)
    CONV_IMPLS,
    Conv,
    Deferred,
    DepthwiseConv,
    Padding,
    SeparableConv,
    _pair,
    _windows,
    conv_impl,
    conv_init,
    defers,
    formulation,
    relu,
    value,
)
from zoo.backend.conv import max_pool as _max_pool
from zoo.backend.conv import normalize_padding as _padding


def _moments(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-channel mean and (biased, two-pass) variance over N, H, W, in float32 or wider."""
    x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    axes = tuple(range(x.ndim - 1))
    mean = jnp.mean(x, axes)
    return mean, jnp.mean(jnp.square(x - mean), axes)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def normalize_batch(x, scale, bias, epsilon: float):
    """Training-mode batch normalisation over all axes but the last: ``(y, mean, var)``.

    The same numbers as :class:`flax.linen.BatchNorm` (two-pass variance), with a
    hand-written gradient: two reductions and one elementwise pass, where autodiff of the
    forward formula makes XLA:CPU read the activations several more times.
    """
    mean, var = _moments(x)
    y = (x - mean) * (jax.lax.rsqrt(var + epsilon) * scale) + bias
    return y, mean, var


def _normalize_fwd(x, scale, bias, epsilon):
    y, mean, var = normalize_batch(x, scale, bias, epsilon)
    return (y, mean, var), (x, mean, jax.lax.rsqrt(var + epsilon), scale, bias)


def _normalize_bwd(epsilon, res, cts):
    x, mean, rstd, scale, bias = res
    dy, dmean, dvar = cts
    n = x.size // x.shape[-1]
    axes = tuple(range(x.ndim - 1))
    xc = x.astype(mean.dtype) - mean
    dy32 = dy.astype(mean.dtype)
    dbias = jnp.sum(dy32, axes)
    dscale = jnp.sum(dy32 * xc, axes) * rstd  # sum(dy * xhat)
    dx = (scale * rstd) * (dy32 - (dbias + xc * rstd * dscale) / n)
    dx = dx + (dmean + 2 * dvar * xc) / n  # the batch statistics' own cotangents
    return dx.astype(x.dtype), dscale.astype(scale.dtype), dbias.astype(bias.dtype)


normalize_batch.defvjp(_normalize_fwd, _normalize_bwd)


class BatchNorm(nn.BatchNorm):
    """:class:`flax.linen.BatchNorm` (same variables; the numbers of
    ``use_fast_variance=False``) whose training-mode pass has a hand-written gradient
    (:func:`normalize_batch`) for the last feature axis. Inference mode, masks,
    cross-device ``axis_name`` and other axes use Flax's own code. Being a custom VJP,
    the training-mode pass supports reverse-mode differentiation only (``jax.grad``,
    not ``jax.jvp``), as the zoo's other custom-gradient layers."""

    @nn.compact
    def __call__(self, x, use_running_average: bool | None = None, *, mask=None,
                 defer: bool = False):
        """``defer=True``: in inference mode, where :func:`zoo.backend.conv.defers` says so, return a
        :class:`zoo.backend.conv.Deferred` (the same numbers, computed by the layer that reads it:
        a depthwise conv or a max pool; pass it to nothing else)."""
        use_running_average = nn.merge_param(
            "use_running_average", self.use_running_average, use_running_average)
        last = self.axis in (-1, x.ndim - 1)
        if use_running_average and defer and mask is None and last and defers(x):
            return self._deferred(x)
        if use_running_average or mask is not None or self.axis_name is not None or not last:
            return super().__call__(x, use_running_average, mask=mask)
        ra_mean, ra_var, scale, bias = self._variables(x.shape[-1])
        y, mean, var = normalize_batch(x, scale, bias, self.epsilon)
        if not self.is_initializing():
            ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
            ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
        args = [x] + ([scale] if self.use_scale else []) + ([bias] if self.use_bias else [])
        return y.astype(nn.dtypes.canonicalize_dtype(*args, dtype=self.dtype))

    def _variables(self, c: int):
        """The running statistics and (or the neutral) scale and bias, as Flax's."""
        ra_mean = self.variable("batch_stats", "mean", lambda s: jnp.zeros(s, jnp.float32), (c,))
        ra_var = self.variable("batch_stats", "var", lambda s: jnp.ones(s, jnp.float32), (c,))
        scale = (self.param("scale", self.scale_init, (c,), self.param_dtype)
                 if self.use_scale else jnp.ones((c,), jnp.float32))
        bias = (self.param("bias", self.bias_init, (c,), self.param_dtype)
                if self.use_bias else jnp.zeros((c,), jnp.float32))
        return ra_mean, ra_var, scale, bias

    def _deferred(self, x) -> jax.Array | Deferred:
        """Flax's inference formula, (x - mean) * (rsqrt(var + eps) * scale) + bias, deferred
        (or computed, when parameters of another dtype would change the result's)."""
        ra_mean, ra_var, scale, bias = self._variables(x.shape[-1])
        args = [x] + ([scale] if self.use_scale else []) + ([bias] if self.use_bias else [])
        mul = jax.lax.rsqrt(ra_var.value + self.epsilon) * scale
        d = Deferred(x, ra_mean.value, mul, bias)
        if nn.dtypes.canonicalize_dtype(*args, dtype=self.dtype) != x.dtype or any(
                v.dtype != x.dtype for v in (d.center, d.scale, d.shift)):
            return d.value().astype(nn.dtypes.canonicalize_dtype(*args, dtype=self.dtype))
        return d


def batch_norm(*, epsilon: float, momentum: float, dtype: Any, name: str, scale: bool = True):
    """BatchNorm with explicit epsilon and momentum (Keras meaning of momentum).

    Call it as ``bn(x, use_running_average=not train)``. PyTorch momentum ``m`` is
    Flax/Keras momentum ``1 - m``.
    """
    return BatchNorm(
        epsilon=epsilon, momentum=momentum, dtype=dtype, use_scale=scale, name=name,
        use_fast_variance=False,
    )


def pad(x: jax.Array, p: int | tuple[tuple[int, int], tuple[int, int]]) -> jax.Array:
    """Zero padding of the spatial axes (Keras ``ZeroPadding2D``)."""
    pads = ((p, p), (p, p)) if isinstance(p, int) else p
    return jnp.pad(x, ((0, 0), *pads, (0, 0)))


def max_pool(x, window: int, stride: int, padding: Padding = "VALID", ceil_mode: bool = False):
    """Max pooling. ``ceil_mode`` follows PyTorch (a last, partial window is kept).

    The backend's formulation (:func:`zoo.backend.conv.max_pool`): on CPU its gradient is computed
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
    """Average pooling as ``flax.linen.avg_pool`` (with 'SAME', padded cells count).

    Non-overlapping 'VALID' windows (``window == stride``) are a sum of strided slices:
    3x faster than XLA:CPU's ``reduce_window`` or a reshape and mean (DenseNet's
    transitions, BENCHMARKS.md).
    """
    pads = _padding(padding)
    if window == stride and pads == "VALID":
        h, w = x.shape[1:3]
        oh, ow = h // stride, w // stride
        if oh < 1 or ow < 1:
            raise ValueError(f"input {(h, w)} is smaller than the pooling window {window}")
        views = _windows(x, (window, window), (stride, stride), (1, 1), "VALID")
        return functools.reduce(jnp.add, views) / window**2
    return nn.avg_pool(x, (window, window), strides=(stride, stride), padding=pads)


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
