"""Native CPU kernels, called from XLA as FFI custom calls and built on first use.

The depthwise convolution (multiplier 1), shallow dense convolutions and max pooling,
float32 (``kernels.cc``), the padding handled inside so no padded copy of an activation
is written:

- :func:`depthwise_conv`: the forward pass, and at stride 1 the input gradient (``dy``
  with the flipped kernel); XLA:CPU pads the input in one pass and sums nine shifted
  views in another;
- :func:`depthwise_kernel_grad`: the kernel gradient in one pass over the input and
  ``dy``, all kh*kw taps at once, where XLA:CPU runs one reduction per tap (it has no
  fusion that computes nine sums in one pass): 4-10x faster at Xception's and the
  MobileNets' shapes (BENCHMARKS.md, "Session 7");
- :func:`conv` and :func:`conv_kernel_grad`: a dense convolution (column stride 1 or 2, no
  dilation) and its kernel gradient, with blocks of output columns x output channels
  (input x output channels for the gradient) in registers; for layers with few kernel
  values per output (``zoo.backend.conv.NATIVE_CONV_MAX_DEPTH``: the stems, 3x3 convs on up to
  128 channels) 1.2-3.3x faster than XLA:CPU's convolution forward and 3-7x for the
  kernel gradient (BENCHMARKS.md, "Session 8");
- :func:`max_pool` and :func:`max_pool_grad`: max pooling and its gradient (to each
  window's first maximum in row-major order, as XLA's select-and-scatter) in one pass
  each, where XLA:CPU makes two 1-D passes that write padded views;
- the depthwise forward and the max pool also of an activated input (``act``:
  :class:`Act`, an inference batch norm and a ReLU / ReLU6 applied to each input row as
  it is read, so the activated tensor is never written: :mod:`zoo.backend.fusion`).

``zoo.backend.conv`` and ``zoo.backend.fusion`` call them in the CPU's branch only
(``lax.platform_dependent``: a function lowered for GPU or TPU holds XLA's formulations and
no custom call). ``$ZOO_NATIVE=auto`` builds them only on a host whose default backend is
the CPU. ``jax.export`` for ``cpu`` takes them with :func:`export_checks`.

Building: the first use compiles ``kernels.cc`` with the system C++ compiler (``$CXX``,
else ``c++``, ``g++`` or ``clang++``; ``-O3 -march=native``, about 3 s) against the FFI
headers of the installed jaxlib, into the cache (``$TRANSFER_ZOO_CACHE/native``, see
:func:`zoo.cache.cache_dir`), under a name that changes with the source, the
jaxlib, the compiler and the CPU; later processes load that file. It appears by an
atomic rename, so parallel processes (pytest-xdist) never load a half-written one.

``$ZOO_NATIVE`` chooses: ``auto`` (the default) uses the kernels if they build, else warns
once and keeps XLA's formulations; ``off`` never builds or uses them; ``on`` raises
:class:`NativeBuildError` if they cannot be built (for CI and benchmarks that must measure
them). ``with zoo.backend.native.use_mode("off"):`` sets it for the code in the block. The choice
is read when a function is traced: a function jitted before keeps its compiled choice.
The numbers are the same either way up to float32 summation order.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import warnings
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from zoo.backend.settings import Setting
from zoo.cache import cache_dir

SOURCE = Path(__file__).with_name("kernels.cc")
NATIVE_MODES = ("auto", "off", "on")
CXX_FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-w")
_TARGETS = {"zoo_depthwise_forward": "ZooDepthwiseForward",
            "zoo_depthwise_kernel_grad": "ZooDepthwiseKernelGrad",
            "zoo_max_pool": "ZooMaxPool", "zoo_max_pool_grad": "ZooMaxPoolGrad",
            "zoo_conv": "ZooConv", "zoo_conv_kernel_grad": "ZooConvKernelGrad",
            "zoo_depthwise_forward_act": "ZooDepthwiseForwardAct",
            "zoo_max_pool_act": "ZooMaxPoolAct"}


class NativeBuildError(RuntimeError):
    """The native kernels could not be compiled or loaded."""


_MODE = Setting("ZOO_NATIVE", NATIVE_MODES, "auto")


def mode() -> str:
    """:func:`use_mode`'s mode inside its block, else ``$ZOO_NATIVE``: ``auto`` (default),
    ``off`` or ``on``."""
    return _MODE.get()


def use_mode(value: str):
    """Trace the code in the block with the native kernels ``on``, ``off`` or ``auto``
    (before ``$ZOO_NATIVE``)."""
    return _MODE.use(value)


def _cpu_id() -> str:
    """What ``-march=native`` compiles for: the CPU's model and feature flags."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    keep = [line for line in lines if line.split(":")[0].strip() in (
        "model name", "flags", "Features", "CPU part")]
    return "\n".join(sorted(set(keep))) or platform.processor()


def compiler() -> str:
    """``$CXX``, else the first of ``c++``, ``g++``, ``clang++`` on PATH (else ``c++``)."""
    if os.environ.get("CXX"):
        return os.environ["CXX"]
    return next((c for c in ("c++", "g++", "clang++") if shutil.which(c)), "c++")


