"""Evaluation metrics against hand-computed values."""

import numpy as np
import pytest

from train import metrics as M


def test_binary_report_by_hand():
    # class 0 = parasitized (positive). 4 positives, 6 negatives.
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
    p0 = np.array([0.9, 0.8, 0.6, 0.3, 0.7, 0.2, 0.1, 0.1, 0.4, 0.05])
    probs = np.stack([p0, 1 - p0], 1)
    r = M.classification_report(probs, labels, ["parasitized", "uninfected"], "Parasitized")
    assert r["confusion_matrix"] == [[3, 1], [1, 5]]
    assert r["accuracy"] == pytest.approx(0.8)
    assert r["sensitivity"] == pytest.approx(3 / 4) and r["specificity"] == pytest.approx(5 / 6)
    assert r["per_class"]["parasitized"] == {"precision": 0.75, "recall": 0.75, "support": 4}
    assert r["per_class"]["uninfected"]["precision"] == pytest.approx(5 / 6)
    # AUC = P(score_pos > score_neg): pairs won by positives, ties count one half.
    pos, neg = p0[labels == 0], p0[labels == 1]
    auc = np.mean([(a > b) + 0.5 * (a == b) for a in pos for b in neg])
    assert r["roc_auc"] == pytest.approx(auc)
    r1 = M.classification_report(probs, labels, ["parasitized", "uninfected"], "uninfected")
    assert r1["sensitivity"] == pytest.approx(5 / 6) and r1["roc_auc"] == pytest.approx(auc)


def test_roc_auc_with_ties_and_edge_cases():
    s = np.array([0.5, 0.5, 0.5, 0.5])
    assert M.roc_auc(s, np.array([1, 0, 1, 0])) == pytest.approx(0.5)
    assert M.roc_auc(np.array([0.9, 0.1]), np.array([1, 0])) == 1.0
    assert np.isnan(M.roc_auc(np.array([0.9, 0.1]), np.array([1, 1])))
    fpr, tpr = M.roc_curve(np.array([0.9, 0.8, 0.1]), np.array([1, 0, 1]))
    assert fpr.tolist() == [0, 0, 1, 1] and tpr.tolist() == [0, 0.5, 0.5, 1]


def test_multiclass_and_errors():
    labels = np.array([0, 1, 2, 2])
    probs = np.eye(3)[[0, 1, 1, 2]]
    r = M.classification_report(probs, labels, ["a", "b", "c"], 2)
    assert r["confusion_matrix"] == [[1, 0, 0], [0, 1, 0], [0, 1, 1]]
    assert r["sensitivity"] == 0.5 and r["specificity"] == 1.0
    assert r["positive_class"] == "c"
    with pytest.raises(ValueError, match="not one of"):
        M.classification_report(probs, labels, ["a", "b", "c"], "d")
