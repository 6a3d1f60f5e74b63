"""The transfer zoo's models: ``zoo.create(name)``, ``zoo.list_models()``, ``zoo.spec(name)``."""

# First, before anything starts JAX's backend: the XLA compiler options of zoo.backend for
# every jit of the process (zoo/backend/options.py says what is lost when JAX started first).
from zoo.backend import options as _options

_options.apply_to_process()

# Importing the family modules registers their models, in any order: zoo.yolo imports the
# families its yolo_<backbone> variants stand on itself.
from zoo import (  # noqa: E402, F401
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
from zoo.backend.options import compiler_options  # noqa: E402
from zoo.registry import (  # noqa: E402
    FeatureTap,
    ModelSpec,
    create,
    list_models,
    register,
    spec,
    unregister,
)

__all__ = ["FeatureTap", "ModelSpec", "compiler_options", "create", "list_models", "register",
           "spec", "unregister"]

from zoo import pretrained  # noqa: E402, F401  (zoo.pretrained.load; imports the registry above)
