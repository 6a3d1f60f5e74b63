"""The transfer zoo's models: ``zoo.create(name)``, ``zoo.list_models()``, ``zoo.spec(name)``."""

# Importing the family modules registers their models; yolo comes last (alphabetically
# too): it adds yolo_<backbone> for the backbones registered before it.
from zoo import (  # noqa: F401
    alexnet,
    darknet,
    densenet,
    googlenet,
    inception,
    mobilenet,
    resnet,
    squeezenet,
    vgg,
    xception,
    yolo,
)
from zoo.backend.conv import compiler_options
from zoo.registry import ModelSpec, create, list_models, register, spec

__all__ = ["ModelSpec", "compiler_options", "create", "list_models", "register", "spec"]

from zoo import pretrained  # noqa: E402, F401  (zoo.pretrained.load; imports the registry above)
