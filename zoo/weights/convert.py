"""Turn reference weights (Keras layers, torchvision state dicts) into zoo variables, strictly.

Each family file holds a *name map* from the reference's layer/module names to our
module paths (``resnet.keras_names``, ``resnet.torch_names``, ...). The functions here
do the rest for every family: rename tensors, change layouts (PyTorch OIHW -> HWIO,
``(out, in)`` -> ``(in, out)``, depthwise ``(H, W, C, M)`` <-> ``(H, W, 1, C*M)``), and
check that every variable of the model is filled exactly once with the right shape.
Anything missing, unexpected or mis-shaped raises a :class:`WeightMismatchError` that
lists it: a partial load is never silent.

A name map value is a module path (``'stage1/block1/conv1'``); a key may also name one
weight of a layer (``'block2_sepconv1/pointwise_kernel'``) and map it to a full variable
path (``'stage2/sep1/pointwise/kernel'``) when one reference layer becomes several of
our modules.

Transfer surgery (see :class:`Surgery`) is the only way a tensor may be left out or
replaced, and each rule names the variables it may touch.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from flax import traverse_util

log = logging.getLogger(__name__)

# Keras weight name -> (collection, our variable name)
KERAS_WEIGHTS = {
    "kernel": ("params", "kernel"),
    "depthwise_kernel": ("params", "kernel"),  # Keras 2 DepthwiseConv2D (Keras 3: 'kernel')
    "bias": ("params", "bias"),
    "gamma": ("params", "scale"),
    "beta": ("params", "bias"),
    "moving_mean": ("batch_stats", "mean"),
    "moving_variance": ("batch_stats", "var"),
}
# Keras 1 names, still in the published VGG files: 'block1_conv1_W_1:0'.
KERAS1_ALIASES = {"W": "kernel", "b": "bias", "running_mean": "moving_mean",
                  "running_std": "moving_variance"}  # Keras 1 stored the variance there

# A Keras SeparableConv2D layer (it has a "pointwise_kernel") maps onto a module with
# children "depthwise" and "pointwise" (zoo.layers.SeparableConv); the bias is pointwise.
KERAS_SEPARABLE_WEIGHTS = {
    "depthwise_kernel": ("params", "depthwise/kernel"),
    "pointwise_kernel": ("params", "pointwise/kernel"),
    "bias": ("params", "pointwise/bias"),
}

# A name map may address an auto-named layer as "conv2d#k": the k-th such layer of the
# file in creation order (see resolve_auto_names).
AUTO_NAME = re.compile(r"^(?P<base>[a-z][a-z0-9_]*?)(?:_(?P<n>\d+))?$")

# torch state-dict suffixes that carry no model state of ours.
TORCH_IGNORED = ("num_batches_tracked",)

Flat = dict[tuple[str, ...], np.ndarray]


class WeightMismatchError(ValueError):
    """Reference weights and model variables do not correspond one to one."""


@dataclasses.dataclass(frozen=True)
class Surgery:
    """What a transfer-learning load may do besides a one-to-one copy.

    Attributes:
      drop: module paths the reference model has and this model does not (its
        classifier with ``include_top=False``; ``head`` with ``num_classes=None``).
        File tensors under them are left out.
      fresh: flat ``{('params', 'head', 'kernel'): array}`` initial values of the
        variables to re-initialise (the head, for a different ``num_classes``). The
        file's tensors for them are ignored.
      input_kernels: kernel paths (``'stem/conv/kernel'``) that read the image; a file
        kernel with 3 input channels is adapted to the model's (see
        :func:`adapt_input_kernel`).
    """

    drop: tuple[str, ...] = ()
    fresh: Mapping[tuple[str, ...], Any] = dataclasses.field(default_factory=dict)
    input_kernels: tuple[str, ...] = ()


def keras_weight_name(name: str, layer: str | None = None) -> str:
    """'conv1_conv/kernel:0' (Keras 2), 'kernel' (Keras 3), 'block1_conv1_W_1:0' -> 'kernel'."""
    short = name.rsplit("/", 1)[-1].split(":", 1)[0]
    if short in KERAS_WEIGHTS or short == "pointwise_kernel":
        return short
    if layer and short.startswith(layer + "_"):
        short = short[len(layer) + 1:]
    short = re.sub(r"_\d+$", "", short)
    return KERAS1_ALIASES.get(short, short)


def keras_tensors(
    layers: Mapping[str, Mapping[str, Any]], name_map: Mapping[str, str]
) -> tuple[Flat, list[str]]:
    """Keras ``{layer: {weight: array}}`` -> ``({(collection, *path, var): array}, unexpected)``."""
    auto = [n for n in layers if _AUTO.match(n)]
    if not all(n in name_map for n in auto):  # a map that names them as they are wins
        layers = renumber_keras_auto_names(layers)
    name_map = resolve_auto_names([n for n, w in layers.items() if w], name_map)
    tensors: Flat = {}
    unexpected: list[str] = []
    for layer, weights in layers.items():
        shorts = {keras_weight_name(w, layer) for w in weights}
        table = KERAS_SEPARABLE_WEIGHTS if "pointwise_kernel" in shorts else KERAS_WEIGHTS
        for wname, value in weights.items():
            short = keras_weight_name(wname, layer)
            override = name_map.get(f"{layer}/{short}")
            path = name_map.get(layer)
            if override is not None:
                parts = tuple(override.split("/"))
                collection = "batch_stats" if short.startswith("moving_") else "params"
                key = (collection, *parts)
            elif path is not None and short in table:
                collection, var = table[short]
                key = (collection, *path.split("/"), *var.split("/"))
            else:
                unexpected.append(f"{layer}/{wname.rsplit('/', 1)[-1]}")
                continue
            if key in tensors:
                raise WeightMismatchError(f"Keras weights: two tensors map to {'/'.join(key)}")
            tensors[key] = np.asarray(value)
    return tensors, unexpected


def resolve_auto_names(layer_names, name_map: Mapping[str, str]) -> dict[str, str]:
    """Replace ``"conv2d#k"`` keys by the k-th auto-named ``conv2d`` layer in ``layer_names``."""
    ranked: dict[str, list[tuple[int, str]]] = {}
    for name in layer_names:
        m = AUTO_NAME.match(name)
        if m and name not in name_map:
            ranked.setdefault(m["base"], []).append((int(m["n"] or 0), name))
    out = {}
    for key, path in name_map.items():
        base, sep, k = key.partition("#")
        if not sep:
            out[key] = path
            continue
        candidates = sorted(ranked.get(base, []))
        if 0 < int(k) <= len(candidates):
            out[candidates[int(k) - 1][1]] = path
    return out


# Class-derived names Keras gives unnamed layers ('conv2d', 'conv2d_7', ...).
KERAS_AUTO_NAMES = ("conv2d", "batch_normalization", "dense", "depthwise_conv2d",
                    "separable_conv2d")
_AUTO = re.compile(rf"^({'|'.join(KERAS_AUTO_NAMES)})(?:_(\d+))?$")


def renumber_keras_auto_names(layers: Mapping[str, Any]) -> dict[str, Any]:
    """Rename unnamed Keras layers to ``{prefix}_{k}``, k = 1, 2, ... in creation order.

    Keras numbers unnamed layers with a process-wide counter per class: the published
    Keras 2 files say ``conv2d_1 .. conv2d_94`` for InceptionV3, a fresh Keras 3 session
    ``conv2d, conv2d_1 .. conv2d_93``, and a session that built other models first
    anything higher. The counter only grows, so sorting by it recovers the creation
    order, and the name maps (``inception.keras_names``) use the Keras 2 numbering.
    Explicitly named layers are left alone.
    """
    found: dict[str, list[tuple[int, str]]] = {}
    for name in layers:
        m = _AUTO.match(name)
        if m:
            found.setdefault(m.group(1), []).append((int(m.group(2) or 0), name))
    renamed = {name: f"{prefix}_{k}" for prefix, items in found.items()
               for k, (_, name) in enumerate(sorted(items), 1)}
    return {renamed.get(name, name): value for name, value in layers.items()}


def torch_tensors(
    state_dict: Mapping[str, Any], name_map: Mapping[str, str]
) -> tuple[Flat, list[str]]:
    """A torchvision state dict -> ``({(collection, *path, var): array}, unexpected)``, HWIO."""
    tensors: Flat = {}
    unexpected: list[str] = []
    for key, value in state_dict.items():
        module, _, suffix = key.rpartition(".")
        if suffix in TORCH_IGNORED:
            continue
        path = name_map.get(module)
        if path is None:
            unexpected.append(key)
            continue
        value = np.asarray(value)
        where = ("params", *path.split("/"))
        if suffix == "weight" and value.ndim == 4:
            tensors[(*where, "kernel")] = value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
        elif suffix == "weight" and value.ndim == 2:
            tensors[(*where, "kernel")] = value.T
        elif suffix == "weight" and value.ndim == 1:
            tensors[(*where, "scale")] = value
        elif suffix == "bias":
            tensors[(*where, "bias")] = value
        elif suffix in ("running_mean", "running_var"):
            var = "mean" if suffix == "running_mean" else "var"
            tensors[("batch_stats", *path.split("/"), var)] = value
        else:
            unexpected.append(key)
    return tensors, unexpected


def from_keras(
    layers: Mapping[str, Mapping[str, Any]],
    name_map: Mapping[str, str],
    target: Mapping[str, Any],
    surgery: Surgery | None = None,
) -> dict[str, Any]:
    """Keras weights ``{layer_name: {weight_name: array}}`` -> variables shaped like ``target``.

    ``target`` is the model's variables (or their ``jax.eval_shape``); only their shapes
    are used. Keras kernels are already HWIO / ``(in, out)``. Auto-named layers are
    renumbered first (:func:`renumber_keras_auto_names`).
    """
    tensors, unexpected = keras_tensors(layers, name_map)
    return merge(tensors, target, unexpected, source="Keras", surgery=surgery)


def from_torch(
    state_dict: Mapping[str, Any],
    name_map: Mapping[str, str],
    target: Mapping[str, Any],
    surgery: Surgery | None = None,
) -> dict[str, Any]:
    """A torchvision state dict ``{'layer1.0.conv1.weight': array}`` -> variables."""
    tensors, unexpected = torch_tensors(state_dict, name_map)
    return merge(tensors, target, unexpected, source="torch", surgery=surgery)


def adapt_input_kernel(kernel: np.ndarray, in_channels: int) -> np.ndarray:
    """An HWIO kernel trained on RGB -> one for ``in_channels`` input channels.

    One channel: the sum over the RGB axis, so a grey image gives exactly what the
    reference gives for that grey image repeated in R, G and B. Other counts (timm's
    rule): the RGB filters repeated cyclically and scaled by ``3 / in_channels``.
    """
    if in_channels == 1:
        return kernel.sum(axis=2, keepdims=True)
    reps = -(-in_channels // kernel.shape[2])
    tiled = np.concatenate([kernel] * reps, axis=2)[:, :, :in_channels]
    return tiled * (kernel.shape[2] / in_channels)


def _relayout(value: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Depthwise kernels: Keras ``(H, W, C, M)`` <-> grouped-conv ``(H, W, 1, C*M)``."""
    if (value.ndim == 4 and len(shape) == 4 and value.shape[:2] == shape[:2]
            and value.size == int(np.prod(shape)) and (value.shape[2] == 1) != (shape[2] == 1)):
        return value.reshape(shape)  # output channel c*M + m in both layouts
    return value


