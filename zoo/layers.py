"""The building blocks of every model family: convolutions, batch norm, pooling, the top.

Plain Flax modules and functions. Each hands its computation to :mod:`zoo.backend`, which
picks the formulation for the platform (XLA's own operations on GPU/TPU; matrix products,
shifted multiply-adds and native kernels on CPU) and fuses across layers where it pays;
models see only arrays. The parameter layout is Flax's and Keras', whatever the
formulation, so a checkpoint moves freely between CPU, GPU and TPU:

- :class:`Conv`: ``kernel`` HWIO ``(kh, kw, in / groups, out)`` and ``bias (out,)``, as
  :class:`flax.linen.Conv`;
- :class:`DepthwiseConv`: ``kernel (kh, kw, in, multiplier)`` and ``bias (in * multiplier,)``,
  the layout of Keras ``DepthwiseConv2D``; output channel ``c * multiplier + m`` comes
  from input channel ``c`` (TensorFlow's order);
- :class:`SeparableConv`: submodules ``depthwise`` and ``pointwise`` (Keras
  ``SeparableConv2D``: the bias, if any, belongs to the pointwise part);
- :class:`BatchNorm`: :class:`flax.linen.BatchNorm`'s variables, with an optional ``act``
  applied to its output (timm's ``BatchNormAct2d``).

Batch normalisation is always called with ``use_running_average`` as a *call* argument
(never a module attribute), so the trainer can run frozen parts in inference mode by
intercepting the call, without the models knowing about freezing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from zoo.backend import ops as backend
from zoo.backend.conv import Padding, normalize_padding, pair

# He-normal (fan_out) for convolutions: what torchvision uses for ResNets; it keeps
# ReLU networks trainable from scratch. Imported weights overwrite it anyway.
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class Conv(nn.Module):
    """2-D convolution over NHWC input; parameters laid out as :class:`flax.linen.Conv`.

    ``padding`` is ``'SAME'`` (TensorFlow/Keras semantics: the extra pixel goes at the
    end at stride 2), ``'VALID'``, an int (symmetric, as in PyTorch) or explicit pairs.
    ``feature_group_count`` splits input and output channels into groups (ResNeXt).
    ``impl`` overrides the backend's formulation for this layer (``xla`` or ``matmul``).
    """

    features: int
    kernel_size: int | Sequence[int]
    strides: int | Sequence[int] = 1
    padding: Padding = "SAME"
    use_bias: bool = True
    dilation: int | Sequence[int] = 1
    feature_group_count: int = 1
    dtype: Any = None
    param_dtype: Any = jnp.float32
    kernel_init: Any = conv_init
    bias_init: Any = nn.initializers.zeros
    impl: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kh, kw = pair(self.kernel_size)
        groups = self.feature_group_count
        if x.shape[-1] % groups or self.features % groups:
            raise ValueError(f"{self.name}: {x.shape[-1]} input and {self.features} output "
                             f"channels do not split into {groups} groups")
        kernel = self.param("kernel", self.kernel_init,
                            (kh, kw, x.shape[-1] // groups, self.features), self.param_dtype)
        bias = (self.param("bias", self.bias_init, (self.features,), self.param_dtype)
                if self.use_bias else None)
        dtype = nn.dtypes.canonicalize_dtype(x, kernel, bias, dtype=self.dtype)
        x, kernel = jnp.asarray(x, dtype), jnp.asarray(kernel, dtype)
        y = backend.conv(x, kernel, pair(self.strides), self.padding, pair(self.dilation),
                         groups, self.impl)
        return y if bias is None else backend.add_bias(y, bias)


class DepthwiseConv(nn.Module):
    """Depthwise 2-D convolution (Keras ``DepthwiseConv2D``), kernel ``(kh, kw, in, multiplier)``.

    Padding, strides and dilation as in :class:`Conv`; ``impl`` overrides the formulation.
    """

    kernel_size: int | Sequence[int]
    strides: int | Sequence[int] = 1
    padding: Padding = "SAME"
    depth_multiplier: int = 1
    use_bias: bool = True
    dilation: int | Sequence[int] = 1
    dtype: Any = None
    param_dtype: Any = jnp.float32
    kernel_init: Any = conv_init
    bias_init: Any = nn.initializers.zeros
    impl: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kh, kw = pair(self.kernel_size)
        c, m = x.shape[-1], self.depth_multiplier
        kernel = self.param("kernel", self.kernel_init, (kh, kw, c, m), self.param_dtype)
        bias = (self.param("bias", self.bias_init, (c * m,), self.param_dtype)
                if self.use_bias else None)
        dtype = nn.dtypes.canonicalize_dtype(x, kernel, bias, dtype=self.dtype)
        # x itself (not a converted copy) when it has the dtype: the backend may know it
        x = x if x.dtype == dtype else x.astype(dtype)
        y = backend.depthwise_conv(x, kernel.astype(dtype), pair(self.strides), self.padding,
                                   pair(self.dilation), self.impl)
        return y if bias is None else backend.add_bias(y, bias)


class SeparableConv(nn.Module):
    """Keras ``SeparableConv2D``: a :class:`DepthwiseConv` then a 1x1 :class:`Conv`."""

    features: int
    kernel_size: int | Sequence[int]
    strides: int | Sequence[int] = 1
    padding: Padding = "SAME"
    depth_multiplier: int = 1
    use_bias: bool = True
    dilation: int | Sequence[int] = 1
    dtype: Any = None
    impl: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = DepthwiseConv(self.kernel_size, self.strides, self.padding, self.depth_multiplier,
                          use_bias=False, dilation=self.dilation, dtype=self.dtype,
                          impl=self.impl, name="depthwise")(x)
        return Conv(self.features, 1, use_bias=self.use_bias, dtype=self.dtype, impl=self.impl,
                    name="pointwise")(x)


class BatchNorm(nn.BatchNorm):
    """:class:`flax.linen.BatchNorm` (same variables; the numbers of
    ``use_fast_variance=False``), then ``act`` if given (e.g. ``nn.relu``, ``nn.relu6``).

    Training mode over the last axis has a hand-written gradient
    (:func:`zoo.backend.norm.normalize_batch`: reverse-mode only, as the zoo's other
    custom-gradient layers); inference mode is Flax's own, and the backend may apply it
    (with a ReLU or ReLU6 ``act``) inside the layer that reads the output.
    """

    act: Callable[[jax.Array], jax.Array] | None = None

    @nn.compact
    def __call__(self, x, use_running_average: bool | None = None, *, mask=None):
        use_running_average = nn.merge_param(
            "use_running_average", self.use_running_average, use_running_average)
        last = self.axis in (-1, x.ndim - 1)
        if use_running_average or mask is not None or self.axis_name is not None or not last:
            y = super().__call__(x, use_running_average, mask=mask)
            if use_running_average and mask is None and last:
                return self._remembered(x, self._activate(y))
            return self._activate(y)
        ra_mean, ra_var, scale, bias = self._variables(x.shape[-1])
        y, mean, var = backend.normalize_batch(x, scale, bias, self.epsilon)
        if not self.is_initializing():
            ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
            ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
        args = [x] + ([scale] if self.use_scale else []) + ([bias] if self.use_bias else [])
        return self._activate(y.astype(nn.dtypes.canonicalize_dtype(*args, dtype=self.dtype)))

    def _activate(self, y: jax.Array) -> jax.Array:
        return y if self.act is None else self.act(y)

    def _variables(self, c: int):
        """The running statistics and (or the neutral) scale and bias, as Flax's."""
        ra_mean = self.variable("batch_stats", "mean", lambda s: jnp.zeros(s, jnp.float32), (c,))
        ra_var = self.variable("batch_stats", "var", lambda s: jnp.ones(s, jnp.float32), (c,))
        scale = (self.param("scale", self.scale_init, (c,), self.param_dtype)
                 if self.use_scale else jnp.ones((c,), jnp.float32))
        bias = (self.param("bias", self.bias_init, (c,), self.param_dtype)
                if self.use_bias else jnp.zeros((c,), jnp.float32))
        return ra_mean, ra_var, scale, bias

    def _remembered(self, x: jax.Array, y: jax.Array) -> jax.Array:
        """``y``, with the backend told how it was computed (Flax's inference formula)."""
        c = x.shape[-1]

        def ingredients():  # Flax's inference formula: (x - mean) * mul + bias
            mean, var = (self.get_variable("batch_stats", k) for k in ("mean", "var"))
            scale = self.get_variable("params", "scale") if self.use_scale else jnp.ones((c,))
            bias = self.get_variable("params", "bias") if self.use_bias else jnp.zeros((c,))
            return mean, jax.lax.rsqrt(var + self.epsilon) * scale, bias

        return backend.remember_activation(y, x, ingredients, self.act)


