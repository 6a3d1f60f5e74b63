"""Reference weight files -> zoo variables: readers, name-map conversion, download cache.

- :mod:`zoo.weights.keras_h5`: Keras HDF5 weights and full-model files (h5py only).
- :mod:`zoo.weights.torch_files`: ``torch.save`` state dicts (no torch, no pickled code)
  and ``.safetensors``.
- :mod:`zoo.weights.convert`: the strict, name-mapped merge into variables, with the
  transfer surgery rules.
- :mod:`zoo.weights.download`: official URLs, digests, cache, atomic download.

Most users want :func:`zoo.pretrained.load`.
"""

from zoo.weights.convert import Surgery, WeightMismatchError, from_keras, from_torch
from zoo.weights.download import WeightsUnavailableError
from zoo.weights.keras_h5 import WeightFileError, read_keras_h5
from zoo.weights.torch_files import UnsafePickleError, read_pth, read_safetensors

__all__ = [
    "Surgery", "UnsafePickleError", "WeightFileError", "WeightMismatchError",
    "WeightsUnavailableError", "from_keras", "from_torch", "read_keras_h5", "read_pth",
    "read_safetensors",
]
