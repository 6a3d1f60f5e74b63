"""The sweep: rows of a recipe as training runs, interrupted and resumed, and their table."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from train import sweep
from train.configs import malaria_zoo

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "tests", "data", "tiny_sweep.py")


def sweep_cmd(out, *extra):
    return [sys.executable, "-m", "scripts.sweep", "--config", TINY, "--out", str(out), *extra]


def test_every_registered_classifier_has_a_malaria_row_above_its_minimum_size():
    import zoo

    classifiers = {n for n in zoo.list_models() if zoo.spec(n).task == "classification"}
    models = {malaria_zoo.get_config(r).model.name for r in malaria_zoo.ROWS}
    assert classifiers <= models, classifiers - models
    for row in malaria_zoo.ROWS:
        c = malaria_zoo.get_config(row)
        assert c.data.image_size >= zoo.spec(c.model.name).min_size, row
        assert c.data.group_regex == r"^(.+?)_IMG"  # held-out slides
    assert sweep.recipe_rows("malaria_zoo") == malaria_zoo.ROWS
    with pytest.raises(ValueError, match="rows: vgg16, vgg19"):
        malaria_zoo.get_config("vgg61")


def test_a_rows_settings_are_dotted_overrides_of_the_shared_ones():
    from train.configs import base, malaria_scratch

    shared, row = malaria_scratch.get_config(), malaria_zoo.get_config("alexnet")
    assert (row.data.image_size, row.learning_rate, row.warmup_steps, row.epochs) == \
        (128, 3e-4, 100, 6)
    assert row.head.kind == "mlp" and row.recompute_bn_batches == 16
    assert row.batch_size == shared.batch_size and row.data.augment.rotate90
    frozen = malaria_zoo.get_config("mobilenet_0.25_imagenet_frozen")
    assert frozen.model.alpha == 0.25 and frozen.init == "imagenet"
    assert not (frozen.data.augment.hflip or frozen.data.augment.vflip
                or frozen.data.augment.rotate90)  # augment='off'
    assert malaria_zoo.get_config("resnet18").head.kind == "reference"
    with pytest.raises(ValueError, match="only 'off'"):
        base.override(base.get_config(), {"augment": "on"})
    with pytest.raises(KeyError, match="nosuchkey"):
        base.override(malaria_scratch.get_config(), {"data.nosuchkey": 1})  # locked


def test_bad_rows_and_overrides_are_named():
    with pytest.raises(sweep.SweepError, match="unknown rows vgg61"):
        sweep.select(malaria_zoo.ROWS, ["vgg16", "vgg61"])
    with pytest.raises(sweep.SweepError, match="no ROWS"):
        sweep.recipe_rows("synthetic")
    with pytest.raises(sweep.SweepError, match=r"did you mean batch_size"):
        sweep.check_overrides(["batchsize=3"])
    with pytest.raises(sweep.SweepError, match=r"use KEY=VALUE"):
        sweep.check_overrides(["batch_size"])
    with pytest.raises(sweep.SweepError, match=r"no config key 'data.sorce'.*data.source"):
        sweep.check_overrides(["data.sorce=folder:x"])
    assert sweep.check_overrides(["data.limit=10", "model.alpha=0.5"]) == [
        "--config.data.limit=10", "--config.model.alpha=0.5"]


def test_cli_lists_rows_and_prints_commands(tmp_path):
    env = {**os.environ, "PYTHONPATH": ROOT}
    listed = subprocess.run([sys.executable, "-m", "scripts.sweep", "--config", "malaria_zoo",
                             "--list"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.split() == list(malaria_zoo.ROWS)
    dry = subprocess.run([sys.executable, "-m", "scripts.sweep", "--config", "malaria_zoo",
                          "--out", str(tmp_path), "--rows", "vgg16,xception", "--dry_run",
                          "--set", "data.limit=100"], cwd=ROOT, env=env, capture_output=True,
                         text=True)
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.splitlines() == [
        f"transfer-zoo train --config malaria_zoo:{r} --workdir {tmp_path / r} "
        "--config.data.limit=100" for r in ("vgg16", "xception")]
    bad = subprocess.run([sys.executable, "-m", "scripts.sweep", "--config", "malaria_zoo",
                          "--out", str(tmp_path), "--rows", "vgg61"], cwd=ROOT, env=env,
                         capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith(
        "error: unknown rows vgg61")
    assert "Traceback" not in bad.stderr and not os.listdir(tmp_path)


@pytest.mark.slow  # four tiny training processes (~2 min on 2 cores)
def test_a_sweep_interrupted_mid_row_resumes_and_tabulates(tmp_path):
    out = tmp_path / "sweep"
    env = {**os.environ, "PYTHONPATH": ROOT}
    proc = subprocess.Popen(sweep_cmd(out), cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    second = out / "resnet18" / "checkpoints" / "last"
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if second.is_dir() and any(d.isdigit() for d in os.listdir(second)):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the sweep ended before its second row checkpointed"
    os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its row, as a crash would
    proc.wait()
    state = json.load(open(out / "sweep.json"))
    assert state["rows"]["squeezenet1_1"]["status"] == "done"
    assert state["rows"]["resnet18"]["status"] == "running"
    first_result = out / "squeezenet1_1" / "eval_test.json"
    mtime = first_result.stat().st_mtime_ns

    again = subprocess.run(sweep_cmd(out), cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "squeezenet1_1: finished before, skipped" in again.stderr
    assert first_result.stat().st_mtime_ns == mtime  # not run again
    assert "resumed from step" in (out / "resnet18" / "train.log").read_text()
    state = json.load(open(out / "sweep.json"))
    assert state["rows"]["resnet18"]["attempts"] == 2
    rows = list(csv.DictReader(open(out / "sweep.csv")))
    assert [r["row"] for r in rows] == ["squeezenet1_1", "resnet18"]
    for r in rows:
        result = json.load(open(out / r["row"] / "eval_test.json"))
        assert float(r["accuracy"]) == pytest.approx(result["accuracy"])
        assert float(r["roc_auc"]) == pytest.approx(result["roc_auc"])
        assert r["status"] == "done" and r["px"] == "32" and r["policy"] == "scratch"
        assert r["model"] == r["row"] and float(r["img_per_s"]) > 0 and float(r["wall_s"]) > 0
        assert r["command"] == (f"transfer-zoo train --config {TINY}:{r['row']} "
                                f"--workdir {out / r['row']}")
    md = (out / "sweep.md").read_text()
    assert md.count("\n") == 4 and "| squeezenet1_1 |" in md and "| resnet18 |" in md
    # the table's command reproduces the row: a finished run re-run only re-evaluates
    assert again.stdout.startswith("| row |")

    # a third run has nothing left to do
    third = subprocess.run(sweep_cmd(out), cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=300)
    assert third.returncode == 0 and third.stderr.count("finished before, skipped") == 2


def test_a_test_time_augmented_row_says_so_in_its_policy(tmp_path):
    """The table's test figures of a run with config.tta are augmented: its policy says so."""
    import json

    w = tmp_path / "row"
    w.mkdir()
    (w / "config.json").write_text(json.dumps({"model": {"name": "resnet18"}, "policy": "scratch",
                                               "epochs": 6, "data": {"image_size": 96}}))
    (w / "eval_test.json").write_text(json.dumps({"accuracy": 0.9586, "tta": "dihedral"}))
    row = sweep.summarize(str(w))
    assert row["policy"] == "scratch, tta dihedral" and row["accuracy"] == 0.9586
    (w / "eval_test.json").write_text(json.dumps({"accuracy": 0.9597}))
    assert sweep.summarize(str(w))["policy"] == "scratch"