def batch_norm(*, epsilon: float, momentum: float, dtype: Any, name: str, scale: bool = True,
               act: Callable[[jax.Array], jax.Array] | None = None) -> BatchNorm:
    """BatchNorm with explicit epsilon and momentum (Keras meaning of momentum), then ``act``.

    Call it as ``bn(x, use_running_average=not train)``. PyTorch momentum ``m`` is
    Flax/Keras momentum ``1 - m``.
    """
    return BatchNorm(
        epsilon=epsilon, momentum=momentum, dtype=dtype, use_scale=scale, name=name,
        use_fast_variance=False, act=act,
    )


def pad(x: jax.Array, p: int | tuple[tuple[int, int], tuple[int, int]]) -> jax.Array:
    """Zero padding of the spatial axes (Keras ``ZeroPadding2D``)."""
    pads = ((p, p), (p, p)) if isinstance(p, int) else p
    return jnp.pad(x, ((0, 0), *pads, (0, 0)))


def max_pool(x, window: int, stride: int, padding: Padding = "VALID", ceil_mode: bool = False):
    """Max pooling (padding with -inf; 'SAME' as TensorFlow). ``ceil_mode`` follows PyTorch
    (a last, partial window is kept)."""
    pads = normalize_padding(padding)
    if ceil_mode:
        if isinstance(pads, str):
            raise ValueError("ceil_mode needs explicit (int) padding, as in PyTorch")
        pads = tuple(
            (lo, hi + _ceil_extra(size, window, stride, lo, hi))
            for size, (lo, hi) in zip(x.shape[1:3], pads, strict=True)
        )
    return backend.max_pool(x, window, stride, pads)


