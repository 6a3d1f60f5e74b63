"""Detection data: VOC folders, tfds voc (mock data), shapes, augmentation, loader, anchors."""

from __future__ import annotations

import ast
import logging
import os

import numpy as np
import pytest
from PIL import Image

from train.detection import anchors as A
from train.detection import augment as G
from train.detection import data as D
from train.detection.pipeline import DetectionLoader

BCCD = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "bccd")

OBJ = """<object><name>{name}</name><difficult>{d}</difficult><bndbox><xmin>{x0}</xmin>
<ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"""


def write_voc(root, objects_per_image, size=(64, 48), splits=None):
    """A VOC folder: one JPEG (grey) and one XML per image; ImageSets/Main/<split>.txt."""
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        os.makedirs(root / sub, exist_ok=True)
    ids = []
    for i, objs in enumerate(objects_per_image):
        key = f"img{i}"
        ids.append(key)
        Image.new("RGB", size, (90, 90, 90)).save(root / "JPEGImages" / f"{key}.jpg")
        body = "".join(OBJ.format(name=n, d=d, x0=b[0], y0=b[1], x1=b[2], y1=b[3])
                       for n, b, d in objs)
        (root / "Annotations" / f"{key}.xml").write_text(
            f"<annotation><filename>{key}.jpg</filename><size><width>{size[0]}</width>"
            f"<height>{size[1]}</height><depth>3</depth></size>{body}</annotation>")
    for split, idx in (splits or {"train": range(len(ids))}).items():
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text(
            "".join(f"{ids[i]}\n" for i in idx))
    return ids


def test_voc_folder_reader(tmp_path, caplog):
    write_voc(tmp_path, [
        [("dog", (11, 21, 30, 40), 0), ("cat", (5, 5, 5, 20), 0), ("cat", (1, 1, 64, 48), 1)],
        [("cat", (70, 10, 90, 20), 0), ("dog", (50, 30, 80, 60), 0)],
    ])
    with caplog.at_level(logging.WARNING):
        src = D.open_detection_source(f"voc:{tmp_path}", split="train")
    assert src.class_names == ("cat", "dog") and len(src) == 2 and src.keys == ["img0", "img1"]
    # (5, 5, 5, 20) has zero width and (70, ...) lies outside the 64-wide image: dropped
    assert src.dropped == 2 and "dropped 2 degenerate box(es)" in caplog.text
    ex = src.example(0)
    assert ex["image"].shape == (48, 64, 3) and ex["image"].dtype == np.uint8
    np.testing.assert_allclose(ex["boxes"], [[10, 20, 30, 40], [0, 0, 64, 48]])  # VOC 1-based
    np.testing.assert_array_equal(ex["classes"], [1, 0])
    np.testing.assert_array_equal(ex["difficult"], [False, True])
    np.testing.assert_allclose(src.example(1)["boxes"], [[49, 29, 64, 48]])  # clipped
    assert src.annotation(1)["width"] == 64
    # a fixed class list (from a config) keeps its order; other names are ignored
    assert D.voc_folder_source(str(tmp_path), "train", class_names=["dog"]).example(0)[
        "classes"].tolist() == [0]


def test_voc_errors_name_the_file_and_the_splits(tmp_path):
    write_voc(tmp_path, [[("dog", (1, 1, 9, 9), 0)]] * 2)
    with pytest.raises(FileNotFoundError, match=r"no split 'val'.*\['train'\]"):
        D.voc_folder_source(str(tmp_path), "val")
    (tmp_path / "Annotations" / "img1.xml").write_text("<annotation><object>")
    with pytest.raises(ValueError, match=r"malformed VOC annotation .*img1\.xml"):
        D.voc_folder_source(str(tmp_path), "train", class_names=["dog"])
    (tmp_path / "Annotations" / "img1.xml").write_text(
        "<annotation><size><width>a</width></size></annotation>")
    with pytest.raises(ValueError, match=r"img1\.xml"):
        D.voc_folder_source(str(tmp_path), "train", class_names=["dog"])


@pytest.mark.skipif(not os.path.isdir(BCCD), reason="../shared/data/bccd is absent")
def test_bccd_reads():
    train = D.open_detection_source(f"voc:{BCCD}", split="train")
    val = D.open_detection_source(f"voc:{BCCD}", split="val")
    assert train.class_names == ("Platelets", "RBC", "WBC") and (len(train), len(val)) == (205, 87)
    assert train.dropped == 1 and val.dropped == 1  # two single-point RBC annotations
    ex = train.example(0)
    assert ex["image"].shape == (480, 640, 3) and len(ex["boxes"]) > 5


def test_tfds_voc_through_data_source_with_mock_data():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=4):
        src = D.open_detection_source("tfds:voc/2007", split="train")
        assert len(src) == 4 and src.class_names == D.VOC_CLASSES
        for i in range(4):
            ex = src.example(i)
            h, w = ex["image"].shape[:2]
            b = ex["boxes"]
            assert ex["image"].dtype == np.uint8 and ex["image"].shape[2] == 3
            assert len(b) == len(ex["classes"]) == len(ex["difficult"])
            assert np.all(b[:, 2] > b[:, 0]) and np.all(b[:, 3] > b[:, 1])
            assert np.all(b >= 0) and np.all(b[:, [0, 2]] <= w) and np.all(b[:, [1, 3]] <= h)
            assert np.all((ex["classes"] >= 0) & (ex["classes"] < 20))
    assert src.dropped > 0, "random mock boxes (y0 > y1) are dropped and counted"


