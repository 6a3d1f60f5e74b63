"""``train_and_evaluate(config, workdir)``: data -> model -> freeze -> jitted steps -> checkpoints.

Re-running the same command on the same workdir resumes from the last checkpoint and
ends bit-identical to an uninterrupted run (data order and augmentation are functions of
seed, epoch and example; the dropout key is folded from the step).

Multi-host: set ``ZOO_DISTRIBUTED=1`` (or JAX's ``JAX_COORDINATOR_ADDRESS``,
``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``) and start the same command on every host;
``jax.distributed.initialize()`` is called and each process reads its own slice of every
global batch (``jax.process_index()``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np

import zoo
from train import checkpoint as C
from train import data as D
from train import evaluate as E
from train import features as FE
from train import freeze as F
from train import logs, plots
from train import model as M
from train import splits as S
from train import step as T
from train.pipeline import Augment, Loader

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/Inf loss, gradient or parameter; nothing after it was saved."""


def maybe_initialize_distributed() -> None:
    """``jax.distributed.initialize()`` when the environment asks for a multi-host run."""
    if os.environ.get("ZOO_DISTRIBUTED") or os.environ.get("JAX_COORDINATOR_ADDRESS"):
        if not getattr(maybe_initialize_distributed, "done", False):
            jax.distributed.initialize()
            maybe_initialize_distributed.done = True  # type: ignore[attr-defined]


