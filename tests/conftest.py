"""Shared test settings: Keras (the parity reference) runs on the JAX backend."""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import zoo  # noqa: E402

# Models whose per-model tests take tens of seconds on 2 CPU cores: in the slow suite.
SLOW_MODELS = frozenset({"resnet101", "resnet152", "resnet101v2", "resnet152v2", "vgg19",
                         "densenet169", "densenet201", "inception_resnet_v2",
                         "darknet53", "yolov1", "yolov3", "yolo_resnet18", "yolo_resnet50"})


def model_params(names=None, *, quick=None):
    """pytest.param per registered model, the big ones (or all but ``quick``) marked slow."""
    import pytest

    names = names if names is not None else zoo.list_models()
    slow = SLOW_MODELS if quick is None else set(names) - set(quick)
    return [pytest.param(n, marks=pytest.mark.slow) if n in slow else n for n in names]


def small_size(name: str) -> int:
    """A small valid input side for a model: cheap, but deep enough to exercise every layer."""
    return max(zoo.spec(name).min_size, 32)
