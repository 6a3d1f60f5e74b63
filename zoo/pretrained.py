"""Pretrained weights for zoo models, from the reference's own files: ``zoo.pretrained.load``.

Usage::

    variables = zoo.pretrained.load("resnet50", include_top=False)   # downloads once
    model = zoo.create("resnet50", include_top=False)
    features = model.apply(variables, x)                             # == Keras' features

    zoo.pretrained.load("mobilenetv2", path="model.h5", alpha=0.35, include_top=False)
    zoo.pretrained.load("resnet18", num_classes=2, in_channels=1)    # new head, grey input

``load(name, source=None, path=None, *, resolution=None, rng=0, **model_kwargs)`` builds
``zoo.create(name, **model_kwargs)`` (no parameters) and returns its variables
``{'params': ..., 'batch_stats': ...}`` as numpy arrays, filled from:

- ``path``: a local file, read by its content: a Keras HDF5 weights or full-model file
  (``.h5``, Keras 1/2/3, nested models included; in a full-model file the nested model
  that matches ``name`` is taken and the user's layers around it are left out, with a
  warning), a ``torch.save`` state dict (``.pth``, read without torch and without running
  pickled code), a ``.safetensors`` file, or an orbax checkpoint directory written by
  ``scripts/convert.py`` (our own parameter names).
- no ``path``: the file the reference library downloads for this model (``source`` is
  ``'keras'`` or ``'torchvision'``, default the model's reference; ``resolution`` picks
  among the MobileNet files trained at several sizes; the spec's ``weights`` names it),
  verified and cached; see
  :mod:`zoo.weights.download` for the cache (``$TRANSFER_ZOO_CACHE``) and offline use.

The load is strict: every variable comes from the file, except what these transfer
rules (Keras and timm semantics) say, and any other missing, unexpected or mis-shaped
tensor raises :class:`~zoo.weights.convert.WeightMismatchError` listing all of them.

- ``include_top=False``: the file's classifier (``head``, and e.g. VGG's ``fc1``/``fc2``)
  is left out; so is ``head`` with ``num_classes=None``.
- ``num_classes`` other than the reference's 1000: ``head`` alone is re-initialised
  (from ``rng``), unless the file's head already has that shape (a fine-tuned file).
- ``in_channels`` other than 3: the convolutions that read the image take the RGB
  kernel summed over its input channels when ``in_channels=1`` (a grey image then gives
  exactly what the reference gives for that image repeated in R, G and B: normalise it
  with the mean of the reference's per-channel mean and std), or repeated cyclically and
  scaled by ``3 / in_channels`` otherwise (timm's rule).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax import traverse_util

from zoo.registry import create, spec
from zoo.weights import convert, download
from zoo.weights.keras_h5 import KerasH5, WeightFileError, is_hdf5, read_keras_h5
from zoo.weights.torch_files import is_safetensors, read_pth, read_safetensors

REFERENCE_CLASSES = 1000  # ImageNet: every published file


def load(
    name: str,
    source: str | None = None,
    path: str | os.PathLike | None = None,
    *,
    resolution: int | None = None,
    rng: jax.Array | int = 0,
    **model_kwargs: Any,
) -> dict[str, Any]:
    """Variables of ``zoo.create(name, **model_kwargs)`` filled from reference weights."""
    s = spec(name)
    source = source or s.reference
    model = create(name, **model_kwargs)
    if path is None:
        if s.weights is None or source != s.reference:
            raise download.WeightsUnavailableError(
                f"no published {source} weights known for {name!r} (its spec names "
                f"{'none' if s.weights is None else s.reference + ' ones'}); pass path= to a "
                "local file")
        file = s.weights(include_top=model_kwargs.get("include_top", True),
                         alpha=model_kwargs.get("alpha", 1.0), size=resolution or s.input_size)
        path = download.fetch(file)
    tensors, unexpected, kind = read_tensors(path, model, name)
    target, head = _shapes(model, s.input_size, capture=s.head)
    ref_kwargs = {**model_kwargs, "include_top": True, "num_classes": REFERENCE_CLASSES}
    ref_kwargs.pop("pooling", None)
    if "in_channels" in ref_kwargs:
        ref_kwargs["in_channels"] = 3
    reference, _ = _shapes(create(name, **ref_kwargs), s.input_size)
    surgery = transfer_surgery(target, reference, tensors, head=s.head, head_module=head,
                               rng=rng)
    return convert.merge(tensors, target, unexpected, source=kind, surgery=surgery)


def read_file(path: str | os.PathLike) -> KerasH5 | dict[str, np.ndarray]:
    """Read any supported weights file by its content (not its name)."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no weights file at {p}")
    if p.is_dir():
        return _read_checkpoint(p)
    if is_hdf5(p):
        return read_keras_h5(p)
    if is_safetensors(p):
        return read_safetensors(p)
    return read_pth(p)


