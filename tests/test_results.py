"""What a researcher inspects after a run, on a really trained tiny net: the per-image
predictions CSV, the decision metrics in the JSON, the plots as matplotlib objects."""

import csv
import json
import os

import numpy as np
import pytest

from tests.tiny_model import registered, tiny_config
from train import evaluate as E
from train import loop
from train import metrics as M


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    with registered():
        workdir = str(tmp_path_factory.mktemp("results"))
        report = loop.train_and_evaluate(tiny_config(), workdir)
        yield workdir, report


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_predictions_csv_one_row_per_test_image(trained):
    workdir, report = trained
    path = os.path.join(workdir, "predictions_test.csv")
    assert report["predictions"] == path
    rows = _rows(path)
    splits = json.load(open(os.path.join(workdir, "splits.json")))
    assert [r["file"] for r in rows] == splits["files"]["test"]
    for r in rows:  # synthetic keys S007_IMG_00123.png: group S007 by data.group_regex
        assert r["group"] == r["file"].split("_")[0]
        p = np.array([float(r["p_parasitized"]), float(r["p_uninfected"])])
        assert p.sum() == pytest.approx(1, abs=1e-5)
        assert r["predicted"] == ("parasitized", "uninfected")[int(p.argmax())]
        assert r["correct"] == str(int(r["predicted"] == r["true"]))
    # The CSV agrees with the JSON it sits beside.
    saved = json.load(open(os.path.join(workdir, "eval_test.json")))
    assert np.mean([r["correct"] == "1" for r in rows]) == pytest.approx(saved["accuracy"])
    cm = saved["confusion_matrix"]
    assert sum(r["true"] == r["predicted"] == "parasitized" for r in rows) == cm[0][0]


def test_json_has_decision_metrics_that_match_the_csv(trained):
    workdir, _ = trained
    saved = json.load(open(os.path.join(workdir, "eval_test.json")))
    rows = _rows(os.path.join(workdir, "predictions_test.csv"))
    y = np.array([r["true"] == "parasitized" for r in rows])
    s = np.array([float(r["p_parasitized"]) for r in rows])
    t = saved["at_target_sensitivity"]
    assert t["target"] == 0.95 and t["sensitivity"] >= 0.95
    called = s >= t["threshold"] - 1e-6  # the CSV holds 6 decimals
    assert called[y].mean() >= 0.95
    assert t["specificity"] == pytest.approx((~called[~y]).mean())
    op = saved["operating_point"]
    assert op["sensitivity"] == saved["sensitivity"] and op["threshold"] == 0.5
    assert saved["pr_auc"] == pytest.approx(M.pr_auc(s, y), abs=1e-4)
    assert 0 <= saved["balanced_accuracy"] <= 1
    for key in ("accuracy", "sensitivity", "specificity"):
        lo, hi = saved["intervals"][key]
        assert lo <= saved[key] <= hi, key
    groups = {r["group"] for r in rows}
    assert set(saved["per_group"]) == groups and saved["groups"]["count"] == len(groups)
    for g, d in saved["per_group"].items():
        mine = [r["correct"] == "1" for r in rows if r["group"] == g]
        assert d["n"] == len(mine) and d["accuracy"] == pytest.approx(np.mean(mine))


def test_evaluate_again_writes_the_same_predictions_and_keeps_other_ones(trained):
    workdir, _ = trained
    with registered():
        report = E.evaluate(workdir, split="validation")
    path = os.path.join(workdir, "predictions_validation.csv")
    assert report["predictions"] == path and os.path.exists(path)
    first = open(path).read()
    with registered():
        E.evaluate(workdir, split="validation")
    assert open(path).read() == first and not os.path.exists(
        os.path.join(workdir, "predictions_validation.1.csv"))
    with open(path, "a") as f:  # someone's edited copy is kept, not overwritten
        f.write("edited\n")
    with registered():
        E.evaluate(workdir, split="validation")
    assert open(path).read() == first
    assert open(os.path.join(workdir, "predictions_validation.1.csv")).read().endswith("edited\n")
