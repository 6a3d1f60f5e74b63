"""PNG plots of a run: training curves, confusion matrix, ROC curve (matplotlib, Agg)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from train import metrics as M

log = logging.getLogger(__name__)


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        return plt
    except ImportError:
        log.warning("matplotlib is not installed: no PNG plots")
        return None


def plot_history(rows: list[dict], path: str, boundaries: Sequence[float] = (),
                 keys: Sequence[str] = ("loss", "accuracy")) -> None:
    """``keys`` per epoch, train vs validation; dashed lines at stage ``boundaries``."""
    plt = _pyplot()
    if plt is None or not rows:
        return
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 4), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        for split in ("train", "validation"):
            pts = [(r["epoch"], r[key]) for r in rows
                   if r.get("split") == split and key in r and "epoch" in r]
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", label=split)
        for x in boundaries:
            ax.axvline(x, color="grey", ls="--", lw=0.8)
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_title(key)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_confusion(cm: np.ndarray, class_names: Sequence[str], path: str, title: str = "") -> None:
    """The confusion matrix with counts (rows: true class, columns: predicted)."""
    plt = _pyplot()
    if plt is None:
        return
    cm = np.asarray(cm)
    k = len(class_names)
    fig, ax = plt.subplots(figsize=(1.2 * k + 3, 1.2 * k + 2.5))
    ax.imshow(cm, cmap="Blues")
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center",
                    color="white" if cm[i, j] > cm.max() / 2 else "black")
    ax.set_xticks(range(k), class_names, rotation=45, ha="right")
    ax.set_yticks(range(k), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or "confusion matrix")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_roc(scores: np.ndarray, positive: np.ndarray, path: str, label: str = "") -> None:
    """ROC curve of one class against the rest, with its AUC."""
    plt = _pyplot()
    if plt is None or positive.all() or not positive.any():
        return
    fpr, tpr = M.roc_curve(np.asarray(scores, np.float64), np.asarray(positive, bool))
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot(fpr, tpr, label=f"{label} AUC {M.roc_auc(scores, positive):.4f}")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set_xlabel("false positive rate (1 - specificity)")
    ax.set_ylabel("true positive rate (sensitivity)")
    ax.set_title("ROC")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
