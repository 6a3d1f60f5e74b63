"""Evaluation and prediction from a training workdir (best checkpoint, else the last).

``evaluate(workdir, data)`` writes ``eval_<name>.json`` (data source, checkpoint,
accuracy, per-class precision/recall, sensitivity/specificity of the positive class,
ROC AUC, confusion matrix) and its confusion-matrix and ROC PNGs next to it.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

import zoo
from train import checkpoint as C
from train import data as D
from train import device, metrics, plots
from train import model as M
from train import step as T
from train.pipeline import Loader

log = logging.getLogger(__name__)


def predict_loader(eval_fn, state: T.TrainState, loader: Loader, mesh) -> tuple[np.ndarray, ...]:
    """``(probabilities [N, K], labels [N])`` over a loader, padding removed (one fetch at
    the end: ``train.device.predict``)."""
    probs, kept = device.predict(eval_fn, state, loader.epoch(0), mesh, keep=("label",))
    return probs, kept["label"]


def classification(probs: np.ndarray, labels: np.ndarray, class_names: Sequence[str],
                   positive_class: str | int | None = None, **info: Any) -> dict[str, Any]:
    """:func:`metrics.classification_report` plus the mean cross-entropy and ``info``."""
    report = metrics.classification_report(probs, labels, class_names, positive_class)
    p = np.clip(probs[np.arange(len(labels)), labels], 1e-12, 1.0)
    return {**info, "loss": float(-np.mean(np.log(p))) if len(p) else float("nan"), **report}


def summary(report: dict[str, Any]) -> str:
    """One line: accuracy, sensitivity/specificity of the positive class, ROC AUC."""
    return (f"{report.get('data', '')}: accuracy {report['accuracy']:.4f} on "
            f"{report['num_examples']} images; {report['positive_class']}: sensitivity "
            f"{report['sensitivity']:.4f}, specificity {report['specificity']:.4f}, "
            f"ROC AUC {report['roc_auc']:.4f}")


def write_report(report: dict, probs: np.ndarray, labels: np.ndarray, workdir: str,
                 name: str) -> str:
    """Write ``eval_<name>.json``, ``confusion_<name>.png``, ``roc_<name>.png``; the JSON path."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "eval"
    path = os.path.join(workdir, f"eval_{name}.json")
    if jax.process_index() == 0:
        with open(path, "w") as f:
            json.dump(_json_safe(report), f, indent=2)
        plots.plot_confusion(np.asarray(report["confusion_matrix"]), report["class_names"],
                             os.path.join(workdir, f"confusion_{name}.png"),
                             f"{report.get('data', '')}\naccuracy {report['accuracy']:.4f}")
        pos = report["class_names"].index(report["positive_class"])
        plots.plot_roc(probs[:, pos], labels == pos, os.path.join(workdir, f"roc_{name}.png"),
                       report["positive_class"])
    return path


def _json_safe(x: Any) -> Any:
    """NaN (e.g. precision of a never-predicted class) -> null, so the file is strict JSON."""
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_json_safe(v) for v in x]
    return None if isinstance(x, float) and not np.isfinite(x) else x


def load_config(workdir: str) -> ml_collections.ConfigDict:
    """The ``config.json`` a training run wrote."""
    with open(os.path.join(workdir, "config.json")) as f:
        return ml_collections.ConfigDict(json.load(f))


