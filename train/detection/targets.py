"""Ground-truth assignment for YOLO heads: pure JAX, static shapes, jit- and vmap-friendly.

Ground truth arrives padded to ``max_boxes`` per image: ``boxes (B, M, 4)`` xyxy in input
pixels, ``classes (B, M)`` int, ``valid (B, M)`` bool. Padded rows never reach a target:
their scatter indices point outside the grid and ``mode='drop'`` discards them.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from train.detection.boxes import wh_iou, xyxy_to_cxcywh

Anchors = Sequence[Sequence[tuple[float, float]]]


def grid_cells(cxcy: jax.Array, grid_hw: tuple[int, int], image_hw: tuple[int, int]):
    """The (row, col) of the cell holding each centre (x, y) in pixels; clipped to the grid."""
    gh, gw = grid_hw
    col = jnp.clip(jnp.floor(cxcy[..., 0] * gw / image_hw[1]), 0, gw - 1).astype(jnp.int32)
    row = jnp.clip(jnp.floor(cxcy[..., 1] * gh / image_hw[0]), 0, gh - 1).astype(jnp.int32)
    return row, col


def anchor_matches(boxes: jax.Array, valid: jax.Array, anchors: Anchors,
                   match_threshold: float | None = None) -> jax.Array:
    """(..., M, K) bool over all K anchors (scales concatenated, coarsest first).

    Darknet's rule: each box goes to the one anchor of best width/height IoU, whatever
    its scale. With ``match_threshold`` a box also goes to every anchor whose wh-IoU
    exceeds it (AlexeyAB's ``iou_thresh``; more positives, faster early training).
    """
    all_anchors = jnp.asarray([a for scale in anchors for a in scale], jnp.float32)
    ious = wh_iou(boxes[..., 2:] - boxes[..., :2], all_anchors)
    match = jax.nn.one_hot(jnp.argmax(ious, -1), len(all_anchors), dtype=bool)
    if match_threshold is not None:
        match = match | (ious > match_threshold)
    return match & valid[..., None]


def yolov3_targets(boxes: jax.Array, classes: jax.Array, valid: jax.Array, anchors: Anchors,
                   grids: Sequence[tuple[int, int]], image_hw: tuple[int, int],
                   match_threshold: float | None = None) -> list[dict[str, jax.Array]]:
    """Per-scale targets: ``obj (B,H,W,A)`` 0/1, ``box (B,H,W,A,4)`` xyxy pixels, ``cls`` int.

    ``grids`` are the (H, W) of each output scale, coarsest first, matching ``anchors``.
    When two boxes land on the same cell and anchor, one of them wins.
    """
    match = anchor_matches(boxes, valid, anchors, match_threshold)  # (B, M, K)
    cxcy = xyxy_to_cxcywh(boxes)[..., :2]
    b_idx = jnp.arange(boxes.shape[0])[:, None, None]
    out, offset = [], 0
    for (gh, gw), scale_anchors in zip(grids, anchors, strict=True):
        a = len(scale_anchors)
        row, col = grid_cells(cxcy, (gh, gw), image_hw)  # (B, M)
        hit = match[..., offset:offset + a]  # (B, M, A)
        row = jnp.where(hit, row[..., None], gh)  # gh is out of range: dropped
        col = jnp.broadcast_to(col[..., None], hit.shape)
        anc = jnp.broadcast_to(jnp.arange(a), hit.shape)
        idx = (jnp.broadcast_to(b_idx, hit.shape), row, col, anc)
        shape = (boxes.shape[0], gh, gw, a)
        obj = jnp.zeros(shape, jnp.float32).at[idx].set(1.0, mode="drop")
        box_src = jnp.broadcast_to(boxes[:, :, None, :], (*hit.shape, 4))
        box = jnp.zeros((*shape, 4), jnp.float32).at[idx].set(box_src, mode="drop")
        cls_src = jnp.broadcast_to(classes[..., None], hit.shape).astype(jnp.int32)
        cls = jnp.zeros(shape, jnp.int32).at[idx].set(cls_src, mode="drop")
        out.append({"obj": obj, "box": box, "cls": cls})
        offset += a
    return out


def yolov1_targets(boxes: jax.Array, classes: jax.Array, valid: jax.Array, grid: int,
                   image_hw: tuple[int, int]) -> dict[str, jax.Array]:
    """YOLOv1: the cell holding a box's centre is responsible for it (one box per cell).

    Returns ``obj (B,S,S)``, ``box (B,S,S,4)`` xyxy pixels and ``cls (B,S,S)``.
    """
    row, col = grid_cells(xyxy_to_cxcywh(boxes)[..., :2], (grid, grid), image_hw)
    row = jnp.where(valid, row, grid)
    idx = (jnp.broadcast_to(jnp.arange(boxes.shape[0])[:, None], row.shape), row, col)
    shape = (boxes.shape[0], grid, grid)
    return {
        "obj": jnp.zeros(shape, jnp.float32).at[idx].set(1.0, mode="drop"),
        "box": jnp.zeros((*shape, 4), jnp.float32).at[idx].set(boxes, mode="drop"),
        "cls": jnp.zeros(shape, jnp.int32).at[idx].set(classes.astype(jnp.int32), mode="drop"),
    }
