"""Evaluation and drawings from a detection workdir (best checkpoint, else the last)."""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

import zoo
from train import checkpoint as C
from train import step as T
from train.detection import build as B
from train.detection import metrics
from train.detection import predict as P
from train.detection.augment import letterbox
from train.evaluate import load_config


def is_detection_run(workdir: str) -> bool:
    """Whether a training workdir holds a detector."""
    return zoo.spec(load_config(workdir).model.name).task == "detection"


def load_run(workdir: str, which: str = "best", score_threshold: float | None = None):
    """Config, class names, model, mesh, jitted detection step and state of a workdir."""
    config = load_config(workdir)
    if score_threshold is not None:
        config.detection.score_threshold = score_threshold
    with open(os.path.join(workdir, "classes.json")) as f:
        names = tuple(json.load(f))
    root = os.path.join(workdir, "checkpoints")
    if which == "best" and not C.Checkpoints.steps(os.path.join(root, "best")):
        which = "last"
    steps = C.Checkpoints.steps(os.path.join(root, which))
    if not steps:
        raise FileNotFoundError(f"{workdir} has no checkpoint yet (looked in {root}/{which})")
    variables = C.restore_variables(os.path.join(root, which, str(steps[-1])))
    model = B.build_detector(config, len(names), B.resolve_anchors(config, None, workdir))
    mesh = T.make_mesh()
    state = T.replicate(T.TrainState(step=jnp.asarray(steps[-1], jnp.int32), opt_state={},
                                     rng=jax.random.PRNGKey(0), **variables), mesh)
    spec = zoo.spec(config.model.name)
    return dict(config=config, class_names=names, model=model, mesh=mesh, state=state,
                eval_fn=T.jit_eval(B.make_eval_step(model, spec, config), mesh),
                checkpoint=f"{which} step {steps[-1]}")


def evaluate(workdir: str, data: str | None = None, *, split: str | None = None,
             which: str = "best") -> dict[str, Any]:
    """VOC/COCO AP of a workdir's checkpoint on a split of its data or of ``data``; JSON."""
    run = load_run(workdir, which)
    config = copy.deepcopy(run["config"])
    det = config.detection
    if data:
        config.data.source = data
    split = split or det.test_split or det.val_split
    source = B.open_split(config, split, run["class_names"])
    n = run["mesh"].devices.size
    data_loader = B.loader(config, source, train=False, batch_size=-(-config.batch_size // n) * n)
    report = B.evaluate_loader(run["eval_fn"], run["state"], run["mesh"], data_loader,
                               run["class_names"])
    report = {"data": f"{config.data.source} ({split} split)", "checkpoint": run["checkpoint"],
              **report}
    name = split if not data or data == run["config"].data.source else \
        f"{os.path.basename(data.partition(':')[2].rstrip('/')) or data}_{split}"
    write_report(report, workdir, name)
    return report


def summary(report: dict) -> str:
    """One line: VOC mAP@0.5 and COCO AP over the evaluated images."""
    return (f"{report.get('data', '')}: VOC mAP@0.5 {report['voc_map50']:.4f}, COCO AP@[.5:.95] "
            f"{report['coco_ap']:.4f} on {report['num_images']} images "
            f"({report.get('checkpoint', '')})")


def write_report(report: dict, workdir: str, name: str) -> str:
    """``eval_<name>.json`` in the workdir; returns its path."""
    path = os.path.join(workdir, f"eval_{name}.json")
    if jax.process_index() == 0:
        metrics.write_json(report, path)
    report["json"] = path
    return path


def detect_files(workdir: str, paths: Sequence[str], out_dir: str | None = None, *,
                 score_threshold: float = 0.25, which: str = "best") -> list[dict[str, Any]]:
    """Detections (original pixel boxes) for image files; PNGs with the boxes in ``out_dir``."""
    run = load_run(workdir, which, score_threshold)
    hw = B.image_hw(run["config"])
    n = run["mesh"].devices.size
    names = run["class_names"]
    results = []
    for path in paths:
        with Image.open(path) as im:
            image = np.asarray(im.convert("RGB"))
        boxed, _, place = letterbox(image, np.zeros((0, 4), np.float32), hw)
        batch = {"image": np.repeat(boxed[None], n, 0)}
        det = jax.device_get(run["eval_fn"](run["state"], T.shard_batch(batch, run["mesh"])))
        keep = np.asarray(det["valid"][0])
        h, w = image.shape[:2]
        boxes = np.clip(place.to_original(det["boxes"][0][keep]), 0, [w, h, w, h])
        classes, scores = det["classes"][0][keep], det["scores"][0][keep]
        results.append({"path": path, "detections": [
            {"class": names[int(c)], "score": float(s), "box": [round(float(v), 1) for v in b]}
            for b, c, s in zip(boxes, classes, scores, strict=True)]})
        if out_dir:
            os.makedirs(out_dir, exist_ok=True)
            stem = os.path.splitext(os.path.basename(path))[0]
            out = os.path.join(out_dir, f"{stem}.png")
            P.draw(image, boxes, classes, scores, names).save(out)
            results[-1]["png"] = out
    return results
