"""Classification metrics from predicted probabilities: plain numpy, no framework."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """``m[true, predicted]`` counts."""
    m = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(m, (np.asarray(labels), np.asarray(preds)), 1)
    return m


def roc_curve(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rates, true positive rates) over all thresholds, from (0, 0) to (1, 1)."""
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], positive[order].astype(np.float64)
    distinct = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # last index of each score value
    tp, fp = np.cumsum(y)[distinct], np.cumsum(1 - y)[distinct]
    p, n = max(y.sum(), 1.0), max((1 - y).sum(), 1.0)
    return np.r_[0.0, fp / n], np.r_[0.0, tp / p]


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve (ties count one half); NaN when a class is absent."""
    positive = np.asarray(positive, bool)
    if positive.all() or not positive.any():
        return float("nan")
    fpr, tpr = roc_curve(np.asarray(scores, np.float64), positive)
    return float(np.trapezoid(tpr, fpr))


def _ratio(a: float, b: float) -> float:
    return float(a / b) if b else float("nan")


def classification_report(probs: np.ndarray, labels: np.ndarray, class_names: Sequence[str],
                          positive_class: str | int | None = None) -> dict:
    """Accuracy, per-class precision/recall, sensitivity/specificity and ROC AUC of one class.

    ``positive_class`` (a name or an index; default class 0) is the class that
    sensitivity, specificity and ROC AUC are about (one-vs-rest when there are more than
    two classes). ``macro_roc_auc`` averages one-vs-rest AUC over classes.
    """
    probs, labels = np.asarray(probs, np.float64), np.asarray(labels, np.int64)
    k = len(class_names)
    pos = resolve_class(positive_class, class_names)
    preds = probs.argmax(-1)
    cm = confusion_matrix(labels, preds, k)
    per_class = {
        name: {"precision": _ratio(cm[c, c], cm[:, c].sum()),
               "recall": _ratio(cm[c, c], cm[c].sum()), "support": int(cm[c].sum())}
        for c, name in enumerate(class_names)
    }
    tp, fn = cm[pos, pos], cm[pos].sum() - cm[pos, pos]
    fp = cm[:, pos].sum() - cm[pos, pos]
    tn = cm.sum() - tp - fn - fp
    aucs = [roc_auc(probs[:, c], labels == c) for c in range(k)]
    return {
        "accuracy": _ratio(np.trace(cm), cm.sum()),
        "num_examples": int(cm.sum()),
        "positive_class": class_names[pos],
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "roc_auc": aucs[pos],
        "macro_roc_auc": float(np.nanmean(aucs)) if not np.all(np.isnan(aucs)) else float("nan"),
        "per_class": per_class,
        "class_names": list(class_names),
        "confusion_matrix": cm.tolist(),
    }


def resolve_class(positive_class: str | int | None, class_names: Sequence[str]) -> int:
    """Index of a class given by name (case-insensitive) or index; None or '' -> 0."""
    if positive_class is None or positive_class == "":
        return 0
    if isinstance(positive_class, int):
        if not 0 <= positive_class < len(class_names):
            raise ValueError(f"positive class index {positive_class} out of range")
        return positive_class
    lower = [c.lower() for c in class_names]
    if str(positive_class).lower() not in lower:
        raise ValueError(f"positive class {positive_class!r} is not one of {list(class_names)}")
    return lower.index(str(positive_class).lower())
