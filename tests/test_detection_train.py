"""Detection through the trainer: scripts.train with a detection recipe, evaluate, detect.

The end-to-end tests share one 4-step training run (about a minute of CPU): slow suite.
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest
from flax import traverse_util
from PIL import Image

from train import checkpoint as C
from train import loop
from train import step as T
from train.configs import base, shapes_yolo
from train.detection import build as B
from train.detection import evaluate as DE
from train.detection.data import shapes_example
from train.freeze import frozen_batch_norm, trainable_fn


def tiny_config(**over):
    c = shapes_yolo.get_config()
    c.unlock()
    c.data.image_size = 64
    c.data.synthetic_size = 16
    c.batch_size = 8
    c.epochs = 2
    c.progress = False
    c.checkpoint_every_steps = 1
    c.log_every_steps = 1
    c.detection.max_boxes = 4
    c.dtype = "float32"
    return base.override(c, over)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("shapes_yolo"))
    report = loop.train_and_evaluate(tiny_config(), workdir)
    return workdir, report


@pytest.mark.slow
def test_train_writes_a_detection_report(trained):
    workdir, report = trained
    assert report["data"] == "shapes (val split)" and report["num_images"] == 64
    assert set(report["per_class"]) == {"circle", "square", "triangle"}
    assert 0.0 <= report["voc_map50"] <= 1.0
    saved = json.load(open(os.path.join(workdir, "eval_val.json")))
    assert saved["voc_map50"] == pytest.approx(report["voc_map50"])
    anchors = json.load(open(os.path.join(workdir, "anchors.json")))
    assert [len(a) for a in anchors] == [3, 3]  # yolov3_tiny: 2 scales x 3, by k-means
    assert json.load(open(os.path.join(workdir, "classes.json"))) == ["circle", "square",
                                                                      "triangle"]
    rows = [json.loads(r) for r in open(os.path.join(workdir, "history.jsonl"))]
    assert {r["split"] for r in rows} >= {"train_step", "train", "validation"}
    val = [r for r in rows if r["split"] == "validation"]
    assert len(val) == 2 and "ap50_circle" in val[0]


@pytest.mark.slow
def test_resume_is_a_no_op_and_evaluate_matches(trained):
    workdir, report = trained
    again = loop.train_and_evaluate(tiny_config(), workdir)  # finished: no more steps
    assert again["checkpoint"] == report["checkpoint"]
    assert again["voc_map50"] == pytest.approx(report["voc_map50"])
    ev = DE.evaluate(workdir)
    assert ev["voc_map50"] == pytest.approx(report["voc_map50"])
    assert DE.is_detection_run(workdir)
    # test-time augmentation is a classifier's: refused by name, before anything runs
    from train import task
    from train.errors import UserError

    with pytest.raises(UserError, match="--tta flips: test-time augmentation is for classif"):
        task.evaluate(workdir, tta="flips")
    with pytest.raises(ValueError, match="config.tta='flips': test-time augmentation is for"):
        loop.train_and_evaluate(tiny_config(tta="flips"), str(workdir) + "_tta")


@pytest.mark.slow
def test_detect_draws_pngs_in_original_coordinates(trained, tmp_path):
    workdir, _ = trained
    path = tmp_path / "img.png"
    Image.fromarray(shapes_example(5, 0, 96)["image"][:, :80]).save(path)  # 96x80, not square
    out = DE.detect_files(workdir, [str(path)], str(tmp_path / "png"), score_threshold=0.0)
    assert len(out) == 1 and os.path.exists(out[0]["png"])
    assert Image.open(out[0]["png"]).size == (80, 96)
    for d in out[0]["detections"]:
        x0, y0, x1, y1 = d["box"]
        assert 0 <= x0 <= x1 <= 80 and 0 <= y0 <= y1 <= 96 and d["class"] in ("circle",
                                                                                "square",
                                                                                "triangle")


@pytest.mark.slow
def test_scripts_dispatch_detection(trained, tmp_path, capsys):
    from absl import flags

    from scripts import evaluate
    from tests.cli import run_script

    workdir, report = trained
    path = tmp_path / "a.png"
    Image.fromarray(shapes_example(6, 0, 64)["image"]).save(path)
    flags.FLAGS(["evaluate", f"--workdir={workdir}", "--data=shapes", "--split=test"])
    evaluate.main(["evaluate"])
    assert "VOC mAP@0.5" in capsys.readouterr().out
    assert os.path.exists(os.path.join(workdir, "eval_test.json"))
    flags.FLAGS.unparse_flags()
    out = run_script("detect", "--workdir", workdir, path, "--out", tmp_path / "png",
                     "--score", "0").stdout
    assert json.loads(out.splitlines()[-1])["path"] == str(path)
    assert (tmp_path / "png" / "a.png").exists()


@pytest.mark.slow
def test_two_stages_train_a_detector_through_the_one_loop(tmp_path):
    """config.stages for a detector: stage 2 starts from stage 1's weights and anchors; the
    top workdir merges the history and evaluates as the last stage."""
    workdir = str(tmp_path)
    stages = "scratch epochs=1; full epochs=1 learning_rate=1e-4 augment=off"
    report = loop.train_and_evaluate(tiny_config(stages=stages), workdir)
    log = open(os.path.join(workdir, "train.log")).read()
    assert "===== stage 1" in log and "===== stage 2" in log
    assert f"policy full, init {os.path.join(workdir, 'stage1')!r}" in log
    rows = [json.loads(r) for r in open(os.path.join(workdir, "history.jsonl"))]
    assert [(r["stage"], r["epoch"]) for r in rows if r["split"] == "validation"] == [(1, 1),
                                                                                      (2, 2)]
    done = json.load(open(os.path.join(workdir, "stages.json")))
    assert [d["policy"] for d in done] == ["scratch", "full"]
    assert done[1]["test"]["voc_map50"] == report["voc_map50"]
    anchors = [json.load(open(os.path.join(workdir, d, "anchors.json")))
               for d in ("stage1", "stage2", ".")]
    assert anchors[0] == anchors[1] == anchors[2]
    stage2 = json.load(open(os.path.join(workdir, "stage2", "config.json")))
    assert stage2["detection"]["scale"] == 0.0 and not stage2["detection"]["translate"]
    assert os.path.getsize(os.path.join(workdir, "curves.png")) > 0
    again = DE.evaluate(workdir)  # classes.json, anchors.json and checkpoints at the top
    assert again["voc_map50"] == pytest.approx(report["voc_map50"])


@pytest.mark.slow
def test_precise_bn_recomputes_a_detectors_neck_statistics(tmp_path):
    """recompute_bn_batches for a detector (bccd_yolo uses it: mid-run, the moving averages
    of its first neck batch norm were 6 batch standard deviations off the weights' own
    statistics, and validation mAP@0.5 read 0.0004 where recomputed statistics give 0.27):
    the weights train exactly as without it, the neck's statistics in the last checkpoint
    are the mean batch statistics of the last epoch's training batches, and batch norms
    the policy freezes (the backbone's, as in bccd_yolo) keep theirs."""
    policy = r"regex:^(?!backbone/.*/mean$)"  # bccd_yolo's
    loop.train_and_evaluate(tiny_config(policy=policy), str(tmp_path / "plain"))
    config = tiny_config(policy=policy, recompute_bn_batches=2)
    loop.train_and_evaluate(config, str(tmp_path / "precise"))
    log = open(os.path.join(tmp_path, "precise", "train.log")).read()
    assert "statistics recomputed from 2 training batches" in log
    a = C.restore_variables(str(tmp_path / "plain" / "checkpoints" / "last"))
    b = C.restore_variables(str(tmp_path / "precise" / "checkpoints" / "last"))
    for path, leaf in traverse_util.flatten_dict(a["params"]).items():
        np.testing.assert_array_equal(leaf, traverse_util.flatten_dict(b["params"])[path])
    moved, got = (traverse_util.flatten_dict(v["batch_stats"]) for v in (a, b))
    for key in got:
        if key[0] == "backbone":  # frozen by the policy: still the initial statistics
            np.testing.assert_array_equal(got[key], moved[key])
            assert np.all(got[key] == (0.0 if key[-1] == "mean" else 1.0)), key
    task = loop.SETUP["detection"](config, str(tmp_path / "precise"), T.make_mesh())
    make, per_epoch = task.train_loader.batch_maker(), len(task.train_loader)
    assert per_epoch == 2
    trainable = trainable_fn(task.spec, policy)
    for name in ("scale1/conv1", "scale2/conv1"):
        means = []
        for k in range(per_epoch):
            x = task.normalize(make((config.epochs - 1) * per_epoch + k)["image"])
            with frozen_batch_norm(trainable):  # the backbone on its statistics, as trained
                _, inter = task.model.apply(
                    {"params": b["params"], "batch_stats": b["batch_stats"]}, x, train=True,
                    mutable=["batch_stats", "intermediates"], capture_intermediates=True,
                    rngs={"dropout": jax.random.PRNGKey(0)})
            y = traverse_util.flatten_dict(inter["intermediates"])[
                ("neck", *name.split("/"), "conv", "__call__")][0]
            means.append(np.asarray(y, np.float64).mean((0, 1, 2)))
        key = ("neck", *name.split("/"), "bn", "mean")
        np.testing.assert_allclose(got[key], np.mean(means, 0), rtol=5e-3, atol=1e-5,
                                   err_msg=name)
        assert not np.allclose(moved[key], np.mean(means, 0), rtol=5e-3, atol=1e-5), name


def test_anchors_and_models_from_config(tmp_path):
    c = tiny_config()
    src = B.open_split(c, "train")
    assert src.class_names == ("circle", "square", "triangle")
    c.detection.anchors = (((30, 30), (40, 40), (50, 50)), ((10, 10), (15, 15), (20, 20)))
    assert B.resolve_anchors(c, src, str(tmp_path))[1][0] == (10.0, 10.0)
    c.detection.anchors = ()
    c.detection.auto_anchors = False
    assert B.resolve_anchors(c, src, None)[0][0] == (81.0, 82.0)  # the model's (Darknet's)
    import ml_collections

    c.model = ml_collections.ConfigDict({"name": "yolov1"})
    assert B.resolve_anchors(c, src, None) is None
    c.model = ml_collections.ConfigDict({"name": "yolo_resnet18", "widths": (32, 16)})
    c.detection.auto_anchors = True
    anchors = B.resolve_anchors(c, src, None)
    model = B.build_detector(c, 3, anchors)
    assert [len(a) for a in anchors] == [3, 3] and model.widths == (32, 16)
    v = B.init_variables(model, (64, 64), 0)
    assert "backbone" in v["params"] and "neck" in v["params"]
    with pytest.raises(ValueError, match="no zoo backbone"):
        c.init = "imagenet"
        B.load_init(c, B.build_detector(tiny_config(), 3, None), {})


@pytest.mark.parametrize("recipe", ["shapes_yolo", "bccd_yolo"])
def test_detection_recipes_build(recipe):
    import importlib

    import jax
    import jax.numpy as jnp

    import zoo

    c = importlib.import_module(f"train.configs.{recipe}").get_config()
    if c.model.name not in zoo.list_models():
        pytest.skip(f"{c.model.name} is not registered in this checkout")
    assert zoo.spec(c.model.name).task == "detection" and c.best_metric == "voc_map50"
    hw = B.image_hw(c)
    assert hw[0] % 32 == 0 and hw[1] % 32 == 0
    n = len(B.model_kwargs(c).get("widths", (0, 0, 0) if "tiny" not in c.model.name else (0, 0)))
    anchors = tuple(((10.0 * (i + 1), 10.0 * (i + 1)),) * 3 for i in range(n))
    model = B.build_detector(c, 3, anchors)
    x = jax.ShapeDtypeStruct((1, *hw, 3), jnp.float32)
    out = jax.eval_shape(lambda x: model.apply(model.init(jax.random.PRNGKey(0), x), x), x)
    assert [o.shape[1:3] for o in out] == [(hw[0] // s, hw[1] // s) for s in (32, 16, 8)[:n]]


def test_device_augmentation_is_refused_for_detectors():
    from train.detection.data import open_detection_source

    c = tiny_config(**{"data.augment.device": True})
    with pytest.raises(ValueError, match="augment.device is for classifiers"):
        B.loader(c, open_detection_source("shapes", shapes_size=8), train=True)
