"""The transfer zoo's models: ``zoo.create(name)``, ``zoo.list_models()``, ``zoo.spec(name)``."""

# Registers the families; yolo comes last (alphabetically too): it adds yolo_<backbone>
# for the backbones registered before it.
from zoo import alexnet, darknet, resnet, squeezenet, vgg, yolo  # noqa: F401
from zoo.registry import ModelSpec, create, list_models, register, spec

__all__ = ["ModelSpec", "create", "list_models", "register", "spec"]

from zoo import pretrained  # noqa: E402, F401  (zoo.pretrained.load; imports the registry above)
