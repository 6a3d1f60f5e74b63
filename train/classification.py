"""The classification task of the one training loop: splits, loaders, the network with its
head, cached backbone features, and the classification report.

The workdir gets ``splits.json`` (the deterministic train/validation/test split) and, at
the end, ``eval_<split>.json``, ``predictions_<split>.csv``, its plots and the Grad-CAM grid
``gradcam_<split>.png`` (``evaluate.write_report``, ``explain.report_grid``); the best
checkpoint is the one with the best validation ``config.best_metric`` (lower is better for
``loss``).
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Any

import jax
import ml_collections
import numpy as np

import zoo
from train import checkpoint as C
from train import data as D
from train import device_augment, explain
from train import evaluate as E
from train import features as FE
from train import model as M
from train import splits as S
from train import step as T
from train.pipeline import Augment, Loader
from train.task import Task

log = logging.getLogger(__name__)

VALIDATION = ("loss", "accuracy", "sensitivity", "specificity", "roc_auc")


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
                  cache_mb=d.cache_mb, processes=d.processes,
                  process_index=jax.process_index(), process_count=jax.process_count())


def build(config: ml_collections.ConfigDict, num_classes: int) -> tuple[Any, dict[str, Any]]:
    """The network with the config's head and its initial variables (``config.init``)."""
    model = M.build_model(config, num_classes)
    variables = M.init_variables(model, config.data.image_size, config.seed)
    return model, C.load_init(config.init, config.model.name, variables,
                              init_head=config.init_head, model_kwargs=M.backbone_kwargs(config))


def setup(config, workdir: str, mesh) -> Task:
    """Splits, loaders and network; the head alone on cached features when it can."""
    source, splits = prepare_data(config, workdir)
    names, spec = source.class_names, zoo.spec(config.model.name)
    loaders = {"train": make_loader(config, source, splits["train"], train=True),
               "validation": make_loader(config, source, splits["validation"], train=False)}
    model, variables = build(config, len(names))
    norm, key = spec.normalize, "image"
    aug = Augment.from_config(config.data.augment)
    on_device = (functools.partial(device_augment.apply, aug=aug) if aug.device and aug.active
                 else None)  # the loader hands seeds only when something augments
    why_not = FE.unavailable(config, variables["params"])
    if why_not is None:
        log.info("%s", FE.describe(config, sum(len(v) for v in splits.values())))
        loaders = FE.loaders(config, spec, variables, source, splits, mesh, workdir)
        model, norm, key = FE.head_model(config, len(names)), FE.identity, FE.INPUT
    elif config.policy == "frozen":
        log.info("not caching backbone features: %s", why_not)
    tta = T.check_tta(config.get("tta", ""))  # a bad name fails before training
    if tta and why_not is None:
        log.info("test-time augmentation %r is off in this run's report: it trains and "
                 "evaluates on cached features, not images (transfer-zoo evaluate applies it)",
                 tta)
        tta = ""
    tta_fn = T.jit_eval(T.make_eval_step(model, norm, key, tta=tta), mesh) if tta else None

    def validate(eval_fn, state) -> dict | None:
        if not len(loaders["validation"].indices):
            return None
        probs, labels = E.predict_loader(eval_fn, state, loaders["validation"], mesh)
        report = E.classification(probs, labels, names, config.positive_class)
        return {k: report[k] for k in VALIDATION}

    def finish(eval_fn, state, checkpoint: str) -> dict:
        split = "test" if len(splits["test"]) else "validation"
        loader = loaders.get(split) or make_loader(config, source, splits[split], train=False)
        probs, labels = E.predict_loader(tta_fn or eval_fn, state, loader, mesh)
        for done in {id(x): x for x in (*loaders.values(), loader)}.values():
            getattr(done, "close", lambda: None)()  # the run's last pass: workers stop
        groups = E.split_groups(config, source, splits[split])
        report = E.classification(probs, labels, names, config.positive_class,
                                  data=f"{config.data.source} ({split} split"
                                  f"{E.tta_words(tta)})",
                                  checkpoint=checkpoint, groups=groups,
                                  target_sensitivity=E.target_sensitivity(config))
        if tta:
            report["tta"] = tta
        E.write_report(report, probs, labels, workdir, split, source=source,
                       indices=splits[split], groups=groups)
        explain.report_grid(report, {"config": config, "class_names": names, "state": state},
                            source, splits[split], probs, labels, workdir, split)
        log.info("%s", E.summary(report))
        return report

    return Task(spec=spec, model=model, variables=variables, train_loader=loaders["train"],
                eval_step=T.make_eval_step(model, norm, key), validate=validate, finish=finish,
                best_metric=config.best_metric, minimize=config.best_metric == "loss",
                normalize=norm, input_key=key, augment=on_device, summed=("correct",),
                means={"accuracy": "correct"}, headline=("loss", "accuracy"),
                about=f" ({config.head.kind} head)")
