"""Fusions the backend makes behind the layers: the models compute plain arrays.

The backend remembers how some arrays were made, while a function is traced, and the layer
that reads one of them may compute its own output from the ingredients instead:

- **Inference batch norm (and its ReLU / ReLU6) into a depthwise conv or a max pool.**
  ``zoo.layers.BatchNorm`` in inference mode (with its ``act``, if any) returns the array
  ``act((x - mean) * (gamma / sqrt(var + eps)) + beta)`` and has the backend remember an
  :class:`Activation` (x, center, scale, shift, act) for it. A depthwise conv or
  a max pool given that array, on the native CPU kernels (float32), calls the kernel that
  applies the activation to each input value as it reads ``x``: the activated tensor is
  never written to memory (an elementwise pass less per layer: Xception, the MobileNets,
  the ResNet and DenseNet stems' pools; BENCHMARKS.md "Session 9"). The array the batch
  norm returned is then unused and XLA drops it; any other reader gets the array as always.
- **A bias-free 1x1 convolution before a non-overlapping average pool** (DenseNet's
  transitions, written in Keras' order): both are linear, so the pool is taken first and the
  convolution runs on 4x fewer pixels (:func:`pooled_pointwise`).

What is remembered is keyed by the identity of the traced value (a weak reference, so an
entry goes with its array), only for tracers (under ``jit``, ``grad``, ``eval_shape``), and
only where some platform takes the CPU formulations: never under ``use_impl("xla")`` (which
``viz`` traces). The fused computation is the CPU's branch of a ``lax.platform_dependent``
(:func:`zoo.backend.conv.dispatch`), the other platforms' branch their unfused formulation;
both read the ingredients, not the remembered array (a branch that ignored an operand would
hand it a zero gradient that XLA computes with). A value that went through
anything else (arithmetic, a concatenation, a slice) is a new array with nothing
remembered, so an edited model is always right, only perhaps less fused. The numbers are the
unfused layers' (the same operations; equal to float32 rounding).
"""

from __future__ import annotations

import dataclasses
import functools
import weakref
from typing import Any

import jax
import jax.numpy as jnp

from zoo.backend import conv as C
from zoo.backend import native

_MEMORY: dict[int, tuple[weakref.ref, Any]] = {}


def remember(y: jax.Array, how: Any) -> jax.Array:
    """Note that the traced value ``y`` was made as ``how`` says; returns ``y``."""
    if isinstance(y, jax.core.Tracer):
        key = id(y)
        _MEMORY[key] = (weakref.ref(y, lambda _, key=key: _MEMORY.pop(key, None)), how)
    return y


def recall(x: Any) -> Any:
    """What :func:`remember` noted for this very value, or ``None``."""
    entry = _MEMORY.get(id(x))
    return entry[1] if entry is not None and entry[0]() is x else None


@dataclasses.dataclass(frozen=True)
class Activation:
    """``act((x - center) * scale + shift)``: an inference batch norm (``center`` its running
    mean, ``scale`` its ``gamma / sqrt(var + eps)``, ``shift`` its ``beta``) and a ReLU,
    ReLU6 or no activation (``act`` one of :data:`CLIPS` or ``None``)."""

    x: jax.Array
    center: jax.Array
    scale: jax.Array
    shift: jax.Array
    act: Any = None

    @property
    def operands(self) -> tuple[jax.Array, ...]:
        return self.x, self.center, self.scale, self.shift


# the activations a batch norm's ``act`` may name that the native kernels apply: their bounds
INF = float("inf")
CLIPS = {None: (-INF, INF), jax.nn.relu: (0.0, INF), jax.nn.relu6: (0.0, 6.0)}


def fusable(*arrays) -> bool:
    """Whether the backend fuses on these operands: float32, the CPU's depthwise
    formulation (not under ``use_impl("xla")``) and the native kernels available."""
    return (all(a.dtype == jnp.float32 for a in arrays) and C.uses("depthwise", "matmul")
            and native.available())


