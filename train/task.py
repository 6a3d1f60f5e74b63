"""What differs between training tasks, as data the one loop (``train.loop``) drives.

A task module (``train.classification``, ``train.detection.task``) has
``setup(config, workdir, mesh) -> Task``: it opens the data, writes what its workdir needs
(``splits.json``; ``classes.json``, ``anchors.json``), builds the network and its initial
variables. The loop does the rest for every task: optimizer and freezing, the jitted
steps, stages, checkpoints, exact resume, the NaN stop, progress, history and curves.

This module also answers for a finished workdir: :func:`evaluate`, :func:`predict` and
:func:`summary` go to the task that trained it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import zoo
from train import evaluate as classification_eval
from train.detection import evaluate as detection_eval
from train.errors import UserError


@dataclasses.dataclass(frozen=True)
class Task:
    """One run's task: the network, its data, and how it is scored.

    ``validate(eval_fn, state)`` returns the validation metrics (None: no validation data);
    ``finish(eval_fn, state, checkpoint)`` evaluates the kept checkpoint, writes the task's
    reports into the workdir and returns the report. ``eval_fn`` is ``eval_step`` jitted.
    """

    spec: zoo.ModelSpec
    model: Any  # the module the steps apply (the head alone when it trains on cached features)
    variables: dict  # initial {'params', 'batch_stats'} of the whole network
    train_loader: Any  # len() batches per epoch; .epoch(epoch, start) yields them
    eval_step: Callable  # eval_step(state, batch) -> outputs, before jit
    validate: Callable[[Callable, Any], dict | None]
    finish: Callable[[Callable, Any, str], dict]
    best_metric: str  # validation metric that picks the best checkpoint
    minimize: bool = False  # True when a lower best_metric is better (a loss)
    normalize: Callable = lambda x: x  # applied to batch[input_key] inside the step
    augment: Callable | None = None  # augment(images, batch['augment_seed']) in the train step
    input_key: str = "image"
    loss_fn: Callable | None = None  # loss_fn(outputs, batch) -> (loss, parts); None: softmax CE
    summed: Sequence[str] = ()  # step metrics summed over the epoch besides loss and count
    means: dict[str, str] = dataclasses.field(default_factory=dict)  # train metric -> sum / count
    step_metrics: Sequence[str] = ()  # step metrics logged besides loss and grad_norm
    headline: Sequence[str] = ("loss",)  # metrics in the epoch's log line
    curves: Sequence[str] = ("loss", "accuracy")  # metrics plotted per epoch in curves.png
    eval_every: int = 1  # validate every N epochs (and after the last)
    about: str = ""  # e.g. ' (mlp head)': said after the model's name in the log


def kind(model_name: str) -> str:
    """The task of a zoo model: ``classification`` or ``detection``."""
    return zoo.spec(model_name).task


def _workdir_kind(workdir: str) -> str:
    return kind(classification_eval.load_config(workdir).model.name)


def evaluate(workdir: str, data: str | None = None, *, split: str | None = None,
             positive_class: str | None = None, which: str = "best",
             rederive: bool = False, tta: str | None = None) -> dict[str, Any]:
    """Evaluate a workdir's checkpoint with its task's metrics; writes ``eval_<name>.json``.
    ``rederive``: find a split's files again by name in changed data; ``tta``: a
    classifier's test-time augmentation ('flips', 'dihedral', 'none'; None: the run's)."""
    if _workdir_kind(workdir) == "detection":  # VOC mAP@0.5 and COCO AP, per class
        if tta and tta != "none":
            raise UserError(f"--tta {tta}: test-time augmentation is for classifiers; "
                            f"{workdir} is a detector (leave --tta out)")
        return detection_eval.evaluate(workdir, data, split=split, which=which,
                                       rederive=rederive)
    return classification_eval.evaluate(workdir, data, split=split,
                                        positive_class=positive_class, which=which,
                                        rederive=rederive, tta=tta)


def predict(workdir: str, paths: Sequence[str], which: str = "best") -> list[dict[str, Any]]:
    """Per image file: ``class`` and ``probability``, or a detector's ``detections``."""
    if _workdir_kind(workdir) == "detection":
        return detection_eval.detect_files(workdir, paths, which=which)
    return classification_eval.predict(workdir, paths, which)


def summary(report: dict[str, Any]) -> str:
    """The one-line summary of an evaluation report of either task."""
    if "voc_map50" in report:
        return detection_eval.summary(report)
    return classification_eval.summary(report)