def read_tensors(path, model, name: str) -> tuple[convert.Flat, list[str], str]:
    """A weights file -> tensors keyed by our variable paths, unexpected names, and its kind."""
    data = read_file(path)
    s = spec(name)
    if Path(path).is_dir():
        flat = traverse_util.flatten_dict(data)
        return {k: np.asarray(v) for k, v in flat.items()}, [], "checkpoint"
    kind = "Keras" if isinstance(data, KerasH5) else "torch"
    name_map = s.name_map(kind.lower(), model)
    if name_map is None:
        raise WeightFileError(
            f"{path} is a {kind} file, but {name}'s spec has no {kind.lower()}_names: its "
            f"weights come from {s.reference} ({s.reference_name})")
    if isinstance(data, KerasH5):
        layers, left_out = data.layers(name_map)
        if left_out:
            warnings.warn(f"{path}: took the nested model holding {name}; left out the other "
                          f"top-level layers {left_out}", stacklevel=3)
        return (*convert.keras_tensors(layers, name_map), kind)
    return (*convert.torch_tensors(data, name_map), kind)


def transfer_surgery(target, reference, tensors: convert.Flat, *, head: str,
                     head_module: tuple[nn.Module, Any] | None = None,
                     rng: jax.Array | int = 0) -> convert.Surgery:
    """The surgery that turns the reference model's variables into the target's.

    ``target``/``reference``: variable shapes of the model and of the same model with the
    reference's top (1000 classes, 3 input channels); ``head_module``: the head and its
    input, to initialise it alone (initialising the whole model compiles it all).
    """
    flat_t = traverse_util.flatten_dict(target)
    flat_r = traverse_util.flatten_dict(reference)
    drop = sorted({"/".join(k[1:-1]) for k in flat_r if k not in flat_t})
    changed = [k for k in flat_t if k in flat_r and flat_t[k].shape != flat_r[k].shape]
    head_keys = [k for k in flat_t if convert.under(k, head)]
    head_fits = all(k in tensors and tensors[k].shape == flat_t[k].shape for k in head_keys)
    fresh = {}
    if head_keys and not head_fits and any(convert.under(k, head) for k in changed):
        if head_module is None:
            raise convert.WeightMismatchError(f"cannot re-initialise {head!r}: no module at "
                                              "that path was called")
        module, x = head_module
        rng = jax.random.key(rng) if isinstance(rng, int) else rng
        init = traverse_util.flatten_dict(module.init(rng, jnp.zeros(x.shape, x.dtype)))
        fresh = {(k[0], *head.split("/"), *k[1:]): np.asarray(v) for k, v in init.items()}
        if set(fresh) != set(head_keys):
            raise convert.WeightMismatchError(f"re-initialising {head!r} made {sorted(fresh)}, "
                                              f"the model has {sorted(head_keys)}")
    inputs = tuple("/".join(k[1:]) for k in changed
                   if k[-1] == "kernel" and not convert.under(k, head))
    return convert.Surgery(drop=tuple(drop), fresh=fresh, input_kernels=inputs)


def _shapes(model: nn.Module, size: int, capture: str | None = None):
    """Variable shapes of ``model`` (no FLOPs); the module at path ``capture`` and its input."""
    x = jax.ShapeDtypeStruct((1, size, size, getattr(model, "in_channels", 3)), jnp.float32)
    found = []

    def spy(next_fun, args, kwargs, context):
        m = context.module
        if (capture and context.method_name == "__call__" and m.scope is not None
                and "/".join(m.scope.path) == capture):
            found.append((m.clone(parent=None, name=None), jax.ShapeDtypeStruct(
                args[0].shape, args[0].dtype)))
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(spy):
        shapes = jax.eval_shape(model.init, jax.random.key(0), x)
    return shapes, (found[0] if found else None)


def save(name: str, output: str | os.PathLike, *, source: str | None = None,
         path: str | os.PathLike | None = None, overwrite: bool = False,
         **options: Any) -> dict[str, int]:
    """:func:`load` the weights, then write them to ``output`` as an orbax checkpoint of
    ``{'params', 'batch_stats'}`` (what ``scripts.convert`` does); the count of values per
    collection. An existing ``output`` is a :class:`FileExistsError` unless ``overwrite``."""
    out = Path(output).resolve()
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    variables = load(name, source=source, path=path, **options)
    import orbax.checkpoint as ocp

    ckpt = ocp.StandardCheckpointer()
    ckpt.save(out, variables, force=overwrite)
    ckpt.wait_until_finished()
    return {c: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(t))
            for c, t in variables.items()}


def _read_checkpoint(path: Path) -> dict[str, Any]:
    if not (path / "_METADATA").exists():
        raise WeightFileError(f"{path}: a directory, but not an orbax checkpoint written by "
                              "scripts/convert.py (no _METADATA)")
    import orbax.checkpoint as ocp

    return ocp.StandardCheckpointer().restore(path.resolve())
