"""Plots of a run as matplotlib figures: training curves, confusion matrix, ROC and
precision-recall curves with operating points, reliability diagram, a grid of images.

Every function builds a :class:`matplotlib.figure.Figure` with the object API (no pyplot,
no global backend switch), saves it when given ``path`` and returns it, so a notebook
shows it inline (it has ``_repr_png_``: no ``%matplotlib inline`` needed); without
matplotlib it warns once and returns None.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from train import metrics as M

log = logging.getLogger(__name__)

VALIDATION_EXTRAS = ("sensitivity", "specificity", "roc_auc")  # one panel when logged


DPI = 100  # of the saved PNGs and of the inline ones


@functools.cache
def _figure_class():
    try:
        from matplotlib.figure import Figure as MatplotlibFigure
    except ImportError:
        log.warning("matplotlib is not installed: no plots")
        return None

    class Figure(MatplotlibFigure):
        """A matplotlib Figure that shows itself as a PNG in Jupyter and Colab without
        ``%matplotlib inline`` or pyplot (IPython's ``_repr_png_`` protocol; where the
        inline backend is active, its own figure formatter draws it the same way)."""

        def _repr_png_(self) -> bytes:
            import io

            buf = io.BytesIO()
            self.savefig(buf, format="png", dpi=DPI)
            return buf.getvalue()

    return Figure


def _new(width: float, height: float, ncols: int = 1, nrows: int = 1):
    """``(figure, axes array [nrows, ncols])`` or ``(None, None)`` without matplotlib."""
    figure = _figure_class()
    if figure is None:
        return None, None
    fig = figure(figsize=(width, height))
    return fig, fig.subplots(nrows, ncols, squeeze=False)


def _finish(fig, path: str | None):
    fig.tight_layout(rect=(0, 0, 1, 0.93) if fig.get_suptitle() else None)
    if path:
        fig.savefig(path, dpi=DPI)
    return fig


def plot_history(rows: list[dict], path: str | None = None, boundaries: Sequence[float] = (),
                 keys: Sequence[str] = ("loss", "accuracy")) -> Any:
    """``keys`` per epoch, train vs validation; validation sensitivity, specificity and ROC
    AUC in one panel and the learning rate per step when the history has them; dashed
    lines at stage ``boundaries`` (epochs; default: between the stages of a staged run's
    merged history, whose rows carry ``stage``)."""
    if not rows:
        return None
    if not boundaries:
        ends = {}
        for r in rows:
            if "stage" in r and "epoch" in r:
                ends[r["stage"]] = max(ends.get(r["stage"], 0), r["epoch"])
        boundaries = [ends[s] + 0.5 for s in sorted(ends)[:-1]]
    val = [r for r in rows if r.get("split") == "validation"]
    extras = [k for k in VALIDATION_EXTRAS if any(k in r for r in val)]
    lr = [(r["step"], r["learning_rate"]) for r in rows
          if r.get("split") == "train_step" and "learning_rate" in r]
    panels = [*keys, *(["validation"] if extras else []), *(["learning rate"] if lr else [])]
    fig, axes = _new(5 * len(panels), 4, len(panels))
    if fig is None:
        return None
    for ax, key in zip(axes[0], panels, strict=True):
        if key == "learning rate":
            ax.plot(*zip(*lr, strict=True), color="tab:purple")
            ax.set_xlabel("step")
            ax.set_title("learning rate (head)")
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
            ax.grid(alpha=0.3)
            continue
        if key == "validation":
            series = [(k, "validation", k) for k in extras]
        else:
            series = [(key, split, split) for split in ("train", "validation")]
        for metric, split, label in series:
            pts = [(r["epoch"], r[metric]) for r in rows
                   if r.get("split") == split and r.get(metric) is not None and "epoch" in r]
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", label=label)
        for x in boundaries:
            ax.axvline(x, color="grey", ls="--", lw=0.8)
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_title(key)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    return _finish(fig, path)


def plot_confusion(cm: np.ndarray, class_names: Sequence[str], path: str | None = None,
                   title: str = "", normalize: bool = True) -> Any:
    """The confusion matrix (rows: true class, columns: predicted), coloured by the
    fraction of each true class (row-normalised: the diagonal is each class's recall),
    with the fraction and the count in each cell."""
    cm = np.asarray(cm)
    k = len(class_names)
    fig, axes = _new(1.2 * k + 3, 1.2 * k + 2.5)
    if fig is None:
        return None
    ax = axes[0, 0]
    rows = cm.sum(1, keepdims=True)
    frac = np.divide(cm, rows, out=np.zeros(cm.shape), where=rows > 0)
    shown = frac if normalize else cm
    im = ax.imshow(shown, cmap="Blues", vmin=0, vmax=1 if normalize else None)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    top = shown.max() if shown.size else 1
    for i in range(k):
        for j in range(k):
            text = f"{frac[i, j]:.2f}\n({cm[i, j]})" if normalize else str(cm[i, j])
            ax.text(j, i, text, ha="center", va="center",
                    color="white" if shown[i, j] > top / 2 else "black")
    ax.set_xticks(range(k), class_names, rotation=45, ha="right")
    ax.set_yticks(range(k), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or ("confusion matrix (fraction of each true class)" if normalize
                           else "confusion matrix"))
    return _finish(fig, path)


def _points(ax, points: dict[str, dict] | None, x_key: str, y_key: str) -> None:
    """Operating points ``{label: {metric: value}}`` as markers with a legend entry."""
    for (label, p), marker in zip((points or {}).items(), "oDs^v", strict=False):
        x, y = p.get(x_key), p.get(y_key)
        if x is None or y is None or not (np.isfinite(x) and np.isfinite(y)):
            continue
        ax.plot([x], [y], marker=marker, ls="", ms=8, label=label)


def plot_roc(scores: np.ndarray, positive: np.ndarray, path: str | None = None,
             label: str = "", points: dict[str, dict] | None = None) -> Any:
    """ROC curve of one class against the rest with its AUC; ``points`` (operating points
    with ``sensitivity`` and ``specificity``) marked on it."""
    positive = np.asarray(positive, bool)
    if positive.all() or not positive.any():
        return None
    fig, axes = _new(5, 5)
    if fig is None:
        return None
    ax = axes[0, 0]
    fpr, tpr = M.roc_curve(np.asarray(scores, np.float64), positive)
    ax.plot(fpr, tpr, label=f"{label} AUC {M.roc_auc(scores, positive):.4f}")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    marked = {k: {"fpr": 1 - p["specificity"], "tpr": p["sensitivity"]}
              for k, p in (points or {}).items()
              if p.get("specificity") is not None and p.get("sensitivity") is not None}
    _points(ax, marked, "fpr", "tpr")
    ax.set_xlabel("false positive rate (1 - specificity)")
    ax.set_ylabel("true positive rate (sensitivity)")
    ax.set_title("ROC")
    ax.legend(loc="lower right")
    return _finish(fig, path)


def plot_pr(scores: np.ndarray, positive: np.ndarray, path: str | None = None,
            label: str = "", points: dict[str, dict] | None = None) -> Any:
    """Precision-recall curve of one class with its average precision and the positive
    rate (a random classifier's precision); ``points`` (``sensitivity``, ``precision``)
    marked on it."""
    positive = np.asarray(positive, bool)
    if not positive.any():
        return None
    fig, axes = _new(5, 5)
    if fig is None:
        return None
    ax = axes[0, 0]
    recall, precision = M.pr_curve(np.asarray(scores, np.float64), positive)
    ax.step(recall, precision, where="post",
            label=f"{label} AP {M.pr_auc(scores, positive):.4f}")
    ax.axhline(positive.mean(), color="k", ls="--", lw=0.8, label="chance")
    _points(ax, points, "sensitivity", "precision")
    ax.set_xlabel("recall (sensitivity)")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_title("precision-recall")
    ax.legend(loc="lower left")
    return _finish(fig, path)


def plot_reliability(probs: np.ndarray, labels: np.ndarray, path: str | None = None,
                     bins: int = 10) -> Any:
    """Reliability diagram: accuracy against confidence (the predicted class's
    probability) per confidence bin, bar widths as in the bins, the expected calibration
    error in the title, and how many images each bin holds."""
    cal = M.calibration(probs, labels, bins)
    fig, axes = _new(5, 6, nrows=2)
    if fig is None:
        return None
    ax, hist = axes[0, 0], axes[1, 0]
    fig.set_size_inches(5, 6.5)
    edges, filled = cal["edges"], cal["count"] > 0
    width = np.diff(edges)
    ax.bar(edges[:-1][filled], cal["accuracy"][filled], width=width[filled], align="edge",
           edgecolor="k", alpha=0.7, label="accuracy")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="perfect calibration")
    ax.plot(cal["confidence"][filled], cal["accuracy"][filled], "o", color="tab:red",
            label="mean confidence")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.set_title(f"reliability (ECE {cal['ece']:.4f})")
    ax.legend(loc="upper left")
    hist.bar(edges[:-1], cal["count"], width=width, align="edge", edgecolor="k")
    hist.set_xlim(0, 1)
    hist.set_xlabel("confidence (probability of the predicted class)")
    hist.set_ylabel("images")
    return _finish(fig, path)


def plot_images(images: Sequence[np.ndarray], titles: Sequence[str], path: str | None = None,
                suptitle: str = "", cols: int = 6, overlays: Sequence[np.ndarray] | None = None
                ) -> Any:
    """A grid of images with a title each; ``overlays`` (heat maps in [0, 1], one per
    image) drawn half-transparent on top."""
    n = len(images)
    if not n:
        return None
    cols = min(cols, n)
    rows = -(-n // cols)
    fig, axes = _new(2.2 * cols, 2.9 * rows + (0.5 if suptitle else 0), cols, rows)
    if fig is None:
        return None
    for i, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if i >= n:
            continue
        img = np.asarray(images[i])
        ax.imshow(img)
        if overlays is not None:
            ax.imshow(overlays[i], cmap="jet", alpha=0.45, vmin=0, vmax=1,
                      extent=(-0.5, img.shape[1] - 0.5, img.shape[0] - 0.5, -0.5))
        ax.set_title(titles[i], fontsize=8)
    if suptitle:
        fig.suptitle(suptitle)
    return _finish(fig, path)