def remember_activation(y: jax.Array, x: jax.Array, ingredients, act=None) -> jax.Array:
    """Note that ``y`` is ``act((x - center) * scale + shift)`` (an inference batch norm and
    its activation, computed by the caller), ``(center, scale, shift) = ingredients()``
    (called only then), where :func:`fusable` says so; returns ``y``."""
    if (isinstance(y, jax.core.Tracer) and act in CLIPS and y.dtype == x.dtype
            and fusable(x)):
        center, scale, shift = ingredients()
        if fusable(center, scale, shift):
            remember(y, Activation(x, center, scale, shift, act))
    return y


def activate(x, center, scale, shift, act) -> jax.Array:
    """:class:`Activation`'s value, by XLA (the activation's own gradient: 0 at its kinks)."""
    y = (x - center) * scale + shift
    return y if act is None else act(y)


# ---- a remembered activation applied by the native depthwise conv ------------------------


def depthwise(x: jax.Array, kernel: jax.Array, strides, padding, dilation=(1, 1),
              impl: str | None = None) -> jax.Array:
    """:func:`zoo.backend.conv.depthwise_conv` of ``x``; where ``x`` is a remembered
    :class:`Activation` and the native kernel takes it (multiplier 1, float32), the CPU's
    branch applies the activation as the kernel reads the input (other platforms' branch:
    their formulation of ``x``)."""
    a = recall(x)
    if not isinstance(a, Activation) or not C._native_depthwise(a.x, kernel):
        return C.depthwise_conv(x, kernel, strides, padding, dilation, impl)
    kh, kw = kernel.shape[:2]
    strides, dilation = tuple(strides), tuple(dilation)
    pads = C.explicit_pads(x.shape[1:3], (kh, kw), strides, dilation,
                           C.normalize_padding(padding))

    def build(form):
        if form == "matmul":
            return lambda k, *ops: _fused_depthwise((*ops, k), a.act, strides, pads, dilation)
        return lambda k, *ops: C.depthwise_conv(activate(*ops, a.act), k, strides, pads,
                                                dilation, form)

    # the branches read the ingredients, not x: a branch that ignored an operand would
    # hand it a zero gradient to compute with (XLA keeps products with zeros)
    return C.dispatch("depthwise", impl, build, kernel, *a.operands)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4))
def _fused_depthwise(operands, act, strides, pads, dilation) -> jax.Array:
    """A depthwise conv (multiplier 1) of ``activate(x, center, scale, shift, act)``,
    ``operands = (x, center, scale, shift, kernel)``."""
    x, center, scale, shift, kernel = operands
    kh, kw, c, _ = kernel.shape

    def by_native(x, center, scale, shift, k):
        a = native.Act(center, scale, shift, *CLIPS[act])
        return native.depthwise_conv(x, k.reshape(kh, kw, c), strides, dilation, pads, a)

    def by_xla(x, center, scale, shift, k):
        return C._shift_views_forward(activate(x, center, scale, shift, act), k, strides,
                                      pads, dilation)

    return jax.lax.platform_dependent(*operands, cpu=by_native, default=by_xla)


def _fused_depthwise_fwd(operands, act, strides, pads, dilation):
    return _fused_depthwise(operands, act, strides, pads, dilation), operands


def _fused_depthwise_bwd(act, strides, pads, dilation, operands, dy):
    # the activation computed again (one elementwise pass: the one the forward saved), then
    # the depthwise conv's own gradients and the activation's
    x, center, scale, shift, kernel = operands
    a, act_vjp = jax.vjp(lambda *v: activate(*v, act), x, center, scale, shift)
    da = C._shift_input_grad(a, dy, kernel, strides, pads, dilation)
    dk = C._shift_kernel_grad(a, dy, kernel, strides, pads, dilation)
    return (*act_vjp(da.astype(a.dtype)), dk.astype(kernel.dtype)),


