"""Run logs people can read: JSONL + CSV history, TensorBoard events, console progress."""

from __future__ import annotations

import csv
import itertools
import json
import logging
import math
import numbers
import os
import re
import sys
from typing import Any

from train.workdir import flat as flatten

log = logging.getLogger(__name__)


def setup_logging(workdir: str) -> None:
    """The project's INFO messages to stderr and ``<workdir>/train.log``; library chatter
    (orbax, absl) only from WARNING up."""
    ours = logging.getLogger("train")
    ours.setLevel(logging.INFO)
    ours.propagate = False
    path = os.path.abspath(os.path.join(workdir, "train.log"))
    for h in [h for h in ours.handlers if isinstance(h, logging.FileHandler)]:
        if h.baseFilename != path:
            ours.removeHandler(h)
            h.close()
    if not any(isinstance(h, logging.FileHandler) for h in ours.handlers):
        fh = logging.FileHandler(path)
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        ours.addHandler(fh)
    if not any(type(h) is logging.StreamHandler for h in ours.handlers):
        sh = logging.StreamHandler(sys.stderr)
        sh.setFormatter(logging.Formatter("%(message)s"))
        ours.addHandler(sh)
    for chatty in ("absl", "jax"):
        logging.getLogger(chatty).setLevel(logging.WARNING)


def quiet(verbose: bool = False) -> None:
    """A command's output without library chatter: absl, orbax and JAX INFO lines (orbax's
    read throughput, JAX's backend probing) hidden, warnings and errors kept; ``verbose``
    shows everything."""
    level = logging.INFO if verbose else logging.WARNING
    try:
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.INFO if verbose else absl_logging.WARNING)
    except ImportError:
        pass
    for name in ("absl", "jax", "orbax"):
        logging.getLogger(name).setLevel(level)


class History:
    """Appends metric rows to ``history.jsonl``/``history.csv`` and TensorBoard events.

    On resume from ``step``, rows logged after that step (work the interrupted run did
    after its last checkpoint, about to be redone) are dropped, and TensorBoard purges them.
    """

    def __init__(self, workdir: str, resume_step: int = 0, enabled: bool = True):
        self.enabled = enabled  # only the first process writes in a multi-host run
        self.jsonl = os.path.join(workdir, "history.jsonl")
        self.csv = os.path.join(workdir, "history.csv")
        self.rows = [r for r in read_history(workdir) if r["step"] <= resume_step]
        self.tb = None
        if not enabled:
            return
        self._rewrite()
        try:
            self.tb = summary_writer(workdir, purge_step=resume_step or None)
        except ImportError:
            log.warning("tensorboardX is not installed: no TensorBoard events are written")
            return
        config = os.path.join(workdir, "config.json")
        if os.path.exists(config) and not resume_step:  # the run's config, as text
            with open(config) as f:
                self.tb.add_text("config", "```\n" + f.read() + "\n```", 0)

    def write(self, step: int, split: str, metrics: dict[str, Any], **extra: Any) -> None:
        """One row: ``{'step', 'split', **extra, **metrics}``; scalars go to TensorBoard."""
        if not self.enabled:
            return
        row = {"step": int(step), "split": split, **extra,
               **{k: _plain(v) for k, v in metrics.items()}}
        self.rows.append(row)
        with open(self.jsonl, "a") as f:
            f.write(json.dumps(row) + "\n")
        self._write_csv()
        if self.tb is not None:
            for k, v in row.items():
                if isinstance(v, int | float) and not isinstance(v, bool) and k not in (
                        "step", "epoch"):
                    self.tb.add_scalar(f"{split}/{k}", v, step)
            self.tb.flush()

    def _rewrite(self) -> None:
        with open(self.jsonl, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in self.rows)
        self._write_csv()

    def _write_csv(self) -> None:
        write_csv(self.rows, self.csv)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


_WRITERS = itertools.count()


def summary_writer(workdir: str, **kwargs: Any):
    """A tensorboardX ``SummaryWriter`` on ``<workdir>/tensorboard`` with an event file of
    its own. tensorboardX names the file by the second and the host only, so a second
    writer opened within the same second (the final figures, Grad-CAM, hparams) would
    truncate the first one's file; the process id and a counter keep them apart.
    ImportError without tensorboardX."""
    from tensorboardX import SummaryWriter

    return SummaryWriter(os.path.join(workdir, "tensorboard"),
                         filename_suffix=f".{os.getpid()}.{next(_WRITERS)}", **kwargs)


def add_figures(workdir: str, figures: dict[str, Any], step: int = 0) -> None:
    """Matplotlib figures as images in the workdir's TensorBoard events (tag: the key),
    rendered with the Agg canvas (no pyplot)."""
    if not figures:
        return
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        tb = summary_writer(workdir)
    except ImportError:
        return
    import numpy as np

    with tb:
        for tag, fig in figures.items():
            canvas = FigureCanvasAgg(fig)
            canvas.draw()
            image = np.asarray(canvas.buffer_rgba())[..., :3]
            tb.add_image(tag, image, step, dataformats="HWC")


