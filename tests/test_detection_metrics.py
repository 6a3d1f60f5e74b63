"""VOC mAP@0.5 and COCO AP@[.5:.95] on hand-made cases whose answers are worked out below."""

from __future__ import annotations

import json

import numpy as np
import pytest

from train.detection import metrics

G1, G2 = [0, 0, 10, 10], [20, 20, 30, 30]
FAR = [50, 50, 60, 60]


def det(boxes, scores, classes=None):
    classes = [0] * len(scores) if classes is None else classes
    return {"boxes": np.asarray(boxes, float).reshape(-1, 4), "scores": np.asarray(scores),
            "classes": np.asarray(classes)}


def gt(boxes, classes=None, difficult=None):
    classes = [0] * len(boxes) if classes is None else classes
    out = {"boxes": np.asarray(boxes, float).reshape(-1, 4), "classes": np.asarray(classes)}
    if difficult is not None:
        out["difficult"] = np.asarray(difficult, bool)
    return out


def test_voc_ap_all_point_interpolation():
    # TP (0.9), FP (0.8), TP (0.7) on 2 objects: recall .5 .5 1, precision 1 .5 2/3.
    # Envelope: 1 up to recall .5, 2/3 after: AP = .5 * 1 + .5 * 2/3 = 5/6.
    r = metrics.evaluate([det([G1, FAR, G2], [0.9, 0.8, 0.7])], [gt([G1, G2])], ["cell"])
    assert r["voc_map50"] == pytest.approx(5 / 6)
    # COCO, 101 recall points: 51 points (0 .. .50) at precision 1, 50 at 2/3, at every
    # IoU threshold (the boxes are exact).
    assert r["coco_ap"] == pytest.approx((51 + 50 * 2 / 3) / 101)
    assert r["per_class"]["cell"]["num_gt"] == 2 and r["per_class"]["cell"]["num_det"] == 3


def test_duplicates_are_false_positives_and_misses_cap_recall():
    # TP, then a duplicate of the same object (FP); the second object is missed.
    r = metrics.evaluate([det([G1, G1], [0.9, 0.8])], [gt([G1, G2])], ["cell"])
    assert r["voc_map50"] == pytest.approx(0.5)
    assert r["coco_ap"] == pytest.approx(51 / 101)


def test_coco_averages_over_iou_thresholds():
    # IoU 62/100 = .62: a TP at thresholds .50, .55, .60 and a FP at the 7 others.
    r = metrics.evaluate([det([[0, 0, 10, 6.2]], [0.9])], [gt([G1])], ["cell"])
    assert r["voc_map50"] == pytest.approx(1.0)
    assert r["coco_ap"] == pytest.approx(0.3)
    assert r["coco_ap50"] == pytest.approx(1.0) and r["coco_ap75"] == pytest.approx(0.0)


def test_voc_and_coco_matching_rules_differ():
    # Two overlapping objects; the second detection overlaps g1 best (IoU 95/105, g1 is
    # already taken) and g2 at 85/115 = .739. VOC's devkit calls it a FP (AP .5); COCO
    # takes the best unmatched object: a TP at thresholds .50-.70 (AP 1), and at .75-.95
    # a FP after the TP (51/101): (5 * 1 + 5 * 51/101) / 10.
    g1, g2 = [0, 0, 10, 10], [2, 0, 12, 10]
    r = metrics.evaluate([det([g1, [0.5, 0, 10.5, 10]], [0.9, 0.8])], [gt([g1, g2])], ["c"])
    assert r["voc_map50"] == pytest.approx(0.5)
    assert r["coco_ap"] == pytest.approx((5 + 5 * 51 / 101) / 10)


def test_difficult_objects_are_neither_required_nor_penalised():
    # Without the flag the missed second object halves the AP; as difficult it is not
    # required, and a detection on it is ignored rather than counted.
    dets = [det([G1], [0.9])]
    assert metrics.evaluate(dets, [gt([G1, G2])], ["c"])["voc_map50"] == pytest.approx(0.5)
    r = metrics.evaluate(dets, [gt([G1, G2], difficult=[0, 1])], ["c"])
    assert r["voc_map50"] == pytest.approx(1.0) and r["per_class"]["c"]["num_gt"] == 1
    r = metrics.evaluate([det([G2, G1], [0.95, 0.9])], [gt([G1, G2], difficult=[0, 1])], ["c"])
    assert r["voc_map50"] == pytest.approx(1.0) and r["coco_ap"] == pytest.approx(1.0)


def test_ranking_across_images_and_classes(tmp_path):
    # class a: image 0 has a TP at .6, image 1 a FP at .9 -> precision 0 then 1/2 at
    # recall 1: AP = 1/2. Class b: one TP: AP 1. Class c has no ground truth: nan, and
    # it stays out of the mean, even with a detection.
    dets = [det([G1, FAR], [0.6, 0.3], [0, 2]), det([G1, G2], [0.9, 0.5], [0, 1])]
    gts = [gt([G1], [0]), gt([G2], [1])]
    r = metrics.evaluate(dets, gts, ["a", "b", "c"])
    assert r["per_class"]["a"]["voc_ap50"] == pytest.approx(0.5)
    assert r["per_class"]["b"]["voc_ap50"] == pytest.approx(1.0)
    assert np.isnan(r["per_class"]["c"]["voc_ap50"])
    assert r["voc_map50"] == pytest.approx(0.75)
    metrics.write_json(r, tmp_path / "m.json")
    saved = json.loads((tmp_path / "m.json").read_text())
    assert saved["voc_map50"] == pytest.approx(0.75) and saved["per_class"]["c"]["voc_ap50"] is None
    assert "| a | 1 | 0.500 |" in metrics.format_table(r)


def test_max_detections_per_image_and_class():
    # 101 detections, the only TP ranked last: COCO (100 per image) never sees it.
    boxes = [FAR] * 100 + [G1]
    scores = list(np.linspace(0.99, 0.5, 100)) + [0.1]
    r = metrics.evaluate([det(boxes, scores)], [gt([G1])], ["c"], max_detections=100)
    assert r["voc_map50"] == 0.0
    r = metrics.evaluate([det(boxes, scores)], [gt([G1])], ["c"], max_detections=101)
    assert r["voc_map50"] == pytest.approx(1 / 101)


def test_empty_inputs():
    r = metrics.evaluate([det(np.zeros((0, 4)), [])], [gt([G1])], ["c"])
    assert r["voc_map50"] == 0.0 and r["coco_ap"] == 0.0
    with pytest.raises(ValueError, match="2 detection sets for 1 images"):
        metrics.evaluate([det([G1], [1.0])] * 2, [gt([G1])], ["c"])