def library_path() -> Path:
    """Where the compiled kernels of this source, jaxlib, compiler and CPU live."""
    import jaxlib

    cxx = compiler()
    key = hashlib.sha256("\0".join([
        SOURCE.read_text(), jaxlib.__version__, cxx, " ".join(CXX_FLAGS), platform.machine(),
        _cpu_id()]).encode()).hexdigest()[:16]
    return cache_dir() / "native" / key / "libzoo_native.so"


def build() -> Path:
    """Compile the kernels into the cache (if not there yet) and return the file."""
    lib = library_path()
    if lib.exists():
        return lib
    if not hasattr(jax, "ffi"):
        raise NativeBuildError(f"jax {jax.__version__} has no jax.ffi (needs jax >= 0.4.38)")
    cxx = compiler()
    if shutil.which(cxx) is None:
        raise NativeBuildError(
            f"no C++ compiler {cxx!r} on PATH: install g++ or clang (or set $CXX), or set "
            "ZOO_NATIVE=off to use XLA's formulation")
    lib.parent.mkdir(parents=True, exist_ok=True)
    tmp = lib.with_name(f".{lib.name}.{os.getpid()}.tmp")
    cmd = [cxx, *CXX_FLAGS, "-I", jax.ffi.include_dir(), str(SOURCE), "-o", str(tmp)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as e:
        tmp.unlink(missing_ok=True)
        raise NativeBuildError(f"{' '.join(cmd)} failed: {e}") from e
    if done.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise NativeBuildError(
            f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-2000:]}\n"
            "Set ZOO_NATIVE=off to use XLA's formulation.")
    os.replace(tmp, lib)
    return lib


