"""Turn reference weights (Keras layers, torchvision state dicts) into zoo variables, strictly.

Each family file holds a *name map* from the reference's layer/module names to our
module paths (``resnet.keras_names``, ``resnet.torch_names``, ...). The functions here
do the rest for every family: rename tensors, change layouts (PyTorch OIHW -> HWIO,
``(out, in)`` -> ``(in, out)``), and check that every variable of the model is filled
exactly once with the right shape. Anything missing, unexpected or mis-shaped raises a
:class:`WeightMismatchError` that lists it: a partial load is never silent.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np
from flax import traverse_util

# Keras weight name -> (collection, our variable name)
KERAS_WEIGHTS = {
    "kernel": ("params", "kernel"),
    # DepthwiseConv2D in Keras 2 files; Keras 3 calls it "kernel". Same layout as ours:
    # (kh, kw, in, multiplier).
    "depthwise_kernel": ("params", "kernel"),
    "bias": ("params", "bias"),
    "gamma": ("params", "scale"),
    "beta": ("params", "bias"),
    "moving_mean": ("batch_stats", "mean"),
    "moving_variance": ("batch_stats", "var"),
}

# A Keras SeparableConv2D layer (it has a "pointwise_kernel") maps onto a module with
# children "depthwise" and "pointwise" (zoo.layers.SeparableConv); the bias is pointwise.
KERAS_SEPARABLE_WEIGHTS = {
    "depthwise_kernel": ("params", "depthwise/kernel"),
    "pointwise_kernel": ("params", "pointwise/kernel"),
    "bias": ("params", "pointwise/bias"),
}

# Keras names layers built without a name after their class: "conv2d", "conv2d_1", ...
# (a session-wide counter; Keras 2 files start at "_1"). A name map addresses them as
# "conv2d#k": the k-th such layer of the file, ordered by that counter.
AUTO_NAME = re.compile(r"^(?P<base>[a-z][a-z0-9_]*?)(?:_(?P<n>\d+))?$")

# torch state-dict suffixes that carry no model state of ours.
TORCH_IGNORED = ("num_batches_tracked",)


class WeightMismatchError(ValueError):
    """Reference weights and model variables do not correspond one to one."""


def keras_weight_name(name: str) -> str:
    """'conv1_conv/kernel:0' (Keras 2) or 'kernel' (Keras 3) -> 'kernel'."""
    return name.rsplit("/", 1)[-1].split(":", 1)[0]


def from_keras(
    layers: Mapping[str, Mapping[str, Any]],
    name_map: Mapping[str, str],
    target: Mapping[str, Any],
) -> dict[str, Any]:
    """Keras weights ``{layer_name: {weight_name: array}}`` -> variables shaped like ``target``.

    ``target`` is the model's variables (or their ``jax.eval_shape``); only their shapes
    are used. Keras kernels are already HWIO / ``(in, out)``.
    """
    tensors: dict[tuple[str, ...], np.ndarray] = {}
    unexpected: list[str] = []
    name_map = resolve_auto_names([n for n, w in layers.items() if w], name_map)
    for layer, weights in layers.items():
        if not weights:
            continue
        path = name_map.get(layer)
        if path is None:
            unexpected.extend(f"{layer}/{w}" for w in weights)
            continue
        shorts = {keras_weight_name(w) for w in weights}
        table = KERAS_SEPARABLE_WEIGHTS if "pointwise_kernel" in shorts else KERAS_WEIGHTS
        for wname, value in weights.items():
            short = keras_weight_name(wname)
            if short not in table:
                unexpected.append(f"{layer}/{wname}")
                continue
            collection, var = table[short]
            tensors[(collection, *path.split("/"), *var.split("/"))] = np.asarray(value)
    return _merge(tensors, target, unexpected, source="Keras")


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


def from_torch(
    state_dict: Mapping[str, Any],
    name_map: Mapping[str, str],
    target: Mapping[str, Any],
) -> dict[str, Any]:
    """A torchvision state dict ``{'layer1.0.conv1.weight': array}`` -> variables."""
    tensors: dict[tuple[str, ...], np.ndarray] = {}
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
    return _merge(tensors, target, unexpected, source="torch")


def _merge(tensors, target, unexpected, *, source: str) -> dict[str, Any]:
    flat_target = traverse_util.flatten_dict(dict(target))
    missing = sorted("/".join(k) for k in flat_target if k not in tensors)
    unexpected = sorted(unexpected + ["/".join(k) for k in tensors if k not in flat_target])
    mismatched = sorted(
        f"{'/'.join(k)}: {source} {tuple(v.shape)} vs model {tuple(flat_target[k].shape)}"
        for k, v in tensors.items()
        if k in flat_target and tuple(v.shape) != tuple(flat_target[k].shape)
    )
    if missing or unexpected or mismatched:
        raise WeightMismatchError(_report(source, missing, unexpected, mismatched))
    out = {
        k: np.asarray(tensors[k], dtype=getattr(flat_target[k], "dtype", np.float32))
        for k in flat_target
    }
    return traverse_util.unflatten_dict(out)


def _report(source, missing, unexpected, mismatched, limit: int = 20) -> str:
    lines = [f"{source} weights do not match the model:"]
    for title, items in (("missing from the file", missing),
                         ("in the file but not in the model", unexpected),
                         ("shape mismatch", mismatched)):
        if items:
            shown = items[:limit] + ([f"... and {len(items) - limit} more"]
                                     if len(items) > limit else [])
            lines.append(f"  {title} ({len(items)}): " + "; ".join(shown))
    lines.append("  (check the model name and its options: num_classes, include_top, "
                 "alpha, in_channels)")
    return "\n".join(lines)
