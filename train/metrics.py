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


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval of a proportion (95% by default); (NaN, NaN) when ``n`` is 0.

    Unlike the normal approximation it stays inside [0, 1] and is sensible at 0 or n
    successes, which a small test set of a good model often has.
    """
    if n <= 0:
        return float("nan"), float("nan")
    p, z2 = successes / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * np.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    lo = 0.0 if successes == 0 else max(0.0, centre - half)  # exact at the ends
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return float(lo), float(hi)


def pr_curve(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(recall, precision) over all thresholds, highest threshold first, from recall 0
    (precision 1 by convention) to recall 1."""
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    s, y = np.asarray(scores, np.float64)[order], np.asarray(positive, bool)[order]
    distinct = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tp = np.cumsum(y)[distinct].astype(np.float64)
    predicted = (distinct + 1).astype(np.float64)
    return np.r_[0.0, tp / max(y.sum(), 1)], np.r_[1.0, tp / predicted]


def pr_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Average precision: sum over thresholds of (recall step) x precision, the
    step-wise area under the precision-recall curve (no interpolation); NaN without
    positives."""
    positive = np.asarray(positive, bool)
    if not positive.any():
        return float("nan")
    recall, precision = pr_curve(scores, positive)
    return float(np.sum(np.diff(recall) * precision[1:]))


def operating_point(scores: np.ndarray, positive: np.ndarray, predicted: np.ndarray,
                    threshold: float | None) -> dict:
    """Sensitivity, specificity, precision of a decision ``predicted`` (bool per example),
    with the counts and the ``threshold`` on the positive class's probability behind it."""
    positive, predicted = np.asarray(positive, bool), np.asarray(predicted, bool)
    tp, fn = int(np.sum(positive & predicted)), int(np.sum(positive & ~predicted))
    fp, tn = int(np.sum(~positive & predicted)), int(np.sum(~positive & ~predicted))
    return {"threshold": threshold, "sensitivity": _ratio(tp, tp + fn),
            "specificity": _ratio(tn, tn + fp), "precision": _ratio(tp, tp + fp),
            "tp": tp, "fn": fn, "fp": fp, "tn": tn}


def threshold_for_sensitivity(scores: np.ndarray, positive: np.ndarray, target: float) -> dict:
    """The highest threshold on ``scores`` whose sensitivity (``score >= threshold`` called
    positive) reaches ``target``, with the specificity it costs; its ``target`` echoed."""
    scores, positive = np.asarray(scores, np.float64), np.asarray(positive, bool)
    if not 0 < target <= 1:
        raise ValueError(f"target sensitivity {target} must be in (0, 1]")
    pos = np.sort(scores[positive])[::-1]
    if not len(pos):
        return {"target": target, **operating_point(scores, positive, scores > np.inf, None)}
    k = int(np.ceil(target * len(pos) - 1e-9))  # positives that must score >= threshold
    t = float(pos[max(k, 1) - 1])
    return {"target": target, **operating_point(scores, positive, scores >= t, t)}


def balanced_accuracy(cm: np.ndarray) -> float:
    """Mean recall over the classes present (robust to class imbalance)."""
    cm = np.asarray(cm)
    support = cm.sum(1)
    recalls = np.diag(cm)[support > 0] / support[support > 0]
    return float(recalls.mean()) if len(recalls) else float("nan")


def per_group_accuracy(correct: np.ndarray, groups: Sequence[str]) -> dict[str, dict]:
    """``{group: {'n', 'correct', 'accuracy'}}`` (e.g. per patient or slide), sorted by name."""
    out: dict[str, dict] = {}
    for g, ok in zip(groups, np.asarray(correct, bool), strict=True):
        d = out.setdefault(str(g), {"n": 0, "correct": 0})
        d["n"] += 1
        d["correct"] += int(ok)
    return {g: {**d, "accuracy": d["correct"] / d["n"]} for g, d in sorted(out.items())}


def decision_report(probs: np.ndarray, labels: np.ndarray, pos: int,
                    target_sensitivity: float = 0.95) -> dict:
    """What a clinician asks beyond accuracy, for the class ``pos`` (one-vs-rest):

    ``operating_point`` of the model's own decision (argmax; for two classes that is a
    0.5 threshold on the positive probability), ``at_target_sensitivity`` (the threshold
    that reaches ``target_sensitivity`` and its specificity), ``pr_auc`` (average
    precision), ``balanced_accuracy`` and 95% Wilson ``intervals`` for accuracy,
    sensitivity and specificity.
    """
    probs, labels = np.asarray(probs, np.float64), np.asarray(labels, np.int64)
    preds = probs.argmax(-1)
    positive, scores = labels == pos, probs[:, pos]
    op = operating_point(scores, positive, preds == pos,
                         0.5 if probs.shape[-1] == 2 else None)
    cm = confusion_matrix(labels, preds, probs.shape[-1])
    n, right = len(labels), int(np.sum(preds == labels))
    return {
        "balanced_accuracy": balanced_accuracy(cm),
        "pr_auc": pr_auc(scores, positive),
        "operating_point": op,
        "at_target_sensitivity": threshold_for_sensitivity(scores, positive, target_sensitivity),
        "intervals": {
            "method": "wilson 95%",
            "accuracy": list(wilson_interval(right, n)),
            "sensitivity": list(wilson_interval(op["tp"], op["tp"] + op["fn"])),
            "specificity": list(wilson_interval(op["tn"], op["tn"] + op["fp"])),
        },
    }


def calibration(probs: np.ndarray, labels: np.ndarray, bins: int = 10) -> dict:
    """Per confidence bin (equal widths over [0, 1] of the predicted class's probability):
    ``count``, mean ``confidence``, ``accuracy`` (NaN when empty), the ``edges``, and the
    expected calibration error ``ece`` (count-weighted mean |accuracy - confidence|)."""
    probs, labels = np.asarray(probs, np.float64), np.asarray(labels, np.int64)
    conf, right = probs.max(-1), probs.argmax(-1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(which, conf, bins) / count
        acc = np.bincount(which, right.astype(np.float64), bins) / count
    filled = count > 0
    ece = float(np.sum(count[filled] * np.abs(acc[filled] - mean_conf[filled])) /
                max(count.sum(), 1))
    return {"edges": edges, "count": count, "confidence": mean_conf, "accuracy": acc,
            "ece": ece}


def confident_mistakes(probs: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Positions of the ``k`` wrong predictions made with the highest probability."""
    probs, labels = np.asarray(probs), np.asarray(labels)
    wrong = np.flatnonzero(probs.argmax(-1) != labels)
    return wrong[np.argsort(-probs[wrong].max(-1), kind="stable")][:k]
