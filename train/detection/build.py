"""The parts of a detection run: data splits, anchors, model, initial weights, loss, eval."""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

import zoo
from train import checkpoint as C
from train import device
from train import freeze as F
from train import model as M
from train.detection import anchors as A
from train.detection import loss as DL
from train.detection import predict as P
from train.detection.augment import DetectionAugment
from train.detection.data import DetectionSource, open_detection_source
from train.detection.pipeline import DetectionLoader
from zoo.backend.prng import init_key

log = logging.getLogger(__name__)


def image_hw(config) -> tuple[int, int]:
    """The network input (height, width)."""
    d = config.detection
    return (d.image_height or config.data.image_size, d.image_width or config.data.image_size)


def open_split(config, split: str, class_names=None) -> DetectionSource:
    """One split of ``config.data.source``, in the training class order."""
    d = config.data
    names = class_names or (tuple(config.detection.classes) or None)
    return open_detection_source(d.source, split=split, seed=config.seed, class_names=names,
                                 shapes_size=d.synthetic_size, image_size=d.image_size,
                                 data_dir=d.tfds_data_dir or None, download=d.download)


def model_kwargs(config) -> dict[str, Any]:
    """``config.model`` without ``name``, lists as tuples (config files hold lists)."""
    fix = lambda v: tuple(fix(x) for x in v) if isinstance(v, list | tuple) else v  # noqa: E731
    return {k: fix(v) for k, v in config.model.items() if k != "name"}


def resolve_anchors(config, source: DetectionSource | None, workdir: str | None) -> tuple | None:
    """The run's anchors: configured, saved in the workdir, those of the detection workdir
    ``config.init`` (its head was trained for them), k-means, or the model's own."""
    det = config.detection
    probe = zoo.create(config.model.name, **model_kwargs(config))  # no parameters made
    if not hasattr(probe, "anchors"):
        return None  # YOLOv1 predicts boxes without anchors
    fix = lambda v: tuple(fix(x) for x in v) if isinstance(v, list | tuple) else float(v)  # noqa: E731
    if det.anchors:
        return fix(det.anchors)
    path = os.path.join(workdir, "anchors.json") if workdir else None
    if path and os.path.exists(path):
        with open(path) as f:
            return fix(json.load(f))
    inherited = os.path.join(config.init, "anchors.json") if config.init else ""
    if os.path.isfile(inherited):  # initialised from a detection workdir: its anchors
        with open(inherited) as f:
            anchors = fix(json.load(f))
        log.info("anchors of config.init %s: %s", config.init, anchors)
        return _save_anchors(anchors, path)
    per_scale = tuple(len(a) for a in probe.anchors)
    widths = getattr(probe, "widths", None)
    if widths is not None and len(widths) != len(per_scale):
        per_scale = (3,) * len(widths)
    if det.auto_anchors:
        if source is None:
            raise ValueError("k-means anchors need the training data")
        hw = image_hw(config)
        found, fit = A.kmeans_anchors(A.letterboxed_sizes(source, hw), sum(per_scale),
                                      seed=config.seed)
        anchors = A.split_scales(found, per_scale)
        log.info("anchors by k-means on %s at %dx%d (mean best IoU %.3f): %s", source.spec,
                 *hw, fit, anchors)
    else:
        anchors = fix(probe.anchors)
    return _save_anchors(anchors, path)


def _save_anchors(anchors: tuple, path: str | None) -> tuple:
    if path and jax.process_index() == 0:
        with open(path, "w") as f:
            json.dump(anchors, f)
    return anchors


def build_detector(config, num_classes: int, anchors: tuple | None):
    """The zoo detector of ``config.model`` for ``num_classes`` (and the run's anchors)."""
    if config.dtype not in M.DTYPES:
        raise ValueError(f"config.dtype must be one of {sorted(M.DTYPES)}")
    kwargs = model_kwargs(config)
    if anchors is not None:
        kwargs["anchors"] = anchors
    return zoo.create(config.model.name, num_classes=num_classes, dtype=M.DTYPES[config.dtype],
                      **kwargs)


def init_variables(model, hw: tuple[int, int], seed: int) -> dict[str, Any]:
    """Fresh ``{'params', 'batch_stats'}`` for ``hw`` inputs (jitted init, the key of
    :func:`zoo.backend.prng.init_key`)."""
    key = init_key(seed)
    x = jnp.zeros((1, *hw, 3), jnp.float32)
    v = jax.jit(lambda k: model.init({"params": k, "dropout": k}, x, train=False))(key)
    return {"params": v["params"], "batch_stats": v.get("batch_stats", {})}