# The config keys a run's TensorBoard hparams summary holds (every run the same keys, so
# TensorBoard's HPARAMS tab lines runs up in one table); model options (e.g. alpha) as text.
HPARAMS = ("model.name", "model.options", "head.kind", "init", "policy", "finetune_groups",
           "backbone_lr_scale", "freeze_bn_stats", "optimizer", "learning_rate",
           "weight_decay", "schedule", "warmup_steps", "label_smoothing", "grad_clip",
           "batch_size", "epochs", "max_steps", "seed", "dtype", "data.source",
           "data.image_size", "data.limit", "data.group_regex", "data.augment", "stages",
           "best_metric")


def hparams(config) -> dict[str, str | float | bool]:
    """The run's key hyperparameters (:data:`HPARAMS`) as TensorBoard hparams values."""
    flat = flatten(config.to_dict() if hasattr(config, "to_dict") else dict(config))
    flat["model.options"] = " ".join(f"{k[6:]}={v}" for k, v in sorted(flat.items())
                                     if k.startswith("model.") and k != "model.name")
    aug = {k[13:]: v for k, v in flat.items() if k.startswith("data.augment.")}
    flat["data.augment"] = " ".join(
        k if v is True else f"{k}={v:g}" for k, v in aug.items()
        if v and not isinstance(v, str) and not (k == "crop_scale" and v == 1.0)) or "off"
    out = {}
    for key in HPARAMS:
        v = flat.get(key)
        if v is None:
            continue
        out[key] = v if isinstance(v, str | bool) else float(v) if isinstance(
            v, int | float) else str(v)
    return out


def final_metrics(report: dict[str, Any], rows: list[dict[str, Any]], best_metric: str,
                  minimize: bool = False) -> dict[str, float]:
    """The numbers TensorBoard's HPARAMS tab compares runs by: every number of the final
    evaluation report (``test/accuracy``, ``test/roc_auc``, ``test/sensitivity``...; the
    split the report names) and the best validation ``best_metric`` of the history
    (``validation/best_<metric>``)."""
    def number(v: Any) -> bool:  # floats (NumPy's too), not counts or flags
        return (isinstance(v, numbers.Real) and not isinstance(v, numbers.Integral)
                and math.isfinite(v))

    split = re.search(r"\((\w+) split", str(report.get("data", "")))
    prefix = split.group(1) if split else "final"
    out = {f"{prefix}/{k}": float(v) for k, v in report.items() if number(v)}
    t = report.get("at_target_sensitivity") or {}
    if number(t.get("specificity")):
        out[f"{prefix}/specificity_at_sensitivity_{t['target']:g}"] = float(t["specificity"])
    seen = [r[best_metric] for r in rows
            if r.get("split") == "validation" and number(r.get(best_metric))]
    if seen:
        out[f"validation/best_{best_metric}"] = float(min(seen) if minimize else max(seen))
    return out


def add_hparams(workdir: str, config, metrics: dict[str, float], step: int = 0) -> bool:
    """Write the run's hparams summary (:func:`hparams` of ``config``) and ``metrics`` as
    scalars at ``step`` into ``<workdir>/tensorboard``, the run's own event folder, so that
    TensorBoard's HPARAMS tab shows this run beside others with its final numbers. False
    when tensorboardX is not installed."""
    try:
        from tensorboardX.summary import hparams as summaries

        tb = summary_writer(workdir)
    except ImportError:
        return False
    experiment, start, end = summaries(hparams(config), metrics)
    with tb:
        for summary in (experiment, start, end):
            tb.file_writer.add_summary(summary, step)
        for tag, value in metrics.items():
            tb.add_scalar(tag, value, step)
    return True


def add_run_hparams(workdir: str, config, report: dict[str, Any], best_metric: str,
                    minimize: bool = False) -> bool:
    """:func:`add_hparams` of a finished run: its config, :func:`final_metrics` of its final
    report and history, at the history's last step."""
    rows = read_history(workdir)
    return add_hparams(workdir, config, final_metrics(report, rows, best_metric, minimize),
                       max((r["step"] for r in rows), default=0))


def write_csv(rows: list[dict[str, Any]], path: str) -> None:
    """History rows as a CSV table (the union of their keys as columns)."""
    fields: list[str] = []
    for r in rows:
        fields += [k for k in r if k not in fields]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)


def read_history(workdir: str) -> list[dict[str, Any]]:
    """The rows of ``history.jsonl`` (empty when there is none)."""
    path = os.path.join(workdir, "history.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _plain(v: Any) -> Any:
    try:
        return float(v) if not isinstance(v, int | str | bool | list | dict) else v
    except (TypeError, ValueError):
        return str(v)


def progress(total: int, initial: int, desc: str, enabled: bool):
    """A tqdm bar counting images (so its rate is images/s, with an ETA)."""
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="img", disable=not enabled,
                leave=False, mininterval=1.0, dynamic_ncols=True, file=sys.stderr)