@functools.cache
def _load() -> str | None:
    """Build, load and register the kernels once per process: None, or why not."""
    try:
        lib = ctypes.CDLL(str(build()))
        for target, symbol in _TARGETS.items():
            jax.ffi.register_ffi_target(
                target, jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu")
    except (NativeBuildError, OSError, AttributeError) as e:
        return f"{type(e).__name__}: {e}"
    return None


def available() -> bool:
    """Whether the kernels are in use (``$ZOO_NATIVE``; built and registered on first call).

    ``auto`` uses them only on a host whose default JAX backend is the CPU: a model traced
    on a GPU or TPU host never builds them (its CPU branch, if it is ever lowered for the
    CPU, keeps XLA's formulations); ``on`` builds them on any host."""
    chosen = mode()
    if chosen == "off" or (chosen == "auto" and jax.default_backend() != "cpu"):
        return False
    error = _load()
    if error is None:
        return True
    if chosen == "on":
        raise NativeBuildError(f"ZOO_NATIVE=on but the native kernels are unavailable: {error}")
    _warn_once(error)
    return False


@functools.cache
def _warn_once(error: str) -> None:
    warnings.warn(f"zoo.backend.native: using XLA's formulations (slower on CPU): {error}",
                  RuntimeWarning, stacklevel=3)


def export_checks() -> list:
    """The ``disabled_checks`` that let :func:`jax.export.export` take the kernels' custom
    calls (lowered for ``cpu``): ``jax.export.export(jax.jit(f), platforms=("cpu",),
    disabled_checks=zoo.backend.native.export_checks())``.

    Without them ``jax.export`` refuses a CPU lowering that uses the kernels (its error
    names a ``zoo_...`` target): they are this package's own, with no compatibility
    guarantee across versions. Such an artifact runs in a process where :func:`available`
    has registered the same kernels (the same zoo version); for a portable CPU artifact,
    trace under ``use_mode("off")`` (XLA's formulations, no custom call). Lowerings for
    GPU and TPU never contain the kernels and need nothing.
    """
    from jax import export

    return [export.DisabledSafetyCheck.custom_call(target) for target in _TARGETS]


def _call(target: str, shape, *args: jax.Array, **attrs: int | float) -> jax.Array:
    if any(a.dtype != jnp.float32 for a in args):
        raise TypeError(f"the native kernels are float32, got {[str(a.dtype) for a in args]}")
    call = jax.ffi.ffi_call(target, jax.ShapeDtypeStruct(shape, jnp.float32),
                            vmap_method="sequential")
    return call(*args, **{k: np.float32(v) if isinstance(v, float) else np.int64(v)
                          for k, v in attrs.items()})


class Act(NamedTuple):
    """A per-channel activation the kernels apply to their input as they read it:
    ``clip((x - center) * scale + shift, lo, hi)`` (``center``, ``scale``, ``shift`` of
    shape ``(C,)``, float32): an inference batch norm and a ReLU (``lo=0``) or ReLU6
    (``hi=6``). Padding belongs to the activated input."""

    center: jax.Array
    scale: jax.Array
    shift: jax.Array
    lo: float = -np.inf
    hi: float = np.inf

    def operands(self) -> tuple[jax.Array, jax.Array, jax.Array]:
        return self.center, self.scale, self.shift


def _out_size(size, pads, kernel, dilation, strides) -> tuple[int, int]:
    return tuple((n + sum(p) - (k - 1) * d - 1) // s + 1 for n, p, k, d, s
                 in zip(size, pads, kernel, dilation, strides, strict=True))


def depthwise_conv(x: jax.Array, kernel: jax.Array, strides, dilation, pads,
                   act: Act | None = None) -> jax.Array:
    """A depthwise conv (multiplier 1) of ``x (N, H, W, C)`` (or of ``act`` applied to it)
    with ``kernel (kh, kw, C)`` and explicit ``pads``: ``(N, OH, OW, C)``; float32, CPU
    only (call :func:`available` first)."""
    (sh, sw), (dh, dw) = strides, dilation
    oh, ow = _out_size(x.shape[1:3], pads, kernel.shape[:2], dilation, strides)
    shape = (x.shape[0], oh, ow, x.shape[3])
    geometry = dict(sh=sh, sw=sw, dh=dh, dw=dw, pt=pads[0][0], pl=pads[1][0])
    if act is None:
        return _call("zoo_depthwise_forward", shape, x, kernel, **geometry)
    return _call("zoo_depthwise_forward_act", shape, x, kernel, *act.operands(), **geometry,
                 lo=float(act.lo), hi=float(act.hi))


def depthwise_kernel_grad(x: jax.Array, dy: jax.Array, kernel_size, strides, dilation,
                          pads) -> jax.Array:
    """``(kh, kw, C)``: per tap, the sum over batch and space of window(x) * dy, for a
    depthwise conv (multiplier 1) of ``x (N, H, W, C)`` with explicit ``pads`` giving
    ``dy (N, OH, OW, C)``; float32, CPU only (call :func:`available` first)."""
    (sh, sw), (dh, dw) = strides, dilation
    return _call("zoo_depthwise_kernel_grad", (*kernel_size, x.shape[-1]), x, dy, sh=sh, sw=sw,
                 dh=dh, dw=dw, pt=pads[0][0], pl=pads[1][0])


def conv(x: jax.Array, kernel: jax.Array, strides, pads) -> jax.Array:
    """A dense convolution (one group, dilation 1, column stride 1 or 2) of
    ``x (N, H, W, C)`` with ``kernel (kh, kw, C, CO)`` (HWIO) and explicit ``pads``:
    ``(N, OH, OW, CO)``; float32, CPU only (call :func:`available` first)."""
    (sh, sw) = strides
    if sw not in (1, 2):
        raise ValueError(f"zoo.backend.native.conv takes a column stride of 1 or 2, got {sw}")
    oh, ow = _out_size(x.shape[1:3], pads, kernel.shape[:2], (1, 1), strides)
    return _call("zoo_conv", (x.shape[0], oh, ow, kernel.shape[3]), x, kernel, sh=sh, sw=sw,
                 pt=pads[0][0], pl=pads[1][0])


def conv_kernel_grad(x: jax.Array, dy: jax.Array, kernel_size, strides, pads) -> jax.Array:
    """``(kh, kw, C, CO)``: the kernel gradient of :func:`conv` (``x (N, H, W, C)``,
    explicit ``pads``, ``dy (N, OH, OW, CO)``), in one pass over ``x`` and ``dy``; float32,
    CPU only (call :func:`available` first)."""
    (sh, sw) = strides
    if sw not in (1, 2):
        raise ValueError("zoo.backend.native.conv_kernel_grad takes a column stride of 1 or 2, "
                         f"got {sw}")
    return _call("zoo_conv_kernel_grad", (*kernel_size, x.shape[3], dy.shape[3]), x, dy,
                 sh=sh, sw=sw, pt=pads[0][0], pl=pads[1][0])


def max_pool(x: jax.Array, window, strides, pads, act: Act | None = None) -> jax.Array:
    """Max pooling of ``x (N, H, W, C)`` (or of ``act`` applied to it) with explicit
    ``pads`` (-inf); float32, CPU only."""
    (kh, kw), (sh, sw) = window, strides
    oh, ow = _out_size(x.shape[1:3], pads, window, (1, 1), strides)
    shape = (x.shape[0], oh, ow, x.shape[3])
    geometry = dict(kh=kh, kw=kw, sh=sh, sw=sw, pt=pads[0][0], pl=pads[1][0])
    if act is None:
        return _call("zoo_max_pool", shape, x, **geometry)
    return _call("zoo_max_pool_act", shape, x, *act.operands(), **geometry, lo=float(act.lo),
                 hi=float(act.hi))


def max_pool_grad(x: jax.Array, y: jax.Array, dy: jax.Array, window, strides,
                  pads) -> jax.Array:
    """d(loss)/dx of ``y = max_pool(x)``: ``dy`` to each window's first maximum in
    row-major order; float32, CPU only."""
    (kh, kw), (sh, sw) = window, strides
    return _call("zoo_max_pool_grad", x.shape, x, y, dy, kh=kh, kw=kw, sh=sh, sw=sw,
                 pt=pads[0][0], pl=pads[1][0])