_fused_depthwise.defvjp(_fused_depthwise_fwd, _fused_depthwise_bwd)


# ---- a remembered activation applied by the native max pool -------------------------------


def max_pool(x: jax.Array, window, strides, padding, impl: str | None = None) -> jax.Array:
    """:func:`zoo.backend.conv.max_pool`; of a remembered :class:`Activation`, on the native
    kernels, the activation applied as the kernel reads the input."""
    a = recall(x)
    if not isinstance(a, Activation) or not C._native_float32(a.x):
        return C.max_pool(x, window, strides, padding, impl)
    window, strides = C.pair(window), C.pair(strides)
    pads = C.explicit_pads(x.shape[1:3], window, strides, (1, 1), C.normalize_padding(padding))

    def build(form):
        if form == "matmul":
            return lambda *ops: _fused_max_pool(ops, a.act, window, strides, pads)
        return lambda *ops: C.max_pool(activate(*ops, a.act), window, strides, pads, form)

    return C.dispatch("maxpool", impl, build, *a.operands)  # not x: see depthwise


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4))
def _fused_max_pool(operands, act, window, strides, pads) -> jax.Array:
    """Max pooling of ``activate(*operands, act)``."""

    def by_native(x, center, scale, shift):
        a = native.Act(center, scale, shift, *CLIPS[act])
        return native.max_pool(x, window, strides, pads, a)

    def by_xla(x, center, scale, shift):
        return C._separable_max_pool(activate(x, center, scale, shift, act), window,
                                     strides, pads)

    return jax.lax.platform_dependent(*operands, cpu=by_native, default=by_xla)


def _fused_max_pool_fwd(operands, act, window, strides, pads):
    return _fused_max_pool(operands, act, window, strides, pads), operands


def _fused_max_pool_bwd(act, window, strides, pads, operands, dy):
    # the activation computed again, and its pool from it: the gradient goes to the window
    # maxima found by equality with the pool, so both must come from the same values
    # (the kernel's own activation may round differently from XLA's)
    a, act_vjp = jax.vjp(lambda *v: activate(*v, act), *operands)
    y = C._max_pool_forward(a, window, strides, pads)
    (da,) = C._max_pool_bwd(window, strides, pads, (a, y), dy)
    return act_vjp(da),


_fused_max_pool.defvjp(_fused_max_pool_fwd, _fused_max_pool_bwd)


# ---- a 1x1 convolution before an average pool --------------------------------------------


@dataclasses.dataclass(frozen=True)
class Pointwise:
    """``x`` by a 1x1 ``kernel`` (HWIO), stride 1, no padding, no bias: linear per pixel."""

    x: jax.Array
    kernel: jax.Array
    impl: str | None = None  # the convolution's own


def pooled_pointwise(x: jax.Array, window: int, impl: str | None = None) -> jax.Array | None:
    """The ``window``-size, ``window``-stride 'VALID' average pool of ``x``, computed (in
    the CPU's branch) as the pool of the 1x1 convolution's input, then the convolution,
    where ``x`` is a remembered :class:`Pointwise` and some platform pools as ``matmul``;
    ``None`` otherwise. The same numbers to float32 rounding, for a quarter of the
    convolution's work forward and in both its gradients (XLA reorders the forward pass by
    itself, not the strided-add pool's gradient)."""
    p = recall(x)
    if not isinstance(p, Pointwise) or not C.uses("avgpool", "matmul", impl):
        return None

    def build(form):
        if form == "matmul":
            return lambda px, k: C.matmul_conv(C.sum_pool(px, window) / window**2, k,
                                               (1, 1), "VALID")
        return lambda px, k: C.avg_pool(C.conv(px, k, (1, 1), "VALID", impl=p.impl), window,
                                        window, "VALID", form)

    return C.dispatch("avgpool", impl, build, p.x, p.kernel)  # not x: see depthwise
