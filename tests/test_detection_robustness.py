"""Detection workdirs know their data, and detect goes on past bad files (issue 22), with the
faults made real: files added to a split's listing, an image and an annotation rewritten on
disk, truncated, empty, missing files and a folder given to detect. The evaluation pass
fetches its detections once (issue 19).

The quick tests check the record and the check on a real VOC folder without a model; the
end-to-end ones share one short training run on a VOC folder (about a minute: slow suite).
"""

from __future__ import annotations

import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from tests.test_detection_train import tiny_config
from train import step as T
from train.detection import build as B
from train.detection import evaluate as DE
from train.detection import splits as DS
from train.detection.data import open_detection_source, shapes_example
from train.detection.pipeline import DetectionLoader
from train.errors import WorkdirError

NAMES = ("circle", "square", "triangle")
SPLITS = {"train": range(0, 16), "val": range(16, 24), "test": range(24, 32)}


def shapes_voc(root, n: int = 32, size: int = 64, splits=None):
    """A VOC folder of generated shapes: JPEGs, XML boxes (1-based, as VOC), listings."""
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        os.makedirs(root / sub, exist_ok=True)
    for i in range(n):
        ex = shapes_example(11, i, size)
        Image.fromarray(ex["image"]).save(root / "JPEGImages" / f"s{i:03d}.jpg", quality=95)
        write_xml(root, f"s{i:03d}", size, ex["boxes"], ex["classes"])
    for split, idx in (splits or SPLITS).items():
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text(
            "".join(f"s{i:03d}\n" for i in idx))
    return root


def write_xml(root, key, size, boxes, classes):
    objs = "".join(
        f"<object><name>{NAMES[c]}</name><difficult>0</difficult><bndbox>"
        f"<xmin>{int(b[0]) + 1}</xmin><ymin>{int(b[1]) + 1}</ymin><xmax>{int(b[2])}</xmax>"
        f"<ymax>{int(b[3])}</ymax></bndbox></object>" for b, c in zip(boxes, classes, strict=True))
    (root / "Annotations" / f"{key}.xml").write_text(
        f"<annotation><filename>{key}.jpg</filename><size><width>{size}</width><height>"
        f"{size}</height><depth>3</depth></size>{objs}</annotation>")


def voc_config(root, **over):
    c = tiny_config(**over)
    c.data.source = f"voc:{root}"
    c.detection.classes = NAMES
    c.detection.test_split = "test"
    return c


def add_to_listing(root, split, keys):
    with open(root / "ImageSets" / "Main" / f"{split}.txt", "a") as f:
        f.write("".join(f"{k}\n" for k in keys))


def rewrite_image(root, key):
    """The same picture saved again at another JPEG quality: other bytes on disk."""
    path = root / "JPEGImages" / f"{key}.jpg"
    with Image.open(path) as im:
        im.convert("RGB").save(path, quality=60)


def move_a_box(root, key):
    path = root / "Annotations" / f"{key}.xml"
    text = path.read_text()
    start = text.index("<xmax>") + len("<xmax>")
    end = text.index("</xmax>")
    path.write_text(text[:start] + str(int(text[start:end]) - 3) + text[end:])


def _record(root, workdir):
    c = voc_config(root)
    opened = {s: open_detection_source(c.data.source, split=s, class_names=NAMES)
              for s in ("train", "val", "test")}
    DS.record(c, str(workdir), opened,
              lambda s: open_detection_source(c.data.source, split=s, class_names=NAMES))
    return c


def _split(c, name):
    return open_detection_source(c.data.source, split=name, class_names=NAMES)


# ------------------------------------------------------------------------ quick: the record