def load_init(config, model, variables: dict) -> dict:
    """``config.init``: a checkpoint of this detector, a Darknet ``.weights`` file, or the
    backbone's reference weights (``imagenet``, a Keras/torch file) under ``backbone/``."""
    init, name = config.init, config.model.name
    if not init:
        return variables
    if os.path.isdir(init):
        return C.load_init(init, name, variables, init_head=config.init_head)
    if init.endswith(".weights"):
        from zoo.weights import darknet

        return darknet.load_darknet(init, name, variables)
    backbone = getattr(model, "backbone", None)
    if not isinstance(backbone, str):
        raise ValueError(f"config.init={init!r}: {name} has no zoo backbone to take reference "
                         "weights for; give a checkpoint directory or a Darknet .weights file")
    loaded = C.PRETRAINED(backbone, init, include_top=False, in_channels=model.in_channels,
                          **dict(model.backbone_options))
    out = {}
    for col in ("params", "batch_stats"):
        fresh = F.flat_paths(variables[col])
        src = {f"backbone/{k}": v for k, v in F.flat_paths(loaded.get(col) or {}).items()}
        bad = [p for p, v in fresh.items() if p.startswith("backbone/")
               and (p not in src or np.shape(src[p]) != v.shape)]
        if bad:
            raise ValueError(f"config.init={init!r} does not fit {name}'s backbone: {bad[:5]}")
        merged = {p: np.asarray(src[p], v.dtype) if p in src else v for p, v in fresh.items()}
        out[col] = traverse_util.unflatten_dict({tuple(p.split("/")): v
                                                 for p, v in merged.items()})
    log.info("backbone %s initialised from %s", backbone, init)
    return out


def make_loss_fn(model, config, hw: tuple[int, int]):
    """``loss_fn(outputs, batch) -> (loss, parts)`` for the trainer's step."""
    det = config.detection
    if isinstance(model, zoo.yolo.YOLOv1):
        return lambda out, b: DL.yolov1_loss(out, b["boxes"], b["classes"], b["valid"],
                                             model.boxes, hw, mask=b["mask"])
    cfg = DL.YOLOv3Loss(ignore_threshold=det.ignore_threshold, box=det.box_loss,
                        match_threshold=det.match_threshold or None,
                        box_weight=det.box_weight, obj_weight=det.obj_weight,
                        noobj_weight=det.noobj_weight, cls_weight=det.cls_weight,
                        label_smoothing=config.label_smoothing)
    return lambda out, b: DL.yolov3_loss(out, b["boxes"], b["classes"], b["valid"],
                                         model.anchors, hw, cfg, b["mask"])


def make_eval_step(model, spec, config):
    """``eval_step(state, batch) -> NMS dict`` (for ``train.step.jit_eval``)."""
    det = config.detection
    nms = P.NMSConfig(det.score_threshold, det.iou_threshold, det.max_detections)
    detect = P.make_detect_fn(model, spec.normalize, nms)

    def eval_step(state, batch: dict) -> dict:
        return detect({"params": state.params, "batch_stats": state.batch_stats}, batch["image"])

    return eval_step


def loader(config, source, train: bool, batch_size: int | None = None,
           indices: np.ndarray | None = None) -> DetectionLoader:
    """A detection loader of a source (``indices``: these examples, else all) with the
    config's size, augmentation, threads or worker processes (``data.processes``)."""
    d, det = config.data, config.detection
    if d.augment.get("device", False):
        raise ValueError("config.data.augment.device is for classifiers: a detector's "
                         "augmentation moves its boxes on the host; unset it")
    aug = None
    if train:
        a = d.augment
        aug = DetectionAugment(hflip=a.hflip, vflip=a.vflip, scale=det.scale, aspect=det.aspect,
                               translate=det.translate, brightness=a.brightness,
                               contrast=a.contrast, saturation=a.saturation)
    return DetectionLoader(source, np.arange(len(source)) if indices is None else indices,
                           batch_size=batch_size or config.batch_size, image_hw=image_hw(config),
                           max_boxes=det.max_boxes, train=train, augment=aug, seed=config.seed,
                           workers=d.workers, prefetch=d.prefetch, cache=d.cache,
                           cache_mb=d.get("cache_mb", 2048), processes=d.get("processes", 0))


def evaluate_loader(eval_fn, state, mesh, data: DetectionLoader, class_names, *,
                    close: bool = False) -> dict:
    """mAP of the state's detections over a loader. The detections stay on the devices until
    the pass ends (one fetch: ``train.device.predict``); the ground truth is the host's copy
    of each batch, never fetched back. ``close``: stop the loader's worker processes after."""
    gt = ("boxes", "classes", "valid", "difficult")
    try:
        dets, kept = device.predict(eval_fn, state, data.epoch(0), mesh, keep=gt)
    finally:
        if close:
            data.close()
    return P.evaluate_arrays(dets, kept, class_names)

