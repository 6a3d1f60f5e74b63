"""Evaluation and prediction from a training workdir (best checkpoint, else the last).

``evaluate(workdir, data)`` writes ``eval_<name>.json`` (data source, checkpoint,
accuracy, per-class precision/recall, sensitivity/specificity of the positive class,
ROC AUC, confusion matrix; balanced accuracy, PR AUC, the operating point of the model's
decision and the threshold reaching ``config.target_sensitivity``, 95% Wilson intervals,
per-group accuracy when the split is grouped), ``predictions_<name>.csv`` (one row per
image: file, group, true class, class probabilities, predicted class, correct) and its
confusion-matrix, ROC, PR, reliability and error-grid PNGs next to it; ``evaluate`` also
draws ``gradcam_<name>.png`` (:mod:`train.explain`) for a sample of the images.
"""

from __future__ import annotations

import csv
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
from train import device, logs, metrics, plots
from train import model as M
from train import splits as S
from train import step as T
from train import workdir as W
from train.errors import CheckpointError, ImageError, WorkdirError
from train.pipeline import Loader

log = logging.getLogger(__name__)


def predict_loader(eval_fn, state: T.TrainState, loader: Loader, mesh, *, close: bool = False
                   ) -> tuple[np.ndarray, ...]:
    """``(probabilities [N, K], labels [N])`` over a loader, padding removed (one fetch at
    the end: ``train.device.predict``); ``close``: stop the loader's worker processes after."""
    try:
        probs, kept = device.predict(eval_fn, state, loader.epoch(0), mesh, keep=("label",))
    finally:
        if close:
            loader.close()
    return probs, kept["label"]


TARGET_SENSITIVITY = 0.95  # config.target_sensitivity when a run's config predates it


def classification(probs: np.ndarray, labels: np.ndarray, class_names: Sequence[str],
                   positive_class: str | int | None = None, *,
                   target_sensitivity: float | None = None,
                   groups: Sequence[str] | None = None, **info: Any) -> dict[str, Any]:
    """:func:`metrics.classification_report` plus the mean cross-entropy and ``info``;
    with ``target_sensitivity`` also :func:`metrics.decision_report`, and with ``groups``
    (one per example: patient, slide) ``per_group`` accuracy."""
    report = metrics.classification_report(probs, labels, class_names, positive_class)
    p = np.clip(probs[np.arange(len(labels)), labels], 1e-12, 1.0)
    out = {**info, "loss": float(-np.mean(np.log(p))) if len(p) else float("nan"), **report}
    if target_sensitivity is not None and len(labels):
        pos = metrics.resolve_class(positive_class, class_names)
        out.update(metrics.decision_report(probs, labels, pos, target_sensitivity))
    if len(labels):
        out["calibration"] = {"ece": metrics.calibration(probs, labels)["ece"], "bins": 10}
    if groups is not None:
        per = metrics.per_group_accuracy(np.asarray(probs).argmax(-1) == labels, groups)
        accs = [g["accuracy"] for g in per.values()]
        out["groups"] = {"count": len(per), "mean_accuracy": float(np.mean(accs)) if accs
                         else float("nan"), "worst_accuracy": min(accs, default=float("nan"))}
        out["per_group"] = per
    return out


def split_groups(config, source: D.Source, indices: np.ndarray) -> list[str] | None:
    """The group (patient, slide) of each example of ``indices`` by ``data.group_regex``;
    None when the run's split is not grouped or the file names do not carry groups."""
    regex = config.data.get("group_regex", "")
    if not regex or source.keys is None:
        return None
    try:
        return S.group_keys([source.keys[i] for i in indices], regex)
    except ValueError as e:  # other data, named otherwise: no groups rather than no report
        log.warning("no per-group accuracy: %s", e)
        return None


def target_sensitivity(config) -> float:
    """The run's ``target_sensitivity`` (runs made before it existed: 0.95)."""
    return float(config.get("target_sensitivity", TARGET_SENSITIVITY))


def summary(report: dict[str, Any]) -> str:
    """One line: accuracy, sensitivity/specificity of the positive class, ROC AUC."""
    line = (f"{report.get('data', '')}: accuracy {report['accuracy']:.4f} on "
            f"{report['num_examples']} images; {report['positive_class']}: sensitivity "
            f"{report['sensitivity']:.4f}, specificity {report['specificity']:.4f}, "
            f"ROC AUC {report['roc_auc']:.4f}")
    t = report.get("at_target_sensitivity")
    if t and t.get("threshold") is not None:
        line += (f"; at sensitivity {t['sensitivity']:.4f} (target {t['target']:g}, "
                 f"threshold {t['threshold']:.4f}) specificity {t['specificity']:.4f}")
    return line


