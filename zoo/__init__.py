"""The transfer zoo's models: ``zoo.create(name)``, ``zoo.list_models()``, ``zoo.spec(name)``."""

# Importing the family modules registers their models.
from zoo import (  # noqa: F401
    alexnet,
    densenet,
    googlenet,
    inception,
    mobilenet,
    resnet,
    squeezenet,
    vgg,
    xception,
)
from zoo.registry import ModelSpec, create, list_models, register, spec

__all__ = ["ModelSpec", "create", "list_models", "register", "spec"]

from zoo import pretrained  # noqa: E402, F401  (zoo.pretrained.load; imports the registry above)
