"""An ensemble of trained classifiers: the mean of their class probabilities, image by image.

Each member is a training workdir that has been evaluated on the same split of the same
images (``predictions_<split>.csv``, written by training's final evaluation and by
``transfer-zoo evaluate``). The ensemble reads those files, checks that they hold the same
images with the same labels and classes, averages the probabilities and writes the usual
report into its own folder: ``eval_<split>.json`` (with the members and each one's
accuracy), ``predictions_<split>.csv`` and the plots. No model is run again, so members may
differ in family, resolution or framework of origin.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from train import evaluate as E
from train import workdir as W
from train.errors import UserError


class EnsembleError(UserError, ValueError):
    """Members that cannot be averaged (other images, labels or classes; no predictions)."""


def read_member(workdir: str, split: str) -> dict[str, Any]:
    """A member's per-image predictions on ``split``: keys, labels, probabilities, groups,
    class names, and its config's positive class and target sensitivity."""
    path = os.path.join(workdir, f"predictions_{E.safe_name(split)}.csv")
    if not os.path.exists(path):
        raise EnsembleError(f"{path} does not exist: evaluate the member first "
                            f"(transfer-zoo evaluate --workdir {workdir} --split {split})")
    rows = E.read_predictions(path)
    if not rows:
        raise EnsembleError(f"{path} has no rows")
    names = [k[2:] for k in rows[0] if k.startswith("p_")]
    key = "file" if "file" in rows[0] else "index"
    config = W.read_json(os.path.join(workdir, "config.json"), "config of the run") \
        if os.path.exists(os.path.join(workdir, "config.json")) else {}
    return {"workdir": workdir, "path": path, "classes": names,
            "keys": [r[key] for r in rows],
            "labels": np.asarray([names.index(r["true"]) for r in rows], np.int32),
            "probs": np.asarray([[float(r[f"p_{n}"]) for n in names] for r in rows],
                                np.float64),
            "groups": [r["group"] for r in rows] if "group" in rows[0] else None,
            "positive_class": config.get("positive_class"),
            "target_sensitivity": config.get("target_sensitivity", E.TARGET_SENSITIVITY)}


def member_spec(member: str, split: str) -> tuple[str, str]:
    """``'runs/a'`` -> ``('runs/a', split)``; ``'runs/a@test_dihedral'`` -> that run's
    results of another name (``predictions_test_dihedral.csv``: e.g. test-time augmentation
    for one member, or the plain results of a run whose own report used it)."""
    workdir, at, name = member.rpartition("@")
    if not at or os.sep in name:
        return member, split
    if not name:
        raise EnsembleError(f"{member!r}: name the results after '@' (e.g. {workdir}@test)")
    return workdir, name


def align(members: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The members with their rows in the first member's order, after checking that they
    hold the same images (by file name), labels and classes."""
    first = members[0]
    order = {k: i for i, k in enumerate(first["keys"])}
    if len(order) != len(first["keys"]):
        raise EnsembleError(f"{first['path']} names an image twice")
    out = [first]
    for m in members[1:]:
        if m["classes"] != first["classes"]:
            raise EnsembleError(f"{m['workdir']} has classes {m['classes']}, "
                                f"{first['workdir']} {first['classes']}: not one task")
        extra = sorted(set(m["keys"]) - set(order))
        missing = sorted(set(order) - set(m["keys"]))
        if extra or missing:
            raise EnsembleError(
                f"{m['workdir']} was evaluated on other images than {first['workdir']} "
                f"({len(missing)} missing, e.g. {missing[:1]}; {len(extra)} others, e.g. "
                f"{extra[:1]}): members must share the split (same data, seed and group_regex)")
        perm = np.asarray([m["keys"].index(k) for k in first["keys"]]) \
            if m["keys"] != first["keys"] else np.arange(len(first["keys"]))
        if not np.array_equal(m["labels"][perm], first["labels"]):
            raise EnsembleError(f"{m['workdir']} and {first['workdir']} label the same images "
                                "differently")
        out.append({**m, "keys": first["keys"], "labels": first["labels"],
                    "probs": m["probs"][perm]})
    return out


def ensemble(workdirs: Sequence[str], out: str, split: str = "test",
             positive_class: str | None = None) -> dict[str, Any]:
    """Average the members' probabilities on ``split`` and write the report into ``out``;
    the report (``report['json']`` its path)."""
    if len(workdirs) < 2:
        raise EnsembleError(f"an ensemble needs two or more workdirs (got {len(workdirs)})")
    members = align([read_member(*member_spec(w, split)) for w in workdirs])
    first = members[0]
    probs = np.mean([m["probs"] for m in members], axis=0)
    labels, names = first["labels"], first["classes"]
    pos = positive_class or first["positive_class"]
    report = E.classification(
        probs, labels, names, pos, target_sensitivity=float(first["target_sensitivity"]),
        groups=first["groups"], data=f"ensemble of {len(members)} ({split} split)",
        members=[{"workdir": os.path.abspath(m["workdir"]),
                  "predictions": os.path.basename(m["path"]),
                  "accuracy": float(np.mean(m["probs"].argmax(-1) == labels))}
                 for m in members])
    os.makedirs(out, exist_ok=True)
    name = E.safe_name(split)
    csv_path = os.path.join(out, f"predictions_{name}.csv")
    E._write_text_result(csv_path, E.prediction_rows(probs, labels, names, first["keys"],
                                                      first["groups"]))
    report["json"] = os.path.join(out, f"eval_{name}.json")
    W.write_result(report["json"], E._json_safe({**report, "predictions":
                                                 os.path.basename(csv_path)}))
    report["predictions"] = csv_path
    report["figures"] = E.write_plots(report, probs, labels, out, name)
    return report


def members_line(report: dict[str, Any]) -> str:
    """The members' own accuracies, one line."""
    return "members: " + ", ".join(f"{os.path.basename(m['workdir'].rstrip(os.sep))} "
                                   f"{m['accuracy']:.4f}" for m in report["members"])


def dumps(report: dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in report.items() if k != "figures"}, indent=2,
                      default=str)