def write_report(report: dict, probs: np.ndarray, labels: np.ndarray, workdir: str,
                 name: str, *, source: D.Source | None = None,
                 indices: np.ndarray | None = None,
                 groups: Sequence[str] | None = None) -> str:
    """Write ``eval_<name>.json``, ``predictions_<name>.csv``, ``confusion_<name>.png``,
    ``roc_<name>.png`` (:func:`write_plots`); the JSON path. ``report['predictions']`` is
    the CSV's path; the JSON names it by file name (relative to the JSON's folder), so a run
    directory that is moved or copied, or redone elsewhere, writes the same JSON.
    ``report['figures']``: the matplotlib figures drawn, ``{kind: Figure}`` (not in the JSON;
    a notebook shows them inline).

    ``source`` and ``indices`` (the examples ``probs`` are of, in order) give the CSV its
    file names (else the row number). A previous ``eval_<name>.json`` or
    ``predictions_<name>.csv`` with other contents is kept (``eval_<name>.<n>.json``).
    """
    name = safe_name(name)
    path = os.path.join(workdir, f"eval_{name}.json")
    keys = None
    if source is not None and indices is not None:
        if not np.array_equal(np.asarray(source.labels)[indices], labels):
            raise RuntimeError("write_report: the labels of source[indices] are not the "
                               "labels predicted (indices out of order)")
        keys = [source.keys[i] if source.keys is not None else str(i) for i in indices]
    csv_path = os.path.join(workdir, f"predictions_{name}.csv")
    report["predictions"] = csv_path
    if jax.process_index() == 0:
        _write_text_result(csv_path, prediction_rows(probs, labels, report["class_names"],
                                                     keys, groups))
        W.write_result(path, _json_safe({**report, "predictions": os.path.basename(csv_path)}))
    # the figures drawn, for a notebook to show (not in the JSON)
    report["figures"] = write_plots(report, probs, labels, workdir, name, source=source,
                                    indices=indices) if jax.process_index() == 0 else {}
    return path


ERRORS_SHOWN = 24  # the most confident mistakes in errors_<name>.png


def write_plots(report: dict, probs: np.ndarray, labels: np.ndarray, workdir: str, name: str,
                *, source: D.Source | None = None, indices: np.ndarray | None = None
                ) -> dict[str, str]:
    """``confusion_<name>.png`` (row-normalised), ``roc_<name>.png`` and ``pr_<name>.png``
    with the operating points, ``reliability_<name>.png`` and, given the images
    (``source``, ``indices``), ``errors_<name>.png``: the most confident mistakes. Returns
    the figures drawn, ``{kind: matplotlib Figure}`` (``<kind>_<name>.png`` each)."""
    names = report["class_names"]
    pos = names.index(report["positive_class"])
    path = lambda kind: os.path.join(workdir, f"{kind}_{name}.png")  # noqa: E731
    points = {}
    if report.get("operating_point"):
        points["model's decision"] = report["operating_point"]
    t = report.get("at_target_sensitivity")
    if t and t.get("threshold") is not None:
        points[f"sensitivity >= {t['target']:g} (t={t['threshold']:.3f})"] = t
    figures = {
        "confusion": plots.plot_confusion(
            np.asarray(report["confusion_matrix"]), names, path("confusion"),
            f"{report.get('data', '')}\naccuracy {report['accuracy']:.4f}"),
        "roc": plots.plot_roc(probs[:, pos], labels == pos, path("roc"), names[pos], points),
        "pr": plots.plot_pr(probs[:, pos], labels == pos, path("pr"), names[pos], points),
        "reliability": plots.plot_reliability(probs, labels, path("reliability")) if len(labels)
        else None,
    }
    if source is not None and indices is not None:
        worst = metrics.confident_mistakes(probs, labels, ERRORS_SHOWN)
        figures["errors"] = plots.plot_images(
            [source.image(indices[i]) for i in worst],
            [f"{_short(source.keys[indices[i]]) if source.keys else indices[i]}\n"
             f"true {names[labels[i]]}\npred {names[int(probs[i].argmax())]} "
             f"{probs[i].max():.3f}" for i in worst], path("errors"),
            f"the {len(worst)} most confident mistakes of {int(np.sum(probs.argmax(-1) != labels))}"
            if len(worst) else "")
    drawn = {kind: fig for kind, fig in figures.items() if fig is not None}
    step = re.search(r"step (\d+)", str(report.get("checkpoint", "")))
    logs.add_figures(workdir, {f"{name}/{k}": drawn[k] for k in ("errors", "confusion")
                               if k in drawn}, int(step.group(1)) if step else 0)
    return drawn


