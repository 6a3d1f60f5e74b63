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


def test_the_record_names_added_gone_and_changed_files(tmp_path, caplog):
    root, workdir = shapes_voc(tmp_path / "voc"), tmp_path / "run"
    workdir.mkdir()
    (root / "ImageSets" / "Main" / "trainval.txt").write_text(
        "".join(f"s{i:03d}\n" for i in range(24)))
    (root / "ImageSets" / "Main" / "extra.txt").write_text("nothing_here\n")  # no annotation
    with caplog.at_level(logging.WARNING):
        c = _record(root, workdir)
    assert "split extra not recorded (it cannot be read" in caplog.text  # the run goes on
    saved = json.loads((workdir / "splits.json").read_text())
    # every (readable) ImageSets list of the folder, each file's image and annotation digests
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


# ------------------------------------------------- end to end: one short run on a VOC folder


@pytest.fixture(scope="module")
def voc_run(tmp_path_factory):
    from train import loop

    base = tmp_path_factory.mktemp("voc_run")
    root, workdir = shapes_voc(base / "voc"), base / "run"
    config = voc_config(root, epochs=1)
    report = loop.train_and_evaluate(config, str(workdir))
    return root, str(workdir), config, report


@pytest.mark.slow
def test_detect_names_each_bad_file_and_goes_on(voc_run, tmp_path, monkeypatch):
    from tests.cli import run_script

    root, workdir, *_ = voc_run
    good = [root / "JPEGImages" / f"s{i:03d}.jpg" for i in range(24, 32)]
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good[0].read_bytes()[: good[0].stat().st_size // 2])
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    missing, folder = tmp_path / "missing.jpg", tmp_path
    bad = [truncated, empty, missing, folder]
    # in the library: the order kept across chunks of one batch each, bad files in between
    monkeypatch.setattr(DE, "CHUNK_BATCHES", 1)
    paths = [str(p) for p in [good[0], *bad, *good[1:]]]
    out = DE.detect_files(workdir, paths, score_threshold=0.0)
    assert [r["path"] for r in out] == paths
    assert ["error" in r for r in out] == [False] + [True] * 4 + [False] * 7
    for r, p in zip(out[1:5], bad, strict=True):
        assert str(p) in r["error"]
    twin = tmp_path / "other" / good[3].name  # the same name in another folder
    twin.parent.mkdir()
    twin.write_bytes(good[3].read_bytes())
    drawn = DE.detect_files(workdir, [str(good[3]), str(twin)], str(tmp_path / "png"))
    assert [os.path.basename(r["png"]) for r in drawn] == ["s027.png", "s027_1.png"]
    png = tmp_path / "png" / "in.png"  # an input PNG in the output folder is not drawn over
    Image.open(good[3]).save(png)
    before = png.read_bytes()
    drawn = DE.detect_files(workdir, [str(png)], str(tmp_path / "png"))
    assert drawn[0]["png"].endswith("in_1.png") and png.read_bytes() == before
    alone = DE.detect_files(workdir, [str(good[3])], score_threshold=0.0)[0]
    together = out[7]  # the same file inside a batch of eight
    assert len(alone["detections"]) == len(together["detections"]) > 0
    for a, b in zip(alone["detections"], together["detections"], strict=True):
        assert a["class"] == b["class"] and a["score"] == pytest.approx(b["score"], abs=1e-4)
        np.testing.assert_allclose(a["box"], b["box"], atol=0.2)
    # the scripts: one line per bad file on stderr, the good one detected, exit status 2
    files = [good[0], *bad]
    for script in ("detect", "predict"):
        proc = run_script(script, "--workdir", workdir, *files, check=False)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
        for p in bad:
            assert any(str(p) in line for line in errors), (script, p, errors)
        assert errors[-1] == "error: 4 of 5 file(s) could not be read"
        if script == "detect":
            lines = proc.stdout.splitlines()
            assert len(lines) == 1 and json.loads(lines[0])["path"] == str(good[0])
        else:
            assert all(line.startswith(f"{good[0]}\t") for line in proc.stdout.splitlines())


@pytest.mark.slow
def test_one_fetch_per_pass_gives_the_per_batch_numbers(voc_run):
    """The trained detector's test mAP, detections fetched once, equals the per-batch
    ``jax.device_get`` evaluation it replaced."""
    from train.detection import predict as P

    _, workdir, config, report = voc_run
    run = DE.load_run(workdir)
    data = B.loader(config, B.open_split(config, "test", NAMES), train=False, batch_size=3)
    once = B.evaluate_loader(run["eval_fn"], run["state"], run["mesh"], data, NAMES)

    def per_batch(b):
        return jax.device_get(run["eval_fn"](run["state"], T.shard_batch(
            {k: b[k] for k in ("image", "mask")}, run["mesh"])))

    old = P.evaluate_batches(per_batch, data.epoch(0), NAMES)
    assert once["num_images"] == old["num_images"] == 8
    for key in ("voc_map50", "coco_ap", "coco_ap50"):
        assert once[key] == old[key]
    assert once["per_class"] == old["per_class"]
    assert once["voc_map50"] == report["voc_map50"]  # batch 3 or the run's 8: the same


@pytest.mark.slow
def test_evaluate_refuses_changed_data_and_rederives_when_asked(voc_run):
    from tests.cli import run_script
    from train import loop

    root, workdir, config, report = voc_run
    assert report["data"] == f"voc:{root} (test split)" and report["num_images"] == 8
    saved = os.path.join(workdir, "eval_test.json")
    first = DE.evaluate(workdir)  # unchanged data: the final evaluation's numbers again
    assert first["voc_map50"] == report["voc_map50"] and first["coco_ap"] == report["coco_ap"]
    assert not os.path.exists(os.path.join(workdir, "eval_test.1.json"))  # same result kept
    before = open(saved, "rb").read()

    add_to_listing(root, "test", ["s000", "s001"])  # two training images join the test list
    with pytest.raises(WorkdirError, match=r"2 file\(s\) added \(e.g. s000, s001; 2 of them "
                                           r"from the training split\)"):
        DE.evaluate(workdir)
    assert open(saved, "rb").read() == before  # nothing written
    proc = run_script("evaluate", "--workdir", workdir, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: the data of {workdir} "
                                                           "changed since it was trained")
    again = DE.evaluate(workdir, rederive=True)  # the recorded eight, found by name
    assert again["num_images"] == 8 and again["data"].endswith(
        "(test split, re-derived by file name)")
    assert again["voc_map50"] == report["voc_map50"] and again["coco_ap"] == report["coco_ap"]
    assert open(os.path.join(workdir, "eval_test.1.json"), "rb").read() == before  # kept
    out = run_script("evaluate", "--workdir", workdir, "--rederive").stdout
    assert "re-derived by file name" in out

    rewrite_image(root, "s025")
    move_a_box(root, "s026")
    with pytest.raises(WorkdirError, match=r"1 image file\(s\) changed \(e.g. s025\); 1 "
                                           r"annotation file\(s\) changed \(e.g. s026\)"):
        DE.evaluate(workdir)
    changed = DE.evaluate(workdir, rederive=True)
    assert changed["data"].endswith("re-derived by file name; 2 of its files changed since "
                                    "training)")
    # re-running the training command on the changed data: refused, nothing mixed
    with pytest.raises(WorkdirError, match="changed since its run started"):
        loop.train_and_evaluate(config, workdir)
