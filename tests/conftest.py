"""Shared test settings: Keras (the parity reference) runs on the JAX backend."""

import os
import shutil

import pytest

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax  # noqa: E402

# Compiled programs persist between runs (keyed by program, JAX version and backend), so a
# second run of the quick loop skips most XLA compilation. ZOO_TEST_JAX_CACHE="" turns it off.
_CACHE = os.environ.get("ZOO_TEST_JAX_CACHE", os.path.join(os.path.dirname(__file__), "..",
                                                           ".pytest_cache", "jax"))
if _CACHE:
    jax.config.update("jax_compilation_cache_dir", os.path.abspath(_CACHE))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

import zoo  # noqa: E402

# The quick loop (``-m "not slow"``, ~3 minutes) runs the compiled per-model tests on a few
# cheap representatives (tests pick theirs with ``quick=``); the slow suite runs them on
# every registered model.
QUICK_MODELS = frozenset({"resnet18", "squeezenet1_1", "mobilenet", "yolov3_tiny"})

# Tests that only trace a model (eval_shape, drawings) run quick on one model per family
# and kind of top; the rest of the zoo is in the slow suite.
TRACED_QUICK = frozenset({"alexnet", "vgg16", "resnet18", "resnet50", "resnet50v2",
                          "squeezenet1_1", "densenet121", "mobilenet", "mobilenetv2",
                          "xception", "inception_v3", "googlenet", "inception_v2",
                          "yolov3_tiny", "yolo_mobilenetv2"})


def traced_params():
    """model_params for tests that only trace a model."""
    return model_params(quick=TRACED_QUICK)


def model_params(names=None, *, quick=QUICK_MODELS):
    """pytest.param per registered model (default: all), those not in ``quick`` marked slow."""
    import pytest

    names = names if names is not None else zoo.list_models()
    return [n if n in quick else pytest.param(n, marks=pytest.mark.slow) for n in names]


def small_size(name: str) -> int:
    """A small valid input side for a model: cheap, but deep enough to exercise every layer."""
    return max(zoo.spec(name).min_size, 32)


@pytest.fixture(params=["on", "off"])
def native_mode(request, monkeypatch):
    """Each case twice: with the native kernels (required) and with XLA's formulations
    (what GPU and TPU run, and the fallback)."""
    from zoo.backend import native

    if request.param == "on" and shutil.which(native.compiler()) is None:
        pytest.skip("no C++ compiler")
    monkeypatch.setenv("ZOO_NATIVE", request.param)
    return request.param
