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

import zoo
from train import checkpoint as C
from train import device
from train import step as T
from train import workdir as W
from train.data import decode_file
from train.detection import build as B
from train.detection import metrics
from train.detection import predict as P
from train.detection import splits as DS
from train.detection.augment import letterbox
from train.errors import ImageError
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
             which: str = "best", rederive: bool = False) -> dict[str, Any]:
    """VOC/COCO AP of a workdir's checkpoint on a split of its data or of ``data``; JSON.

    A split of the run's own data is first checked against what ``splits.json`` recorded
    (``train.detection.splits``): refused when files were added, removed or changed, unless
    ``rederive`` (the split's recorded files, found again by name)."""
    run = load_run(workdir, which)
    config = copy.deepcopy(run["config"])
    det = config.detection
    own = not data or data == run["config"].data.source
    if data:
        config.data.source = data
    split = split or det.test_split or det.val_split
    source = B.open_split(config, split, run["class_names"])
    indices, how = DS.check(workdir, config, source, split, rederive) if own else (None, "")
    n = run["mesh"].devices.size
    data_loader = B.loader(config, source, train=False, batch_size=-(-config.batch_size // n) * n,
                           indices=indices)
    report = B.evaluate_loader(run["eval_fn"], run["state"], run["mesh"], data_loader,
                               run["class_names"], close=True)
    report = {"data": f"{config.data.source} ({split} split{how})",
              "checkpoint": run["checkpoint"], **report}
    name = split if own else \
        f"{os.path.basename(data.partition(':')[2].rstrip('/')) or data}_{split}"
    write_report(report, workdir, name)
    return report


def summary(report: dict) -> str:
    """One line: VOC mAP@0.5 and COCO AP over the evaluated images."""
    return (f"{report.get('data', '')}: VOC mAP@0.5 {report['voc_map50']:.4f}, COCO AP@[.5:.95] "
            f"{report['coco_ap']:.4f} on {report['num_images']} images "
            f"({report.get('checkpoint', '')})")


def write_report(report: dict, workdir: str, name: str) -> str:
    """``eval_<name>.json`` in the workdir; returns its path. A previous one with other
    contents is kept as ``eval_<name>.<n>.json`` (``train.workdir.write_result``)."""
    path = os.path.join(workdir, f"eval_{name}.json")
    if jax.process_index() == 0:
        W.write_result(path, metrics.json_safe(report))
    report["json"] = path
    return path


CHUNK_BATCHES = 8  # detect_files: batches per fetch (originals of a chunk kept for drawing)


def detect_files(workdir: str, paths: Sequence[str], out_dir: str | None = None, *,
                 score_threshold: float = 0.25, which: str = "best") -> list[dict[str, Any]]:
    """Detections (original pixel boxes) for image files, in their order; PNGs with the boxes
    in ``out_dir``. A file that cannot be read (missing, a folder, empty, truncated, not an
    image) gets ``{'path', 'error'}`` instead, and the others are still detected.

    The files go through the model in batches, ``CHUNK_BATCHES`` batches per fetch of the
    detections (``train.device.predict``), not one image per call."""
    run = load_run(workdir, which, score_threshold)
    n = run["mesh"].devices.size
    batch = -(-run["config"].batch_size // n) * n
    results: dict[str, dict[str, Any]] = {}
    paths = list(paths)
    step = batch * CHUNK_BATCHES
    pngs = {os.path.abspath(p): "" for p in paths}  # never drawn over: the inputs
    for k in range(0, len(paths), step):
        results.update(_detect_chunk(run, paths[k : k + step], batch, out_dir, pngs))
    return [results[p] for p in paths]


def _png_name(path: str, out_dir: str, used: dict[str, str]) -> str:
    """``<out_dir>/<stem>.png``, or ``<stem>_<n>.png`` when that is taken in this call: by
    another file's drawing (same stem, other folder) or by an input image itself."""
    stem = os.path.splitext(os.path.basename(path))[0]
    name, n = os.path.join(out_dir, f"{stem}.png"), 1
    while used.get(os.path.abspath(name), path) != path:
        name, n = os.path.join(out_dir, f"{stem}_{n}.png"), n + 1
    used[os.path.abspath(name)] = path
    return name


def _detect_chunk(run: dict, paths: Sequence[str], batch: int, out_dir: str | None,
                  pngs: dict[str, str]) -> dict[str, dict[str, Any]]:
    hw, names = B.image_hw(run["config"]), run["class_names"]
    out, images = {}, {}
    for path in paths:
        try:
            images[path] = decode_file(path)
        except ImageError as e:
            out[path] = {"path": path, "error": str(e)}
    good = list(images)
    if not good:
        return out
    boxed = [letterbox(images[p], np.zeros((0, 4), np.float32), hw) for p in good]

    def batches():
        for k in range(0, len(good), batch):
            part = [b[0] for b in boxed[k : k + batch]]
            mask = np.zeros(batch, np.float32)
            mask[: len(part)] = 1
            part += [part[-1]] * (batch - len(part))
            yield {"image": np.stack(part), "mask": mask}

    dets, _ = device.predict(run["eval_fn"], run["state"], batches(), run["mesh"])
    for i, path in enumerate(good):
        image, place = images[path], boxed[i][2]
        keep = np.asarray(dets["valid"][i])
        h, w = image.shape[:2]
        boxes = np.clip(place.to_original(dets["boxes"][i][keep]), 0, [w, h, w, h])
        classes, scores = dets["classes"][i][keep], dets["scores"][i][keep]
        out[path] = {"path": path, "detections": [
            {"class": names[int(c)], "score": float(s), "box": [round(float(v), 1) for v in b]}
            for b, c, s in zip(boxes, classes, scores, strict=True)]}
        if out_dir:
            os.makedirs(out_dir, exist_ok=True)
            png = _png_name(path, out_dir, pngs)
            P.draw(image, boxes, classes, scores, names).save(png)
            out[path]["png"] = png
    return out
