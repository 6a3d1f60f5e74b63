"""YOLOv3 and YOLOv1 losses: pure functions of raw outputs and padded ground truth.

Both sum over cells and divide by the batch size (Darknet's normalisation), in float32
whatever the compute dtype. ``mask`` (B,) weights images (0 for padding examples).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import optax

from train.detection.boxes import iou_loss_terms, pairwise_iou, xyxy_to_cxcywh
from train.detection.decode import grid_xy, yolov1_boxes, yolov3_boxes
from train.detection.targets import yolov1_targets, yolov3_targets


@dataclasses.dataclass(frozen=True)
class YOLOv3Loss:
    """Hyper-parameters of the YOLOv3 loss (defaults: Darknet's yolov3.cfg / keras-yolo3).

    ``box``: ``mse`` (keras-yolo3: BCE on the cell offsets, minus the target's entropy so
    that a perfect box costs 0; half squared error on log w/h), ``giou`` or
    ``ciou``; box terms are weighted by ``2 - w h / (W H)`` (small boxes count more).
    """

    ignore_threshold: float = 0.5
    box: str = "mse"
    match_threshold: float | None = None
    box_weight: float = 1.0
    obj_weight: float = 1.0
    noobj_weight: float = 1.0
    cls_weight: float = 1.0
    label_smoothing: float = 0.0


def yolov3_loss(outputs: Sequence[jax.Array], boxes: jax.Array, classes: jax.Array,
                valid: jax.Array, anchors, image_hw: tuple[int, int],
                cfg: YOLOv3Loss = YOLOv3Loss(),
                mask: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The YOLOv3 loss and its parts (``box``, ``obj``, ``noobj``, ``cls``), per image."""
    if cfg.box not in ("mse", "giou", "ciou"):
        raise ValueError(f"box loss must be 'mse', 'giou' or 'ciou', got {cfg.box!r}")
    grids = [o.shape[1:3] for o in outputs]
    targets = yolov3_targets(boxes, classes, valid, anchors, grids, image_hw,
                             cfg.match_threshold)
    b = boxes.shape[0]
    mask = jnp.ones((b,), jnp.float32) if mask is None else mask.astype(jnp.float32)
    gt = jnp.where(valid[..., None], boxes, -1.0)  # padding never overlaps anything
    parts = {k: jnp.zeros((), jnp.float32) for k in ("box", "obj", "noobj", "cls")}
    for out, a, t in zip(outputs, anchors, targets, strict=True):
        p = out.astype(jnp.float32)
        pred = yolov3_boxes(p, a, image_hw)
        best = jnp.max(pairwise_iou(pred.reshape(b, -1, 4), gt), -1).reshape(pred.shape[:-1])
        ignore = jax.lax.stop_gradient(best > cfg.ignore_threshold)
        obj = t["obj"]
        m = mask[:, None, None, None]
        twh = t["box"][..., 2:] - t["box"][..., :2]
        weight = obj * (2.0 - twh[..., 0] * twh[..., 1] / (image_hw[0] * image_hw[1])) * m
        if cfg.box == "mse":
            gh, gw = p.shape[1:3]
            cell = xyxy_to_cxcywh(t["box"])
            scale = jnp.asarray([gw / image_hw[1], gh / image_hw[0]], jnp.float32)
            txy = jnp.clip(cell[..., :2] * scale - grid_xy(gh, gw), 0.0, 1.0)
            anchor = jnp.asarray(a, jnp.float32)
            twh_log = jnp.log(jnp.maximum(cell[..., 2:], 1e-3) / anchor)
            err = (jnp.sum(_soft_bce(p[..., :2], txy), -1)
                   + 0.5 * jnp.sum((p[..., 2:4] - twh_log) ** 2, -1))
        else:
            err = 1.0 - iou_loss_terms(pred, t["box"], cfg.box)
        parts["box"] += jnp.sum(weight * err)
        bce_obj = optax.sigmoid_binary_cross_entropy(p[..., 4], obj)
        parts["obj"] += jnp.sum(bce_obj * obj * m)
        parts["noobj"] += jnp.sum(bce_obj * (1 - obj) * (1 - ignore) * m)
        n_cls = p.shape[-1] - 5
        onehot = optax.smooth_labels(jax.nn.one_hot(t["cls"], n_cls), cfg.label_smoothing)
        bce_cls = jnp.sum(optax.sigmoid_binary_cross_entropy(p[..., 5:], onehot), -1)
        parts["cls"] += jnp.sum(bce_cls * obj * m)
    parts = {k: v / b for k, v in parts.items()}
    total = (cfg.box_weight * parts["box"] + cfg.obj_weight * parts["obj"]
             + cfg.noobj_weight * parts["noobj"] + cfg.cls_weight * parts["cls"])
    return total, parts


def _soft_bce(logits: jax.Array, t: jax.Array) -> jax.Array:
    """BCE with soft targets minus their entropy (the KL divergence): 0 at the optimum."""
    t = jnp.clip(t, 1e-6, 1 - 1e-6)
    entropy = -(t * jnp.log(t) + (1 - t) * jnp.log1p(-t))
    return optax.sigmoid_binary_cross_entropy(logits, t) - entropy


@dataclasses.dataclass(frozen=True)
class YOLOv1Loss:
    """The paper's sum-squared error weights: lambda_coord 5, lambda_noobj 0.5."""

    coord_weight: float = 5.0
    noobj_weight: float = 0.5


def yolov1_loss(out: jax.Array, boxes: jax.Array, classes: jax.Array, valid: jax.Array,
                num_boxes: int, image_hw: tuple[int, int], cfg: YOLOv1Loss = YOLOv1Loss(),
                mask: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """YOLOv1's loss (Redmon et al. 2016, eq. 3) and its parts (``coord``, ``obj``, ...)."""
    s = out.shape[1]
    b = out.shape[0]
    t = yolov1_targets(boxes, classes, valid, s, image_hw)
    mask = jnp.ones((b,), jnp.float32) if mask is None else mask.astype(jnp.float32)
    pred_boxes, conf, cls = yolov1_boxes(out, num_boxes, image_hw)
    p = out.astype(jnp.float32)[..., : 5 * num_boxes].reshape(*out.shape[:3], num_boxes, 5)
    ious = iou_loss_terms(pred_boxes, t["box"][:, :, :, None, :], "iou")  # (B,S,S,nb)
    resp = jax.nn.one_hot(jnp.argmax(ious, -1), num_boxes) * t["obj"][..., None]
    resp = jax.lax.stop_gradient(resp) * mask[:, None, None, None]
    size = jnp.asarray([image_hw[1], image_hw[0]], jnp.float32)
    cell = xyxy_to_cxcywh(t["box"])
    txy = cell[..., :2] / size * s - grid_xy(s, s)[:, :, 0]
    twh = jnp.sqrt(jnp.maximum(cell[..., 2:] / size, 0.0))
    target = jnp.concatenate([txy, twh], -1)[:, :, :, None, :]
    coord = jnp.sum(resp * jnp.sum((p[..., :4] - target) ** 2, -1))
    obj = jnp.sum(resp * (conf - jax.lax.stop_gradient(ious)) ** 2)
    noobj = jnp.sum((1 - resp) * conf**2 * mask[:, None, None, None])
    onehot = jax.nn.one_hot(t["cls"], cls.shape[-1])
    cls_err = jnp.sum(t["obj"] * mask[:, None, None] * jnp.sum((cls - onehot) ** 2, -1))
    parts = {"coord": coord / b, "obj": obj / b, "noobj": noobj / b, "cls": cls_err / b}
    total = (cfg.coord_weight * parts["coord"] + parts["obj"]
             + cfg.noobj_weight * parts["noobj"] + parts["cls"])
    return total, parts
