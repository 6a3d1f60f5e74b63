"""Detection metrics in NumPy: VOC mAP@0.5 (all-point) and COCO AP@[.5:.95] (101-point).

Inputs are per image: detections ``{"boxes" (n, 4) xyxy, "scores" (n,), "classes" (n,)}``
and ground truth ``{"boxes" (m, 4), "classes" (m,), "difficult" (m,) optional}``.
Difficult ground truth (VOC) is neither required nor penalised: a detection matched to
it is ignored. Classes without ground truth get AP ``nan`` and stay out of the means.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np

COCO_IOUS = np.linspace(0.5, 0.95, 10)
COCO_RECALLS = np.linspace(0.0, 1.0, 101)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix (n, m) of xyxy boxes (continuous coordinates)."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    lo = np.maximum(a[:, None, :2], b[None, :, :2])
    hi = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), -1)
    area = lambda x: np.prod(np.clip(x[:, 2:] - x[:, :2], 0, None), -1)  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def voc_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """Area under the interpolated PR curve, all points (VOC 2010+ devkit ``voc_ap``)."""
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    i = np.nonzero(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def coco_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """Mean interpolated precision at 101 recall points (pycocotools ``accumulate``)."""
    if len(recall) == 0:
        return 0.0
    pre = np.maximum.accumulate(np.asarray(precision)[::-1])[::-1]
    idx = np.searchsorted(recall, COCO_RECALLS, side="left")
    q = np.where(idx < len(pre), pre[np.minimum(idx, len(pre) - 1)], 0.0)
    return float(np.mean(q))


def match_class(dets, gts, iou_threshold: float, style: str = "voc"):
    """TP/FP flags (ignored detections removed) of one class, sorted by score, and #GT.

    ``dets``: per image (boxes, scores); ``gts``: per image (boxes, difficult).
    ``voc``: a detection takes its best-overlapping ground truth, matched or not
    (IoU > t, as the devkit); ``coco``: the best unmatched one (IoU >= t, pycocotools).
    """
    recs = [(s, i, j) for i, (_, sc) in enumerate(dets) for j, s in enumerate(sc)]
    recs.sort(key=lambda r: -r[0])  # stable: ties keep image order
    used = [np.zeros(len(g[0]), bool) for g in gts]
    n_gt = int(sum(np.sum(~np.asarray(d, bool)) for _, d in gts))
    ious = [box_iou(d[0], g[0]) for d, g in zip(dets, gts, strict=True)]
    tp = []
    for _, i, j in recs:
        ov, diff = ious[i][j], np.asarray(gts[i][1], bool)
        if style == "voc":
            k = int(np.argmax(ov)) if len(ov) else -1
            hit = k >= 0 and ov[k] > iou_threshold
        else:  # the best still unmatched ground truth, non-difficult first
            ok = (ov >= iou_threshold) & ~used[i]
            pool = ok & ~diff if np.any(ok & ~diff) else ok
            k = int(np.argmax(np.where(pool, ov, -1.0))) if np.any(pool) else -1
            hit = k >= 0
        if hit and diff[k]:
            continue  # matched to a difficult object: ignored
        tp.append(hit and not used[i][k])
        if hit:
            used[i][k] = True
    return np.asarray(tp, bool), n_gt


def pr_curve(tp: np.ndarray, n_gt: int) -> tuple[np.ndarray, np.ndarray]:
    """Recall and precision after each detection (sorted by score)."""
    ctp, cfp = np.cumsum(tp), np.cumsum(~tp)
    return ctp / max(n_gt, 1), ctp / np.maximum(ctp + cfp, np.finfo(np.float64).eps)


def evaluate(detections: Sequence[dict], ground_truth: Sequence[dict], class_names: Sequence[str],
             max_detections: int = 100) -> dict:
    """VOC AP@0.5 and COCO AP@[.5:.95] (plus AP50/AP75) per class and their means."""
    if len(detections) != len(ground_truth):
        raise ValueError(f"{len(detections)} detection sets for {len(ground_truth)} images")
    per_class = {}
    for c, name in enumerate(class_names):
        dets, gts = [], []
        for d, g in zip(detections, ground_truth, strict=True):
            keep = np.asarray(d["classes"]) == c
            b, s = np.asarray(d["boxes"]).reshape(-1, 4)[keep], np.asarray(d["scores"])[keep]
            top = np.argsort(-s, kind="stable")[:max_detections]
            dets.append((b[top], s[top]))
            gk = np.asarray(g["classes"]) == c
            diff = np.asarray(g.get("difficult", np.zeros(len(gk), bool)), bool)[gk]
            gts.append((np.asarray(g["boxes"]).reshape(-1, 4)[gk], diff))
        tp, n_gt = match_class(dets, gts, 0.5, "voc")
        row = {"num_gt": n_gt, "num_det": int(sum(len(s) for _, s in dets))}
        row["voc_ap50"] = voc_ap(*pr_curve(tp, n_gt)) if n_gt else float("nan")
        coco = [coco_ap(*pr_curve(match_class(dets, gts, t, "coco")[0], n_gt))
                for t in COCO_IOUS] if n_gt else [float("nan")] * len(COCO_IOUS)
        row |= {"coco_ap": float(np.mean(coco)), "coco_ap50": coco[0], "coco_ap75": coco[5]}
        per_class[name] = row
    means = {}
    for k in ("voc_ap50", "coco_ap", "coco_ap50", "coco_ap75"):
        vals = [r[k] for r in per_class.values() if r["num_gt"]]
        means[k] = float(np.mean(vals)) if vals else float("nan")
    return {"voc_map50": means["voc_ap50"], "coco_ap": means["coco_ap"],
            "coco_ap50": means["coco_ap50"], "coco_ap75": means["coco_ap75"],
            "per_class": per_class}


def json_safe(v):
    """An :func:`evaluate` result with NaN as None (strict JSON)."""
    if isinstance(v, dict):
        return {k: json_safe(x) for k, x in v.items()}
    if isinstance(v, float) and np.isnan(v):
        return None
    return v


def write_json(result: dict, path: str) -> None:
    """Write an :func:`evaluate` result as JSON (NaN as null)."""
    with open(path, "w") as f:
        json.dump(json_safe(result), f, indent=2)


def format_table(result: dict) -> str:
    """A Markdown table of per-class VOC AP@0.5 and COCO AP, with the means."""
    rows = ["| class | GT | VOC AP@0.5 | COCO AP@[.5:.95] |", "|---|---:|---:|---:|"]
    for name, r in result["per_class"].items():
        rows.append(f"| {name} | {r['num_gt']} | {r['voc_ap50']:.3f} | {r['coco_ap']:.3f} |")
    rows.append(f"| **mean** | | **{result['voc_map50']:.3f}** | **{result['coco_ap']:.3f}** |")
    return "\n".join(rows)
