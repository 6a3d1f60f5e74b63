"""Grad-CAM on real ImageNet backbones with their real weights, on real malaria cells
(slow; skipped without ../shared): MobileNetV2-0.35 (the Keras model file) and MobileNet
v1-0.25 (the official Keras weights file), each with a head trained on frozen features of
200 cells through the real training loop, then explained as a user would: the training
run's own Grad-CAM grid, then cells of slides the run never saw."""

import json
import os

import numpy as np
import pytest

from tests import tensorboard_events
from train import data as D
from train import explain, loop, task
from train.configs import malaria

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), "shared")
IMAGES = os.path.join(SHARED, "data", "malaria", "cell_images")
# alpha, weights file, the head's stage: MobileNetV2's dense head trains on cached features;
# MobileNet v1's 1x1-conv head is not cached (every epoch runs the backbone) and learns
# slower (measured: validation accuracy 0.80 after 8 epochs at 1e-2, 0.60 after 4 at 3e-3)
WEIGHTS = {
    "mobilenetv2": (0.35, os.path.join(
        SHARED, "weights", "keras_mobilenet_v2_0.35_224_imagenet_backbone_in_model.h5"),
        "frozen epochs=4 augment=off learning_rate=3e-3"),
    "mobilenet": (0.25, os.path.join(SHARED, "weights", "mobilenet_2_5_224_tf_no_top.h5"),
                  "frozen epochs=8 augment=off learning_rate=1e-2"),
}
SIZE = 128  # the recipe's: a 4 x 4 last feature map

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not os.path.isdir(IMAGES) or not all(
        os.path.exists(p) for _, p, _ in WEIGHTS.values()),
        reason=f"the real malaria cells and ImageNet weights are not in {SHARED}"),
]


@pytest.mark.parametrize("name", sorted(WEIGHTS))
def test_gradcam_of_a_real_backbone_on_real_cells(name, tmp_path):
    alpha, weights, stage = WEIGHTS[name]
    config = malaria.get_config()
    config.model.name, config.model.alpha, config.init = name, alpha, weights
    config.data.source, config.data.limit = f"folder:{IMAGES}", 200
    config.data.image_size, config.batch_size, config.progress = SIZE, 32, False
    config.stages = stage
    workdir = str(tmp_path)
    report = loop.train_and_evaluate(config, workdir)
    # The head learned from the ImageNet features (TensorBoard's HPARAMS numbers of the run).
    _, start, _, numbers = tensorboard_events.hparams(workdir)
    assert start.hparams["init"].string_value == weights
    assert numbers["validation/best_accuracy"] >= 0.7, numbers
    # The end of training drew the Grad-CAM grid of test cells, also for TensorBoard.
    grid = os.path.join(workdir, "stage1", "gradcam_test.png")
    assert report["gradcam"] == grid and os.path.getsize(grid) > 10_000
    assert ("test/gradcam", "image") in tensorboard_events.tags(os.path.join(workdir, "stage1"))
    # Cells of slides the run never saw, explained as `transfer-zoo explain` does.
    splits = json.load(open(os.path.join(workdir, "splits.json")))
    seen = {f.split("_IMG")[0] for part in ("train", "validation", "test")
            for f in splits["files"][part]}
    new = sorted(p for p in (os.path.join(IMAGES, "Parasitized", f) for f in
                             sorted(os.listdir(os.path.join(IMAGES, "Parasitized"))))
                 if os.path.basename(p).split("_IMG")[0] not in seen)[::97][:8]
    assert len(new) == 8
    images = [D.decode_file(p) for p in new]
    shown, cams, probs = explain.explain_images(workdir, images)
    assert shown.shape == (8, SIZE, SIZE, 3) and cams.shape == (8, SIZE, SIZE)
    assert np.isfinite(cams).all() and cams.min() >= 0 and cams.max() <= 1 + 1e-6
    lit = np.abs(cams.max(axis=(1, 2)) - 1) < 1e-5
    # ReLU may leave no positive evidence for an image (an all-zero map), rarely.
    assert lit.sum() >= 6, cams.max(axis=(1, 2))
    assert (cams[lit].std(axis=(1, 2)) > 0.05).all()  # a map, not a constant
    flat = cams[lit].reshape(lit.sum(), -1)
    assert np.corrcoef(flat).min() < 0.9  # each cell its own map
    # The model explained is the one predict runs (same weights, size, normalisation).
    predicted = task.predict(workdir, new)
    names = splits["info"]["classes"]
    for r, p in zip(predicted, probs, strict=True):
        assert r["probabilities"][names[0]] == pytest.approx(float(p[0]), abs=1e-4)
    print(f"{name}: best validation accuracy {numbers['validation/best_accuracy']:.3f}, test "
          f"accuracy {report['accuracy']:.3f}; Grad-CAM of {len(new)} cells "
          f"of new slides, {lit.sum()} lit, p(parasitized) {probs[:, 0].mean():.3f}")