def _ceil_extra(size: int, k: int, s: int, lo: int, hi: int) -> int:
    """Extra right padding that turns floor-mode pooling into PyTorch's ceil mode."""
    total = size + lo + hi
    out = -(-(total - k) // s) + 1
    if (out - 1) * s >= size + lo:  # PyTorch drops a window that starts in the padding
        out -= 1
    return max(0, (out - 1) * s + k - total)


def avg_pool(x, window: int, stride: int, padding: Padding = "VALID") -> jax.Array:
    """Average pooling as ``flax.linen.avg_pool`` (with 'SAME', padded cells count)."""
    return backend.avg_pool(x, window, stride, padding)


def adaptive_avg_pool(x: jax.Array, out_size: int | tuple[int, int]) -> jax.Array:
    """PyTorch ``AdaptiveAvgPool2d``: bin i covers [floor(i*n/o), ceil((i+1)*n/o))."""
    oh, ow = pair(out_size)
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
        hint = ""
        if x.ndim == 3 and shape[-1] == in_channels:  # one HWC image
            hint = " (one image: add a batch axis, x[None])"
        elif x.ndim == 3:  # a batch of images without a channel axis
            hint = (" (a batch of single-channel images? add a channel axis, x[..., None], and "
                    f"repeat it to {in_channels} channels or build the model with in_channels=1)"
                    if in_channels != 1 else " (add a channel axis: x[..., None])")
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
