"""Darknet ``.weights`` files -> zoo variables for ``darknet53``, ``yolov3``, ``yolov3_tiny``.

The format (pjreddie/darknet ``parser.c``): a header of int32 major, minor, revision and
the images seen (uint64 when ``major * 10 + minor >= 2``, else int32), then float32
arrays layer by layer in cfg order. A ``[convolutional]`` layer with batch norm stores
biases (BN beta), scales (gamma), rolling mean, rolling variance, then the kernel in
OIHW order; without batch norm, biases then kernel. Layers without weights (shortcut,
route, upsample, yolo, maxpool) store nothing.

:func:`layer_order` lists our module paths in the cfg's order; :func:`load_darknet`
reads a file strictly: every variable is filled and every float is used, or it raises.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from flax import traverse_util

from zoo.weights.convert import WeightMismatchError


def read_darknet(path: str) -> tuple[tuple[int, int, int, int], np.ndarray]:
    """``((major, minor, revision, seen), floats)`` of a ``.weights`` file."""
    with open(path, "rb") as f:
        major, minor, revision = (int(v) for v in np.fromfile(f, np.int32, 3))
        wide = major * 10 + minor >= 2 and major < 1000 and minor < 1000
        seen = int(np.fromfile(f, np.uint64 if wide else np.int32, 1)[0])
        return (major, minor, revision, seen), np.fromfile(f, np.float32)


def _darknet53_body(prefix: str, stage_sizes=(1, 2, 8, 8, 4)) -> list[tuple[str, str]]:
    order = [(f"{prefix}stem", "convbn")]
    for i, n in enumerate(stage_sizes, 1):
        order.append((f"{prefix}stage{i}/downsample", "convbn"))
        for j in range(1, n + 1):
            order += [(f"{prefix}stage{i}/block{j}/conv{k}", "convbn") for k in (1, 2)]
    return order


def layer_order(name: str, num_scales: int = 3) -> list[tuple[str, str]]:
    """``(module path, kind)`` in cfg order; kind is ``convbn``, ``conv`` or ``dense``."""
    if name == "darknet53":
        return [*_darknet53_body(""), ("head", "dense")]
    if name == "yolov3":
        order = _darknet53_body("backbone/")
        for i in range(1, num_scales + 1):
            if i > 1:
                order.append((f"neck/scale{i}/lateral", "convbn"))
            order += [(f"neck/scale{i}/conv{k}", "convbn") for k in range(1, 7)]
            order.append((f"head/scale{i}", "conv"))
        return order
    if name == "yolov3_tiny":
        return [*((f"backbone/conv{i}", "convbn") for i in range(1, 8)),
                ("neck/scale1/conv1", "convbn"), ("neck/scale1/conv2", "convbn"),
                ("head/scale1", "conv"), ("neck/scale2/lateral", "convbn"),
                ("neck/scale2/conv1", "convbn"), ("head/scale2", "conv")]
    raise ValueError(f"no Darknet layer order for {name!r}; darknet53, yolov3, yolov3_tiny")


def load_darknet(path: str, name: str, target: Mapping[str, Any]) -> dict[str, Any]:
    """Variables shaped like ``target`` (e.g. its ``jax.eval_shape``) from a Darknet file.

    A file of only the first layers (``darknet53.conv.74``, the backbone Darknet users
    start YOLOv3 from) is refused here: slice ``layer_order`` and use :func:`fill` for it.
    """
    _, floats = read_darknet(path)
    scales = sum(k.startswith("scale") for k in target["params"].get("head", {}))
    out, used = fill(floats, layer_order(name, scales or 3), target)
    if used != len(floats):
        raise WeightMismatchError(f"{path}: {len(floats) - used} floats left over after all "
                                  f"{name} layers ({len(floats)} in the file, {used} needed; "
                                  "was it written for another number of classes?)")
    return out


def fill(floats: np.ndarray, order: list[tuple[str, str]],
         target: Mapping[str, Any]) -> tuple[dict[str, Any], int]:
    """Fill the variables of the layers in ``order`` from ``floats``; returns (them, #used).

    Every variable of ``target`` must belong to a listed layer.
    """
    shapes = {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(dict(target)).items()}
    out: dict[tuple[str, ...], np.ndarray] = {}
    pos = 0

    def take(shape: tuple[int, ...], what: str) -> np.ndarray:
        nonlocal pos
        n = int(np.prod(shape))
        if pos + n > len(floats):
            raise WeightMismatchError(f"the file ends inside {what} (needs {n} floats at "
                                      f"{pos}, has {len(floats)})")
        pos += n
        return floats[pos - n:pos].reshape(shape)

    for layer, kind in order:
        p = tuple(layer.split("/"))
        conv = (*p, "conv") if kind == "convbn" else p
        kshape = shapes.get(("params", *conv, "kernel"))
        if kshape is None:
            raise WeightMismatchError(f"the model has no layer {layer!r} ({kind})")
        cout = kshape[-1]
        if kind == "convbn":
            bn = ("params", *p, "bn")
            out[(*bn, "bias")] = take((cout,), f"{layer} beta")
            out[(*bn, "scale")] = take((cout,), f"{layer} gamma")
            out[("batch_stats", *p, "bn", "mean")] = take((cout,), f"{layer} mean")
            out[("batch_stats", *p, "bn", "var")] = take((cout,), f"{layer} variance")
        else:
            out[("params", *p, "bias")] = take((cout,), f"{layer} bias")
        if kind == "dense":  # a 1x1 [convolutional] after the average pool: (out, in)
            w = take((cout, kshape[0]), f"{layer} kernel").T
        else:  # OIHW -> HWIO
            w = take((cout, kshape[2], kshape[0], kshape[1]), f"{layer} kernel")
            w = w.transpose(2, 3, 1, 0)
        out[("params", *conv, "kernel")] = w
    missing = sorted("/".join(k) for k in shapes if k not in out)
    if missing:
        raise WeightMismatchError(f"{len(missing)} variables not in the layer order, e.g. "
                                  f"{missing[:5]}")
    for k, v in out.items():
        if tuple(v.shape) != shapes[k]:
            raise WeightMismatchError(f"{'/'.join(k)}: file gives {v.shape}, model has "
                                      f"{shapes[k]}")
    return traverse_util.unflatten_dict({k: np.ascontiguousarray(v) for k, v in out.items()}), pos