def _short(key: str, n: int = 24) -> str:
    base = os.path.basename(str(key))
    return base if len(base) <= n else "..." + base[-n + 3:]


def prediction_rows(probs: np.ndarray, labels: np.ndarray, class_names: Sequence[str],
                    keys: Sequence[str] | None = None,
                    groups: Sequence[str] | None = None) -> str:
    """The per-image CSV text: ``file`` (or ``index``), ``group`` when known, ``true``,
    ``p_<class>`` for every class, ``predicted``, ``correct`` (0/1)."""
    import io

    names = list(class_names)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["file" if keys is not None else "index", *(["group"] if groups else []),
                "true", *[f"p_{n}" for n in names], "predicted", "correct"])
    preds = np.asarray(probs).argmax(-1) if len(probs) else np.zeros(0, np.int64)
    for i, (p, y, q) in enumerate(zip(probs, labels, preds, strict=True)):
        w.writerow([keys[i] if keys is not None else i, *([groups[i]] if groups else []),
                    names[int(y)], *[f"{v:.6f}" for v in p], names[int(q)], int(q == y)])
    return buf.getvalue()


def _write_text_result(path: str, text: str) -> None:
    """Write a text result; a previous file with other contents is kept as
    ``<stem>.<n><ext>`` (as :func:`train.workdir.write_result` does for JSON)."""
    if os.path.exists(path):
        with open(path) as f:
            same = f.read() == text
        if not same:
            stem, ext = os.path.splitext(path)
            n = 1
            while os.path.exists(f"{stem}.{n}{ext}"):
                n += 1
            os.replace(path, f"{stem}.{n}{ext}")
            log.warning("%s: the previous result differs and is kept as %s.%d%s", path, stem,
                        n, ext)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def write_predictions(results: Sequence[dict[str, Any]], path: str) -> str:
    """:func:`predict`'s results as a CSV (``file``, ``predicted``, ``p_<class>``...,
    ``error``); a previous file with other contents is kept. One summary line back."""
    names = next((list(r["probabilities"]) for r in results if "probabilities" in r), [])
    buf = [["file", "predicted", *[f"p_{n}" for n in names], "error"]]
    for r in results:
        probs = r.get("probabilities", {})
        buf.append([r["path"], r.get("class", ""), *[f"{probs[n]:.6f}" if n in probs else ""
                                                      for n in names], r.get("error", "")])
    import io

    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerows(buf)
    _write_text_result(path, text.getvalue())
    counts = {n: sum(r.get("class") == n for r in results) for n in names}
    bad = sum("error" in r for r in results)
    return (f"{len(results) - bad} images: " + ", ".join(f"{n} {c}" for n, c in counts.items())
            + (f"; {bad} unreadable" if bad else ""))


def read_predictions(path: str) -> list[dict[str, str]]:
    """The rows of a ``predictions_<name>.csv``."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def safe_name(name: str) -> str:
    """A result name fit for a file name (``folder:/a/b`` -> ``a_b``)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "eval"


def _json_safe(x: Any) -> Any:
    """NaN (e.g. precision of a never-predicted class) -> null, so the file is strict JSON."""
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_json_safe(v) for v in x]
    return None if isinstance(x, float) and not np.isfinite(x) else x


def load_config(workdir: str) -> ml_collections.ConfigDict:
    """The ``config.json`` a training run wrote."""
    path = os.path.join(workdir, "config.json")
    if not os.path.isdir(workdir):
        raise WorkdirError(f"workdir {workdir} does not exist; give the --workdir of a "
                           "training run (python -m scripts.train ... --workdir DIR)")
    if not os.path.exists(path):
        raise WorkdirError(f"{workdir} is not a training workdir (it has no config.json): give "
                           "the --workdir a training run wrote, or train into it first")
    return ml_collections.ConfigDict(W.read_json(path, "config of the run"))


def load_splits(workdir: str) -> dict[str, Any]:
    """The workdir's ``splits.json``, checked against its ``config.json``."""
    path = os.path.join(workdir, "splits.json")
    if not os.path.exists(path):
        raise WorkdirError(f"{workdir} has no splits.json (its run stopped before training "
                           "started): run the training command again")
    return W.read_json(path, "record of the run's splits")