def merge(
    tensors: Flat,
    target: Mapping[str, Any],
    unexpected: Sequence[str] = (),
    *,
    source: str,
    surgery: Surgery | None = None,
) -> dict[str, Any]:
    """Renamed tensors -> variables like ``target``; strict except for ``surgery``'s rules."""
    surgery = surgery or Surgery()
    flat_target = traverse_util.flatten_dict(dict(target))
    tensors = dict(tensors)
    unexpected = list(unexpected)
    done: list[str] = []
    dropped = [k for k in tensors if k not in flat_target
               and any(under(k, d) for d in surgery.drop)]
    for k in dropped:
        del tensors[k]
    if dropped:
        done.append(f"dropped {len(dropped)} tensors of {sorted(set(surgery.drop))}")
    fresh = {tuple(k): v for k, v in surgery.fresh.items()}
    for k in fresh:
        tensors.pop(k, None)
    if fresh:
        done.append(f"re-initialised {sorted('/'.join(k) for k in fresh)}")
    tensors.update(fresh)
    for path in surgery.input_kernels:
        k = ("params", *path.split("/"))
        if k in tensors and k in flat_target and fresh.get(k) is None:
            want, have = tuple(flat_target[k].shape), tensors[k].shape
            if len(want) == 4 and want != have and want[:2] + want[3:] == have[:2] + have[3:]:
                tensors[k] = adapt_input_kernel(tensors[k], want[2])
                done.append(f"adapted {path} from {have[2]} to {want[2]} input channels")
    for k, v in tensors.items():
        if k in flat_target:
            tensors[k] = _relayout(v, tuple(flat_target[k].shape))
    missing = sorted("/".join(k) for k in flat_target if k not in tensors)
    unexpected = sorted(unexpected + ["/".join(k) for k in tensors if k not in flat_target])
    mismatched = sorted(
        f"{'/'.join(k)}: {source} {tuple(v.shape)} vs model {tuple(flat_target[k].shape)}"
        for k, v in tensors.items()
        if k in flat_target and tuple(v.shape) != tuple(flat_target[k].shape)
    )
    if missing or unexpected or mismatched:
        raise WeightMismatchError(_report(source, missing, unexpected, mismatched))
    for line in done:
        log.info("%s weights: %s", source, line)
    out = {
        k: np.asarray(tensors[k], dtype=getattr(flat_target[k], "dtype", np.float32))
        for k in flat_target
    }
    return traverse_util.unflatten_dict(out)


