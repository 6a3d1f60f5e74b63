"""Read Keras HDF5 weight files with h5py alone (no TensorFlow, no Keras).

Two layouts are published and both are read:

- *weights-only* files (``model.save_weights('x.h5')``, every keras-applications
  download): the root has a ``layer_names`` attribute, each layer a group whose
  ``weight_names`` attribute lists its datasets (``conv1_conv/kernel:0``; Keras 1 files
  such as the VGG weights say ``block1_conv1_W_1:0``; Keras 3's legacy writer says
  ``conv1_conv/kernel``).
- *full-model* files (``model.save('x.h5')``): the same under ``model_weights/``. A model
  nested inside another one (a ``Sequential`` around a ``MobileNetV2``) is a single
  top-level group whose weight names carry the inner layer names
  (``Conv1/kernel:0``, ``expanded_conv_depthwise/depthwise_kernel:0``).

Long attributes may be split by Keras into ``layer_names0``, ``layer_names1``, ...
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

import h5py
import numpy as np

Layers = dict[str, dict[str, np.ndarray]]


class WeightFileError(ValueError):
    """A weights file is unreadable, truncated, or not the format it claims to be."""


@dataclasses.dataclass
class KerasH5:
    """The weights of a Keras HDF5 file, grouped as the file groups them.

    Attributes:
      path: the file read.
      groups: ``{top-level layer: {layer: {weight_name: array}}}``. For a plain layer the
        two names are equal; a nested model's group holds all its inner layers.
      keras_version: the ``keras_version`` attribute (``'2.4.0'``), if any.
    """

    path: str
    groups: dict[str, Layers]
    keras_version: str | None = None

    @property
    def nested(self) -> list[str]:
        """Top-level groups that hold a nested model's layers."""
        return [g for g, layers in self.groups.items() if set(layers) != {g}]

    def layers(self, name_map: Mapping[str, str] | None = None) -> tuple[Layers, list[str]]:
        """All layers as ``{layer: {weight: array}}``, and the top-level groups left out.

        In a file with nested models, the one nested model whose layers best match
        ``name_map`` is taken and every other group (the user's own layers around
        the backbone) is left out and listed. Files without nested models give all
        their layers, whatever ``name_map`` is.
        """
        chosen = list(self.groups)
        if self.nested and name_map is not None:
            hits = {g: sum(layer in name_map for layer in self.groups[g]) for g in self.nested}
            best = max(hits, key=hits.get)
            chosen = [best] if hits[best] else chosen
        out: Layers = {}
        for g in chosen:
            for layer, weights in self.groups[g].items():
                if layer in out:
                    raise WeightFileError(
                        f"{self.path}: layer {layer!r} appears in more than one nested model "
                        f"({sorted(self.groups)}); cannot tell which to load"
                    )
                out[layer] = weights
        return out, [g for g in self.groups if g not in chosen]

    def count(self) -> int:
        """Number of scalars in the file's weights."""
        return sum(int(np.prod(a.shape)) for layers in self.groups.values()
                   for weights in layers.values() for a in weights.values())


def is_hdf5(path: str | os.PathLike) -> bool:
    """Whether a file starts with the HDF5 signature."""
    with open(path, "rb") as f:
        return f.read(8) == b"\x89HDF\r\n\x1a\n"


def read_keras_h5(path: str | os.PathLike) -> KerasH5:
    """Read a Keras 1/2/3 legacy HDF5 weights or full-model file into a :class:`KerasH5`."""
    path = os.fspath(path)
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise WeightFileError(
            f"{path}: not a readable HDF5 file ({e}); a partial download or a truncated "
            "copy gives this: delete it and fetch it again"
        ) from None
    try:
        with f:
            root = f["model_weights"] if "model_weights" in f else f
            names = _attr_list(root, "layer_names")
            if not names:
                raise WeightFileError(
                    f"{path}: HDF5 file without a 'layer_names' attribute, so not a Keras "
                    "HDF5 weights or model file (Keras 3 '.weights.h5'/'.keras' files are not "
                    "read here)"
                )
            version = root.attrs.get("keras_version", f.attrs.get("keras_version"))
            groups = {name: _read_group(root[name], name) for name in names}
    except WeightFileError:
        raise
    except (OSError, KeyError, RuntimeError, ValueError) as e:
        raise WeightFileError(
            f"{path}: damaged Keras HDF5 file ({type(e).__name__}: {e}); it may be truncated"
        ) from None
    if isinstance(version, bytes):
        version = version.decode("utf8")
    return KerasH5(path=path, groups={g: v for g, v in groups.items() if v},
                   keras_version=None if version is None else str(version))


def _read_group(group: h5py.Group, name: str) -> Layers:
    """One top-level layer group -> ``{inner layer: {weight_name: array}}``."""
    wnames = _attr_list(group, "weight_names")
    prefixes = [w.split("/")[-2] if "/" in w else name for w in wnames]
    # A plain layer has one prefix, usually its own name (TF1 may have made it
    # 'conv1_1'): it is the group. A nested model has one prefix per inner layer.
    if len(set(prefixes)) <= 1:
        prefixes = [name] * len(wnames)
    layers: Layers = {}
    for wname, layer in zip(wnames, prefixes, strict=True):
        layers.setdefault(layer, {})[wname] = np.asarray(group[wname][()])
    return layers


def _attr_list(group: h5py.Group, name: str) -> list[str]:
    """A string-list attribute, joined from Keras' ``name0``, ``name1``, ... chunks if split."""
    if name in group.attrs:
        chunks = [group.attrs[name]]
    else:
        chunks, i = [], 0
        while f"{name}{i}" in group.attrs:
            chunks.append(group.attrs[f"{name}{i}"])
            i += 1
    return [v.decode("utf8") if isinstance(v, bytes) else str(v)
            for chunk in chunks for v in np.atleast_1d(chunk)]