def save_config(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Write ``config.json``; warn when a resumed run changed it."""
    path = os.path.join(workdir, "config.json")
    new = json.loads(config.to_json_best_effort())
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
        if old != new:
            log.warning("config differs from the one this workdir was started with; "
                        "resuming with the new one (old kept in config.prev.json)")
            os.replace(path, os.path.join(workdir, "config.prev.json"))
    with open(path, "w") as f:
        json.dump(new, f, indent=2)


def prepare_data(config, workdir: str) -> tuple[D.Source, dict[str, np.ndarray]]:
    """Open the source and make (or re-read) the deterministic splits."""
    d = config.data
    source = D.open_source(d.source, seed=config.seed, synthetic_size=d.synthetic_size,
                           tfds_split=d.tfds_split, tfds_data_dir=d.tfds_data_dir,
                           download=d.download, workers=d.workers)
    info = {"source": d.source, "num_examples": len(source), "seed": config.seed,
            "fractions": list(d.splits), "group_regex": d.group_regex, "limit": d.limit,
            "classes": list(source.class_names)}
    path = os.path.join(workdir, "splits.json")
    splits = S.load_splits(path, info)
    if splits is None:
        keep = S.subsample(source.labels, d.limit, config.seed)
        groups = S.group_keys(source.keys, d.group_regex) if d.group_regex else None
        parts = S.make_splits(source.labels[keep], d.splits, seed=config.seed,
                              groups=None if groups is None else [groups[i] for i in keep])
        splits = {k: keep[v] for k, v in parts.items()}
        if jax.process_index() == 0:
            S.save_splits(path, splits, info, source.keys)
    sizes = ", ".join(f"{k} {len(v)}" for k, v in splits.items())
    log.info("data %s: %d examples, classes %s, skipped %d; splits %s%s", d.source, len(source),
             list(source.class_names), source.skipped, sizes,
             f" (grouped by {d.group_regex!r})" if d.group_regex else " (stratified)")
    return source, splits


def make_loader(config, source: D.Source, indices: np.ndarray, train: bool) -> Loader:
    """A loader of one split with the config's size, augmentation and threads."""
    d = config.data
    return Loader(source, indices, batch_size=config.batch_size, image_size=d.image_size,
                  train=train, augment=Augment.from_config(d.augment) if train else None,
                  seed=config.seed, workers=d.workers, prefetch=d.prefetch, cache=d.cache,
                  process_index=jax.process_index(), process_count=jax.process_count())


def build(config, num_classes: int, total_steps: int) -> dict[str, Any]:
    """Model, initial variables (``config.init``), trainable predicate, optimizer."""
    if config.policy == "scratch" and config.init:
        raise ValueError("policy 'scratch' trains from random weights; unset config.init "
                         "(or use policy 'full' to train everything from config.init)")
    spec = zoo.spec(config.model.name)
    model = M.build_model(config, num_classes)
    variables = M.init_variables(model, config.data.image_size, config.seed)
    variables = C.load_init(config.init, config.model.name, variables,
                            init_head=config.init_head, model_kwargs=M.backbone_kwargs(config))
    if config.policy in ("frozen", "finetune") and not config.init:
        log.warning("policy %r with random weights (config.init is empty): the frozen part "
                    "stays random", config.policy)
    trainable = F.trainable_fn(spec, config.policy, config.finetune_groups)
    labels = F.param_labels(variables["params"], spec, trainable)
    tx = F.make_optimizer(config, labels, total_steps)
    log.info("model %s (%s head), policy %s, init %r:\n%s", spec.name, config.head.kind,
             config.policy, config.init or "random", "\n".join(F.describe(
                 variables["params"], labels, spec)))
    return dict(spec=spec, model=model, variables=variables, trainable=trainable, tx=tx)


@dataclasses.dataclass
class Run:
    """What the epoch loop needs besides the state."""

    config: Any
    mesh: Any
    train_fn: Any
    eval_fn: Any
    train_loader: Loader | FE.FeatureLoader
    val_loader: Loader | FE.FeatureLoader
    ckpt: C.Checkpoints
    history: logs.History
    class_names: tuple[str, ...]
    total_steps: int


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Train (or resume) in ``workdir``; return the test-split evaluation report."""
    if config.stages:
        from train import stages

        return stages.run(config, workdir)
    maybe_initialize_distributed()
    os.makedirs(workdir, exist_ok=True)
    logs.setup_logging(workdir)
    save_config(config, workdir)
    source, splits = prepare_data(config, workdir)
    mesh = T.make_mesh(config.num_devices)
    T.check_batch_size(config.batch_size, mesh)
    train_loader = make_loader(config, source, splits["train"], train=True)
    total = config.epochs * len(train_loader)
    total = min(total, config.max_steps) if config.max_steps else total
    b = build(config, len(source.class_names), total)
    loaders = {"validation": make_loader(config, source, splits["validation"], train=False)}
    why_not = FE.unavailable(config, b["variables"]["params"])
    if why_not is None:
        log.info("%s", FE.describe(config, sum(len(v) for v in splits.values())))
        loaders = FE.loaders(config, b["spec"], b["variables"], source, splits, mesh, workdir)
        train_loader, model, norm, key = loaders["train"], FE.head_model(
            config, len(source.class_names)), FE.identity, FE.INPUT
    else:
        if config.policy == "frozen":
            log.info("not caching backbone features: %s", why_not)
        model, norm, key = b["model"], b["spec"].normalize, "image"
    train_fn, eval_fn = T.jit_steps(
        T.make_train_step(model, b["tx"], b["trainable"], norm, config.label_smoothing, key,
                          config.freeze_bn_stats),
        T.make_eval_step(model, norm, key), mesh)
    state = T.replicate(T.create_state(b["variables"], b["tx"], config.seed), mesh)
    ckpt = C.Checkpoints(workdir, keep=config.keep_checkpoints)
    meta = {"step": 0, "epoch": 0, "batch": 0, "sums": _zero_sums(), "best": None}
    if ckpt.latest() is not None:
        state, meta = ckpt.restore(state)
        log.info("resumed from step %d (epoch %d, batch %d)", meta["step"], meta["epoch"] + 1,
                 meta["batch"])
    log.info("%d device(s) (%s), %d steps of %d images (%d per epoch, %d epochs)",
             mesh.devices.size, jax.default_backend(), total, config.batch_size,
             len(train_loader), config.epochs)
    run = Run(config, mesh, train_fn, eval_fn, train_loader, loaders["validation"], ckpt,
              logs.History(workdir, meta["step"], enabled=jax.process_index() == 0),
              source.class_names, total)
    try:
        state = _epochs(run, state, meta)
    finally:
        ckpt.wait()
        run.history.close()
    if jax.process_index() == 0:
        plots.plot_history(logs.read_history(workdir), os.path.join(workdir, "curves.png"))
    which = "best" if ckpt.latest("best") is not None else "last"
    state, _ = ckpt.restore(state, which)
    ckpt.close()
    split = "test" if len(splits["test"]) else "validation"
    test_loader = loaders.get(split) or make_loader(config, source, splits[split], train=False)
    probs, labels = E.predict_loader(eval_fn, state, test_loader, mesh)
    report = E.classification(probs, labels, source.class_names, config.positive_class,
                              data=f"{config.data.source} ({split} split)",
                              checkpoint=f"{which} step {int(state.step)}")
    E.write_report(report, probs, labels, workdir, split)
    log.info("%s", E.summary(report))
    return report


def _zero_sums() -> dict[str, float]:
    return {"loss": 0.0, "correct": 0.0, "count": 0.0}


def _check_finite(m: dict, step: int, epoch: int, batch: int, ckpt: C.Checkpoints) -> None:
    if all(np.isfinite(m[k]) for k in ("loss", "grad_norm", "param_norm")):
        return
    ckpt.wait()
    raise NonFiniteLossError(
        f"non-finite training step {step} (epoch {epoch + 1}, batch {batch}): loss {m['loss']}, "
        f"gradient norm {m['grad_norm']}, parameter norm {m['param_norm']}. Stopped without "
        f"saving it; the last good checkpoint (step {ckpt.latest()}) is intact. Lower "
        "--config.learning_rate or set --config.grad_clip")


def _epochs(run: Run, state: T.TrainState, meta: dict) -> T.TrainState:
    """Epochs from the checkpointed position on; returns the final state."""
    c, step, per_epoch = run.config, meta["step"], len(run.train_loader)
    for epoch in range(meta["epoch"], c.epochs):
        start = meta["batch"] if epoch == meta["epoch"] else 0
        sums = dict(meta["sums"]) if start else _zero_sums()
        bar = logs.progress(per_epoch * c.batch_size, start * c.batch_size,
                            f"epoch {epoch + 1}/{c.epochs}", c.progress)
        t0, seen = time.perf_counter(), 0
        for i, batch in enumerate(run.train_loader.epoch(epoch, start), start):
            if step >= run.total_steps:
                break
            state, m = run.train_fn(state, T.shard_batch(batch, run.mesh))
            m = jax.device_get(m)
            _check_finite(m, step + 1, epoch, i + 1, run.ckpt)
            step, seen = step + 1, seen + c.batch_size
            if i == start:  # time from the end of the first step: no compile time
                t0, seen = time.perf_counter(), 0
            sums = {"loss": sums["loss"] + float(m["loss"]) * float(m["count"]),
                    "correct": sums["correct"] + float(m["correct"]),
                    "count": sums["count"] + float(m["count"])}
            bar.update(c.batch_size)
            bar.set_postfix(loss=f"{sums['loss'] / max(sums['count'], 1):.4f}", refresh=False)
            meta = {**meta, "step": step, "epoch": epoch, "batch": i + 1, "sums": sums}
            if step % c.log_every_steps == 0:
                run.history.write(step, "train_step", {
                    "loss": m["loss"], "grad_norm": m["grad_norm"],
                    "images_per_s": seen / max(time.perf_counter() - t0, 1e-9)},
                    epoch=epoch + 1)
            if step % c.checkpoint_every_steps == 0 and i + 1 < per_epoch:
                run.ckpt.save(state, meta)
        bar.close()
        if meta["batch"] < per_epoch:  # max_steps reached inside the epoch
            run.ckpt.save(state, meta)
            break
        rate = seen / max(time.perf_counter() - t0, 1e-9)
        meta = _end_of_epoch(run, state, meta, sums, rate)
    return state


def _end_of_epoch(run: Run, state: T.TrainState, meta: dict, sums: dict, rate: float) -> dict:
    """Validate, log the epoch, checkpoint (and keep it as best when it is)."""
    epoch, c = meta["epoch"], run.config
    train = {"loss": sums["loss"] / max(sums["count"], 1),
             "accuracy": sums["correct"] / max(sums["count"], 1), "images_per_s": rate}
    run.history.write(meta["step"], "train", train, epoch=epoch + 1)
    line = f"epoch {epoch + 1}/{c.epochs} step {meta['step']}: train loss {train['loss']:.4f} " \
           f"acc {train['accuracy']:.4f} ({rate:.1f} img/s)"
    best = False
    if len(run.val_loader.indices):
        probs, labels = E.predict_loader(run.eval_fn, state, run.val_loader, run.mesh)
        rep = E.classification(probs, labels, run.class_names, c.positive_class)
        val = {k: rep[k] for k in ("loss", "accuracy", "sensitivity", "specificity", "roc_auc")}
        run.history.write(meta["step"], "validation", val, epoch=epoch + 1)
        score = val[c.best_metric] * (-1 if c.best_metric == "loss" else 1)
        best = meta["best"] is None or score > meta["best"]
        meta = {**meta, "best": score if best else meta["best"]}
        line += f"; validation loss {val['loss']:.4f} acc {val['accuracy']:.4f}" + (
            " (best)" if best else "")
    log.info("%s", line)
    meta = {**meta, "epoch": epoch + 1, "batch": 0, "sums": _zero_sums()}
    run.ckpt.save(state, meta, best=best)
    return meta
