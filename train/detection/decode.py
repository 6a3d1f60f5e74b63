"""Raw YOLO outputs -> boxes and class scores -> class-aware NMS, all under ``jit``.

Every shape is static: NMS keeps at most ``max_outputs`` detections per image and says
which are real with a ``valid`` mask.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from train.detection.boxes import cxcywh_to_xyxy, pairwise_iou

MAX_LOG_WH = 8.0  # exp(8) ~ 3000 anchor widths: caps early-training blow-ups


def grid_xy(gh: int, gw: int) -> jax.Array:
    """(H, W, 1, 2) cell offsets (col, row) for broadcasting against (..., H, W, A, 2)."""
    ys, xs = jnp.meshgrid(jnp.arange(gh), jnp.arange(gw), indexing="ij")
    return jnp.stack([xs, ys], -1).astype(jnp.float32)[:, :, None, :]


def yolov3_boxes(out: jax.Array, anchors: Sequence[tuple[float, float]],
                 image_hw: tuple[int, int]) -> jax.Array:
    """One scale's raw (B, H, W, A, 5+C) -> (B, H, W, A, 4) xyxy boxes in input pixels."""
    out = out.astype(jnp.float32)
    gh, gw = out.shape[1:3]
    stride = jnp.asarray([image_hw[1] / gw, image_hw[0] / gh], jnp.float32)
    xy = (jax.nn.sigmoid(out[..., :2]) + grid_xy(gh, gw)) * stride
    wh = jnp.exp(jnp.minimum(out[..., 2:4], MAX_LOG_WH)) * jnp.asarray(anchors, jnp.float32)
    return cxcywh_to_xyxy(jnp.concatenate([xy, wh], -1))


def decode_yolov3(outputs: Sequence[jax.Array], anchors: Sequence[Sequence[tuple[float, float]]],
                  image_hw: tuple[int, int]) -> tuple[jax.Array, jax.Array]:
    """All scales -> boxes (B, K, 4) xyxy pixels and scores (B, K, C) = P(obj) P(class|obj)."""
    boxes, scores = [], []
    for out, a in zip(outputs, anchors, strict=True):
        b = out.shape[0]
        boxes.append(yolov3_boxes(out, a, image_hw).reshape(b, -1, 4))
        p = out.astype(jnp.float32)
        s = jax.nn.sigmoid(p[..., 4:5]) * jax.nn.sigmoid(p[..., 5:])
        scores.append(s.reshape(b, -1, s.shape[-1]))
    return jnp.concatenate(boxes, 1), jnp.concatenate(scores, 1)


def yolov1_boxes(out: jax.Array, num_boxes: int,
                 image_hw: tuple[int, int]) -> tuple[jax.Array, jax.Array, jax.Array]:
    """YOLOv1 (B, S, S, 5B+C) -> boxes (B,S,S,B,4) xyxy pixels, confidence (B,S,S,B), classes."""
    out = out.astype(jnp.float32)
    s = out.shape[1]
    pred = out[..., : 5 * num_boxes].reshape(*out.shape[:3], num_boxes, 5)
    size = jnp.asarray([image_hw[1], image_hw[0]], jnp.float32)
    xy = (pred[..., :2] + grid_xy(s, s)) / s * size
    wh = pred[..., 2:4] ** 2 * size  # the network predicts sqrt(w), sqrt(h)
    boxes = cxcywh_to_xyxy(jnp.concatenate([xy, wh], -1))
    return boxes, pred[..., 4], out[..., 5 * num_boxes:]


def decode_yolov1(out: jax.Array, num_boxes: int,
                  image_hw: tuple[int, int]) -> tuple[jax.Array, jax.Array]:
    """YOLOv1 -> boxes (B, K, 4), scores (B, K, C) = confidence x class probability."""
    boxes, conf, cls = yolov1_boxes(out, num_boxes, image_hw)
    b = out.shape[0]
    scores = jnp.clip(conf, 0, 1)[..., None] * jnp.clip(cls, 0, 1)[:, :, :, None, :]
    return boxes.reshape(b, -1, 4), scores.reshape(b, -1, cls.shape[-1])


def nms(boxes: jax.Array, scores: jax.Array, *, max_outputs: int = 100,
        iou_threshold: float = 0.45, score_threshold: float = 0.01,
        pre_nms_top_k: int = 1000) -> dict[str, jax.Array]:
    """Class-aware greedy NMS over a batch: boxes (B, K, 4), scores (B, K, C).

    Every (box, class) pair is a candidate; the ``pre_nms_top_k`` best enter NMS; a box
    suppresses only lower-scored boxes of its own class with IoU above the threshold.
    Returns ``boxes (B, max_outputs, 4)``, ``scores``, ``classes`` and ``valid``, best first.
    """
    return jax.vmap(lambda b, s: _nms_one(b, s, max_outputs, iou_threshold, score_threshold,
                                          pre_nms_top_k))(boxes, scores)


def _nms_one(boxes, scores, max_outputs, iou_threshold, score_threshold, top_k):
    k, c = scores.shape
    top_k = min(top_k, k * c)
    best, flat_idx = jax.lax.top_k(scores.reshape(-1), top_k)  # sorted, best first
    box_idx, cls = flat_idx // c, flat_idx % c
    cand = boxes[box_idx]
    same = cls[:, None] == cls[None, :]
    over = (pairwise_iou(cand, cand) > iou_threshold) & same
    order = jnp.arange(top_k)

    def step(i, keep):
        suppressed = jnp.any(keep & over[:, i] & (order < i))
        return keep.at[i].set(keep[i] & ~suppressed)

    keep = jax.lax.fori_loop(0, top_k, step, best > score_threshold)
    # kept candidates first (still best first), then the rest
    rank = jnp.where(keep, order, top_k + order)
    pick = jnp.argsort(rank)[:max_outputs]
    n = min(max_outputs, top_k)
    pad = max_outputs - n
    valid = jnp.pad(keep[pick], (0, pad))
    return {
        "boxes": jnp.pad(jnp.where(valid[:n, None], cand[pick], 0.0), ((0, pad), (0, 0))),
        "scores": jnp.pad(jnp.where(valid[:n], best[pick], 0.0), (0, pad)),
        "classes": jnp.pad(jnp.where(valid[:n], cls[pick], -1), (0, pad), constant_values=-1),
        "valid": valid,
    }
