"""The transfer zoo's models: ``zoo.create(name)``, ``zoo.list_models()``, ``zoo.spec(name)``."""

from zoo import (  # noqa: F401  (registers the families)
    alexnet,
    mobilenet,
    resnet,
    squeezenet,
    vgg,
    xception,
)
from zoo.registry import ModelSpec, create, list_models, register, spec

__all__ = ["ModelSpec", "create", "list_models", "register", "spec"]
