"""Data sources (synthetic, folder, tfds via mock data), splits and the batch loader."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from train import data as D
from train import splits as S
from train.pipeline import Augment, Loader, augment


def test_synthetic_is_deterministic_and_balanced():
    a, b = D.synthetic_source(50, seed=3), D.synthetic_source(50, seed=3)
    assert a.class_names == ("parasitized", "uninfected")
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.image(7), b.image(7))
    assert a.image(7).dtype == np.uint8 and a.image(7).shape == (64, 64, 3)
    assert abs(int(a.labels.sum()) - 25) <= 1
    assert not np.array_equal(a.image(7), D.synthetic_source(50, seed=4).image(7))
    assert a.keys[5] == "S005_IMG_00005.png"


def test_synthetic_parasites_are_dark_purple_spots():
    """Infected cells hold pixels darker in green than any uninfected cell's interior."""
    src = D.synthetic_source(40, seed=0)
    darkest = {0: [], 1: []}
    for i in range(40):
        img = src.image(i).astype(float)
        centre = img[16:48, 16:48]
        darkest[int(src.labels[i])].append(centre[..., 1].min())
    assert np.median(darkest[0]) < np.median(darkest[1]) - 30


def _write_folder(root, n_per_class=6, corrupt=1):
    for c, colour in (("Parasitized", 60), ("Uninfected", 200)):
        os.makedirs(root / c)
        for i in range(n_per_class):
            slide = f"C{i % 3}P{i % 3}ThinF"
            img = np.full((20 + i, 24, 3), colour, np.uint8)
            Image.fromarray(img).save(root / c / f"{slide}_IMG_{i:03d}_cell_{i}.png")
    for j in range(corrupt):
        (root / "Uninfected" / f"C9P9ThinF_IMG_broken_{j}.png").write_bytes(b"\x89PNG\r\n not")
    (root / "Uninfected" / "Thumbs.db").write_bytes(b"ignored: not an image extension")


def test_folder_source_skips_and_counts_corrupt_files(tmp_path, caplog):
    _write_folder(tmp_path, corrupt=2)
    src = D.folder_source(str(tmp_path))
    assert src.class_names == ("Parasitized", "Uninfected")
    assert len(src) == 12 and src.skipped == 2
    assert "skipped 2 unreadable" in caplog.text
    assert src.keys[0].startswith("Parasitized/C0P0ThinF_IMG_000")
    img = src.image(0)
    assert img.shape == (20, 24, 3) and img.dtype == np.uint8 and img.max() == 60


def test_folder_source_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        D.open_source(f"folder:{tmp_path}/nope")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a" / "x.png")
    with pytest.raises(ValueError, match="has no images"):
        D.open_source(f"folder:{tmp_path}")
    with pytest.raises(ValueError, match="unknown data source"):
        D.open_source("imagenet")


def test_tfds_source_with_mock_data_never_downloads():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=9):
        src = D.open_source("tfds:malaria")
        assert src.class_names == ("parasitized", "uninfected")
        assert len(src) == 9 and src.keys is None
        img = src.image(3)
        assert img.ndim == 3 and img.shape[-1] == 3 and img.dtype == np.uint8
    with pytest.raises(ValueError, match="no file names"):
        S.group_keys(src.keys, r"^(.+?)_IMG")


def test_stratified_split_is_deterministic_and_disjoint():
    labels = np.repeat([0, 1, 2], [50, 30, 20])
    a = S.make_splits(labels, (0.6, 0.2, 0.2), seed=1)
    b = S.make_splits(labels, (0.6, 0.2, 0.2), seed=1)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert sorted(np.concatenate(list(a.values())).tolist()) == list(range(100))
    assert np.bincount(labels[a["validation"]]).tolist() == [10, 6, 4]
    assert not np.array_equal(a["test"], S.make_splits(labels, (0.6, 0.2, 0.2), seed=2)["test"])


def test_grouped_split_keeps_each_slide_in_one_split_and_balances_classes():
    """Malaria-like slides: ~70 uninfected cells each, parasitized counts from 0 to 600, so
    group size and class are correlated (a naive greedy split leaves no parasitized
    cells to validation and test)."""
    rng = np.random.default_rng(0)
    keys, labels = [], []
    for slide in range(60):
        n_para = int(rng.choice([0, 5, 20, 60, 150, 500])) if slide % 4 else 0
        for i, lab in enumerate([0] * n_para + [1] * int(rng.integers(60, 80))):
            keys.append(f"Cls/C{slide}P{slide}ThinF_IMG_2015_cell_{i}.png")
            labels.append(lab)
    labels = np.asarray(labels)
    groups = S.group_keys(keys, r"^(.+?)_IMG")
    assert groups[0] == "C0P0ThinF"
    parts = S.make_splits(labels, (0.8, 0.1, 0.1), seed=0, groups=groups)
    owner = {}
    for name, idx in parts.items():
        for i in idx:
            assert owner.setdefault(groups[i], name) == name, "a slide is in two splits"
    assert sum(len(v) for v in parts.values()) == len(labels)
    for name, target in (("train", 0.8), ("validation", 0.1), ("test", 0.1)):
        for c in (0, 1):  # every split holds about its share of every class
            share = (labels[parts[name]] == c).sum() / (labels == c).sum()
            assert abs(share - target) < 0.05, (name, c, share)
    again = S.make_splits(labels, (0.8, 0.1, 0.1), seed=0, groups=groups)
    np.testing.assert_array_equal(again["test"], parts["test"])
    no_test = S.make_splits(labels, (0.9, 0.1, 0.0), seed=0, groups=groups)
    assert len(no_test["test"]) == 0 and len(no_test["validation"]) > 0
    with pytest.raises(ValueError, match="does not match"):
        S.group_keys(["Cls/no_prefix.png"], r"^(.+?)_IMG")


