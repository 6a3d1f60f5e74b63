"""What feeds the device: the loader's images/s, and training through the loop against the
bare step (``python -m scripts.bench --input``; numbers in BENCHMARKS.md).

- :func:`loader_rates`: images/s of ``train.pipeline.Loader`` at 224 px with the malaria
  recipe's augmentation, for 1, 2, ... threads (first epoch: decode, resize, augment; then
  a cached epoch) and 1, 2, ... worker processes (grain; the stream's first batch, which
  includes starting the processes, is not timed).
- :func:`end_to_end`: the same model, batch and data trained by ``train.loop`` (its
  ``images_per_s``: the epoch's steps after the first, input pipeline included) against its
  jitted train step on one batch already on the device (no input at all).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence

import numpy as np

MALARIA = "../shared/data/malaria/cell_images"


def _source(spec: str | None, limit: int):
    from train import data as D

    if spec is None:
        spec = f"folder:{MALARIA}" if os.path.isdir(MALARIA) else "synthetic"
    source = D.open_source(spec, synthetic_size=limit)
    return source, np.random.default_rng(0).permutation(len(source))[:limit]


def malaria_augment():
    from train.configs import malaria
    from train.pipeline import Augment

    return Augment.from_config(malaria.get_config().data.augment)


def _rate(batches, batch_size: int, skip_first: bool = False) -> float:
    it = iter(batches)
    if skip_first:
        next(it)
    t, n = time.perf_counter(), 0
    for b in it:
        n += int(b["mask"].sum()) if "mask" in b else batch_size
    return n / max(time.perf_counter() - t, 1e-9)


def loader_rates(source_spec: str | None = None, *, images: int = 512, image_size: int = 224,
                 batch: int = 64, threads: Sequence[int] = (1, 2),
                 processes: Sequence[int] = (1, 2)) -> list[dict]:
    """Rows ``{mode, workers, epoch, images_per_s}`` for each thread and process count."""
    from train.pipeline import Loader

    source, idx = _source(source_spec, images)
    aug, rows = malaria_augment(), []
    for t in threads:
        loader = Loader(source, idx, batch_size=batch, image_size=image_size, train=True,
                        augment=aug, workers=t, processes=0, cache=True)
        for epoch, what in ((0, "first (decode)"), (1, "cached")):
            rows.append(dict(mode="threads", workers=t, epoch=what,
                             images_per_s=_rate(loader.epoch(epoch), batch)))
    for p in processes:
        loader = Loader(source, idx, batch_size=batch, image_size=image_size, train=True,
                        augment=aug, processes=p)
        rows.append(dict(mode="processes", workers=p, epoch="first (decode)",
                         images_per_s=_rate(loader.epoch(0), batch, skip_first=True)))
        rows.append(dict(mode="processes", workers=p, epoch="second (decode)",
                         images_per_s=_rate(loader.epoch(1), batch)))
        loader.close()  # its workers stop before the next count starts its own
    return rows


def end_to_end(model: str, image_size: int, *, batch: int = 32, steps: int = 30,
               source_spec: str | None = None, processes: int = 0, workers: int = 2,
               repeats: int = 5) -> dict:
    """``{bare, loop, ratio}`` images/s of ``model`` trained from scratch at ``image_size``."""
    import jax

    from train import loop
    from train import step as T
    from train.configs import malaria_scratch

    c = malaria_scratch.get_config()
    c.unlock()
    source, _ = _source(source_spec, 10 * batch)
    c.model.name, c.data.image_size, c.batch_size = model, image_size, batch
    c.data.source, c.data.limit, c.data.group_regex = source.spec, 0, ""
    if source.spec == "synthetic":
        c.data.synthetic_size = int(steps * batch / 0.8) + batch
    else:  # enough images for one epoch of ``steps`` steps
        c.data.limit = int(steps * batch / 0.8) + batch
    c.data.processes, c.data.workers = processes, workers
    c.init, c.policy, c.stages, c.epochs, c.progress = "", "scratch", "", 1, False
    c.data.cache = False  # one epoch: every image is decoded, as in a first epoch
    with tempfile.TemporaryDirectory() as wd:
        loop.train_and_evaluate(c, wd)
        rows = [json.loads(line) for line in open(os.path.join(wd, "history.jsonl"))]
        looped = [r for r in rows if r.get("split") == "train"][-1]["images_per_s"]
        # the bare step: the loop's own jitted step, on one batch already on the device
        mesh = T.make_mesh(c.num_devices)
        task = loop.SETUP["classification"](c, wd, mesh)
        train_fn, _, state, _ = loop._steps(c, task, mesh, steps)
        batch_ = T.shard_batch(next(iter(task.train_loader.epoch(0))), mesh)
        state, m = train_fn(state, batch_)
        jax.block_until_ready(m)
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            for _ in range(steps // repeats or 1):
                state, m = train_fn(state, batch_)
            jax.block_until_ready(m)
            times.append((time.perf_counter() - t) / (steps // repeats or 1))
    bare = batch / statistics.median(times)
    return dict(model=model, image_size=image_size, batch=batch, processes=processes,
                workers=workers, data=source.spec, bare=bare, loop=looped, ratio=looped / bare)


def report(rates: list[dict], e2e: list[dict]) -> str:
    """Markdown tables of :func:`loader_rates` and :func:`end_to_end` rows."""
    lines = ["| loader | workers | epoch | img/s |", "|---|---|---|---|"]
    lines += [f"| {r['mode']} | {r['workers']} | {r['epoch']} | {r['images_per_s']:.0f} |"
              for r in rates]
    lines += ["", "| model | px | batch | input | bare step img/s | through the loop img/s | "
              "loop / bare |", "|---|---|---|---|---|---|---|"]
    for r in e2e:
        inp = f"{r['processes']} processes" if r["processes"] else f"{r['workers']} threads"
        lines.append(f"| {r['model']} | {r['image_size']} | {r['batch']} | {inp} | "
                     f"{r['bare']:.1f} | {r['loop']:.1f} | {r['ratio']:.2f} |")
    return "\n".join(lines)


def run(*, source_spec: str | None = None, images: int = 512, markdown_path: str | None = None,
        json_path: str | None = None) -> str:
    """Both measurements (the end-to-end pairs: resnet18 at 64 px, mobilenetv2 at 128 px)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    counts = sorted({1, 2, *range(2, (cores or 2) + 1, 2)})
    print("loader ...", file=sys.stderr, flush=True)
    rates = loader_rates(source_spec, images=images, threads=counts, processes=counts)
    e2e = []
    for model, size in (("resnet18", 64), ("mobilenetv2", 128)):
        print(f"end to end: {model} at {size} px ...", file=sys.stderr, flush=True)
        e2e.append(end_to_end(model, size, source_spec=source_spec))
    text = report(rates, e2e) + f"\n\n- data: {e2e[0]['data']}; {cores} cores"
    print(text)
    if markdown_path:
        with open(markdown_path, "w") as f:
            f.write(text + "\n")
    if json_path:
        with open(json_path, "w") as f:
            json.dump(dict(loader=rates, end_to_end=e2e), f, indent=1)
    return text