def load_run(workdir: str, which: str = "best", tta: str | None = "") -> dict[str, Any]:
    """Config, class names, model, jitted eval function and state of a trained workdir;
    ``tta``: the eval function averages over those views (``train.step.TTA_VIEWS``; None:
    the run's ``config.tta``), returned as ``run['tta']``."""
    config = load_config(workdir)
    tta = T.check_tta(config.get("tta", "") if tta is None else tta)  # before the restore
    class_names = tuple(load_splits(workdir)["info"]["classes"])
    root = os.path.join(workdir, "checkpoints")
    if which == "best" and not C.Checkpoints.steps(os.path.join(root, "best")):
        which = "last"
    steps = C.Checkpoints.steps(os.path.join(root, which))
    if not steps:
        raise WorkdirError(f"{workdir} has no checkpoint yet (looked in {root}/{which}): train "
                           "it first (re-running the training command resumes)")
    step, variables = restore_model_variables(os.path.join(root, which))
    mesh = T.make_mesh()
    spec = zoo.spec(config.model.name)
    model = M.build_model(config, len(class_names))
    state = T.replicate(T.TrainState(step=jnp.asarray(step, jnp.int32), opt_state={},
                                     rng=jax.random.PRNGKey(0), **variables), mesh)
    return dict(config=config, class_names=class_names, mesh=mesh, state=state,
                eval_fn=T.jit_eval(T.make_eval_step(model, spec.normalize, tta=tta), mesh),
                checkpoint=f"{which} step {step}", tta=tta)


MODEL_COLLECTIONS = ("params", "batch_stats")


def read_model_variables(path: str) -> dict[str, Any]:
    """``{'params', 'batch_stats'}`` of one training checkpoint, read alone (orbax partial
    restore: the optimizer state, often twice the parameters, is never read)."""
    import orbax.checkpoint as ocp
    from etils import epath

    if os.path.isdir(os.path.join(path, "state")):
        path = os.path.join(path, "state")
    saved = ocp.PyTreeCheckpointHandler().metadata(epath.Path(path)).tree
    if "params" not in saved:
        raise ValueError(f"{path} holds no 'params' (found keys {sorted(saved)})")
    item = {k: saved[k] for k in MODEL_COLLECTIONS if saved.get(k)}
    tree = ocp.PyTreeCheckpointer().restore(path, args=ocp.args.PyTreeRestore(
        item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item),
        partial_restore=True))
    return {"params": tree["params"], "batch_stats": tree.get("batch_stats") or {}}


def restore_model_variables(directory: str) -> tuple[int, dict[str, Any]]:
    """``(step, {'params', 'batch_stats'})`` of the newest readable step of a checkpoint
    manager folder (as :func:`train.checkpoint.restore_newest`, without the optimizer)."""
    bad = []
    for step in reversed(C.Checkpoints.steps(directory)):
        try:
            return step, read_model_variables(os.path.join(directory, str(step)))
        except Exception as e:  # noqa: BLE001 -- orbax raises many kinds; the next may do
            bad.append(C._unreadable(os.path.join(directory, str(step)), e))
    if bad:
        raise CheckpointError(f"no readable checkpoint in {directory}: {'; '.join(bad)}")
    raise FileNotFoundError(f"no checkpoint in {directory}")