def test_the_record_names_added_gone_and_changed_files(tmp_path):
    root, workdir = shapes_voc(tmp_path / "voc"), tmp_path / "run"
    workdir.mkdir()
    (root / "ImageSets" / "Main" / "trainval.txt").write_text(
        "".join(f"s{i:03d}\n" for i in range(24)))
    c = _record(root, workdir)
    saved = json.loads((workdir / "splits.json").read_text())
    # every ImageSets list of the folder, each file's image and annotation digests
    assert sorted(saved["splits"]) == ["test", "train", "trainval", "val"]
    assert saved["splits"]["test"]["files"] == [f"s{i:03d}" for i in range(24, 32)]
    assert len(saved["splits"]["test"]["content"]["s024"]) == 2
    assert saved["info"] == {"task": "detection", "source": f"voc:{root}", "seed": 0}
    idx, how = DS.check(str(workdir), c, _split(c, "test"), "test")
    assert idx.tolist() == list(range(8)) and how == ""

    add_to_listing(root, "test", ["s000", "s001"])  # two training images now in the test list
    rewrite_image(root, "s025")
    move_a_box(root, "s026")
    with pytest.raises(WorkdirError) as err:
        DS.check(str(workdir), c, _split(c, "test"), "test")
    msg = str(err.value)
    assert "changed since it was trained" in msg and "test split" in msg
    assert "2 file(s) added (e.g. s000, s001; 2 of them from the training split)" in msg
    assert "1 image file(s) changed (e.g. s025)" in msg
    assert "1 annotation file(s) changed (e.g. s026)" in msg
    assert "--rederive" in msg
    idx, how = DS.check(str(workdir), c, _split(c, "test"), "test", rederive=True)
    assert idx.tolist() == list(range(8))  # the recorded eight, not the two added
    assert how == ", re-derived by file name; 2 of its files changed since training"
    # an unchanged split is still fine; a renamed one names what is gone
    assert DS.check(str(workdir), c, _split(c, "val"), "val")[1] == ""
    os.rename(root / "JPEGImages" / "s030.jpg", root / "JPEGImages" / "x030.jpg")
    os.rename(root / "Annotations" / "s030.xml", root / "Annotations" / "x030.xml")
    (root / "ImageSets" / "Main" / "test.txt").write_text(
        "".join(f"{k}\n" for k in ["s024", "s025", "s026", "s027", "s028", "s029", "x030",
                                   "s031"]))
    (root / "Annotations" / "x030.xml").write_text(
        (root / "Annotations" / "x030.xml").read_text().replace("s030.jpg", "x030.jpg"))
    with pytest.raises(WorkdirError, match=r"1 file\(s\) added \(e.g. x030\); 1 file\(s\) "
                                           r"gone \(e.g. s030\)"):
        DS.check(str(workdir), c, _split(c, "test"), "test")
    with pytest.raises(WorkdirError, match=r"1 file\(s\) of the test split are gone .*s030"):
        DS.check(str(workdir), c, _split(c, "test"), "test", rederive=True)


def test_a_resumed_run_refuses_changed_data_and_a_foreign_record(tmp_path):
    root, workdir = shapes_voc(tmp_path / "voc"), tmp_path / "run"
    workdir.mkdir()
    c = _record(root, workdir)
    before = (workdir / "splits.json").read_bytes()
    _record(root, workdir)  # resumed on the same data: checked, kept as it was
    assert (workdir / "splits.json").read_bytes() == before
    rewrite_image(root, "s003")
    with pytest.raises(WorkdirError, match=r"changed since its run started: .* train split: 1 "
                                           r"image file\(s\) changed \(e.g. s003\)"):
        _record(root, workdir)
    assert (workdir / "splits.json").read_bytes() == before
    c.seed = 5
    with pytest.raises(WorkdirError, match=r"do not belong to the same run \(seed 0 in "
                                           r"splits.json, 5 in config.json\)"):
        DS.check(str(workdir), c, _split(c, "val"), "val")


def test_a_workdir_without_a_record_is_evaluated_unchecked_with_a_warning(tmp_path, caplog):
    root = shapes_voc(tmp_path / "voc")
    c = voc_config(root)
    with caplog.at_level(logging.WARNING):
        idx, how = DS.check(str(tmp_path), c, _split(c, "test"), "test")
    assert idx.tolist() == list(range(8)) and how == ""
    assert "no record of its data" in caplog.text


# --------------------------------------------------------- quick: one fetch per evaluation


