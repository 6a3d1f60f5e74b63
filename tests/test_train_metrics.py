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


def test_wilson_interval_against_published_values():
    # Newcombe (1998) Table I: 81/263 -> 0.2553 to 0.3662; 0/10 -> 0 to 0.2775.
    lo, hi = M.wilson_interval(81, 263)
    assert (round(lo, 4), round(hi, 4)) == (0.2553, 0.3662)
    lo, hi = M.wilson_interval(0, 10)
    assert lo == 0.0 and round(hi, 4) == 0.2775
    assert M.wilson_interval(10, 10)[1] == 1.0 and M.wilson_interval(10, 10)[0] < 1.0
    assert all(np.isnan(M.wilson_interval(0, 0)))


def test_pr_auc_and_thresholds_by_hand():
    # Ranked scores: + - + - - ; AP = (1/2)*1 + (1/2)*(2/3) = 5/6.
    s = np.array([0.9, 0.8, 0.7, 0.3, 0.1])
    y = np.array([1, 0, 1, 0, 0], bool)
    assert M.pr_auc(s, y) == pytest.approx(5 / 6)
    recall, precision = M.pr_curve(s, y)
    assert recall.tolist() == [0, 0.5, 0.5, 1, 1, 1]
    assert precision.tolist() == pytest.approx([1, 1, 0.5, 2 / 3, 0.5, 0.4])
    assert np.isnan(M.pr_auc(s, np.zeros(5, bool)))
    # Sensitivity 0.5 needs one positive above the threshold: 0.9, specificity 1.
    t = M.threshold_for_sensitivity(s, y, 0.5)
    assert t["threshold"] == 0.9 and t["sensitivity"] == 0.5 and t["specificity"] == 1.0
    # 0.95 needs both positives: threshold 0.7 calls 0.8 positive too: specificity 2/3.
    t = M.threshold_for_sensitivity(s, y, 0.95)
    assert t["threshold"] == 0.7 and t["sensitivity"] == 1.0
    assert t["specificity"] == pytest.approx(2 / 3) and (t["tp"], t["fp"]) == (2, 1)
    with pytest.raises(ValueError, match="target sensitivity"):
        M.threshold_for_sensitivity(s, y, 1.5)


def test_decision_report_and_groups():
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
    p0 = np.array([0.9, 0.8, 0.6, 0.3, 0.7, 0.2, 0.1, 0.1, 0.4, 0.05])
    r = M.decision_report(np.stack([p0, 1 - p0], 1), labels, 0, 0.95)
    assert r["balanced_accuracy"] == pytest.approx((3 / 4 + 5 / 6) / 2)
    op = r["operating_point"]
    assert op["threshold"] == 0.5 and (op["tp"], op["fn"], op["fp"], op["tn"]) == (3, 1, 1, 5)
    t = r["at_target_sensitivity"]  # all 4 positives: threshold 0.3 lets in 0.7 and 0.4
    assert t["threshold"] == 0.3 and t["sensitivity"] == 1 and t["specificity"] == 4 / 6
    assert r["intervals"]["accuracy"] == list(M.wilson_interval(8, 10))
    assert r["intervals"]["sensitivity"] == list(M.wilson_interval(3, 4))
    g = M.per_group_accuracy(np.array([1, 0, 1, 1]), ["b", "a", "b", "a"])
    assert g == {"a": {"n": 2, "correct": 1, "accuracy": 0.5},
                 "b": {"n": 2, "correct": 2, "accuracy": 1.0}}
    cm = np.array([[1, 0, 0], [0, 0, 0], [1, 0, 2]])  # class 1 absent: not averaged in
    assert M.balanced_accuracy(cm) == pytest.approx((1 + 2 / 3) / 2)
