"""Convolutions that run the fastest correct formulation for the backend in use.

Four kinds of window operation, each with a reference formulation (XLA's native
``lax.conv_general_dilated`` / ``lax.reduce_window``) and hand-written ones that compute
the same numbers:

- ``pointwise`` (1x1): ``matmul`` is a strided slice and ``einsum('nhwc,cd->nhwd')``, with
  its own gradient. XLA:CPU runs its 1x1 convolution at about a quarter of its matmul
  speed, and the kernel gradient ``x^T dy`` needs one operand transposed (XLA:CPU's dot
  contracts the minor axis of its left operand): the gradient transposes the narrower of
  the two, where XLA's autodiff may transpose a 4x wider one.
- ``spatial`` (kxk, one group): ``matmul`` gathers the k*k shifted windows along the
  channel axis (im2col) and does one matrix product. ``mixed`` is XLA's convolution
  forward and for the input gradient (one that pads nothing computed padded, then
  cropped: :func:`padded_xla_conv`), and computes the kernel gradient as one matrix
  product over channel-major patches when the layer has few input channels
  (``kh * kw * in <= 576``: the stems, 3x3 convs on 64 channels) or pads nothing, where
  XLA:CPU's kernel-gradient convolution is 1.4-4.6x slower; a strided conv over at most
  32 patch values (the RGB 3x3/2 stems) runs forward as one product over gathered
  patches; a stride-1 conv with at most half as many outputs as inputs takes its
  gradients (and with at most a quarter, its forward pass) from its kh*kw output taps
  (:func:`tap_conv`); a stride-1 3x3 conv with many channels for its size (ResNet's,
  VGG's from 56 px, Inception's) runs forward and input gradient by Winograd's
  F(2x2, 3x3) (:func:`winograd_conv`: 16 matrix products over 2x2 output tiles, 2.25x
  fewer multiplies, within ~1e-6 of the direct sum). With the native CPU kernels
  (float32) a convolution over at most :data:`NATIVE_CONV_MAX_DEPTH` kernel values per
  output (column stride 1 or 2, no dilation) runs forward, kernel gradient and (stride 1)
  input gradient natively (:func:`zoo.backend.native.conv`; the tap paths keep their gradients,
  deeper layers than :data:`NATIVE_CONV_SHALLOW_DEPTH` only if wide enough, and not where
  Winograd applies).
  :func:`mixed_path` names the choice.
- ``depthwise`` (``feature_group_count == in_channels``): ``matmul`` here means k*k
  shifted multiply-adds (at stride 1 the input gradient too: over the padded output
  gradient, with the flipped kernel). XLA:CPU runs grouped convolutions at under 1 GFLOP/s.
  On the CPU, for multiplier 1 in float32, the forward pass, the kernel gradient and the
  stride-1 input gradient are native kernels (:mod:`zoo.backend.native`, one pass each, no padded
  copies; a branch of ``lax.platform_dependent``, so GPU/TPU lowerings keep the above).
- ``maxpool``: ``matmul`` computes the forward pass and the gradient from shifted views,
  a row pass then a column pass (in the gradient the first maximum of each window in
  row-major order gets it, as XLA's select-and-scatter); XLA:CPU's ``reduce_window`` is
  up to 3x slower, and its max-pool gradient (a reduce-window over indices, then a
  scatter) cost a ResNet50 training step 12%. On the CPU (float32) both are native kernels
  (:mod:`zoo.backend.native`), one pass each.
- ``avgpool``: ``matmul`` computes non-overlapping 'VALID' average pools as a sum of
  strided slices, 3x faster than XLA:CPU's ``reduce_window``.

The formulation follows the platform a function is lowered for, from the table
:data:`FORMULATIONS` (:func:`dispatch`: one ``lax.platform_dependent`` per layer whose
formulation differs between platforms, so a function traced on a CPU host and lowered or
exported for cuda, rocm or tpu holds XLA's operations). ``ZOO_CONV_IMPL=xla`` (or ``matmul``)
forces one formulation for every kind, and each layer's ``impl`` argument overrides
both (``auto``, the default, defers to the table); :func:`use_impl` sets the global one
for the code within a ``with`` block (``viz`` traces under ``xla``).
The parameters are the layers' (:mod:`zoo.layers`), whatever the formulation, so
checkpoints move freely between CPU, GPU and TPU.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from zoo.backend import native
from zoo.backend.precision import below_float32
from zoo.backend.settings import Setting

Padding = str | int | Sequence[tuple[int, int]]
Pads = tuple[tuple[int, int], tuple[int, int]]

CONV_IMPLS = ("auto", "xla", "matmul")
KINDS = ("pointwise", "spatial", "depthwise", "maxpool", "avgpool")
# the formulations each kind has (the first is XLA's own)
FORMS: dict[str, tuple[str, ...]] = {
    "pointwise": ("xla", "matmul"), "spatial": ("xla", "matmul", "mixed"),
    "depthwise": ("xla", "matmul"), "maxpool": ("xla", "matmul"), "avgpool": ("xla", "matmul"),
}

# The formulation of each kind per backend, measured (BENCHMARKS.md). Backends not listed
# use XLA's own operations everywhere but for 1x1 convolutions (the same kernel).
FORMULATIONS: dict[str, dict[str, str]] = {
    "cpu": {"pointwise": "matmul", "spatial": "mixed", "depthwise": "matmul",
            "maxpool": "matmul", "avgpool": "matmul"},
    "gpu": {"pointwise": "matmul", "spatial": "xla", "depthwise": "xla", "maxpool": "xla",
            "avgpool": "xla"},
    "tpu": {"pointwise": "matmul", "spatial": "xla", "depthwise": "xla", "maxpool": "xla",
            "avgpool": "xla"},
}
_DEFAULT = {"pointwise": "matmul", "spatial": "xla", "depthwise": "xla", "maxpool": "xla",
            "avgpool": "xla"}


_IMPL = Setting("ZOO_CONV_IMPL", CONV_IMPLS, "auto")


def conv_impl() -> str:
    """The global setting: :func:`use_impl`'s inside one, else ``$ZOO_CONV_IMPL``
    (``auto``, ``xla`` or ``matmul``); ``auto``."""
    return _IMPL.get()


def use_impl(impl: str):
    """Within the block, trace every layer without its own ``impl`` as if
    ``$ZOO_CONV_IMPL`` were ``impl`` (``viz`` traces XLA's formulation: one convolution
    primitive per layer and the model's own FLOPs, whatever the backend)."""
    return _IMPL.use(impl)


def backend_formulations(backend: str) -> dict[str, str]:
    """The formulation of each kind of convolution that ``auto`` picks on ``backend``."""
    return dict(FORMULATIONS.get(backend, _DEFAULT))  # a copy: edit FORMULATIONS itself


def formulation(kind: str, impl: str | None = None) -> str:
    """The formulation (one of ``FORMS[kind]``) of a ``kind`` operation on this host's
    default backend: layer ``impl``, then ``$ZOO_CONV_IMPL``, then the backend's table.
    What a traced function runs follows the platform it is lowered for
    (:func:`platform_formulations`, :func:`dispatch`)."""
    impl = _checked(impl)
    if impl != "auto":
        return impl
    return backend_formulations(jax.default_backend())[kind]


def _checked(impl: str | None) -> str:
    impl = impl or conv_impl()
    if impl not in CONV_IMPLS:
        raise ValueError(f"conv impl={impl!r} is not one of {CONV_IMPLS}")
    return impl


# The platforms a function may be lowered for (``lax.platform_dependent``'s names) and the
# entry of FORMULATIONS each takes; any other platform takes ``_DEFAULT``.
LOWERING_PLATFORMS: dict[str, str] = {"cpu": "cpu", "cuda": "gpu", "rocm": "gpu", "tpu": "tpu"}


def platform_formulations(kind: str, impl: str | None = None) -> dict[str, str]:
    """The formulation of a ``kind`` operation per lowering platform (``default``: any
    platform not in :data:`LOWERING_PLATFORMS`): a layer's ``impl`` or ``$ZOO_CONV_IMPL``
    other than ``auto`` for every platform alike, else the table."""
    impl = _checked(impl)
    if impl != "auto":
        return {"default": impl}
    forms = {p: backend_formulations(b)[kind] for p, b in LOWERING_PLATFORMS.items()}
    return {**forms, "default": _DEFAULT[kind]}


def uses(kind: str, form: str, impl: str | None = None) -> bool:
    """Whether some lowering platform computes a ``kind`` operation as ``form``."""
    return form in platform_formulations(kind, impl).values()


def dispatch(kind: str, impl: str | None, build, *operands):
    """``build(form)(*operands)`` in the formulation of the platform the function is lowered
    for: each distinct formulation traced once, one ``lax.platform_dependent`` when they
    differ (lowered for one platform, the module holds that platform's branch only; XLA
    inlines the one-branch conditional). A CPU-traced function lowered or exported for an
    accelerator so carries XLA's operations, and one traced on a GPU host lowered for the
    CPU the CPU's formulations (without the native kernels unless ``$ZOO_NATIVE=on``:
    :func:`zoo.backend.native.available`)."""
    forms = platform_formulations(kind, impl)
    default = forms.pop("default")
    branches = {f: build(f) for f in dict.fromkeys([default, *forms.values()])}
    if len(branches) == 1:
        return branches[default](*operands)
    per_platform = {p: branches[f] for p, f in forms.items() if f != default}
    return jax.lax.platform_dependent(*operands, default=branches[default], **per_platform)


def pair(v: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    v = tuple(v)
    if len(v) != 2:
        raise ValueError(f"expected an int or a pair, got {v!r}")
    return v  # type: ignore[return-value]


def normalize_padding(padding: Padding) -> str | Pads:
    """'SAME' / 'VALID' (TF/Keras semantics) or explicit ((top, bottom), (left, right))."""
    if isinstance(padding, str):
        p = padding.upper()
        if p not in ("SAME", "VALID"):
            raise ValueError(f"padding must be 'SAME', 'VALID', an int or pairs, got {padding!r}")
        return p
    if isinstance(padding, int):
        return ((padding, padding), (padding, padding))
    pads = tuple(tuple(p) for p in padding)
    if len(pads) != 2 or any(len(p) != 2 for p in pads):
        raise ValueError(f"explicit padding is ((top, bottom), (left, right)), got {padding!r}")
    return pads  # type: ignore[return-value]


def explicit_pads(size: Sequence[int], kernel: Sequence[int], strides: Sequence[int],
                  dilation: Sequence[int], padding: str | Pads) -> Pads:
    """The ((top, bottom), (left, right)) zero padding that ``padding`` stands for.

    'SAME' is TensorFlow's: ``ceil(n / s)`` outputs, the odd pixel padded at the end.
    """
    if not isinstance(padding, str):
        return padding
    if padding == "VALID":
        return ((0, 0), (0, 0))
    pads = []
    for n, k, s, d in zip(size, kernel, strides, dilation, strict=True):
        total = max((-(-n // s) - 1) * s + (k - 1) * d + 1 - n, 0)
        pads.append((total // 2, total - total // 2))
    return tuple(pads)  # type: ignore[return-value]


def _windows(x: jax.Array, kernel, strides, dilation, padding) -> list[jax.Array]:
    """The kh*kw shifted (strided) views of zero-padded ``x`` that a kxk conv combines."""
    (kh, kw), (sh, sw), (dh, dw) = kernel, strides, dilation
    pads = explicit_pads(x.shape[1:3], kernel, strides, dilation, padding)
    if any(pads[0] + pads[1]):
        x = jnp.pad(x, ((0, 0), *pads, (0, 0)))
    oh = (x.shape[1] - (kh - 1) * dh - 1) // sh + 1
    ow = (x.shape[2] - (kw - 1) * dw - 1) // sw + 1
    if oh < 1 or ow < 1:
        raise ValueError(f"input {x.shape[1:3]} (padded) is smaller than the kernel {kernel}")
    return [
        x[:, i * dh : i * dh + (oh - 1) * sh + 1 : sh, j * dw : j * dw + (ow - 1) * sw + 1 : sw]
        for i in range(kh)
        for j in range(kw)
    ]


def xla_conv(x, kernel, strides, padding, dilation=(1, 1), groups: int = 1) -> jax.Array:
    """``lax.conv_general_dilated`` over NHWC / HWIO: the reference formulation."""
    return jax.lax.conv_general_dilated(
        x, kernel, window_strides=strides, padding=padding, rhs_dilation=dilation,
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups)


def matmul_conv(x, kernel, strides, padding, dilation=(1, 1)) -> jax.Array:
    """A convolution as one matrix product: 1x1 directly, kxk over gathered windows."""
    kh, kw, cin, cout = kernel.shape
    if (kh, kw) == (1, 1) and not isinstance(padding, str):
        x = jnp.pad(x, ((0, 0), *padding, (0, 0)))
    if (kh, kw) == (1, 1):  # 'SAME' and 'VALID' pad nothing for a 1x1 kernel
        return pointwise(x, kernel[0, 0], tuple(strides))
    patches = jnp.concatenate(_windows(x, (kh, kw), strides, dilation, padding), axis=-1)
    return jnp.einsum("nhwc,cd->nhwd", patches, kernel.reshape(kh * kw * cin, cout))


def weight_grad(a: jax.Array, b: jax.Array) -> jax.Array:
    """``sum over rows of a^T b`` for ``a (..., C)``, ``b (..., D)``: a kernel gradient.

    The contraction runs over the major axes, so one operand must be transposed (copied)
    for the matrix product; this transposes the narrower one (XLA's choice can be the
    wider: it cost a ResNet50 training step a third of its time on CPU).
    """
    a, b = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
    if a.shape[1] <= b.shape[1]:
        return jnp.matmul(a.T, b)
    return jnp.matmul(b.T, a).T


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def pointwise(x: jax.Array, w: jax.Array, strides: tuple[int, int]) -> jax.Array:
    """A 1x1 convolution (``w (in, out)``) as a strided slice and a matrix product."""
    return jnp.einsum("nhwc,cd->nhwd", x[:, :: strides[0], :: strides[1]], w)


def _pointwise_fwd(x, w, strides):
    return pointwise(x, w, strides), (x, w)


def _pointwise_bwd(strides, res, dy):
    x, w = res
    xs, unslice = jax.vjp(lambda x: x[:, :: strides[0], :: strides[1]], x)
    dx = unslice(jnp.einsum("nhwd,cd->nhwc", dy, w))[0]
    return dx, weight_grad(xs, dy).astype(w.dtype)


pointwise.defvjp(_pointwise_fwd, _pointwise_bwd)

# kh * kw * in_channels up to which the "mixed" formulation computes the kernel gradient
# (of a padded convolution; an unpadded one's always) as a matrix product over patches
# (measured: 1.5-2x faster than XLA:CPU's kernel-gradient
# convolution up to 3x3x64, slower from 3x3x128 on; BENCHMARKS.md), and the largest
# patch matrix it builds at once (elements; 16M = 64 MB in float32): a bigger batch is
# done in chunks of images (a 7x7x3 stem at batch 32: 59M, 4 chunks; Xception's second
# conv: 199M, 16 chunks). One product over a 59M-element patch matrix ran at 18 GFLOP/s
# inside a DenseNet121 step (45 ms alone, 415 ms there); 4 chunks took 58 ms.
PATCH_GRAD_MAX_DEPTH = 576
PATCH_GRAD_MAX_SIZE = 16 * 2**20


def _with_kernel_grad(forward, kernel_grad, name: str, doc: str, input_grad=None):
    """A convolution ``f(x, kernel, strides, padding, dilation=(1, 1))`` computed by
    ``forward``, whose kernel gradient is ``kernel_grad(x, dy, kernel, strides, padding,
    dilation)`` (a custom VJP) and whose input gradient is ``input_grad(x, dy, kernel,
    strides, padding, dilation)`` where that is given and does not return None, else
    autodiff of ``forward``."""

    def conv(x, kernel, strides, padding, dilation=(1, 1)):
        return forward(x, kernel, strides, padding, dilation)

    conv.__name__ = conv.__qualname__ = name
    conv.__doc__ = doc
    conv = jax.custom_vjp(conv, nondiff_argnums=(2, 3, 4))

    def fwd(x, kernel, strides, padding, dilation):
        return forward(x, kernel, strides, padding, dilation), (x, kernel)

    def bwd(strides, padding, dilation, res, dy):
        x, kernel = res
        dx = input_grad and input_grad(x, dy, kernel, strides, padding, dilation)
        if dx is None:
            _, x_vjp = jax.vjp(lambda x: forward(x, kernel, strides, padding, dilation), x)
            dx = x_vjp(dy)[0]
        dk = kernel_grad(x, dy, kernel, strides, padding, dilation)
        return dx.astype(x.dtype), dk.astype(kernel.dtype)

    conv.defvjp(fwd, bwd)
    return conv


def _mixed_kernel_grad(x, dy, kernel, strides, padding, dilation) -> jax.Array:
    """Over patches (:func:`patch_kernel_grad`) for few input channels or a convolution
    that pads nothing, else XLA's.

    XLA:CPU's kernel gradient of an unpadded ('valid') convolution is 1.4-4.6x slower than
    the patch product at any depth (batch 32: 3x3 80 -> 192 at 73 px 1109 -> 239 ms,
    3x3/2 288 -> 384 at 35 px 200 -> 80, 3x3/2 192 -> 192 at 71 px 243 -> 155).
    """
    kh, kw, cin, _ = kernel.shape
    pads = explicit_pads(x.shape[1:3], (kh, kw), strides, dilation, normalize_padding(padding))
    if kh * kw * cin <= PATCH_GRAD_MAX_DEPTH or not any(pads[0] + pads[1]):
        return patch_kernel_grad(x, dy, kernel.shape, strides, padding, dilation)
    _, k_vjp = jax.vjp(lambda k: xla_conv(x, k, strides, padding, dilation), kernel)
    return k_vjp(dy)[0]


def padded_xla_conv(x, kernel, strides, padding, dilation=(1, 1)) -> jax.Array:
    """XLA's convolution; one with no padding at all is computed with ``stride`` padded
    rows below (one more output row), then cropped.

    XLA:CPU runs a convolution that pads nothing 1.2-1.9x slower than the same one padded
    (batch 32, measured: 3x3 32 -> 64 at 149 px 283 -> 157 ms, 3x3 80 -> 192 at 73 px
    263 -> 159, 3x3/2 288 -> 384 at 35 px 136 -> 119): Xception's and Inception's 'valid'
    convolutions.
    """
    pads = explicit_pads(x.shape[1:3], kernel.shape[:2], strides, dilation,
                         normalize_padding(padding))
    if any(pads[0] + pads[1]):
        return xla_conv(x, kernel, strides, pads, dilation)
    return xla_conv(x, kernel, strides, ((0, strides[0]), (0, 0)), dilation)[:, :-1]


_patch_grad_conv = _with_kernel_grad(
    padded_xla_conv, _mixed_kernel_grad, "patch_grad_conv",
    "XLA's convolution (an unpadded one padded, then cropped), with the kernel gradient "
    "over patches for few input channels or no padding.")

# Winograd's minimal filtering F(2x2, 3x3) (Lavin & Gray 2016, "Fast Algorithms for
# Convolutional Neural Networks"): each 2x2 output tile from a 4x4 input tile d as
# A^T [(G g G^T) * (B^T d B)] A, i.e. 16 matrix products over all tiles (in x out channels
# each) instead of 36 multiply-adds per output pixel, 2.25x fewer. The transforms use
# only 0, +-1 and +-1/2, so float32 results stay within ~1e-6 (relative) of the direct
# convolution. A stride-1 3x3 convolution takes it on CPU (``mixed``) when its channels
# are many for its size: ``in * out >= WINOGRAD_MIN_DEPTH * (in + out)`` (the work per
# pixel against the transforms' memory traffic) and at most WINOGRAD_MAX_PIXELS pixels
# per image (measured per layer, batch 32, BENCHMARKS.md: 1.1-2x faster from ResNet's
# 56 px 64 -> 64 to 7 px 512 -> 512, slower at 147 px 32 -> 64 and 224 px 64 -> 64).
# Nor for fewer than WINOGRAD_MIN_TILES tiles in the batch (the rows of each of the 16
# products; at 14 px 256 -> 256: 49 tiles (batch 1) 0.74x, 392 (batch 8) 1.45x; and each
# Winograd layer adds ~0.2 s of compile time, which tiny layers never earn back), nor for
# outputs of 3 to 5 pixels a side (0.7-0.95x at batch 32: the tiles overhang or are few).
WINOGRAD_MIN_DEPTH = 24
WINOGRAD_MAX_PIXELS = 80 * 80
WINOGRAD_MIN_TILES = 256
WINOGRAD_LOSING_SIDES = (3, 4, 5)
_WINOGRAD_G = ((1.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0.0, 0.0, 1.0))


def _winograd_bt(d0, d1, d2, d3) -> list[jax.Array]:
    """B^T d along one axis: 4 inputs (rows 2t .. 2t + 3 of the tiles) -> 4 outputs."""
    return [d0 - d2, d1 + d2, d2 - d1, d1 - d3]


def _winograd_at(m0, m1, m2, m3) -> list[jax.Array]:
    """A^T m along one axis: 4 transformed rows -> the tile's 2 output rows."""
    return [m0 + m1 + m2, m1 - m2 - m3]


def winograd_pads(pads: Pads) -> bool:
    """Whether :func:`winograd_conv` takes these pads (and so its input gradient too)."""
    return all(0 <= p <= 2 for p in pads[0] + pads[1])


def _winograd_grid(size: Sequence[int], pads: Pads) -> tuple[tuple[int, int], tuple[int, int]]:
    """The output size (oh, ow) of a 3x3 stride-1 conv over ``size`` with ``pads``, and its
    2x2 tiles (th, tw); the last row / column of tiles may overhang (cropped)."""
    oh, ow = (n + lo + hi - 2 for n, (lo, hi) in zip(size, pads, strict=True))
    return (oh, ow), (-(-oh // 2), -(-ow // 2))


@functools.partial(jax.jit, static_argnums=2)  # eagerly: one call, not ~100 small ops
def _winograd_forward(x: jax.Array, kernel: jax.Array, pads: Pads) -> jax.Array:
    n, h, w, cin = x.shape
    cout = kernel.shape[-1]
    (top, _), (left, _) = pads
    (oh, ow), (th, tw) = _winograd_grid((h, w), pads)
    if oh < 1 or ow < 1:
        raise ValueError(f"input {(h, w)} (padded {pads}) is smaller than the kernel (3, 3)")
    xp = jnp.pad(x, ((0, 0), (top, 2 * th + 2 - h - top), (left, 2 * tw + 2 - w - left),
                     (0, 0)))
    g = jnp.asarray(_WINOGRAD_G, kernel.dtype)
    u = jnp.einsum("ai,ijcd,bj->abcd", g, kernel, g)  # (4, 4, in, out)
    rows = _winograd_bt(*(xp[:, a : a + 2 * th : 2] for a in range(4)))
    # 16 separate products, not one batched one: XLA:CPU writes 16 arrays in one fused
    # pass but a stacked (16, ...) array 2-3x slower (measured)
    m = [[jnp.einsum("nhwc,cd->nhwd", v, u[a, b]) for b, v in enumerate(
          _winograd_bt(*(r[:, :, b : b + 2 * tw : 2] for b in range(4))))]
         for a, r in enumerate(rows)]
    cols = [_winograd_at(*(m[a][b] for a in range(4))) for b in range(4)]  # [b][i]
    y = jnp.stack([jnp.stack(_winograd_at(*(cols[b][i] for b in range(4))), axis=3)
                   for i in range(2)], axis=2)  # (n, th, 2, tw, 2, out)
    return y.reshape(n, 2 * th, 2 * tw, cout)[:, :oh, :ow]


def winograd_conv(x, kernel, strides, padding, dilation=(1, 1)) -> jax.Array:
    """A stride-1 3x3 convolution by Winograd's F(2x2, 3x3) (``padding`` resolving to pads
    of 0 to 2 per side, :func:`winograd_pads`); its input gradient is again one (the
    flipped kernel over ``dy`` padded by ``2 - pad``), its kernel gradient
    :func:`_mixed_kernel_grad`'s."""
    if tuple(strides) != (1, 1) or tuple(dilation) != (1, 1) or kernel.shape[:2] != (3, 3):
        raise ValueError("winograd_conv is for stride-1, undilated 3x3 convolutions, got "
                         f"kernel {kernel.shape[:2]}, strides {strides}, dilation {dilation}")
    pads = explicit_pads(x.shape[1:3], (3, 3), (1, 1), (1, 1), normalize_padding(padding))
    if not winograd_pads(pads):
        raise ValueError(f"winograd_conv takes pads of 0 to 2 per side, got {pads}")
    return _winograd_conv(x, kernel, strides, pads, dilation)


def _winograd_input_grad(x, dy, kernel, strides, pads, dilation) -> jax.Array:
    flipped = jnp.swapaxes(kernel[::-1, ::-1], 2, 3)  # pads: _winograd_conv's, explicit
    return _winograd_forward(dy, flipped, _transposed_pads((3, 3), pads))


_winograd_conv = _with_kernel_grad(
    lambda x, kernel, strides, pads, dilation: _winograd_forward(x, kernel, pads),
    _mixed_kernel_grad, "winograd_conv",
    "Winograd F(2x2, 3x3) forward and input gradient, the kernel gradient as `mixed`'s.",
    _winograd_input_grad)

# A strided convolution over at most IM2COL_MAX_DEPTH patch values (the 3x3 stride-2 RGB
# stems of MobileNet, Xception, Inception) runs forward as one product over gathered
# patches (batch 32, 3x3/2 3 -> 32: 224 px 29 -> 17 ms, 299 px 'valid' 60 -> 29; at stride
# 1 (3 -> 64, 224 px 45 -> 66) and for AlexNet's 11x11/4 (43 -> 55) XLA's is faster)
IM2COL_MAX_DEPTH = 32
# Any convolution whose output is at most IM2COL_MAX_OUTPUT_SIDE pixels a side (and that
# the native kernels do not take) runs as one product over gathered patches: XLA:CPU's
# convolution is pathologically slow there (the last stages of a ResNet at 64 px; batch
# 64, forward / both gradients, ms: 3x3 512 -> 512 at 2x2 3,414 / 3,481 against 16 / 157;
# 4x4 256 -> 512 stride 2 19 / 343 against 13 / 31; at 1x1 26 / 65 against 14 / 30; at 3x3
# 384 -> 384 33 / 61 against 16 / 62; at 4x4 XLA's forward is the faster: 85 against 115).
# ResNet18 inference at 64 px: 4.9 s -> 0.15-0.19 s (BENCHMARKS.md, session 12).
IM2COL_MAX_OUTPUT_SIDE = 3

_im2col_conv = _with_kernel_grad(
    matmul_conv, _mixed_kernel_grad, "im2col_conv",
    "One product over gathered patches, with the kernel gradient over patches.")

# On the CPU (float32, the native kernels available) a convolution with a column stride of
# 1 or 2, no dilation and at most NATIVE_CONV_SHALLOW_DEPTH kernel values per output
# (kh * kw * in) runs natively (:func:`zoo.backend.native.conv`: output columns x output channels
# in registers, no padded copy; its kernel gradient too, and its input gradient at stride 1
# where the flipped kernel over dy qualifies as well). Up to NATIVE_CONV_MAX_DEPTH values
# only where Winograd does not apply and for outputs at least NATIVE_CONV_MIN_WIDTH and
# 4 * kw columns wide (border columns and the ones left over from the register blocks go
# one at a time: 1x7 128 -> 128 at 17 px 8.3 -> 11.4, 1x3 and 3x1 384 -> 384 at 8 px
# 7.3 -> 9.6 and 7.2 -> 8.4 lost). Measured per layer, batch 32, ms (XLA's or the path it
# replaces -> native): Xception's stem 3x3 32 -> 64 at 147 px 'valid' 209 -> 88, its
# 3x3/2 RGB stem 43 -> 12, ResNet's 7x7/2 RGB stem 71 -> 31 and 3x3 64 -> 64 at 56 px
# (Winograd) 40 -> 20, VGG's 3x3 64 -> 64 at 224 px 481 -> 364, DenseNet's 3x3 128 -> 32
# (tap) 10.3 -> 7.2, 3x3/2 128 -> 128 at 56 px 37 -> 26; deeper ones lose (3x3 256 -> 256
# at 14 px: Winograd 20, native 52: the kernel no longer stays in cache). BENCHMARKS.md,
# "Session 8".
NATIVE_CONV_MAX_DEPTH = 1152
NATIVE_CONV_SHALLOW_DEPTH = 576
NATIVE_CONV_MIN_WIDTH = 16


def _native_conv_fits(kernel: Sequence[int], strides, dilation, dtype, out_width: int) -> bool:
    """Whether the native dense convolution takes a ``kernel`` (kh, kw, in, out) giving
    outputs ``out_width`` columns wide."""
    kh, kw, cin, _ = kernel
    if strides[1] not in (1, 2) or tuple(dilation) != (1, 1) \
            or jnp.dtype(dtype) != jnp.float32:
        return False
    depth = kh * kw * cin
    return depth <= NATIVE_CONV_SHALLOW_DEPTH or (
        depth <= NATIVE_CONV_MAX_DEPTH and out_width >= max(NATIVE_CONV_MIN_WIDTH, 4 * kw))


def _native_conv_forward(x, kernel, strides, pads, dilation=(1, 1)) -> jax.Array:
    """The native dense convolution on the CPU, XLA's elsewhere or without the native
    kernels (explicit ``pads``)."""
    if not _native_float32(x, kernel):
        return padded_xla_conv(x, kernel, strides, pads, dilation)
    return jax.lax.platform_dependent(
        x, kernel, cpu=lambda x, k: native.conv(x, k, strides, pads),
        default=lambda x, k: padded_xla_conv(x, k, strides, pads, dilation))


def _native_conv_input_grad(x, dy, kernel, strides, pads, dilation) -> jax.Array:
    """At stride 1 the flipped, transposed kernel over ``dy`` (natively, if it fits), else
    XLA's input gradient."""
    kh, kw, cin, cout = kernel.shape
    back = _transposed_pads((kh, kw), pads)
    if tuple(strides) == (1, 1) and min(back[0] + back[1]) >= 0 \
            and _native_conv_fits((kh, kw, cout, cin), strides, dilation, dy.dtype,
                                  x.shape[2]):
        flipped = jnp.swapaxes(kernel[::-1, ::-1], 2, 3)
        return _native_conv_forward(dy, flipped, (1, 1), back)
    _, x_vjp = jax.vjp(lambda x: padded_xla_conv(x, kernel, strides, pads, dilation), x)
    return x_vjp(dy)[0]


def _native_conv_kernel_grad(x, dy, kernel, strides, pads, dilation) -> jax.Array:
    """The native kernel gradient on the CPU, `mixed`'s elsewhere."""
    if not _native_float32(x, dy):
        return _mixed_kernel_grad(x, dy, kernel, strides, pads, dilation)
    return jax.lax.platform_dependent(
        x, dy, cpu=lambda x, dy: native.conv_kernel_grad(x, dy, kernel.shape[:2], strides, pads),
        default=lambda x, dy: _mixed_kernel_grad(x, dy, kernel, strides, pads, dilation))


_native_conv = _with_kernel_grad(
    _native_conv_forward, _native_conv_kernel_grad, "native_conv",
    "The native dense convolution forward, kernel gradient and (at stride 1) input "
    "gradient.", _native_conv_input_grad)

# A stride-1 convolution with at most in / TAP_GRAD_RATIO outputs takes its gradients from
# the output taps (:func:`tap_conv`), and with at most in / TAP_FORWARD_RATIO outputs its
# forward pass too (measured per layer, BENCHMARKS.md: DenseNet's 3x3 128 -> 32 gradients
# 2x faster, its forward 10-40%; at ratio 2 the forward can lose)
TAP_GRAD_RATIO = 2
TAP_FORWARD_RATIO = 4


MIXED_PATHS = ("tap", "tap_grad", "tap_native", "native", "winograd", "im2col", "xla")


def mixed_path(shape: Sequence[int], kernel: Sequence[int], strides, padding,
               dilation=(1, 1), dtype: Any = jnp.float32, native_kernels: bool | None = None
               ) -> str:
    """Which of :data:`MIXED_PATHS` the ``mixed`` formulation takes for an input of
    ``shape`` (n, h, w, in) and ``dtype``, a ``kernel`` of shape (kh, kw, in, out),
    ``strides``, ``padding`` (normalised) and ``dilation``.

    ``tap``: :func:`tap_conv` with the tap forward, ``tap_grad``: with XLA's forward,
    ``tap_native``: with the native forward (a stride-1 convolution with few outputs);
    ``native``: the native forward pass and kernel gradient (:data:`NATIVE_CONV_MAX_DEPTH`),
    and input gradient at stride 1; ``winograd``: :func:`winograd_conv` (a stride-1 3x3
    one with many channels for its size, in float32: its transforms round in the input
    dtype, 2^-8 relative in bfloat16); ``im2col``: one product over gathered patches (a
    strided one over ``kh * kw * in <= IM2COL_MAX_DEPTH`` values, and any one whose output
    is at most :data:`IM2COL_MAX_OUTPUT_SIDE` pixels a side); ``xla``: XLA's
    convolution (:func:`padded_xla_conv`). ``native_kernels`` (default: whether
    :mod:`zoo.backend.native` is in use) says whether the native paths may be taken.
    """
    kh, kw, cin, cout = kernel
    size = tuple(shape[1:3])
    unit = tuple(strides) == (1, 1) and tuple(dilation) == (1, 1)
    if native_kernels is None:
        native_kernels = jnp.dtype(dtype) == jnp.float32 and native.available()
    pads = explicit_pads(size, (kh, kw), strides, dilation, padding)
    out_width = (size[1] + sum(pads[1]) - (kw - 1) * dilation[1] - 1) // strides[1] + 1
    out_height = (size[0] + sum(pads[0]) - (kh - 1) * dilation[0] - 1) // strides[0] + 1
    fits = native_kernels and _native_conv_fits(kernel, strides, dilation, dtype, out_width)
    if not fits and max(out_height, out_width) <= IM2COL_MAX_OUTPUT_SIDE and kh * kw > 1:
        return "im2col"
    if unit and cout * TAP_GRAD_RATIO <= cin:
        if fits:
            return "tap_native"
        return "tap" if cout * TAP_FORWARD_RATIO <= cin else "tap_grad"
    if fits and kh * kw * cin <= NATIVE_CONV_SHALLOW_DEPTH:
        return "native"
    if unit and (kh, kw) == (3, 3) and cin * cout >= WINOGRAD_MIN_DEPTH * (cin + cout) \
            and size[0] * size[1] <= WINOGRAD_MAX_PIXELS and jnp.dtype(dtype) == jnp.float32:
        out, (th, tw) = _winograd_grid(size, pads)
        if winograd_pads(pads) and shape[0] * th * tw >= WINOGRAD_MIN_TILES \
                and not set(out) & set(WINOGRAD_LOSING_SIDES):
            return "winograd"
    if fits:
        return "native"
    if tuple(strides) != (1, 1) and kh * kw * cin <= IM2COL_MAX_DEPTH:
        return "im2col"
    return "xla"


def mixed_conv(x, kernel, strides, padding, dilation=(1, 1)) -> jax.Array:
    """The ``mixed`` formulation of a kxk convolution on CPU (the path :func:`mixed_path`
    names); the ``winograd``, ``im2col`` and ``xla`` paths take the kernel gradient over
    patches for few input channels (:func:`_mixed_kernel_grad`), the tap paths their own."""
    path = mixed_path(x.shape, kernel.shape, strides, padding, dilation, x.dtype)
    pads = explicit_pads(x.shape[1:3], kernel.shape[:2], strides, dilation, padding)
    if path in ("tap", "tap_grad", "tap_native"):
        return tap_conv(x, kernel, pads, {"tap": "tap", "tap_grad": "xla"}.get(path, "native"))
    if path == "native":
        return _native_conv(x, kernel, strides, pads, dilation)
    if path == "winograd":
        return _winograd_conv(x, kernel, strides, pads, dilation)
    if path == "im2col":
        return _im2col_conv(x, kernel, strides, padding, dilation)
    return _patch_grad_conv(x, kernel, strides, padding, dilation)


TAP_FORWARDS = ("tap", "xla", "native")


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def tap_conv(x: jax.Array, kernel: jax.Array, pads: Pads, forward: str = "tap") -> jax.Array:
    """A stride-1 convolution (explicit ``pads``) whose gradients come from its kh*kw
    output taps.

    Forward (``forward``): ``tap``, one matrix product to ``kh * kw * out`` channels, then
    kh*kw shifted adds; ``xla``, XLA's convolution; ``native``, :func:`zoo.backend.native.conv` on
    the CPU (XLA's elsewhere). Gradients: the kh*kw shifted views of ``dy`` are gathered
    into ``g (N, H, W, kh * kw * out)`` (an im2col of the output gradient, small when
    ``out`` is), then ``dx = g W'`` and ``dkernel = x^T g``, two matrix products.
    """
    if forward not in TAP_FORWARDS:
        raise ValueError(f"tap_conv forward={forward!r} is not one of {TAP_FORWARDS}")
    if forward == "tap":
        return _tap_forward(x, kernel, pads)
    if forward == "native":
        return _native_conv_forward(x, kernel, (1, 1), pads)
    return padded_xla_conv(x, kernel, (1, 1), pads)


def _tap_forward(x, kernel, pads) -> jax.Array:
    kh, kw, cin, cout = kernel.shape
    w = jnp.transpose(kernel, (2, 0, 1, 3)).reshape(cin, kh * kw * cout)
    z = jnp.einsum("nhwc,cd->nhwd", x, w)  # tap t's products: channels t*cout ... +cout
    views = _windows(z, (kh, kw), (1, 1), (1, 1), pads)
    return functools.reduce(jnp.add, (v[..., t * cout : (t + 1) * cout]
                                      for t, v in enumerate(views)))


def _tap_conv_fwd(x, kernel, pads, forward):
    return tap_conv(x, kernel, pads, forward), (x, kernel)


def _transposed_pads(kernel: Sequence[int], pads: Pads) -> Pads:
    """How to pad ``dy`` of a stride-1 convolution with ``pads`` so that a correlation with
    the flipped kernel gives the input gradient: ``kernel - 1 - pad`` on each side
    (negative where a pad exceeds ``kernel - 1``: crop outputs that see only padding)."""
    return tuple((k - 1 - lo, k - 1 - hi) for k, (lo, hi) in zip(kernel, pads, strict=True))


def _tap_conv_bwd(pads, forward, res, dy):
    x, kernel = res
    kh, kw, cin, cout = kernel.shape
    h, w = x.shape[1:3]
    (top, bottom), (left, right) = _transposed_pads((kh, kw), pads)
    # dy padded to h + kh - 1 rows (negative padding crops)
    dyp = jax.lax.pad(dy, jnp.zeros((), dy.dtype), (
        (0, 0, 0), (top, bottom, 0), (left, right, 0), (0, 0, 0)))
    g = jnp.stack([dyp[:, kh - 1 - i : kh - 1 - i + h, kw - 1 - j : kw - 1 - j + w]
                   for i in range(kh) for j in range(kw)], axis=3)
    g = g.reshape(*g.shape[:3], kh * kw * cout)
    wt = jnp.transpose(kernel.reshape(kh * kw, cin, cout), (0, 2, 1)).reshape(-1, cin)
    dx = jnp.einsum("nhwd,dc->nhwc", g, wt)
    dk = weight_grad(x, g).reshape(cin, kh, kw, cout).transpose(1, 2, 0, 3)
    return dx.astype(x.dtype), dk.astype(kernel.dtype)


tap_conv.defvjp(_tap_conv_fwd, _tap_conv_bwd)


def patch_kernel_grad(x, dy, shape, strides, padding, dilation) -> jax.Array:
    """The gradient of a conv's HWIO kernel as one matrix product ``patches^T dy``.

    The patches are gathered channel-major, ``(kh * kw * in, N * oh * ow)``, from the
    transposed input, so the product needs no transposed copy of anything big.
    """
    kh, kw, cin, cout = shape
    n = x.shape[0]
    size = kh * kw * cin * (dy.size // cout)
    chunks = next(k for k in range(1, n + 1) if n % k == 0 and (size // k <= PATCH_GRAD_MAX_SIZE
                                                                or k == n))

    def grad(x, dy):
        b, h, w, _ = x.shape
        xt = jnp.transpose(x, (3, 0, 1, 2)).reshape(cin * b, h, w, 1)
        views = _windows(xt, (kh, kw), strides, dilation, padding)  # kh*kw (cin*b, oh, ow, 1)
        patches = jnp.stack(views).reshape(kh * kw * cin, -1)
        return jnp.matmul(patches, dy.reshape(-1, cout))

    if chunks == 1:
        return grad(x, dy).reshape(shape)
    split = lambda a: a.reshape(chunks, n // chunks, *a.shape[1:])  # noqa: E731
    return jax.lax.map(lambda a: grad(*a), (split(x), split(dy))).sum(0).reshape(shape)


def xla_max_pool(x, window, strides, pads) -> jax.Array:
    """Max pooling by ``lax.reduce_window`` (padding with -inf), the reference."""
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, *window, 1), (1, *strides, 1),
                                 ((0, 0), *pads, (0, 0)))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def shift_max_pool(x, window, strides, pads) -> jax.Array:
    """Max pooling from shifted views of the input, forward and gradient: a row pass then a
    column pass (XLA:CPU's ``reduce_window`` is 1.2-3.3x slower, batch 32, 3x3/2: 147 px
    128 channels 196 -> 59 ms, 112 px 64 channels 32 -> 17). On the CPU (float32) the
    native kernels instead (:func:`zoo.backend.native.max_pool`, one pass each way)."""
    return _max_pool_forward(x, window, strides, pads)


def _max_pool_forward(x, window, strides, pads) -> jax.Array:
    if not _native_float32(x):
        return _separable_max_pool(x, window, strides, pads)
    return jax.lax.platform_dependent(
        x, cpu=lambda x: native.max_pool(x, window, strides, pads),
        default=lambda x: _separable_max_pool(x, window, strides, pads))


def _separable_max_pool(x, window, strides, pads) -> jax.Array:
    oh, ow = (-(-(n + sum(p) - k + 1) // s) for n, p, k, s
              in zip(x.shape[1:3], pads, window, strides, strict=True))
    rows = _max_1d(x, ow, window[1], strides[1], pads[1], axis=2)  # (n, h, ow, c)
    return _max_1d(rows, oh, window[0], strides[0], pads[0], axis=1)


def _max_pool_fwd(x, window, strides, pads):
    y = _max_pool_forward(x, window, strides, pads)
    return y, (x, y)


def _max_pool_bwd(window, strides, pads, res, dy):
    """The window's first maximum in row-major order takes the gradient, found separably:
    the first row whose maximum is the window's, then the first column of that row.

    Two 1-D passes read ``dy`` about 4 times per input pixel where one 2-D pass over the
    kh*kw views read it 9 times; XLA:CPU fuses whatever computes ``dy`` into those reads
    (DenseNet121: the sum of 7 BN gradients, one 2-D pass took 0.5 s of a training step).
    """
    x, y = res
    if _native_float32(x, y, dy):
        return (jax.lax.platform_dependent(
            x, y, dy, cpu=lambda x, y, dy: native.max_pool_grad(x, y, dy, window, strides, pads),
            default=lambda x, y, dy: _separable_max_pool_grad(x, y, dy, window, strides, pads)),)
    return (_separable_max_pool_grad(x, y, dy, window, strides, pads),)


def _separable_max_pool_grad(x, y, dy, window, strides, pads) -> jax.Array:
    rows = _max_1d(x, y.shape[2], window[1], strides[1], pads[1], axis=2)  # (n, h, ow, c)
    d_rows = _first_max_grad_1d(rows, y, dy, window[0], strides[0], pads[0], axis=1)
    return _first_max_grad_1d(x, rows, d_rows, window[1], strides[1], pads[1], axis=2)


def _views_1d(x, n: int, k: int, s: int, pad: tuple[int, int], axis: int) -> list[jax.Array]:
    """The k shifted views (stride ``s``, ``n`` outputs) of ``x`` padded with -inf."""
    if any(pad):
        x = jnp.pad(x, [pad if a == axis else (0, 0) for a in range(x.ndim)],
                    constant_values=-jnp.inf)
    return [jax.lax.slice_in_dim(x, t, t + (n - 1) * s + 1, s, axis) for t in range(k)]


def _max_1d(x, n, k, s, pad, axis) -> jax.Array:
    return functools.reduce(jnp.maximum, _views_1d(x, n, k, s, pad, axis))


def _first_max_grad_1d(x, y, dy, k, s, pad, axis) -> jax.Array:
    """Gradient of a 1-D max pool ``y`` of ``x`` along ``axis``: to each window's first max."""
    views, unwindow = jax.vjp(lambda x: _views_1d(x, y.shape[axis], k, s, pad, axis), x)
    taken = jnp.zeros(y.shape, bool)
    cts = []
    for v in views:
        first = (v == y) & ~taken
        taken = taken | first
        cts.append(jnp.where(first, dy, jnp.zeros_like(dy)))
    return unwindow(cts)[0]


shift_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


def max_pool(x: jax.Array, window: int | Sequence[int], strides: int | Sequence[int],
             padding: Padding = "VALID", impl: str | None = None) -> jax.Array:
    """Max pooling (padding with -inf, 'SAME' as TensorFlow) in the backend's formulation."""
    window, strides = pair(window), pair(strides)
    pads = explicit_pads(x.shape[1:3], window, strides, (1, 1), normalize_padding(padding))

    def build(form):
        if form == "matmul":
            return lambda x: shift_max_pool(x, window, strides, pads)
        return lambda x: xla_max_pool(x, window, strides, pads)

    return dispatch("maxpool", impl, build, x)


def _shift_forward(x, kernel, strides, padding, dilation) -> jax.Array:
    """A depthwise conv: on the CPU (multiplier 1, float32) the native kernel
    (:func:`zoo.backend.native.depthwise_conv`, no padded copy of ``x``), else kh*kw shifted
    multiply-adds (:func:`_shift_views_forward`)."""
    kh, kw, c, m = kernel.shape
    if not _native_depthwise(x, kernel):
        return _shift_views_forward(x, kernel, strides, padding, dilation)
    pads = explicit_pads(x.shape[1:3], (kh, kw), strides, dilation, padding)
    return jax.lax.platform_dependent(
        x, kernel,
        cpu=lambda x, k: native.depthwise_conv(x, k.reshape(kh, kw, c), strides, dilation, pads),
        default=lambda x, k: _shift_views_forward(x, k, strides, padding, dilation))


def _native_depthwise(x, kernel) -> bool:
    """Whether a depthwise conv of ``x`` by ``kernel`` may take the native CPU kernels."""
    return kernel.shape[3] == 1 and _native_float32(x, kernel)


def _native_float32(*arrays) -> bool:
    """Whether the native CPU kernels (float32 only) may take these operands."""
    return all(a.dtype == jnp.float32 for a in arrays) and native.available()


def _shift_views_forward(x, kernel, strides, padding, dilation) -> jax.Array:
    """A depthwise conv as kh*kw shifted multiply-adds (XLA fuses them into one loop),
    summed in float32 below it (bfloat16: as XLA's convolution, one rounding per output)."""
    kh, kw, c, m = kernel.shape
    out = x.dtype
    if below_float32(out):
        x, kernel = x.astype(jnp.float32), kernel.astype(jnp.float32)
    views = _windows(x, (kh, kw), strides, dilation, padding)
    if m == 1:
        w = kernel.reshape(kh * kw, c)
        return functools.reduce(jnp.add, (v * w[t] for t, v in enumerate(views))).astype(out)
    w = kernel.reshape(kh * kw, c, m)
    y = functools.reduce(jnp.add, (v[..., None] * w[t] for t, v in enumerate(views)))
    return y.reshape(*y.shape[:3], c * m).astype(out)


def _shift_kernel_grad(x, dy, kernel, strides, padding, dilation) -> jax.Array:
    """d(loss)/d(kernel): per tap, the sum over batch and space of window * dy.

    On the CPU (multiplier 1, float32) the native kernel
    :func:`zoo.backend.native.depthwise_kernel_grad`:
    one pass for all taps, 4-10x faster than XLA's reductions. Otherwise, and on other
    backends, one image at a time (``lax.map``), all kh*kw taps of it in one pass: an
    image's windows stay in cache, where all images at once would make XLA:CPU materialise
    kh*kw activation-sized slices (measured 1.0-2x faster than one tap at a time).
    """
    kh, kw, c, m = kernel.shape
    pads = explicit_pads(x.shape[1:3], (kh, kw), strides, dilation, padding)

    def image(args):
        xi, dyi = args
        views = _windows(xi[None], (kh, kw), strides, dilation, ((0, 0), (0, 0)))
        if m > 1:  # channels stay the minor axis: a size-m minor axis reduces slowly
            views = [jnp.repeat(v, m, axis=-1) for v in views]
        return jnp.stack([jnp.sum(v[0] * dyi, axis=(0, 1), dtype=jnp.float32) for v in views])

    def by_xla(x, dy):
        xp = jnp.pad(x, ((0, 0), *pads, (0, 0)))
        grad = jax.lax.map(image, (xp, dy)).sum(0)
        return grad.reshape(kernel.shape).astype(kernel.dtype)

    def by_native(x, dy):
        grad = native.depthwise_kernel_grad(x, dy, (kh, kw), strides, dilation, pads)
        return grad.reshape(kernel.shape).astype(kernel.dtype)

    if _native_depthwise(x, kernel) and _native_float32(dy):
        return jax.lax.platform_dependent(x, dy, cpu=by_native, default=by_xla)
    return by_xla(x, dy)


def _shift_input_grad(x, dy, kernel, strides, padding, dilation) -> jax.Array:
    """d(loss)/dx of a depthwise conv. At stride 1 (multiplier 1): ``dy`` correlated with
    the flipped kernel over ``dy`` padded by the transposed pads (:func:`_shift_forward`:
    natively on the CPU); otherwise autodiff of the shifted multiply-adds (the native
    forward pass has no derivative of its own).

    Autodiff pads each of the kh*kw products of ``dy`` to the input's size and adds them;
    XLA:CPU fuses whatever computes ``dy`` (a batch norm's gradient) into each of them.
    """
    kh, kw, _, m = kernel.shape
    if m == 1 and tuple(strides) == (1, 1) and tuple(dilation) == (1, 1):
        pads = explicit_pads(x.shape[1:3], (kh, kw), strides, dilation, padding)
        back = _transposed_pads((kh, kw), pads)
        if min(back[0] + back[1]) >= 0:
            return _shift_forward(dy, kernel[::-1, ::-1], (1, 1), back, (1, 1))
    _, x_vjp = jax.vjp(lambda x: _shift_views_forward(x, kernel, strides, padding, dilation), x)
    return x_vjp(dy)[0]


shift_depthwise = _with_kernel_grad(
    _shift_forward, _shift_kernel_grad, "shift_depthwise",
    "A depthwise convolution as kh*kw shifted multiply-adds (kernel ``(kh, kw, C, M)``).",
    _shift_input_grad)


def sum_pool(x: jax.Array, window: int) -> jax.Array:
    """The sums over non-overlapping ``window`` x ``window`` cells ('VALID'), as strided adds."""
    h, w = x.shape[1:3]
    if h < window or w < window:
        raise ValueError(f"input {(h, w)} is smaller than the pooling window {window}")
    views = _windows(x, (window, window), (window, window), (1, 1), "VALID")
    return functools.reduce(jnp.add, views)


def avg_pool(x: jax.Array, window: int, stride: int, padding: Padding = "VALID",
             impl: str | None = None) -> jax.Array:
    """Average pooling, padded cells counted (``flax.linen.avg_pool``'s default).

    ``matmul`` (the CPU): non-overlapping 'VALID' windows as a sum of strided slices, 3x
    faster than XLA:CPU's ``reduce_window`` or a reshape and mean (BENCHMARKS.md)."""
    pads = normalize_padding(padding)
    if window != stride or pads != "VALID":
        return xla_avg_pool(x, window, stride, pads)

    def build(form):
        if form == "matmul":
            return lambda x: sum_pool(x, window) / window**2
        return lambda x: xla_avg_pool(x, window, stride, pads)

    return dispatch("avgpool", impl, build, x)


def xla_avg_pool(x: jax.Array, window: int, stride: int, pads: str | Pads) -> jax.Array:
    """Average pooling by ``lax.reduce_window`` (padded cells counted), the reference."""
    if not isinstance(pads, str):
        pads = ((0, 0), *pads, (0, 0))
    total = jax.lax.reduce_window(x, np.zeros((), x.dtype), jax.lax.add, (1, window, window, 1),
                                  (1, stride, stride, 1), pads)
    return total / window**2


def conv(x: jax.Array, kernel: jax.Array, strides=(1, 1), padding: Padding = "SAME",
         dilation=(1, 1), groups: int = 1, impl: str | None = None) -> jax.Array:
    """A convolution of NHWC ``x`` by an HWIO ``kernel`` (``I = in / groups``) in the backend's
    formulation: ``pointwise`` for 1x1 kernels, ``spatial`` for the others; grouped
    convolutions (``1 < groups``) are XLA's."""
    strides, dilation = pair(strides), pair(dilation)
    padding = normalize_padding(padding)
    if groups != 1:
        return xla_conv(x, kernel, strides, padding, dilation, groups)
    kind = "pointwise" if kernel.shape[:2] == (1, 1) else "spatial"
    forms = {"matmul": matmul_conv, "mixed": mixed_conv, "xla": xla_conv}
    return dispatch(kind, impl, lambda form: lambda x, k: forms[form](
        x, k, strides, padding, dilation), x, kernel)


def depthwise_conv(x: jax.Array, kernel: jax.Array, strides=(1, 1), padding: Padding = "SAME",
                   dilation=(1, 1), impl: str | None = None) -> jax.Array:
    """A depthwise convolution, ``kernel (kh, kw, C, multiplier)``; output channel
    ``c * multiplier + m`` comes from input channel ``c`` (TensorFlow's order)."""
    strides, dilation = pair(strides), pair(dilation)
    padding = normalize_padding(padding)

    def build(form):
        if form == "matmul":
            return lambda x, k: shift_depthwise(x, k, strides, padding, dilation)
        return lambda x, k: xla_depthwise(x, k, strides, padding, dilation)

    return dispatch("depthwise", impl, build, x, kernel)


def xla_depthwise(x, kernel, strides, padding, dilation=(1, 1)) -> jax.Array:
    """A depthwise convolution as XLA's grouped convolution, the reference."""
    kh, kw, c, m = kernel.shape  # HWIO with I = 1
    return xla_conv(x, kernel.reshape(kh, kw, 1, c * m), strides, padding, dilation, c)
