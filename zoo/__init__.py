"""The transfer zoo's models: ``zoo.create(name)``, ``zoo.list_models()``, ``zoo.spec(name)``."""

from zoo import alexnet, resnet, squeezenet, vgg  # noqa: F401  (registers the families)
from zoo import yolo  # noqa: F401, I001  (last: it registers yolo_<backbone> for the above)
from zoo.registry import ModelSpec, create, list_models, register, spec

__all__ = ["ModelSpec", "create", "list_models", "register", "spec"]
