"""``train_and_evaluate(config, workdir)``: the one training loop, for every task.

The task (``zoo.spec(config.model.name).task``; ``train/task.py``) gives the data, the
network, its loss and how it is scored: ``train/classification.py``,
``train/detection/task.py``. This loop does the rest once for all of them: stages
(``config.stages``, ``train/stages.py``), freezing and the optimizer, the jitted sharded
steps, checkpoints and exact resume, the NaN stop, progress, history and curves.

Re-running the same command on the same workdir resumes from the last checkpoint and
ends bit-identical to an uninterrupted run (data order and augmentation are functions of
seed, epoch and example: ``train.pipeline.epoch_order``; the dropout key is folded from
the step).

Multi-host: set ``ZOO_DISTRIBUTED=1`` (or JAX's ``JAX_COORDINATOR_ADDRESS``,
``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``) and start the same command on every host;
``jax.distributed.initialize()`` is called and each process reads its own slice of every
global batch (``jax.process_index()``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from train import checkpoint as C
from train import classification, device, logs, plots, stages
from train import freeze as F
from train import precise_bn as PB
from train import step as T
from train import workdir as W
from train.detection import task as detection
from train.task import Task, kind

log = logging.getLogger(__name__)

# Each task's setup(config, workdir, mesh) -> Task, by zoo.spec(name).task.
SETUP: dict[str, Callable[..., Task]] = {"classification": classification.setup,
                                         "detection": detection.setup}


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/Inf loss, gradient or parameter; nothing after it was saved."""


def maybe_initialize_distributed() -> None:
    """``jax.distributed.initialize()`` when the environment asks for a multi-host run."""
    if os.environ.get("ZOO_DISTRIBUTED") or os.environ.get("JAX_COORDINATOR_ADDRESS"):
        if not getattr(maybe_initialize_distributed, "done", False):
            jax.distributed.initialize()
            maybe_initialize_distributed.done = True  # type: ignore[attr-defined]