def under(key: tuple[str, ...], module: str) -> bool:
    """Whether a flat variable key (collection, *path, var) lies under a module path."""
    parts = tuple(module.split("/"))
    return key[1:1 + len(parts)] == parts


def _report(source, missing, unexpected, mismatched, limit: int = 20) -> str:
    lines = [f"{source} weights do not match the model:"]
    for title, items in (("missing from the file", _by_module(missing)),
                         ("in the file but not in the model", _by_module(unexpected)),
                         ("shape mismatch", sorted(mismatched, key=_natural))):
        if items:
            shown = items[:limit] + ([f"... and {len(items) - limit} more"]
                                     if len(items) > limit else [])
            lines.append(f"  {title} ({len(items)}): " + "; ".join(shown))
    lines.append("  (check the model name and its options: num_classes, include_top, "
                 "alpha, in_channels)")
    return "\n".join(lines)


def _by_module(items: list[str]) -> list[str]:
    """'params/stage3/block7/bn1/scale', ... -> 'stage3/block7/bn1 [scale, bias, mean, var]'."""
    groups: dict[str, list[str]] = {}
    for item in items:
        parts = item.split("/")
        if parts[0] in ("params", "batch_stats") and len(parts) > 2:
            parts = parts[1:]
        groups.setdefault("/".join(parts[:-1]), []).append(parts[-1])
    return [f"{m} [{', '.join(v)}]" if m else ", ".join(v)
            for m, v in sorted(groups.items(), key=lambda mv: _natural(mv[0]))]


def _natural(text: str) -> list:
    """Sort key that puts block7 before block10."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]
