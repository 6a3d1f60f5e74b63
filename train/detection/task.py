"""The detection task of the one training loop: detection data, the YOLO losses and mAP.

``train.loop.train_and_evaluate`` comes here when ``zoo.spec(config.model.name).task ==
'detection'``. The workdir also holds ``splits.json`` (the data it was trained on, which
evaluation checks: ``train.detection.splits``), ``classes.json``, ``anchors.json`` (the
run's anchors) and ``eval_<split>.json`` (VOC and COCO AP per class); the best checkpoint
is the one with the best validation ``config.best_metric`` (``voc_map50`` unless another
mAP is named).
"""

from __future__ import annotations

import json
import logging
import os

import jax

import zoo
from train.detection import build as B
from train.detection import evaluate as DE
from train.detection import metrics
from train.detection import splits as DS
from train.task import Task

log = logging.getLogger(__name__)

LOSS_PARTS = ("box", "obj", "noobj", "cls", "coord")  # logged per step when the loss gives them
VALIDATION = ("voc_map50", "coco_ap", "coco_ap50")


def setup(config, workdir: str, mesh) -> Task:
    """Open the splits, write ``splits.json``, ``classes.json`` and ``anchors.json``, build
    the detector."""
    if config.get("tta"):
        raise ValueError(f"config.tta={config.tta!r}: test-time augmentation is for "
                         "classifiers; leave it '' for a detector")
    det = config.detection
    train_src = B.open_split(config, det.train_split)
    names = train_src.class_names
    val_src = B.open_split(config, det.val_split, names)
    log.info("data %s: classes %s; %s %d images, %s %d images; degenerate boxes dropped: %d",
             config.data.source, list(names), det.train_split, len(train_src), det.val_split,
             len(val_src), train_src.dropped + val_src.dropped)
    split = det.test_split or det.val_split  # the final evaluation's
    sources = {det.train_split: train_src, det.val_split: val_src}
    if split not in sources:
        sources[split] = B.open_split(config, split, names)
    # splits.json: the data as it is now (a resumed run: checked against it)
    DS.record(config, workdir, sources, lambda name: B.open_split(config, name, names))
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "classes.json"), "w") as f:
            json.dump(list(names), f)
    anchors = B.resolve_anchors(config, train_src, workdir)
    model, hw = B.build_detector(config, len(names), anchors), B.image_hw(config)
    spec = zoo.spec(config.model.name)
    eval_batch = -(-config.batch_size // mesh.devices.size) * mesh.devices.size
    val_loader = B.loader(config, val_src, train=False, batch_size=eval_batch)

    def validate(eval_fn, state) -> dict:
        r = B.evaluate_loader(eval_fn, state, mesh, val_loader, names)
        return {k: r[k] for k in VALIDATION} | {
            f"ap50_{c}": v["voc_ap50"] for c, v in r["per_class"].items()}

    def finish(eval_fn, state, checkpoint: str) -> dict:
        val_loader.close()  # its worker processes, if any: validation is over
        data = B.loader(config, sources[split], train=False, batch_size=eval_batch)
        report = {"data": f"{config.data.source} ({split} split)", "checkpoint": checkpoint,
                  **B.evaluate_loader(eval_fn, state, mesh, data, names, close=True)}
        DE.write_report(report, workdir, split)
        log.info("%s\n%s", DE.summary(report), metrics.format_table(report))
        return report

    known = (*VALIDATION, *(f"ap50_{c}" for c in names))
    return Task(spec=spec, model=model,
                variables=B.load_init(config, model, B.init_variables(model, hw, config.seed)),
                train_loader=B.loader(config, train_src, train=True),
                eval_step=B.make_eval_step(model, spec, config), validate=validate,
                finish=finish, normalize=spec.normalize, loss_fn=B.make_loss_fn(model, config, hw),
                best_metric=config.best_metric if config.best_metric in known else "voc_map50",
                step_metrics=LOSS_PARTS, headline=("loss", "voc_map50", "coco_ap"),
                curves=("loss", "voc_map50"), eval_every=config.detection.eval_every,
                about=f" at {hw[0]}x{hw[1]}, anchors {anchors}")
