"""Anchor boxes from a dataset's boxes: k-means with the IoU distance, as Darknet users do.

``d(box, centroid) = 1 - IoU`` of the two (w, h) as if they shared a centre (Redmon &
Farhadi 2017, section "Dimension Clusters"). Centroids are updated with the median.
"""

from __future__ import annotations

import numpy as np

from train.detection.data import DetectionSource


def wh_iou(wh: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """(N, K) IoU of (w, h) pairs sharing a centre."""
    inter = (np.minimum(wh[:, None, 0], centroids[None, :, 0])
             * np.minimum(wh[:, None, 1], centroids[None, :, 1]))
    union = (wh[:, 0] * wh[:, 1])[:, None] + (centroids[:, 0] * centroids[:, 1])[None] - inter
    return inter / np.maximum(union, 1e-12)


def kmeans_anchors(wh: np.ndarray, k: int, *, seed: int = 0, iters: int = 300,
                   restarts: int = 5) -> tuple[np.ndarray, float]:
    """k anchors (w, h) sorted by area, and the mean best IoU of the boxes with them.

    k-means++ seeding (on 1 - IoU), median updates, best of ``restarts`` runs.
    """
    wh = np.asarray(wh, np.float64).reshape(-1, 2)
    wh = wh[(wh[:, 0] > 0) & (wh[:, 1] > 0)]
    if len(wh) < k:
        raise ValueError(f"k-means needs at least k={k} boxes, got {len(wh)}")
    rng = np.random.default_rng(seed)
    best, best_fit = None, -1.0
    for _ in range(restarts):
        c = wh[[rng.integers(len(wh))]]
        while len(c) < k:  # k-means++: far (in 1 - IoU) boxes are likelier next centres
            d = 1 - wh_iou(wh, c).max(1)
            p = d / d.sum() if d.sum() > 0 else None
            c = np.concatenate([c, wh[[rng.choice(len(wh), p=p)]]])
        for _ in range(iters):
            assign = np.argmax(wh_iou(wh, c), 1)
            new = np.stack([np.median(wh[assign == j], 0) if np.any(assign == j) else c[j]
                            for j in range(k)])
            if np.allclose(new, c):
                break
            c = new
        fit = float(np.mean(wh_iou(wh, c).max(1)))
        if fit > best_fit:
            best, best_fit = c, fit
    return best[np.argsort(best[:, 0] * best[:, 1])], best_fit


def split_scales(anchors: np.ndarray, per_scale: tuple[int, ...]) -> tuple:
    """Anchors sorted small to large -> per-scale tuples, coarsest (largest anchors) first."""
    if sum(per_scale) != len(anchors):
        raise ValueError(f"{len(anchors)} anchors do not split into {per_scale}")
    out, start = [], len(anchors)
    for n in per_scale:
        out.append(tuple((round(float(w), 1), round(float(h), 1))
                         for w, h in anchors[start - n:start]))
        start -= n
    return tuple(out)


def letterboxed_sizes(source: DetectionSource, image_hw: tuple[int, int]) -> np.ndarray:
    """(N, 2) widths and heights of every box once its image is letterboxed to ``image_hw``."""
    out = []
    for i in range(len(source)):
        a = source.annotation(i)
        s = min(image_hw[0] / a["height"], image_hw[1] / a["width"])
        out.append((a["boxes"][:, 2:] - a["boxes"][:, :2]) * s)
    return np.concatenate(out) if out else np.zeros((0, 2))
