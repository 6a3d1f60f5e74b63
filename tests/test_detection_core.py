"""Boxes, target assignment, decoding, NMS and the YOLO losses, on tiny hand-made cases."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from train.detection import boxes as B
from train.detection import decode as D
from train.detection import loss as L
from train.detection import targets as T

ANCHORS = (((40, 40), (60, 30)), ((10, 10), (20, 10)))  # 2 scales x 2 anchors, pixels
HW = (64, 96)  # image height, width
GRIDS = ((2, 3), (4, 6))  # strides 32 and 16


def gt(*rows, m=4):
    """Padded ground truth from (x0, y0, x1, y1, class) rows."""
    boxes = np.zeros((1, m, 4), np.float32)
    classes = np.zeros((1, m), np.int32)
    valid = np.zeros((1, m), bool)
    for i, r in enumerate(rows):
        boxes[0, i], classes[0, i], valid[0, i] = r[:4], r[4], True
    return jnp.asarray(boxes), jnp.asarray(classes), jnp.asarray(valid)


def test_iou_giou_ciou_known_values():
    a = jnp.asarray([[0.0, 0, 10, 10]])
    b = jnp.asarray([[5.0, 0, 15, 10], [20, 0, 30, 10]])
    np.testing.assert_allclose(B.pairwise_iou(a, b), [[50 / 150, 0.0]], rtol=1e-6)
    # disjoint: IoU 0, hull 30x10 = 300, union 200 -> GIoU = -(300-200)/300
    np.testing.assert_allclose(B.iou_loss_terms(a, b, "giou"), [50 / 150, -1 / 3], rtol=1e-6)
    # same shape: CIoU = IoU - centre distance^2 / hull diagonal^2 (no aspect term)
    np.testing.assert_allclose(B.iou_loss_terms(a, b, "ciou"),
                               [50 / 150 - 25 / 325, -400 / 1000], rtol=1e-6)
    np.testing.assert_allclose(B.wh_iou(jnp.asarray([[10.0, 10]]), jnp.asarray([[5.0, 20]])),
                               [[50 / 150]], rtol=1e-6)
    np.testing.assert_allclose(B.cxcywh_to_xyxy(B.xyxy_to_cxcywh(b)), b)


def test_best_anchor_picks_scale_cell_and_anchor():
    # a 20x10 box centred at (40, 20): best anchor is scale 2's (20, 10); stride 16 -> cell
    # (row 1, col 2). A 60x30 box at (80, 48): scale 1's second anchor, stride 32 -> (1, 2).
    boxes, classes, valid = gt((30, 15, 50, 25, 1), (50, 33, 110, 63, 0))
    t = T.yolov3_targets(boxes, classes, valid, ANCHORS, GRIDS, HW)
    assert [x["obj"].shape for x in t] == [(1, 2, 3, 2), (1, 4, 6, 2)]
    assert float(t[0]["obj"].sum()) == 1 and float(t[1]["obj"].sum()) == 1
    assert t[1]["obj"][0, 1, 2, 1] == 1 and t[1]["cls"][0, 1, 2, 1] == 1
    np.testing.assert_allclose(t[1]["box"][0, 1, 2, 1], [30, 15, 50, 25])
    assert t[0]["obj"][0, 1, 2, 1] == 1 and t[0]["cls"][0, 1, 2, 1] == 0
    # a lower threshold adds every anchor with wh-IoU above it; padding adds nothing
    t = T.yolov3_targets(boxes, classes, valid, ANCHORS, GRIDS, HW, match_threshold=0.3)
    assert float(sum(x["obj"].sum() for x in t)) > 2
    t = T.yolov3_targets(*gt(), ANCHORS, GRIDS, HW)
    assert float(sum(x["obj"].sum() for x in t)) == 0


def perfect_outputs(boxes, classes, valid, num_classes=3, margin=12.0):
    """Raw outputs that decode exactly to the ground truth (obj/class logits +-margin)."""
    outs = []
    for (gh, gw), a, t in zip(GRIDS, ANCHORS, T.yolov3_targets(boxes, classes, valid,
                                                               ANCHORS, GRIDS, HW), strict=True):
        c = B.xyxy_to_cxcywh(t["box"])
        stride = jnp.asarray([HW[1] / gw, HW[0] / gh])
        off = jnp.clip(c[..., :2] / stride - D.grid_xy(gh, gw), 1e-4, 1 - 1e-4)
        txy = jnp.log(off / (1 - off))
        twh = jnp.log(jnp.maximum(c[..., 2:], 1e-3) / jnp.asarray(a, jnp.float32))
        obj = jnp.where(t["obj"] > 0, margin, -margin)[..., None]
        cls = jnp.where(jax.nn.one_hot(t["cls"], num_classes) > 0, margin, -margin)
        outs.append(jnp.concatenate([txy, twh, obj, cls], -1))
    return tuple(outs)


def test_decode_and_nms_recover_the_ground_truth():
    boxes, classes, valid = gt((30, 15, 50, 25, 1), (50, 33, 110, 63, 2))
    outs = perfect_outputs(boxes, classes, valid)
    b, s = D.decode_yolov3(outs, ANCHORS, HW)
    assert b.shape == (1, 2 * 3 * 2 + 4 * 6 * 2, 4) and s.shape == (1, b.shape[1], 3)
    det = jax.jit(lambda b, s: D.nms(b, s, max_outputs=5))(b, s)
    assert det["boxes"].shape == (1, 5, 4) and int(det["valid"].sum()) == 2
    order = np.argsort(np.asarray(det["classes"][0, :2]))
    np.testing.assert_allclose(np.asarray(det["boxes"][0, :2])[order],
                               [[30, 15, 50, 25], [50, 33, 110, 63]], atol=1e-3)
    np.testing.assert_array_equal(np.asarray(det["classes"][0, :2])[order], [1, 2])
    assert np.all(np.asarray(det["classes"][0, 2:]) == -1)


def test_nms_is_class_aware_greedy_and_thresholded():
    boxes = jnp.asarray([[[0.0, 0, 10, 10], [1, 1, 11, 11], [1, 1, 11, 11], [50, 50, 60, 60],
                          [70, 70, 80, 80]]])
    scores = jnp.zeros((1, 5, 2)).at[0, :, 0].set(jnp.asarray([0.9, 0.8, 0, 0.6, 0.005]))
    scores = scores.at[0, 2, 1].set(0.7)
    det = jax.jit(lambda b, s: D.nms(b, s, max_outputs=4, iou_threshold=0.5))(boxes, scores)
    np.testing.assert_allclose(det["scores"][0], [0.9, 0.7, 0.6, 0.0])
    np.testing.assert_array_equal(det["classes"][0], [0, 1, 0, -1])
    np.testing.assert_array_equal(det["valid"][0], [True, True, True, False])
    # the overlap .68 survives a higher threshold; more outputs than candidates pad
    det = D.nms(boxes, scores, max_outputs=12, iou_threshold=0.7)
    assert int(det["valid"].sum()) == 4 and det["boxes"].shape == (1, 12, 4)


def test_yolov3_loss_is_small_at_the_truth_and_differentiable():
    boxes, classes, valid = gt((30, 15, 50, 25, 1), (50, 33, 110, 63, 2))
    good = perfect_outputs(boxes, classes, valid)
    rand = tuple(jax.random.normal(jax.random.PRNGKey(i), o.shape) for i, o in enumerate(good))
    for kind in ("mse", "giou", "ciou"):
        cfg = L.YOLOv3Loss(box=kind)
        loss = lambda o, m, c=cfg: L.yolov3_loss(o, boxes, classes, valid, ANCHORS, HW, c, m)

        @jax.jit
        def run(good, rand, loss=loss):
            return loss(good, None), loss(rand, None)[0], jax.grad(lambda o: loss(o, None)[0])(
                rand), loss(rand, jnp.zeros(1))[0]

        (lo, parts), hi, g, masked = run(good, rand)
        assert float(lo) < 0.05 * float(hi), (kind, parts)
        assert set(parts) == {"box", "obj", "noobj", "cls"}
        assert all(bool(jnp.all(jnp.isfinite(x))) and float(jnp.abs(x).sum()) > 0 for x in g)
        assert float(masked) == 0.0, "a masked-out image contributes nothing"
    with pytest.raises(ValueError, match="box loss"):
        L.yolov3_loss(rand, boxes, classes, valid, ANCHORS, HW, L.YOLOv3Loss(box="l1"))


def test_ignore_mask_spares_good_unassigned_predictions():
    # A prediction overlapping a box well but not assigned to it pays no no-object loss
    # when its IoU exceeds the ignore threshold.
    boxes, classes, valid = gt((30, 15, 50, 25, 1))
    outs = list(perfect_outputs(boxes, classes, valid))
    # the other anchor of the same cell predicts the same box with high objectness
    outs[1] = outs[1].at[0, 1, 2, 0].set(outs[1][0, 1, 2, 1].at[2:4].add(jnp.log(jnp.asarray(
        [20 / 10, 10 / 10]))))
    strict = L.yolov3_loss(outs, boxes, classes, valid, ANCHORS, HW,
                           L.YOLOv3Loss(ignore_threshold=1.01))[1]["noobj"]
    lenient = L.yolov3_loss(outs, boxes, classes, valid, ANCHORS, HW,
                            L.YOLOv3Loss(ignore_threshold=0.5))[1]["noobj"]
    assert float(strict) > 5 and float(lenient) < 0.01


def test_yolov1_targets_decode_and_loss():
    s, nb, c = 4, 2, 3
    hw = (64, 64)
    boxes, classes, valid = gt((8, 8, 24, 40, 2))  # centre (16, 24): cell (1, 1)
    t = T.yolov1_targets(boxes, classes, valid, s, hw)
    assert t["obj"][0, 1, 1] == 1 and float(t["obj"].sum()) == 1 and t["cls"][0, 1, 1] == 2
    # a perfect prediction: box 0 of cell (1, 1) = (x, y, sqrt w, sqrt h, conf 1)
    out = np.zeros((1, s, s, 5 * nb + c), np.float32)
    out[0, 1, 1, :5] = [0.0, 0.5, np.sqrt(16 / 64), np.sqrt(32 / 64), 1.0]
    out[0, 1, 1, 5 * nb + 2] = 1.0
    out = jnp.asarray(out)
    loss, parts = L.yolov1_loss(out, boxes, classes, valid, nb, hw)
    assert float(loss) < 1e-6, parts
    b, sc = D.decode_yolov1(out, nb, hw)
    assert b.shape == (1, s * s * nb, 4) and sc.shape == (1, s * s * nb, c)
    k = int(jnp.argmax(sc[0, :, 2]))
    np.testing.assert_allclose(b[0, k], [8, 8, 24, 40], atol=1e-4)
    worse, parts = L.yolov1_loss(out.at[0, 1, 1, 0].set(0.3), boxes, classes, valid, nb, hw)
    assert float(parts["coord"]) == pytest.approx(0.09) and float(worse) > 5 * 0.09


def test_evaluate_batches_and_drawing():
    from train.detection import predict as P

    batch = {"image": np.zeros((2, 32, 32, 3), np.uint8),
             "boxes": np.asarray([[[2, 2, 12, 12], [0, 0, 0, 0]],
                                  [[5, 5, 25, 25], [1, 1, 9, 9]]], np.float32),
             "classes": np.asarray([[0, 0], [1, 0]]), "valid": np.asarray([[1, 0], [1, 1]], bool),
             "difficult": np.zeros((2, 2), bool), "mask": np.asarray([1.0, 1.0])}

    def oracle(b):  # detections = the ground truth, score 0.9
        return {"boxes": b["boxes"], "scores": np.full((2, 2), 0.9), "classes": b["classes"],
                "valid": b["valid"]}

    r = P.evaluate_batches(oracle, [batch], ["a", "b"])
    assert r["voc_map50"] == 1.0 and r["num_images"] == 2 and r["per_class"]["a"]["num_gt"] == 2
    padded = dict(batch, mask=np.asarray([1.0, 0.0]))  # the second image is loader padding
    assert P.evaluate_batches(oracle, [padded], ["a", "b"])["num_images"] == 1
    im = P.draw(np.zeros((40, 40, 3), np.uint8), np.asarray([[5, 15, 30, 35]]), np.asarray([1]),
                np.asarray([0.87]), ["a", "b"])
    px = np.asarray(im)
    assert tuple(px[25, 5]) == P.PALETTE[1] and tuple(px[25, 20]) == (0, 0, 0)