def save_config(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Write ``config.json`` (atomically) once the run's checks have passed.

    :func:`train.workdir.check_config` has refused any change but the resumable keys
    (``train.workdir.RESUMABLE``); those are logged here.
    """
    for key, (old, new) in W.check_config(config, workdir).items():
        log.info("resuming with %s changed: %r -> %r", key, old, new)
    W.write_json(os.path.join(workdir, "config.json"), W.config_json(config))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       overwrite: bool = False) -> dict[str, Any]:
    """Train (or resume) in ``workdir``, every stage of ``config.stages`` in turn; return the
    final evaluation report of the config's task.

    The workdir is locked for the run (``train.workdir.Lock``). A re-run resumes only with
    the same config (bar ``train.workdir.RESUMABLE`` keys); ``overwrite`` discards a run
    with another config instead, once the new one's checks have passed.
    """
    maybe_initialize_distributed()
    # one lock per run: the first process holds it for every host of a multi-host run
    with W.Lock(workdir) if jax.process_index() == 0 else contextlib.nullcontext():
        if config.stages:
            return _stages(config, workdir, overwrite)
        return _train(config, workdir, overwrite)[0]


def _stages(config: ml_collections.ConfigDict, workdir: str, overwrite: bool = False
            ) -> dict[str, Any]:
    """Each stage as a run in ``<workdir>/stage<i>``; then their logs and plots merged."""
    os.makedirs(workdir, exist_ok=True)
    logs.setup_logging(workdir)
    configs = stages.stage_configs(config, workdir)
    done = []
    for i, c in enumerate(configs, 1):
        sub = os.path.join(workdir, f"stage{i}")
        log.info("stage %d/%d: policy %s, %d epochs, learning rate %g -> %s", i, len(configs),
                 c.policy, c.epochs, c.learning_rate, sub)
        t0 = time.perf_counter()
        report, task = _train(c, sub, overwrite)
        done.append({"stage": i, "policy": c.policy, "epochs": c.epochs,
                     "learning_rate": c.learning_rate, "workdir": sub,
                     "seconds": round(time.perf_counter() - t0, 1),
                     "test": stages.report_numbers(report)})
    if jax.process_index() == 0:
        stages.merge(workdir, len(configs), configs[-1], config.stages, done, task.curves)
        logs.add_run_hparams(workdir, config, report, task.best_metric, task.minimize)
    logs.setup_logging(workdir)
    for d in done:
        log.info("stage %d (%s, %d epochs, %.0f s): test %s", d["stage"], d["policy"],
                 d["epochs"], d["seconds"], _fmt(d["test"], task.headline))
    return report


@dataclasses.dataclass
class Run:
    """What the epoch loop needs besides the state."""

    config: Any
    task: Task
    mesh: Any
    train_fn: Callable
    eval_fn: Callable
    ckpt: C.Checkpoints
    history: logs.History
    total_steps: int
    precise_bn: Callable | None = None  # (state, epoch) -> state: see _precise_bn


def _train(config: ml_collections.ConfigDict, workdir: str, overwrite: bool = False
           ) -> tuple[dict[str, Any], Task]:
    """One run of the config's task in ``workdir``: its final report, and the task."""
    maybe_initialize_distributed()
    os.makedirs(workdir, exist_ok=True)
    # with overwrite: the old run moved aside (by the first process only)
    setup = W.Setup(workdir, overwrite, active=jax.process_index() == 0)
    logs.setup_logging(workdir)
    try:  # every check before anything of the run is kept: a refusal leaves the workdir as it was
        _check_init(config)
        W.check_config(config, workdir)
        mesh = T.make_mesh(config.num_devices)
        T.check_batch_size(config.batch_size, mesh)
        task = SETUP[kind(config.model.name)](config, workdir, mesh)
        _check_trainable(config, task)
        total = config.epochs * len(task.train_loader)
        total = min(total, config.max_steps) if config.max_steps else total
        train_fn, eval_fn, state, precise_bn = _steps(config, task, mesh, total)
        ckpt = C.Checkpoints(workdir, keep=config.keep_checkpoints)
        meta = {"step": 0, "epoch": 0, "batch": 0, "sums": _zero_sums(task), "best": None}
        if ckpt.latest() is not None:
            state, meta = ckpt.restore(state)
            log.info("resumed from step %d (epoch %d, batch %d)", meta["step"],
                     meta["epoch"] + 1, meta["batch"])
        if jax.process_index() == 0:
            save_config(config, workdir)
    except BaseException:
        setup.undo()
        raise
    setup.commit()
    log.info("%d device(s) (%s), %d steps of %d images (%d per epoch, %d epochs)",
             mesh.devices.size, jax.default_backend(), total, config.batch_size,
             len(task.train_loader), config.epochs)
    run = Run(config, task, mesh, train_fn, eval_fn, ckpt,
              logs.History(workdir, meta["step"], enabled=jax.process_index() == 0), total,
              precise_bn)
    try:
        state = _epochs(run, state, meta)
    finally:
        ckpt.wait()
        run.history.close()
        getattr(task.train_loader, "close", lambda: None)()  # its worker processes, if any
    if jax.process_index() == 0:
        plots.plot_history(logs.read_history(workdir), os.path.join(workdir, "curves.png"),
                           keys=task.curves)
    which = "best" if ckpt.latest("best") is not None else "last"
    state, _ = ckpt.restore(state, which)
    ckpt.close()
    report = task.finish(eval_fn, state, f"{which} step {int(state.step)}")
    if jax.process_index() == 0:  # TensorBoard's HPARAMS tab: the config and final numbers
        logs.add_run_hparams(workdir, config, report, task.best_metric, task.minimize)
    return report, task


def _check_trainable(config, task: Task) -> None:
    """A policy that trains no parameter at all is a mistake (e.g. a regex that matches
    no path), not a run."""
    try:
        trainable = F.trainable_fn(task.spec, config.policy, config.finetune_groups)
    except re.error as e:
        raise ValueError(f"config.policy={config.policy!r} is not a valid regex: {e}") from None
    paths = list(F.flat_paths(task.variables["params"]))
    if not any(trainable(p) for p in paths):
        raise ValueError(
            f"config.policy={config.policy!r} matches no parameter of {config.model.name}, so "
            f"nothing would train; parameter paths look like {', '.join(paths[:3])}, "
            f"{paths[-1]}")


def _check_init(config) -> None:
    if config.policy == "scratch" and config.init:
        raise ValueError("policy 'scratch' trains from random weights; unset config.init "
                         "(or use policy 'full' to train everything from config.init)")
    if config.policy in ("frozen", "finetune") and not config.init:
        log.warning("policy %r with random weights (config.init is empty): the frozen part "
                    "stays random", config.policy)


def _steps(config, task: Task, mesh, total_steps: int
           ) -> tuple[Callable, Callable, Any, Callable | None]:
    """The jitted train and eval steps of the task under the config's policy; the state."""
    trainable, labels, tx = F.optimizer_for(config, task.spec, task.variables["params"],
                                            total_steps)
    log.info("model %s%s, policy %s, init %r:\n%s", task.spec.name, task.about, config.policy,
             config.init or "random",
             "\n".join(F.describe(task.variables["params"], labels, task.spec,
                                F.backbone_scale(config))))
    train_step = T.make_train_step(task.model, tx, trainable, task.normalize,
                                   config.label_smoothing, task.input_key,
                                   config.freeze_bn_stats, task.loss_fn, task.augment)
    train_fn, eval_fn = T.jit_steps(train_step, task.eval_step, mesh)
    state = T.replicate(T.create_state(task.variables, tx, config.seed), mesh)
    bn_trainable = (lambda path: False) if config.freeze_bn_stats else trainable
    return train_fn, eval_fn, state, _precise_bn(config, task, mesh, bn_trainable)


def _precise_bn(config, task: Task, mesh, bn_trainable: Callable[[str], bool]
                ) -> Callable | None:
    """``config.recompute_bn_batches``: ``f(state, epoch) -> state`` with the batch-norm
    statistics recomputed from the epoch's last training batches (``train/precise_bn.py``);
    None when off or when no batch norm's statistics train."""
    n = config.get("recompute_bn_batches", 0)
    maker = getattr(task.train_loader, "batch_maker", None)
    if not n or not PB.any_moving(task.variables["batch_stats"], bn_trainable):
        return None
    if maker is None or task.input_key != "image":  # the head on cached features: no BN moves
        log.warning("recompute_bn_batches=%d: this run's loader gives no images to recompute "
                    "batch norm from; the moving averages are kept", n)
        return None
    stats_fn = PB.make_stats_fn(task.model, task.normalize, bn_trainable, mesh)
    log.info("batch norm: statistics recomputed from %d training batches before each "
             "validation (PreciseBN)", n)

    def recompute(state: T.TrainState, epoch: int) -> T.TrainState:
        make, per_epoch = maker(), len(task.train_loader)
        images = (T.shard_batch({"image": make(epoch * per_epoch + k)["image"]}, mesh)["image"]
                  for k in range(max(0, per_epoch - n), per_epoch))
        return PB.recompute(stats_fn, state, images)

    return recompute


def _zero_sums(task: Task) -> dict[str, float]:
    return {"loss": 0.0, **{k: 0.0 for k in task.summed}, "count": 0.0}


def _add(sums: dict[str, float], m: dict) -> dict[str, float]:
    """The epoch sums after step metrics ``m`` (the loss weighted by the step's count)."""
    return {k: v + float(m[k]) * (float(m["count"]) if k == "loss" else 1.0)
            for k, v in sums.items()}


def _fmt(metrics: dict, keys: Sequence[str]) -> str:
    return " ".join(f"{k} {metrics[k]:.4f}" for k in keys if k in metrics)


def _check_finite(m: dict, step: int, epoch: int, batch: int, ckpt: C.Checkpoints) -> None:
    if all(np.isfinite(m[k]) for k in ("loss", "grad_norm", "param_norm")):
        return
    ckpt.wait()
    raise NonFiniteLossError(
        f"non-finite training step {step} (epoch {epoch + 1}, batch {batch}): loss {m['loss']}, "
        f"gradient norm {m['grad_norm']}, parameter norm {m['param_norm']}. Stopped without "
        f"saving it; {_last_good(ckpt)} Lower --config.learning_rate or set "
        "--config.grad_clip")


def _last_good(ckpt: C.Checkpoints) -> str:
    step = ckpt.latest()
    if step is None:
        return "no checkpoint had been saved yet (the workdir has none)."
    return f"the last good checkpoint (step {step}) is intact."


def _read(run: Run, meta: dict, pending: list, epoch: int) -> tuple[dict, dict | None]:
    """Fetch the metrics of the ``pending`` steps (one transfer), check each is finite in
    order (a non-finite step raises before anything after it is saved), add them to the
    epoch sums; the position after the last of them, and its metrics."""
    if not pending:
        return meta, None
    fetched = jax.device_get([m for _, _, m in pending])
    sums = meta["sums"]
    for (step, batch, _), m in zip(pending, fetched, strict=True):
        _check_finite(m, step, epoch, batch, run.ckpt)
        sums = _add(sums, m)
    step, batch, _ = pending[-1]
    pending.clear()
    return {**meta, "step": step, "epoch": epoch, "batch": batch, "sums": sums}, fetched[-1]


def _epochs(run: Run, state: T.TrainState, meta: dict) -> T.TrainState:
    """Epochs from the checkpointed position on; returns the final state.

    The host never waits for a step it has just dispatched: the next batches are copied
    onto the devices ahead (``train.device.prefetch``), and step metrics stay there until
    they are read every ``log_every_steps``, before every checkpoint and at the end of an
    epoch (``_read``). A step is only checkpointed after it and every step before it were
    read and found finite.
    """
    c, per_epoch = run.config, len(run.task.train_loader)
    ahead = max(1, c.data.prefetch)
    for epoch in range(meta["epoch"], c.epochs):
        start = meta["batch"] if epoch == meta["epoch"] else 0
        if not start:
            meta = {**meta, "sums": _zero_sums(run.task)}
        bar = logs.progress(per_epoch * c.batch_size, start * c.batch_size,
                            f"epoch {epoch + 1}/{c.epochs}", c.progress)
        t0, seen, step, pending = time.perf_counter(), 0, meta["step"], []
        batches = device.prefetch(run.task.train_loader.epoch(epoch, start), run.mesh, ahead)
        for i, (_, batch) in enumerate(batches, start):
            if step >= run.total_steps:
                break
            state, m = run.train_fn(state, batch)
            step += 1
            pending.append((step, i + 1, m))
            if i == start:  # time from the end of the first step: no compile time
                jax.block_until_ready(m)
                t0, seen = time.perf_counter(), 0
            else:
                seen += c.batch_size
            device.bound([p[2] for p in pending], ahead)
            bar.update(c.batch_size)
            if step % c.log_every_steps == 0 or step % c.checkpoint_every_steps == 0:
                meta, last = _read(run, meta, pending, epoch)
                bar.set_postfix(loss=f"{meta['sums']['loss'] / max(meta['sums']['count'], 1):.4f}",
                                refresh=False)
                _after_step(run, state, meta, last, seen / max(time.perf_counter() - t0, 1e-9))
        meta, _ = _read(run, meta, pending, epoch)
        bar.close()
        if meta["batch"] < per_epoch:  # max_steps reached inside the epoch
            run.ckpt.save(state, meta)
            break
        state, meta = _end_of_epoch(run, state, meta,
                                    seen / max(time.perf_counter() - t0, 1e-9))
    return state


def _after_step(run: Run, state: T.TrainState, meta: dict, m: dict, rate: float) -> None:
    """Log the step every ``log_every_steps``; checkpoint every ``checkpoint_every_steps``."""
    c, step = run.config, meta["step"]
    if step % c.log_every_steps == 0:
        parts = {k: m[k] for k in run.task.step_metrics if k in m}
        run.history.write(step, "train_step", {"loss": m["loss"], "grad_norm": m["grad_norm"],
                                               **parts, "images_per_s": rate,
                                               "learning_rate": float(F.schedule(
                                                   c, run.total_steps)(step - 1))},
                          epoch=meta["epoch"] + 1)
    if step % c.checkpoint_every_steps == 0 and meta["batch"] < len(run.task.train_loader):
        run.ckpt.save(state, meta)


def _end_of_epoch(run: Run, state: T.TrainState, meta: dict, rate: float
                  ) -> tuple[T.TrainState, dict]:
    """Validate (every ``task.eval_every`` epochs and after the last; batch-norm statistics
    recomputed first with ``recompute_bn_batches``), log the epoch, checkpoint (and keep it
    as best when it is)."""
    epoch, c, task, sums = meta["epoch"], run.config, run.task, meta["sums"]
    n = max(sums["count"], 1)
    train = {"loss": sums["loss"] / n, **{k: sums[s] / n for k, s in task.means.items()},
             "images_per_s": rate}
    run.history.write(meta["step"], "train", train, epoch=epoch + 1)
    line = f"epoch {epoch + 1}/{c.epochs} step {meta['step']}: train " \
           f"{_fmt(train, task.headline)} ({rate:.1f} img/s)"
    last = epoch + 1 == c.epochs or meta["step"] >= run.total_steps
    due = (epoch + 1) % task.eval_every == 0 or last
    if due and run.precise_bn is not None:
        state = run.precise_bn(state, epoch)
    val = task.validate(run.eval_fn, state) if due else None
    best = False
    if val is not None:
        run.history.write(meta["step"], "validation", val, epoch=epoch + 1)
        score = val[task.best_metric] * (-1 if task.minimize else 1)
        best = meta["best"] is None or score > meta["best"]
        meta = {**meta, "best": score if best else meta["best"]}
        line += f"; validation {_fmt(val, task.headline)}" + (" (best)" if best else "")
    log.info("%s", line)
    meta = {**meta, "epoch": epoch + 1, "batch": 0, "sums": _zero_sums(run.task)}
    run.ckpt.save(state, meta, best=best)
    return state, meta
