"""Ensembles: members' predictions files averaged image by image, checked to be one split."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from train import ensemble
from train import evaluate as E

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = ["parasitized", "uninfected"]
KEYS = ["C1P1_IMG_a.png", "C1P1_IMG_b.png", "C2P2_IMG_c.png", "C2P2_IMG_d.png"]
LABELS = np.array([0, 0, 1, 1])


def member(path, probs, keys=KEYS, labels=LABELS, names=NAMES):
    """A workdir as evaluation leaves it: config.json and predictions_test.csv."""
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump({"positive_class": "parasitized", "target_sensitivity": 0.95}, f)
    groups = [k.split("_IMG")[0] for k in keys]
    with open(os.path.join(path, "predictions_test.csv"), "w") as f:
        f.write(E.prediction_rows(np.asarray(probs), np.asarray(labels), names, keys, groups))
    return str(path)


def test_two_members_wrong_on_different_images_are_right_together(tmp_path):
    # a is wrong (confidently only a little) on image b, b is wrong on image c
    a = member(tmp_path / "a", [[0.9, 0.1], [0.45, 0.55], [0.2, 0.8], [0.1, 0.9]])
    b = member(tmp_path / "b", [[0.8, 0.2], [0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])
    report = ensemble.ensemble([a, b], str(tmp_path / "ens"))
    assert [m["accuracy"] for m in report["members"]] == [0.75, 0.75]
    assert report["accuracy"] == 1.0 and report["num_examples"] == 4
    rows = E.read_predictions(str(tmp_path / "ens" / "predictions_test.csv"))
    assert [r["file"] for r in rows] == KEYS
    np.testing.assert_allclose([float(r["p_parasitized"]) for r in rows],
                               [0.85, 0.675, 0.4, 0.2])
    saved = json.load(open(tmp_path / "ens" / "eval_test.json"))
    assert saved["accuracy"] == 1.0 and saved["predictions"] == "predictions_test.csv"
    assert saved["groups"]["count"] == 2  # per-slide accuracy, from the members' groups
    assert os.path.getsize(tmp_path / "ens" / "roc_test.png") > 1000


def test_a_member_at_name_uses_its_results_of_that_name(tmp_path):
    a = member(tmp_path / "a", [[0.9, 0.1], [0.45, 0.55], [0.2, 0.8], [0.1, 0.9]])
    b = member(tmp_path / "b", [[0.1, 0.9]] * 4)  # its plain results: half wrong
    os.rename(os.path.join(b, "predictions_test.csv"),
              os.path.join(b, "predictions_test_plain.csv"))
    member(tmp_path / "b", [[0.8, 0.2], [0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])  # its own (TTA)
    with pytest.raises(ensemble.EnsembleError, match="predictions_test_dihedral.csv does not"):
        ensemble.ensemble([a, f"{b}@test_dihedral"], str(tmp_path / "e0"))
    own = ensemble.ensemble([a, b], str(tmp_path / "e1"))
    plain = ensemble.ensemble([a, f"{b}@test_plain"], str(tmp_path / "e2"))
    assert own["accuracy"] == 1.0 and plain["accuracy"] == 0.75
    assert [m["predictions"] for m in plain["members"]] == ["predictions_test.csv",
                                                            "predictions_test_plain.csv"]
    assert ensemble.member_spec("runs/a@b/c", "test") == ("runs/a@b/c", "test")  # a folder
    with pytest.raises(ensemble.EnsembleError, match="name the results after '@'"):
        ensemble.member_spec("runs/a@", "test")


def test_members_are_aligned_by_file_name(tmp_path):
    probs = np.array([[0.9, 0.1], [0.45, 0.55], [0.2, 0.8], [0.1, 0.9]])
    a = member(tmp_path / "a", probs)
    order = [3, 1, 0, 2]
    b = member(tmp_path / "b", probs[order], keys=[KEYS[i] for i in order],
               labels=LABELS[order])
    report = ensemble.ensemble([a, b], str(tmp_path / "ens"))
    rows = E.read_predictions(str(tmp_path / "ens" / "predictions_test.csv"))
    np.testing.assert_allclose([float(r["p_parasitized"]) for r in rows], probs[:, 0])
    assert report["accuracy"] == 0.75


def test_members_of_other_splits_labels_or_classes_are_refused(tmp_path):
    probs = [[0.9, 0.1]] * 4
    a = member(tmp_path / "a", probs)
    other = member(tmp_path / "other", probs, keys=KEYS[:3] + ["C9P9_IMG_z.png"])
    with pytest.raises(ensemble.EnsembleError, match=r"other images.*1 missing.*C2P2_IMG_d"):
        ensemble.ensemble([a, other], str(tmp_path / "e1"))
    relabelled = member(tmp_path / "relabelled", probs, labels=[0, 0, 1, 0])
    with pytest.raises(ensemble.EnsembleError, match="label the same images differently"):
        ensemble.ensemble([a, relabelled], str(tmp_path / "e2"))
    renamed = member(tmp_path / "renamed", probs, names=["infected", "uninfected"])
    with pytest.raises(ensemble.EnsembleError, match="not one task"):
        ensemble.ensemble([a, renamed], str(tmp_path / "e3"))
    with pytest.raises(ensemble.EnsembleError, match="two or more"):
        ensemble.ensemble([a], str(tmp_path / "e4"))
    assert not any(os.path.exists(tmp_path / f"e{i}") for i in range(1, 5))


def test_cli_one_line_for_an_unevaluated_member(tmp_path):
    a = member(tmp_path / "a", [[0.9, 0.1]] * 4)
    os.makedirs(tmp_path / "b")
    proc = subprocess.run([sys.executable, "-m", "scripts.ensemble", "--workdirs",
                           f"{a},{tmp_path / 'b'}", "--out", str(tmp_path / "ens")], cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": ROOT}, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "evaluate the member first" in last
    b = member(tmp_path / "b", [[0.2, 0.8]] * 4)
    ok = subprocess.run([sys.executable, "-m", "scripts.ensemble", "--workdirs", f"{a},{b}",
                         "--out", str(tmp_path / "ens")], cwd=ROOT,
                        env={**os.environ, "PYTHONPATH": ROOT}, capture_output=True,
                        text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "accuracy 0.5000 on 4 images" in ok.stdout and "members: a 0.5000, b 0.5000" in ok.stdout
