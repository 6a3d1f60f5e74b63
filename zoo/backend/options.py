"""The XLA compiler options the zoo's models are compiled with, per platform.

On CPU, YNNPACK keeps the convolutions and reductions and XLA's own (Eigen) kernels take the
matrix products: 25-35% faster on Xception's 728-channel products (batch 32: 11552 x 728 x
728 at 296 -> 380 GFLOP/s), whole models equal or faster (BENCHMARKS.md: Xception inference
2.7 -> 1.9 s per batch). Without YNNPACK's reductions XLA:CPU's own were 3-10x slower
(batch-norm statistics), so only its matrix products are left out.

How they reach a ``jax.jit``:

- **Any jit, automatically**, when ``zoo`` is imported before JAX starts its CPU backend
  (before the first computation): :func:`apply_to_process` adds them to ``$XLA_FLAGS``, which
  XLA reads once, when the backend starts. A plain ``jax.jit(model.apply)`` then compiles
  with them, and so does every other jit of the process (a performance option: the same
  operations, other kernels for some of them).
- **Explicitly**: ``jax.jit(f, compiler_options=zoo.compiler_options())``, as the project's
  own steps do; this works whatever the import order.

Imported after JAX has started (e.g. after a first ``jnp`` computation in a notebook) and
without the explicit argument, a jit compiles with XLA's defaults: the same numbers, with
the CPU's matrix products and convolutions by YNNPACK (Xception inference about 1.4x
slower; models without wide 1x1 convolutions little or not at all). ``$ZOO_COMPILER_OPTIONS=none``
(or ``off``) turns both ways off; ``$XLA_FLAGS`` gets them only on the jaxlib releases they
were checked with (:data:`CHECKED_JAXLIBS`). Other platforms have no options (GPU and TPU
compile with XLA's defaults).
"""

from __future__ import annotations

import functools
import os
import warnings

import jax
import jax.numpy as jnp

# XLA compiler options per backend (``jax.default_backend()`` names).
COMPILER_OPTIONS: dict[str, dict[str, str]] = {
    "cpu": {"xla_cpu_experimental_ynn_fusion_type":
            "LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION,LIBRARY_FUSION_TYPE_REDUCE"},
}
COMPILER_OPTION_MODES = ("auto", "none", "off")  # off: the same as none


def compiler_options(backend: str | None = None) -> dict[str, str]:
    """The XLA compiler options to jit a zoo model with on ``backend`` (default: JAX's).

    ``$ZOO_COMPILER_OPTIONS=none`` gives ``{}`` (XLA's defaults); ``auto`` (the default)
    the backend's entry of :data:`COMPILER_OPTIONS`, if this jaxlib accepts it (the
    options are experimental XLA flags: one a jaxlib does not know gives a warning and
    ``{}``, never an error).
    """
    mode = _mode()
    backend = backend or jax.default_backend()
    options = COMPILER_OPTIONS.get(backend, {})
    if mode != "auto" or not options or not _accepted(backend, tuple(sorted(options.items()))):
        return {}
    return dict(options)


@functools.cache
def _accepted(backend: str, options: tuple[tuple[str, str], ...]) -> bool:
    """Whether this jaxlib compiles a function with ``options`` on ``backend``."""
    try:
        x = jax.device_put(jnp.zeros((), jnp.float32), jax.local_devices(backend=backend)[0])
        jax.jit(lambda x: x + 1, compiler_options=dict(options)).lower(x).compile()
    except Exception as e:  # XLA reports an unknown option or value as a runtime error
        warnings.warn(f"this jaxlib does not accept the zoo's {backend} compiler options "
                      f"{dict(options)} ({str(e).splitlines()[0]}); using XLA's defaults",
                      stacklevel=3)
        return False
    return True


def _mode() -> str:
    mode = os.environ.get("ZOO_COMPILER_OPTIONS", "auto")
    if mode not in COMPILER_OPTION_MODES:
        raise ValueError(f"ZOO_COMPILER_OPTIONS={mode!r} is not one of {COMPILER_OPTION_MODES}")
    return mode


def apply_to_process() -> bool:
    """Add the CPU options to ``$XLA_FLAGS`` if JAX has not started a backend yet (and
    neither ``$ZOO_COMPILER_OPTIONS=none`` nor the user's own ``$XLA_FLAGS`` says otherwise);
    whether they were added. Called once when ``zoo`` is imported."""
    flags = os.environ.get("XLA_FLAGS", "")
    if _mode() != "auto" or _backend_started() or not _knows_options():
        return False
    added = [f"--{k}={v}" for k, v in COMPILER_OPTIONS["cpu"].items() if f"--{k}=" not in flags]
    if added:
        # what the user had, for child processes that want it back (scripts.bench's Keras)
        os.environ.setdefault("ZOO_USER_XLA_FLAGS", flags)
        os.environ["XLA_FLAGS"] = " ".join([flags, *added]).strip()
    return bool(added)


# The jaxlib releases these options were checked with (major, minor). An unknown flag in
# $XLA_FLAGS is fatal when the backend starts (where an unknown compiler option is only a
# warning), and these are experimental flags: other jaxlibs get them only through the
# explicit, checked :func:`compiler_options`. Add a release here once the tests pass on it.
CHECKED_JAXLIBS = ((0, 10),)


def _knows_options() -> bool:
    import jaxlib

    try:
        version = tuple(int(p) for p in jaxlib.__version__.split(".")[:2])
    except ValueError:
        return False
    return version in CHECKED_JAXLIBS


def _backend_started() -> bool:
    try:
        from jax._src import xla_bridge
        return xla_bridge.backends_are_initialized()
    except (ImportError, AttributeError):  # a JAX without it: assume started, change nothing
        return True