def test_evaluation_fetches_the_detections_once_after_every_batch(monkeypatch):
    """A 'detector' that returns the ground truth: mAP 1 over 21 images (padding dropped),
    and the host reads the detections only after the last batch was dispatched."""
    src = open_detection_source("shapes", split="val", image_size=64)  # 64 images
    loader = DetectionLoader(src, np.arange(21), batch_size=8, image_hw=(64, 64), max_boxes=4)
    events = []

    def perfect(state, batch):
        return {"boxes": batch["boxes"], "classes": batch["classes"], "valid": batch["valid"],
                "scores": jnp.where(batch["valid"], 0.9, 0.0)}

    real_to_host = T.to_host
    monkeypatch.setattr(T, "to_host", lambda x: events.append("fetch") or real_to_host(x))
    monkeypatch.setattr(jax, "device_get", lambda x: pytest.fail("a per-batch device_get"))
    batches = loader.epoch

    def counted(epoch, start=0):
        for b in batches(epoch, start):
            events.append("batch")
            yield b

    loader.epoch = counted
    report = B.evaluate_loader(jax.jit(perfect), None, T.make_mesh(), loader, NAMES)
    assert report["num_images"] == 21 and report["voc_map50"] == pytest.approx(1.0)
    assert events == ["batch"] * 3 + ["fetch"] * 4 * 3  # 4 outputs x 3 batches, at the end


# ------------------------------------------------------------- quick: worker processes


def test_detection_evaluation_from_a_worker_process_is_the_threads(tmp_path):
    root = shapes_voc(tmp_path / "voc", n=12, splits={"train": range(12)})
    src = open_detection_source(f"voc:{root}", split="train", class_names=NAMES)
    kw = dict(batch_size=5, image_hw=(48, 64), max_boxes=3)
    ref = list(DetectionLoader(src, np.arange(12), **kw).epoch(0))
    ev = DetectionLoader(src, np.arange(12), processes=1, **kw)
    try:
        for _ in range(2):  # an evaluation loader's passes are all alike (one stream)
            got = list(ev.epoch(0))
            assert len(got) == len(ref) == 3
            for x, y in zip(ref, got, strict=True):
                assert x.keys() == y.keys()
                for k in x:
                    np.testing.assert_array_equal(x[k], y[k])
        assert ref[-1]["mask"].tolist() == [1, 1, 0, 0, 0]
    finally:
        ev.close()


@pytest.mark.slow  # two streams of two spawned workers
def test_detection_training_batches_from_workers_are_the_threads(caplog):
    from train.detection.augment import DetectionAugment

    src = open_detection_source("shapes", shapes_size=40, image_size=64)
    aug = DetectionAugment(hflip=True, scale=0.3, translate=True, brightness=0.2)
    kw = dict(batch_size=8, image_hw=(64, 64), max_boxes=2, train=True, augment=aug, seed=1,
              prefetch=1)
    threads = DetectionLoader(src, np.arange(40), processes=0, **kw)
    workers = DetectionLoader(src, np.arange(40), processes=2, **kw)

    def same(a, b):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert x.keys() == y.keys()
            for k in x:
                np.testing.assert_array_equal(x[k], y[k])

    try:
        with caplog.at_level(logging.WARNING, logger="train.detection.pipeline"):
            for epoch in range(2):  # one stream across epochs
                same(list(threads.epoch(epoch)), list(workers.epoch(epoch)))
        assert workers._live[0] == (2, 0)
        # boxes lost to augmentation or cut at max_boxes, counted from the workers too
        assert workers.dropped == threads.dropped > 0
        cuts = [r.message for r in caplog.records if "max_boxes=2: cut" in r.message]
        assert len(cuts) % 2 == 0 and cuts  # said once per example by each loader
        same(list(threads.epoch(3, 2)), list(workers.epoch(3, 2)))  # a resumed run
        it = workers.epoch(4)
        first = [next(it), next(it)]  # stopped inside an epoch
        it.close()
        same(list(threads.epoch(4))[:2], first)
        same(list(threads.epoch(4, 2)), list(workers.epoch(4, 2)))
    finally:
        workers.close()