def load_run(workdir: str, which: str = "best") -> dict[str, Any]:
    """Config, class names, model, jitted eval function and state of a trained workdir."""
    config = load_config(workdir)
    with open(os.path.join(workdir, "splits.json")) as f:
        class_names = tuple(json.load(f)["info"]["classes"])
    root = os.path.join(workdir, "checkpoints")
    if which == "best" and not C.Checkpoints.steps(os.path.join(root, "best")):
        which = "last"
    steps = C.Checkpoints.steps(os.path.join(root, which))
    if not steps:
        raise FileNotFoundError(f"{workdir} has no checkpoint yet (looked in {root}/{which})")
    variables = C.restore_variables(os.path.join(root, which, str(steps[-1])))
    mesh = T.make_mesh()
    spec = zoo.spec(config.model.name)
    model = M.build_model(config, len(class_names))
    state = T.replicate(T.TrainState(step=jnp.asarray(steps[-1], jnp.int32), opt_state={},
                                     rng=jax.random.PRNGKey(0), **variables), mesh)
    return dict(config=config, class_names=class_names, mesh=mesh, state=state,
                eval_fn=T.jit_eval(T.make_eval_step(model, spec.normalize), mesh),
                checkpoint=f"{which} step {steps[-1]}")


def _loader(run: dict, source: D.Source, indices: np.ndarray) -> Loader:
    c, n = run["config"], run["mesh"].devices.size
    return Loader(source, indices, batch_size=-(-c.batch_size // n) * n,
                  image_size=c.data.image_size, workers=c.data.workers, cache=False)


def evaluate(workdir: str, data: str | None = None, *, split: str | None = None,
             positive_class: str | None = None, which: str = "best") -> dict[str, Any]:
    """Evaluate a workdir's checkpoint on its test split or on any data source; write JSON.

    With ``data`` equal to the training source (or None) the saved ``split`` (default
    ``test``) is used; any other source is evaluated whole.
    """
    run = load_run(workdir, which)
    c, class_names = run["config"], run["class_names"]
    data = data or c.data.source
    source = D.open_source(data, seed=c.seed, synthetic_size=c.data.synthetic_size,
                           tfds_split=c.data.tfds_split, tfds_data_dir=c.data.tfds_data_dir,
                           download=c.data.download, workers=c.data.workers)
    labels = _map_labels(source, class_names)
    if data == c.data.source and split != "all":
        split = split or "test"
        with open(os.path.join(workdir, "splits.json")) as f:
            indices = np.asarray(json.load(f)[split], np.int64)
    else:
        split, indices = "all", np.arange(len(source))
    source = D.Source(source.spec, class_names, labels, source.keys, source.load)
    probs, y = predict_loader(run["eval_fn"], run["state"], _loader(run, source, indices),
                              run["mesh"])
    pos = positive_class if positive_class is not None else c.positive_class
    report = classification(probs, y, class_names, pos, data=f"{data} ({split} split)"
                            if split != "all" else data, checkpoint=run["checkpoint"])
    name = split if data == c.data.source else f"{data.partition(':')[2] or data}_{split}"
    report["json"] = write_report(report, probs, y, workdir, name)
    return report


def _map_labels(source: D.Source, class_names: Sequence[str]) -> np.ndarray:
    """Labels of ``source`` in the training class order (names compared case-insensitively)."""
    train = [n.lower() for n in class_names]
    unknown = [n for n in source.class_names if n.lower() not in train]
    if unknown:
        raise ValueError(f"classes {unknown} of {source.spec} were not trained on "
                         f"(the model knows {list(class_names)})")
    remap = np.asarray([train.index(n.lower()) for n in source.class_names], np.int32)
    return remap[source.labels]


def predict(workdir: str, paths: Sequence[str], which: str = "best") -> list[dict[str, Any]]:
    """Class and probability for each image file."""
    run = load_run(workdir, which)
    names = run["class_names"]
    paths = list(paths)
    source = D.Source("files", names, np.zeros(len(paths), np.int32), paths,
                      lambda i: D.decode(paths[i]))
    probs, _ = predict_loader(run["eval_fn"], run["state"],
                              _loader(run, source, np.arange(len(paths))), run["mesh"])
    return [{"path": p, "class": names[int(q.argmax())], "probability": float(q.max()),
             "probabilities": dict(zip(names, map(float, q), strict=True))}
            for p, q in zip(paths, probs, strict=True)]