def test_splits_are_written_and_reread(tmp_path):
    labels = np.repeat([0, 1], 10)
    parts = S.make_splits(labels, seed=0)
    info = {"source": "x", "seed": 0}
    path = str(tmp_path / "splits.json")
    S.save_splits(path, parts, info, keys=[f"f{i}.png" for i in range(20)])
    saved = json.load(open(path))
    assert saved["files"]["test"] == [f"f{i}.png" for i in parts["test"]]
    again = S.load_splits(path, info)
    np.testing.assert_array_equal(again["train"], parts["train"])
    with pytest.raises(ValueError, match="new workdir"):
        S.load_splits(path, {"source": "y", "seed": 0})
    keep = S.subsample(np.repeat([0, 1], [80, 20]), 10, seed=0)
    assert len(keep) == 10 and (np.repeat([0, 1], [80, 20])[keep] == 1).sum() == 2


def test_augment_keeps_shape_and_is_reproducible():
    img = D.synthetic_source(2).image(0)
    aug = Augment(hflip=True, vflip=True, rotate90=True, rotation=20, crop_scale=0.6,
                  brightness=0.2, contrast=0.2, saturation=0.2)
    a = augment(img, aug, np.random.default_rng(1))
    b = augment(img, aug, np.random.default_rng(1))
    assert a.shape == img.shape and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, augment(img, aug, np.random.default_rng(2)))
    np.testing.assert_array_equal(augment(img, Augment(), np.random.default_rng(0)), img)


def test_loader_orders_pads_and_slices_per_process():
    src = D.synthetic_source(20)
    idx = np.arange(20)
    ev = Loader(src, idx, batch_size=8, image_size=12)
    batches = list(ev.epoch(0))
    assert len(ev) == len(batches) == 3
    assert batches[0]["image"].shape == (8, 12, 12, 3) and batches[0]["image"].dtype == np.uint8
    assert batches[-1]["mask"].tolist() == [1] * 4 + [0] * 4
    tr = Loader(src, idx, batch_size=8, image_size=12, train=True, seed=5,
                augment=Augment(hflip=True))
    assert len(tr) == 2
    e0 = [b["label"].tolist() for b in tr.epoch(0)]
    assert e0 == [b["label"].tolist() for b in tr.epoch(0)]
    resumed = list(tr.epoch(0, start=1))
    np.testing.assert_array_equal(resumed[0]["image"], list(tr.epoch(0))[1]["image"])
    assert not np.array_equal(tr.order(0), tr.order(1))
    halves = [Loader(src, idx, batch_size=8, image_size=12, train=True, seed=5,
                     process_index=p, process_count=2) for p in (0, 1)]
    full = Loader(src, idx, batch_size=8, image_size=12, train=True, seed=5)
    got = np.concatenate([next(iter(h.epoch(0)))["label"] for h in halves])
    np.testing.assert_array_equal(got, next(iter(full.epoch(0)))["label"])
    with pytest.raises(ValueError, match="fewer than batch_size"):
        Loader(src, idx[:4], batch_size=8, image_size=12, train=True)


def test_every_training_loader_serves_the_one_epoch_order():
    """Classification images, cached features and detection images: one order per (seed,
    epoch), the one of ``pipeline.epoch_order``, so a resumed run of any task sees the same
    batches; evaluation loaders keep the split's order."""
    from train import pipeline
    from train.detection.pipeline import DetectionLoader
    from train.features import FeatureLoader

    src, idx = D.synthetic_source(20), np.arange(3, 20)
    for seed, epoch in ((0, 0), (5, 1), (5, 2)):
        want = pipeline.epoch_order(idx, seed, epoch)
        loaders = (Loader(src, idx, batch_size=4, image_size=8, train=True, seed=seed),
                   FeatureLoader(np.zeros((len(idx), 2)), src.labels, idx, 4, train=True,
                                 seed=seed),
                   DetectionLoader(None, idx, batch_size=4, image_hw=(8, 8), train=True,
                                   seed=seed))
        for loader in loaders:
            np.testing.assert_array_equal(loader.order(epoch), want, err_msg=type(loader))
    assert sorted(want) == list(idx) and not np.array_equal(want, pipeline.epoch_order(idx, 5, 1))
    for loader in (Loader(src, idx, batch_size=4, image_size=8),
                   FeatureLoader(np.zeros((len(idx), 2)), src.labels, idx, 4),
                   DetectionLoader(None, idx, batch_size=4, image_hw=(8, 8))):
        np.testing.assert_array_equal(loader.order(3), idx)
    # The order of runs and checkpoints made so far: changing it breaks their exact resume.
    assert pipeline.epoch_order(np.arange(10), 0, 0).tolist() == [7, 1, 6, 4, 5, 8, 0, 3, 9, 2]
    assert pipeline.epoch_order(np.arange(10), 3, 1).tolist() == [8, 9, 6, 3, 4, 1, 0, 7, 2, 5]
