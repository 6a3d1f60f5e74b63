"""Several training stages in one command: ``--config.stages='frozen ...; finetune:4 ...'``.

The Keras transfer-learning recipe: train the head on the frozen base until it has
converged, then unfreeze the top of the backbone and continue at a lower learning rate.
Each stage is ``POLICY key=value ...`` over the config's own keys (``augment=off`` turns
every augmentation off: the ``data.augment`` keys and the detection ones, which lets a
frozen classification stage train on cached features). Stage ``i`` is an ordinary run of
any task in ``<workdir>/stage<i>``; from the second stage on it starts from the previous
stage's best checkpoint, head included. ``train.loop`` runs the stages; this module makes
their configs and merges their outputs. The top workdir gets:

- ``history.jsonl``/``.csv`` and ``curves.png`` of all stages, epochs and steps numbered
  on from stage to stage, with a ``stage`` column (and a line between stages in the plot);
- ``train.log``: the stages' logs one after the other;
- ``stages.json``: each stage's settings, wall time and test numbers;
- ``config.json`` (the last stage's, which is the model that is kept), the last stage's
  ``splits.json``/``classes.json``/``anchors.json`` and its reports (``eval_<split>.json``
  with the ``predictions_<split>.csv`` it names, and the figures), and
  ``checkpoints`` (a link to the last stage's), so that ``scripts.evaluate`` and
  ``scripts.predict`` work on the top workdir as on any run.

Re-running the command resumes: finished stages only re-evaluate.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Sequence
from typing import Any

import ml_collections

from train import logs, plots
from train.configs import base

log = logging.getLogger(__name__)

# What ``augment=off`` sets besides ``data.augment``: the detection loader's augmentation.
NO_DETECTION_AUGMENT = {"scale": 0.0, "aspect": 0.0, "translate": False}
# The files of the last stage that the top workdir gets, so it evaluates as that stage.
RUN_FILES = ("splits.json", "classes.json", "anchors.json")
# The last stage's reports, copied up whole: ``eval_<split>.json`` names its predictions CSV
# relative to its own folder, so the two travel together (an ensemble reads the CSV).
REPORT_PREFIXES = ("eval_", "predictions_", "confusion_", "roc_", "pr_", "reliability_",
                   "errors_", "gradcam_")


def parse(stages: str) -> list[tuple[str, dict[str, str]]]:
    """``'frozen epochs=5; finetune:4 lr=..'`` -> ``[('frozen', {'epochs': '5'}), ...]``."""
    out = []
    for part in (p.strip() for p in stages.split(";")):
        if not part:
            continue
        policy, *items = part.split()
        bad = [i for i in items if "=" not in i]
        if bad or "=" in policy:
            raise ValueError(f"config.stages: stage {part!r} must read 'POLICY key=value ...'")
        out.append((policy, dict(i.split("=", 1) for i in items)))
    if not out:
        raise ValueError("config.stages is empty")
    return out


def _value(old: Any, text: str, key: str) -> Any:
    """``text`` as the type of the key's current value."""
    if isinstance(old, bool):
        if text.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"config.stages: {key}={text!r} must be true or false")
        return text.lower() in ("true", "1")
    if isinstance(old, int):
        return int(text)
    if isinstance(old, float):
        return float(text)
    if isinstance(old, tuple | list):
        return type(old)(type(old[0])(t) if old else t for t in text.split(","))
    return text


def stage_configs(config: ml_collections.ConfigDict, workdir: str
                  ) -> list[ml_collections.ConfigDict]:
    """The config of every stage: ``config`` with that stage's policy and keys."""
    out = []
    for i, (policy, items) in enumerate(parse(config.stages), 1):
        c = ml_collections.ConfigDict(config.to_dict())  # an unlocked copy
        c.stages = ""
        c.policy = policy
        if not c.features_dir:
            c.features_dir = os.path.join(workdir, "features")  # shared by all stages
        if i > 1:
            c.init, c.init_head = os.path.join(workdir, f"stage{i - 1}"), True
            if c.policy == "scratch":
                raise ValueError("config.stages: only the first stage can be 'scratch'")
        for key, text in items.items():
            if key == "augment":
                if text != "off":
                    raise ValueError("config.stages: augment=off is the only augment value")
                base.augment_off(c)
                c.detection.update(NO_DETECTION_AUGMENT)
                continue
            *parents, leaf = key.split(".")
            node = c
            for p in parents:
                node = node[p]
            if leaf not in node:
                raise ValueError(f"config.stages: unknown key {key!r} in stage {i}")
            node[leaf] = _value(node[leaf], text, key)
        c.lock()
        out.append(c)
    return out


def report_numbers(report: dict[str, Any]) -> dict[str, float]:
    """The numbers of a stage's test report (no lists, tables or names) for ``stages.json``."""
    return {k: v for k, v in report.items()
            if isinstance(v, int | float) and not isinstance(v, bool)}


def merge(workdir: str, n: int, last: ml_collections.ConfigDict, stages: str,
          done: list[dict], curves: Sequence[str] = ("loss", "accuracy")) -> None:
    """Write the top workdir's combined history, log, plot, config and links."""
    rows, step0, epoch0, bounds, text = [], 0, 0, [], []
    for i in range(1, n + 1):
        sub = os.path.join(workdir, f"stage{i}")
        part = logs.read_history(sub)
        rows += [{**r, "stage": i, "step": r["step"] + step0,
                  **({"epoch": r["epoch"] + epoch0} if "epoch" in r else {})} for r in part]
        step0 += max((r["step"] for r in part), default=0)
        epoch0 += max((r.get("epoch", 0) for r in part), default=0)
        bounds.append(epoch0 + 0.5)
        with open(os.path.join(sub, "train.log")) as f:
            text.append(f"===== stage {i}: {sub}\n{f.read()}")
    with open(os.path.join(workdir, "history.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    logs.write_csv(rows, os.path.join(workdir, "history.csv"))
    plots.plot_history(rows, os.path.join(workdir, "curves.png"), boundaries=bounds[:-1],
                       keys=curves)
    with open(os.path.join(workdir, "train.log"), "w") as f:
        f.write("".join(text))
    final = os.path.join(workdir, f"stage{n}")
    names = [*RUN_FILES, *(f for f in sorted(os.listdir(final)) if f.startswith(REPORT_PREFIXES))]
    for name in names:
        if os.path.isfile(os.path.join(final, name)):
            shutil.copyfile(os.path.join(final, name), os.path.join(workdir, name))
    cfg = json.loads(last.to_json_best_effort())
    cfg["stages"] = stages
    with open(os.path.join(workdir, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    with open(os.path.join(workdir, "stages.json"), "w") as f:
        json.dump(done, f, indent=2)
    link = os.path.join(workdir, "checkpoints")
    if os.path.islink(link):
        os.remove(link)
    if not os.path.exists(link):
        os.symlink(os.path.join(f"stage{n}", "checkpoints"), link)
