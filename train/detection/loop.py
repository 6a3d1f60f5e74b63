"""``train_and_evaluate(config, workdir)`` for detectors: the trainer's sharded step, freezing,
optimizer, checkpoints and logs, with detection data, the YOLO losses and mAP.

``scripts.train`` comes here when ``zoo.spec(config.model.name).task == 'detection'``.
Resuming is exact as in the classification trainer (data order and augmentation are
functions of seed, epoch and example). The workdir also holds ``anchors.json`` (the run's
anchors), ``classes.json`` and ``eval_<split>.json`` (VOC and COCO AP per class).
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

import jax

import zoo
from train import checkpoint as C
from train import freeze as F
from train import logs
from train import loop as L
from train import step as T
from train.detection import build as B
from train.detection import metrics

log = logging.getLogger(__name__)


def train_and_evaluate(config, workdir: str) -> dict[str, Any]:
    """Train (or resume) a detector in ``workdir``; return the final evaluation report."""
    L.maybe_initialize_distributed()
    os.makedirs(workdir, exist_ok=True)
    logs.setup_logging(workdir)
    L.save_config(config, workdir)
    det = config.detection
    train_src = B.open_split(config, det.train_split)
    names = train_src.class_names
    val_src = B.open_split(config, det.val_split, names)
    log.info("data %s: classes %s; %s %d images, %s %d images; degenerate boxes dropped: %d",
             config.data.source, list(names), det.train_split, len(train_src), det.val_split,
             len(val_src), train_src.dropped + val_src.dropped)
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "classes.json"), "w") as f:
            json.dump(list(names), f)
    anchors = B.resolve_anchors(config, train_src, workdir)
    mesh = T.make_mesh(config.num_devices)
    T.check_batch_size(config.batch_size, mesh)
    train_loader = B.loader(config, train_src, train=True)
    total = config.epochs * len(train_loader)
    total = min(total, config.max_steps) if config.max_steps else total
    spec = zoo.spec(config.model.name)
    model = B.build_detector(config, len(names), anchors)
    hw = B.image_hw(config)
    variables = B.load_init(config, model, B.init_variables(model, hw, config.seed))
    trainable = F.trainable_fn(spec, config.policy, config.finetune_groups)
    labels = F.param_labels(variables["params"], spec, trainable)
    tx = F.make_optimizer(config, labels, total)
    log.info("model %s at %dx%d, anchors %s, policy %s, init %r:\n%s", spec.name, *hw, anchors,
             config.policy, config.init or "random",
             "\n".join(F.describe(variables["params"], labels, spec)))
    train_fn, eval_fn = T.jit_steps(
        T.make_train_step(model, tx, trainable, spec.normalize,
                          loss_fn=B.make_loss_fn(model, config, hw)),
        B.make_eval_step(model, spec, config), mesh)
    state = T.replicate(T.create_state(variables, tx, config.seed), mesh)
    ckpt = C.Checkpoints(workdir, keep=config.keep_checkpoints)
    meta = {"step": 0, "epoch": 0, "batch": 0, "sums": {"loss": 0.0, "count": 0.0},
            "best": None}
    if ckpt.latest() is not None:
        state, meta = ckpt.restore(state)
        log.info("resumed from step %d (epoch %d, batch %d)", meta["step"], meta["epoch"] + 1,
                 meta["batch"])
    val_loader = B.loader(config, val_src, train=False, batch_size=_eval_batch(config, mesh))
    history = logs.History(workdir, meta["step"], enabled=jax.process_index() == 0)
    log.info("%d device(s), %d steps of %d images (%d per epoch, %d epochs)", mesh.devices.size,
             total, config.batch_size, len(train_loader), config.epochs)
    try:
        state = _epochs(config, state, meta, train_fn, train_loader,
                        lambda s: B.evaluate_loader(eval_fn, s, mesh, val_loader, names),
                        ckpt, history, total, mesh)
    finally:
        ckpt.wait()
        history.close()
    which = "best" if ckpt.latest("best") is not None else "last"
    state, _ = ckpt.restore(state, which)
    ckpt.close()
    split = det.test_split or det.val_split
    src = B.open_split(config, split, names) if split != det.val_split else val_src
    data = B.loader(config, src, train=False, batch_size=_eval_batch(config, mesh))
    report = B.evaluate_loader(eval_fn, state, mesh, data, names)
    report = {"data": f"{config.data.source} ({split} split)",
              "checkpoint": f"{which} step {int(state.step)}", **report}
    write_report(report, workdir, split)
    log.info("%s\n%s", summary(report), metrics.format_table(report))
    return report


def _eval_batch(config, mesh) -> int:
    n = mesh.devices.size
    return -(-config.batch_size // n) * n


def _epochs(config, state, meta, train_fn, train_loader, validate, ckpt, history, total, mesh):
    """Epochs from the checkpointed position on; validation mAP picks the best checkpoint."""
    per_epoch, step = len(train_loader), meta["step"]
    for epoch in range(meta["epoch"], config.epochs):
        start = meta["batch"] if epoch == meta["epoch"] else 0
        sums = dict(meta["sums"]) if start else {"loss": 0.0, "count": 0.0}
        bar = logs.progress(per_epoch * config.batch_size, start * config.batch_size,
                            f"epoch {epoch + 1}/{config.epochs}", config.progress)
        t0, seen = time.perf_counter(), 0
        for i, batch in enumerate(train_loader.epoch(epoch, start), start):
            if step >= total:
                break
            state, m = train_fn(state, T.shard_batch(batch, mesh))
            m = jax.device_get(m)
            L._check_finite(m, step + 1, epoch, i + 1, ckpt)
            step, seen = step + 1, seen + config.batch_size
            if i == start:
                t0, seen = time.perf_counter(), 0
            sums = {"loss": sums["loss"] + float(m["loss"]) * float(m["count"]),
                    "count": sums["count"] + float(m["count"])}
            bar.update(config.batch_size)
            bar.set_postfix(loss=f"{sums['loss'] / max(sums['count'], 1):.3f}", refresh=False)
            meta = {**meta, "step": step, "epoch": epoch, "batch": i + 1, "sums": sums}
            if step % config.log_every_steps == 0:
                parts = {k: m[k] for k in ("box", "obj", "noobj", "cls", "coord") if k in m}
                history.write(step, "train_step", {"loss": m["loss"], "grad_norm": m["grad_norm"],
                                                   **parts}, epoch=epoch + 1)
            if step % config.checkpoint_every_steps == 0 and i + 1 < per_epoch:
                ckpt.save(state, meta)
        bar.close()
        if meta["batch"] < per_epoch:  # max_steps reached inside the epoch
            ckpt.save(state, meta)
            break
        rate = seen / max(time.perf_counter() - t0, 1e-9)
        train = {"loss": sums["loss"] / max(sums["count"], 1), "images_per_s": rate}
        history.write(step, "train", train, epoch=epoch + 1)
        line = f"epoch {epoch + 1}/{config.epochs} step {step}: train loss {train['loss']:.3f} " \
               f"({rate:.1f} img/s)"
        best = False
        last = epoch + 1 == config.epochs or step >= total
        if (epoch + 1) % config.detection.eval_every == 0 or last:
            r = validate(state)
            val = {k: r[k] for k in ("voc_map50", "coco_ap", "coco_ap50")}
            val |= {f"ap50_{c}": v["voc_ap50"] for c, v in r["per_class"].items()}
            history.write(step, "validation", val, epoch=epoch + 1)
            metric = config.best_metric if config.best_metric in val else "voc_map50"
            best = meta["best"] is None or val[metric] > meta["best"]
            meta = {**meta, "best": val[metric] if best else meta["best"]}
            line += f"; validation mAP@0.5 {val['voc_map50']:.3f}, AP {val['coco_ap']:.3f}" + (
                " (best)" if best else "")
        log.info("%s", line)
        meta = {**meta, "epoch": epoch + 1, "batch": 0, "sums": {"loss": 0.0, "count": 0.0}}
        ckpt.save(state, meta, best=best)
    return state


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
