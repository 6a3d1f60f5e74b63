"""From a detector's raw outputs to detections, mAP over a loader, and drawings on PNGs."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import numpy as np
from PIL import Image, ImageDraw

from train.detection import metrics
from train.detection.decode import decode_yolov1, decode_yolov3, nms

PALETTE = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 190), (0, 128, 128))


@dataclasses.dataclass(frozen=True)
class NMSConfig:
    """Post-processing: score and IoU thresholds, detections kept per image."""

    score_threshold: float = 0.01
    iou_threshold: float = 0.45
    max_detections: int = 100
    pre_nms_top_k: int = 1000


def decode(model: Any, outputs: Any, image_hw: tuple[int, int]) -> tuple[jax.Array, jax.Array]:
    """Boxes (B, K, 4) and class scores (B, K, C) of any zoo detector's raw outputs."""
    if isinstance(outputs, tuple | list):
        return decode_yolov3(outputs, model.anchors, image_hw)
    return decode_yolov1(outputs, model.boxes, image_hw)


def make_detect_fn(model: Any, normalize: Callable, cfg: NMSConfig = NMSConfig()) -> Callable:
    """``detect(variables, images uint8 (B, H, W, 3)) -> NMS dict`` (jit it yourself)."""

    def detect(variables: dict, images: jax.Array) -> dict[str, jax.Array]:
        outputs = model.apply(variables, normalize(images), train=False)
        boxes, scores = decode(model, outputs, images.shape[1:3])
        return nms(boxes, scores, max_outputs=cfg.max_detections,
                   iou_threshold=cfg.iou_threshold, score_threshold=cfg.score_threshold,
                   pre_nms_top_k=cfg.pre_nms_top_k)

    return detect


def unbatch(det: dict, gt: dict | None = None, mask: np.ndarray | None = None):
    """Per-image detection (and ground-truth) dicts of NumPy arrays, padding removed."""
    det = {k: np.asarray(v) for k, v in det.items()}
    n = len(det["valid"]) if mask is None else int(np.sum(np.asarray(mask) > 0))
    dets, gts = [], []
    for i in range(n):
        keep = det["valid"][i]
        dets.append({k: det[k][i][keep] for k in ("boxes", "scores", "classes")})
        if gt is not None:
            v = np.asarray(gt["valid"][i])
            gts.append({"boxes": np.asarray(gt["boxes"][i])[v],
                        "classes": np.asarray(gt["classes"][i])[v],
                        "difficult": np.asarray(gt["difficult"][i])[v]})
    return dets, gts


def evaluate_batches(detect: Callable[[dict], dict], batches: Iterable[dict],
                     class_names: Sequence[str]) -> dict:
    """VOC and COCO AP of ``detect(batch)`` over loader batches (input-pixel boxes).

    Letterboxing scales and shifts boxes uniformly, so IoUs, and hence AP, equal those
    in original image coordinates.
    """
    all_dets, all_gts = [], []
    for batch in batches:
        dets, gts = unbatch(detect(batch), batch, batch.get("mask"))
        all_dets += dets
        all_gts += gts
    result = metrics.evaluate(all_dets, all_gts, class_names)
    result["num_images"] = len(all_gts)
    return result


def evaluate_arrays(dets: dict, gts: dict, class_names: Sequence[str]) -> dict:
    """VOC and COCO AP of a whole pass: ``dets`` the NMS dict and ``gts`` the batches'
    ``boxes``, ``classes``, ``valid`` and ``difficult``, concatenated (padding removed)."""
    dets, gts = unbatch(dets, gts)
    result = metrics.evaluate(dets, gts, class_names)
    result["num_images"] = len(gts)
    return result


def draw(image: np.ndarray, boxes: np.ndarray, classes: np.ndarray, scores: np.ndarray,
         class_names: Sequence[str], width: int = 2) -> Image.Image:
    """The image with each box outlined and labelled ``class score`` in its class colour."""
    im = Image.fromarray(np.asarray(image, np.uint8)).convert("RGB")
    pen = ImageDraw.Draw(im)
    for box, c, s in zip(np.asarray(boxes), np.asarray(classes), np.asarray(scores),
                         strict=True):
        colour = PALETTE[int(c) % len(PALETTE)]
        x0, y0, x1, y1 = (float(v) for v in box)
        pen.rectangle([x0, y0, x1, y1], outline=colour, width=width)
        label = f"{class_names[int(c)]} {float(s):.2f}"
        tw, th = pen.textbbox((0, 0), label)[2:]
        ty = y0 - th - 2 if y0 - th - 2 >= 0 else y0
        tx = max(0.0, min(x0, im.width - tw - 4))  # keep the label inside the image
        pen.rectangle([tx, ty, tx + tw + 4, ty + th + 2], fill=colour)
        pen.text((tx + 2, ty), label, fill=(255, 255, 255))
    return im
