"""End to end on the tiny net: train -> checkpoints -> logs -> evaluate -> predict; NaN stop;
``config.init`` from a checkpoint; locked configs."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.tiny_model import registered, tiny_config
from train import checkpoint as C
from train import classification, loop
from train import data as D
from train import evaluate as E
from train import freeze as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def tiny():
    with registered() as name:
        yield name


@pytest.fixture(scope="module")
def trained(tiny, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("run"))
    config = tiny_config(**{"data.augment.rotate90": True})
    report = loop.train_and_evaluate(config, workdir)
    return workdir, config, report


def test_run_writes_everything_people_read(trained):
    workdir, config, report = trained
    for name in ("config.json", "splits.json", "train.log", "history.jsonl", "history.csv",
                 "eval_test.json", "curves.png", "confusion_test.png", "roc_test.png"):
        assert os.path.getsize(os.path.join(workdir, name)) > 0, name
    assert any(f.startswith("events.out.tfevents") for f in
               os.listdir(os.path.join(workdir, "tensorboard")))
    rows = [json.loads(line) for line in open(os.path.join(workdir, "history.jsonl"))]
    epochs = [r for r in rows if r["split"] == "validation"]
    assert [r["epoch"] for r in epochs] == [1, 2]
    assert {"loss", "accuracy", "sensitivity", "specificity", "roc_auc"} <= set(epochs[0])
    saved = json.load(open(os.path.join(workdir, "eval_test.json")))
    assert saved["data"] == "synthetic (test split)"
    for key in ("accuracy", "per_class", "sensitivity", "specificity", "roc_auc",
                "confusion_matrix", "positive_class"):
        assert key in saved
    assert saved["positive_class"] == "parasitized"
    assert sum(map(sum, saved["confusion_matrix"])) == len(json.load(
        open(os.path.join(workdir, "splits.json")))["test"])
    log = open(os.path.join(workdir, "train.log")).read()
    assert "parameters train" in log and "epoch 2/2" in log


def test_evaluate_and_predict_from_the_workdir(trained, tmp_path):
    workdir, config, report = trained
    again = E.evaluate(workdir)
    assert again["accuracy"] == pytest.approx(report["accuracy"])
    assert again["confusion_matrix"] == report["confusion_matrix"]
    # Another source, classes named differently in case, evaluated whole.
    src = D.synthetic_source(12, seed=7)
    for i in range(12):
        d = tmp_path / ("PARASITIZED" if src.labels[i] == 0 else "Uninfected")
        d.mkdir(exist_ok=True)
        Image.fromarray(src.image(i)).save(d / f"S1_IMG_{i}.png")
    other = E.evaluate(workdir, f"folder:{tmp_path}", positive_class="uninfected")
    assert other["num_examples"] == 12 and other["positive_class"] == "uninfected"
    assert other["data"] == f"folder:{tmp_path}"
    assert os.path.exists(other["json"])
    preds = E.predict(workdir, [str(tmp_path / "Uninfected" / os.listdir(
        tmp_path / "Uninfected")[0])])
    assert preds[0]["class"] in ("parasitized", "uninfected")
    assert 0.5 <= preds[0]["probability"] <= 1.0


def test_rerunning_a_finished_run_resumes_without_redoing_work(trained):
    workdir, config, report = trained
    rows_before = open(os.path.join(workdir, "history.jsonl")).read()
    again = loop.train_and_evaluate(config, workdir)
    assert again["accuracy"] == report["accuracy"]
    assert open(os.path.join(workdir, "history.jsonl")).read() == rows_before


def test_init_from_a_workdir_keeps_backbone_and_refreshes_head(trained, tiny, tmp_path):
    workdir, config, _ = trained
    src = C.restore_variables(workdir)
    c = tiny_config(policy="frozen", init=workdir)
    _, variables = classification.build(c, 3)
    got, want = F.flat_paths(variables["params"]), F.flat_paths(src["params"])
    np.testing.assert_array_equal(got["stem/conv/kernel"], want["stem/conv/kernel"])
    assert got["head/kernel"].shape == (16, 3)  # a fresh head for 3 classes
    np.testing.assert_array_equal(F.flat_paths(variables["batch_stats"])["stage2/bn/mean"],
                                  F.flat_paths(src["batch_stats"])["stage2/bn/mean"])
    with pytest.raises(ValueError, match="does not fit"):  # strict: no silent partial load
        C.load_init(workdir, tiny, {"params": {"extra": {"kernel": np.zeros((2, 2))}},
                                    "batch_stats": {}})



def test_reference_weights_from_a_real_file_keep_the_backbone(tmp_path):
    """config.init=<torchvision .pth> loads the backbone through zoo.pretrained; head is new."""
    from tests.weight_files import random_variables, save_torch_zip, torch_state_from_ours

    name = "squeezenet1_1"
    src = random_variables(name, seed=3)
    path = tmp_path / f"{name}.pth"
    save_torch_zip(torch_state_from_ours(name, src), path)
    want = F.flat_paths(src["params"])
    backbone = {p for p in want if not p.startswith("head/")}
    for kind in ("reference", "mlp"):
        config = tiny_config(policy="frozen", init=str(path),
                             **{"head.kind": kind, "model.name": name, "data.image_size": 32})
        got = F.flat_paths(classification.build(config, 2)[1]["params"])
        assert {p for p in got if not p.startswith("head/")} == backbone
        for p in backbone:
            np.testing.assert_array_equal(got[p], want[p])
        assert got["head/kernel" if kind == "reference" else "head/dense2/kernel"].shape[-1] == 2


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tiny, tmp_path):
    # Warm-up makes step 1's learning rate 0 (finite, checkpointed); step 2's is 2.5e29.
    config = tiny_config(learning_rate=1e30, optimizer="sgd", schedule="constant",
                         warmup_steps=4, checkpoint_every_steps=1, weight_decay=0.0)
    with pytest.raises(loop.NonFiniteLossError, match="last good checkpoint") as err:
        loop.train_and_evaluate(config, str(tmp_path))
    assert "non-finite training step 2 " in str(err.value) and "(step 1)" in str(err.value)
    ckpt_dir = tmp_path / "checkpoints" / "last"
    assert C.Checkpoints.steps(str(ckpt_dir)) == [1]
    v = C.restore_variables(str(ckpt_dir))
    assert all(np.isfinite(x).all() for x in F.flat_paths(v["params"]).values())


def test_configs_are_locked_and_all_recipes_load():
    from train.configs import imagefolder, malaria, synthetic

    for recipe in (synthetic, malaria, imagefolder):
        c = recipe.get_config()
        with pytest.raises(AttributeError, match="batchsize"):
            c.batchsize = 3
        for key in ("model.name", "init", "policy", "data.source", "data.image_size",
                    "batch_size", "epochs", "seed"):
            node = c
            for part in key.split("."):
                node = node[part]


def test_cli_names_a_misspelt_key(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "scripts.train", "--config", "train/configs/synthetic.py",
         "--config.batchsize=3", "--workdir", str(tmp_path)],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT}, capture_output=True, text=True,
        timeout=120)
    assert proc.returncode != 0
    assert "batchsize" in proc.stderr


def test_evaluate_script_prints_and_writes_json(trained):
    workdir = trained[0]
    code = ("import sys; from tests.tiny_model import register; register(); "
            "from absl import app; from scripts import evaluate; "
            f"sys.argv = ['evaluate', '--workdir', {workdir!r}, '--split', 'validation', "
            "'--print_json']; "
            "app.run(evaluate.main)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": ROOT}, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    printed = json.loads(proc.stdout)  # the default output: tests/test_results.py
    assert printed["data"] == "synthetic (validation split)" and "accuracy" in printed
    assert os.path.exists(os.path.join(workdir, "eval_validation.json"))