def _loader(run: dict, source: D.Source, indices: np.ndarray,
            processes: int | None = None) -> Loader:
    c, n = run["config"], run["mesh"].devices.size
    processes = c.data.get("processes", 0) if processes is None else processes
    return Loader(source, indices, batch_size=-(-c.batch_size // n) * n,
                  image_size=c.data.image_size, workers=c.data.workers, cache=False,
                  prefetch=c.data.get("prefetch", 2), processes=processes)


# splits.json "info" entries and the config keys they were made from
_SPLIT_KEYS = {"source": "data.source", "seed": "seed", "fractions": "data.splits",
               "group_regex": "data.group_regex", "limit": "data.limit"}


def _split_indices(workdir: str, c, source: D.Source, split: str,
                   rederive: bool) -> tuple[np.ndarray, str]:
    """The saved indices of ``split``, after checking that the workdir's config, its
    splits and the data opened now still belong together."""
    path = os.path.join(workdir, "splits.json")
    saved = load_splits(workdir)
    if split not in saved:
        raise WorkdirError(f"{path} has no split {split!r}; use train, validation, test or all")
    info, flat = saved.get("info", {}), W.flat(c.to_dict())
    odd = [f"{k} {info[k]!r} in splits.json, {flat[key]!r} in config.json"
           for k, key in _SPLIT_KEYS.items()
           if k in info and key in flat and json.dumps(info[k]) != json.dumps(flat[key])]
    if odd:
        raise WorkdirError(f"{workdir}: config.json and splits.json do not belong to the same "
                           f"run ({'; '.join(odd)}); restore the run's own files, or train again "
                           "in a new workdir")
    changed = W.verify_data(saved, source, path)
    if changed is None:
        return np.asarray(saved[split], np.int64), ""
    if not rederive:
        raise WorkdirError(
            f"the data of {workdir} changed since it was trained: {c.data.source}: "
            f"{'; '.join(changed)}. Its saved {split} indices would point at other images "
            "(possibly training ones). Restore the data, evaluate the new data whole with "
            "--data, or pass --rederive to find the split's files again by name")
    idx = W.rederive(saved, source, split, path)
    log.warning("data changed since training (%s): the %s split found again by file name",
                "; ".join(changed), split)
    return np.asarray(idx, np.int64), ", re-derived by file name"


def evaluate(workdir: str, data: str | None = None, *, split: str | None = None,
             positive_class: str | None = None, which: str = "best",
             rederive: bool = False, tta: str | None = None) -> dict[str, Any]:
    """Evaluate a workdir's checkpoint on its test split or on any data source; write JSON.

    With ``data`` equal to the training source (or None) the saved ``split`` (default
    ``test``) is used, after checking the data against what ``splits.json`` recorded
    (refused when it changed, unless ``rederive``: the split's files found by name); any
    other source is evaluated whole. ``tta`` ('flips', 'dihedral'; 'none' or '': off;
    None: the run's ``config.tta``): test-time augmentation, the mean probability over each
    image's views. Other than the run's own, its results are their own
    (``eval_<name>_<tta>.json``, or ``_plain`` without, and the CSV), beside the run's.
    """
    run = load_run(workdir, which, "" if tta == "none" else tta)
    c, class_names, tta = run["config"], run["class_names"], run["tta"]
    own = c.get("tta", "")
    data = data or c.data.source
    source = D.open_source(data, seed=c.seed, synthetic_size=c.data.synthetic_size,
                           tfds_split=c.data.tfds_split, tfds_data_dir=c.data.tfds_data_dir,
                           download=c.data.download, workers=c.data.workers)
    labels = _map_labels(source, class_names)
    how = ""
    if data == c.data.source and split != "all":
        split = split or "test"
        indices, how = _split_indices(workdir, c, source, split, rederive)
    else:
        split, indices = "all", np.arange(len(source))
    source = D.Source(source.spec, class_names, labels, source.keys, source.load)
    probs, y = predict_loader(run["eval_fn"], run["state"], _loader(run, source, indices),
                              run["mesh"], close=True)
    pos = positive_class if positive_class is not None else c.positive_class
    groups = split_groups(c, source, indices)
    views = tta_words(tta)
    report = classification(probs, y, class_names, pos,
                            data=f"{data} ({split} split{how}{views})" if split != "all"
                            else f"{data}{views and f' ({views[2:]})'}",
                            checkpoint=run["checkpoint"],
                            target_sensitivity=target_sensitivity(c), groups=groups)
    if tta:
        report["tta"] = tta
    name = split if data == c.data.source else f"{data.partition(':')[2] or data}_{split}"
    name += "" if tta == own else f"_{tta or 'plain'}"
    report["json"] = write_report(report, probs, y, workdir, name, source=source,
                                  indices=indices, groups=groups)
    from train import explain  # it reads runs through this module

    # every process runs the model (its state spans them); the first draws and writes
    explain.report_grid(report, run, source, indices, probs, y, workdir, name)
    return report


def tta_words(tta: str) -> str:
    """``', test-time augmentation dihedral x8'`` for a report's data line ('' for none)."""
    return f", test-time augmentation {tta} x{T.TTA_VIEWS[tta]}" if tta else ""


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
    """Class and probability for each image file; a file that cannot be read gets
    ``{'path', 'error'}`` instead, and the others are still predicted."""
    run = load_run(workdir, which)
    names = run["class_names"]
    images, out = {}, []
    for p in paths:
        try:
            images[p] = D.decode_file(p)
        except ImageError as e:
            out.append({"path": p, "error": str(e)})
    good, done = list(images), {}
    if good:
        source = D.Source("files", names, np.zeros(len(good), np.int32), good,
                          lambda i: images[good[i]])
        # a few files: this process's threads (no worker processes, nothing pickled)
        probs, _ = predict_loader(run["eval_fn"], run["state"],
                                  _loader(run, source, np.arange(len(good)), processes=0),
                                  run["mesh"], close=True)
        done = {p: {"path": p, "class": names[int(q.argmax())], "probability": float(q.max()),
                    "probabilities": dict(zip(names, map(float, q), strict=True))}
                for p, q in zip(good, probs, strict=True)}
    errors = {r["path"]: r for r in out}
    return [done[p] if p in images else errors[p] for p in paths]