def test_shapes_are_deterministic_and_exact():
    src = D.shapes_source(6, seed=3, size=96)
    a, b = src.example(2), src.example(2)
    np.testing.assert_array_equal(a["image"], b["image"])
    for i in range(6):
        ex = src.example(i)
        assert 1 <= len(ex["boxes"]) <= 4 and ex["image"].shape == (96, 96, 3)
        assert np.all(ex["boxes"] >= 0) and np.all(ex["boxes"] <= 96)
    assert not np.array_equal(D.shapes_source(2, seed=4).example(0)["image"],
                              D.shapes_source(2, seed=3).example(0)["image"])
    with pytest.raises(ValueError, match="unknown detection data"):
        D.open_detection_source("folder:x")


def painted(h=60, w=80, box=(20, 10, 50, 40)):
    img = np.full((h, w, 3), 30, np.uint8)
    x0, y0, x1, y1 = box
    img[y0:y1, x0:x1] = (250, 0, 0)
    return img, np.asarray([box], np.float32)


def red_bbox(img):
    ys, xs = np.nonzero((img[..., 0] > 160) & (img[..., 1] < 90))
    return np.asarray([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


@pytest.mark.parametrize("seed", range(6))
def test_augmentation_moves_boxes_with_the_pixels(seed):
    img, boxes = painted()
    aug = G.DetectionAugment(hflip=True, vflip=True, scale=0.4, aspect=0.3, translate=True,
                             brightness=0.1, min_visible=0.0, min_size=0.0)
    ex = {"image": img, "boxes": boxes, "classes": np.asarray([1]),
          "difficult": np.zeros(1, bool)}
    out, dropped = G.prepare(ex, (64, 96), aug, np.random.default_rng(seed))
    assert out["image"].shape == (64, 96, 3) and dropped == 0
    if np.any((out["image"][..., 0] > 160) & (out["image"][..., 1] < 90)):
        np.testing.assert_allclose(out["boxes"][0], red_bbox(out["image"]), atol=2.0)


def test_letterbox_round_trip_and_crop_dropping():
    img, boxes = painted()
    out, b, place = G.letterbox(img, boxes, (96, 96))
    assert out.shape == (96, 96, 3) and place.scale == pytest.approx(1.2)
    np.testing.assert_allclose(b[0], red_bbox(out), atol=1.0)
    np.testing.assert_allclose(place.to_original(b), boxes, atol=1e-4)
    # a box mostly outside the canvas is dropped; a box well inside is kept
    moved = np.asarray([[-40, 0, 10, 10], [5, 5, 20, 20]], np.float32)
    _, keep = G.clip_boxes(moved, moved, (32, 32), min_visible=0.35, min_size=2)
    assert keep.tolist() == [False, True]


def test_loader_is_deterministic_and_pads():
    src = D.shapes_source(10, seed=0, size=64)
    aug = G.DetectionAugment(hflip=True, scale=0.3)
    mk = lambda train: DetectionLoader(src, np.arange(10), batch_size=4, image_hw=(64, 64),  # noqa: E731
                                       max_boxes=3, train=train, augment=aug, seed=1)
    b1, b2 = list(mk(True).epoch(2)), list(mk(True).epoch(2))
    assert len(b1) == 2 and b1[0]["image"].shape == (4, 64, 64, 3)
    assert b1[0]["boxes"].shape == (4, 3, 4) and b1[0]["valid"].dtype == bool
    for x, y in zip(b1, b2, strict=True):
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])
    assert list(mk(True).epoch(2, start=1))[0]["index"].tolist() == b1[1]["index"].tolist()
    ev = list(mk(False).epoch(0))
    assert len(ev) == 3 and ev[-1]["mask"].tolist() == [1, 1, 0, 0]
    assert ev[0]["index"].tolist() == [0, 1, 2, 3]


def test_kmeans_anchors_recover_clusters_and_split_by_scale():
    rng = np.random.default_rng(0)
    centres = np.asarray([[10, 12], [40, 20], [90, 100]], float)
    wh = np.concatenate([c * rng.uniform(0.95, 1.05, (200, 2)) for c in centres])
    anchors, fit = A.kmeans_anchors(wh, 3)
    np.testing.assert_allclose(anchors, centres, rtol=0.05)
    assert fit > 0.9
    per = A.split_scales(np.arange(12, dtype=float).reshape(6, 2) + 1, (3, 3))
    assert per[0][0] == (7.0, 8.0) and per[1] == ((1.0, 2.0), (3.0, 4.0), (5.0, 6.0))
    from tests.cli import run_script

    out = run_script("anchors", "--data", "shapes", "--size", "64", "--scales", "2,2").stdout
    assert "mean best IoU" in out
    result = ast.literal_eval(out.splitlines()[-1].removeprefix("anchors = "))
    assert len(result) == 2 and all(len(scale) == 2 for scale in result)
