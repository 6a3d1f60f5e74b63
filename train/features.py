"""Cached backbone features: with the whole backbone frozen, run it once per example.

When the policy is ``frozen`` and training augmentation is off, every epoch would push the
same images through the same frozen backbone in inference mode (frozen batch norm uses
its running statistics, as in Keras). So the loop computes the pooled features once per
example of every split, stores them under ``<workdir>/features`` (or
``config.features_dir``), and trains only the head on them. The file name is a hash of
what the features depend on: model and options, head kind (which features the head sees),
compute dtype, the backbone weights themselves (every tensor), the data source, the
example keys, the image size and resize, and the model's normalisation. A second run with
the same key reuses the file; any change computes a new one.

The checkpoints hold the full model (frozen backbone plus trained head), so
``scripts.evaluate`` and ``scripts.predict`` work on the workdir as usual.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

import zoo
from train import device, logs
from train import model as M
from train import step as T
from train.data import Source
from train.freeze import flat_paths
from train.pipeline import Augment, Loader, epoch_order

log = logging.getLogger(__name__)

INPUT = "features"  # batch key of cached features (images are under "image")
RESIZE = "PIL bilinear, antialiased, square"  # train.pipeline.resize; part of the cache key


class HeadOnly(nn.Module):
    """The classifier alone, under ``head``, applied to cached features."""

    head: nn.Module

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        return self.head(x, train=train) if isinstance(self.head, M.MLPHead) else self.head(x)


def unavailable(config, params: dict) -> str | None:
    """Why this run cannot train on cached features (None when it can)."""
    if not config.cache_features:
        return "config.cache_features is off"
    if config.policy != "frozen":
        return f"policy {config.policy!r} trains part of the backbone"
    if Augment.from_config(config.data.augment).active:
        return "training augmentation is on (set every config.data.augment key off)"
    if config.head.kind == "reference":
        kernel = params.get("head", {}).get("kernel")
        if kernel is None or np.ndim(kernel) != 2:
            return (f"the reference head of {config.model.name} is not a dense layer on pooled "
                    "features; --config.head.kind=mlp caches")
    return None


def head_model(config, num_classes: int) -> nn.Module:
    """A module whose only parameters are ``head/...``, the same as the full model's head."""
    dtype = M.DTYPES[config.dtype]
    if config.head.kind == "mlp":
        head = M.MLPHead(config.head.hidden, num_classes, config.head.activation,
                         config.head.dropout, dtype=dtype, name="head")
    else:
        head = nn.Dense(num_classes, dtype=dtype, name="head")
    return HeadOnly(head)


def backbone_variables(variables: dict) -> dict:
    """``variables`` without the classifier (what the feature model takes)."""
    return {"params": {k: v for k, v in variables["params"].items() if k != "head"},
            "batch_stats": variables.get("batch_stats") or {}}


def cache_key(config, spec: zoo.ModelSpec, variables: dict, source: Source,
              indices: np.ndarray) -> str:
    """Hex digest of everything the features depend on (see the module docstring)."""
    meta = {"model": config.model.to_dict(), "head_kind": config.head.kind,
            "dtype": config.dtype, "source": config.data.source,
            "image_size": config.data.image_size, "resize": RESIZE,
            "normalize": [list(spec.mean), list(spec.std), spec.channel_order]}
    h = hashlib.sha256(json.dumps(meta, sort_keys=True).encode())
    for col, tree in sorted(backbone_variables(variables).items()):
        for path, leaf in sorted(flat_paths(tree).items()):
            leaf = np.asarray(leaf)
            h.update(f"{col}/{path}:{leaf.dtype}:{leaf.shape}".encode())
            h.update(np.ascontiguousarray(leaf).tobytes())
    keys = source.keys or [str(i) for i in range(len(source))]
    h.update("\n".join(keys[int(i)] for i in indices).encode())
    h.update(np.asarray(source.labels)[indices].astype(np.int32).tobytes())
    return h.hexdigest()


def compute(config, variables: dict, source: Source, indices: np.ndarray, mesh) -> np.ndarray:
    """Pooled backbone features ``[N, D]`` (float32) in inference mode, in ``indices`` order."""
    spec = zoo.spec(config.model.name)
    model = zoo.create(config.model.name, dtype=M.DTYPES[config.dtype], **M.backbone_kwargs(config))
    n = mesh.devices.size
    loader = Loader(source, indices, batch_size=-(-config.batch_size // n) * n,
                    image_size=config.data.image_size, workers=config.data.workers,
                    prefetch=config.data.prefetch, cache=False, processes=config.data.processes,
                    process_index=jax.process_index(), process_count=jax.process_count())

    def features(v: dict, batch: dict) -> jax.Array:
        f = model.apply(v, spec.normalize(batch["image"]), train=False)
        if f.ndim != 2:
            raise ValueError(f"{config.model.name} features have shape {f.shape}; only pooled "
                             "[N, D] features can be cached")
        return f.astype(jnp.float32)

    fn = T.jit_eval(features, mesh)
    v = T.replicate(backbone_variables(variables), mesh)
    bar = logs.progress(len(indices), 0, "features", config.progress)
    try:
        feats, _ = device.predict(fn, v, loader.epoch(0), mesh,
                                  on_batch=lambda b: bar.update(int(b["mask"].sum())))
    finally:
        loader.close()  # one pass: its worker processes (if any) stop now
    bar.close()
    return feats


def cached_features(config, spec: zoo.ModelSpec, variables: dict, source: Source,
                    indices: np.ndarray, mesh, workdir: str) -> np.ndarray:
    """Features of ``indices`` from the cache, computing and saving them on a miss."""
    key = cache_key(config, spec, variables, source, indices)
    folder = config.features_dir or os.path.join(workdir, "features")
    path = os.path.join(folder, f"{config.model.name}-{key[:20]}.npy")
    if os.path.exists(path):
        feats = np.load(path)
        log.info("feature cache: reusing %s (%d examples x %d features)", path, *feats.shape)
        return feats
    t0 = time.perf_counter()
    feats = compute(config, variables, source, indices, mesh)
    if jax.process_index() == 0:
        os.makedirs(folder, exist_ok=True)
        tmp = f"{path}.tmp.npy"
        np.save(tmp, feats)
        os.replace(tmp, path)
    log.info("feature cache: computed %d x %d backbone features in %.1f s (inference mode, "
             "%d px), saved to %s", *feats.shape, time.perf_counter() - t0,
             config.data.image_size, path)
    return feats


@dataclasses.dataclass
class FeatureLoader:
    """A :class:`Loader` look-alike over cached features: same order, batches and padding."""

    features: np.ndarray  # [len(indices), D], row i belongs to indices[i]
    labels: np.ndarray  # labels of the whole source
    indices: np.ndarray
    batch_size: int
    train: bool = False
    seed: int = 0
    process_index: int = 0
    process_count: int = 1

    def __post_init__(self) -> None:
        self.indices = np.asarray(self.indices, np.int64)
        self._row = {int(i): r for r, i in enumerate(self.indices)}
        b, p = self.batch_size, self.process_count
        self.local = slice(self.process_index * b // p, (self.process_index + 1) * b // p)

    def __len__(self) -> int:
        """Batches per epoch."""
        n, b = len(self.indices), self.batch_size
        return n // b if self.train else -(-n // b)

    def order(self, epoch: int) -> np.ndarray:
        """Example indices of an epoch, in the order :class:`Loader` serves them."""
        return epoch_order(self.indices, self.seed, epoch) if self.train else self.indices

    def epoch(self, epoch: int, start: int = 0) -> Iterator[dict[str, np.ndarray]]:
        """Batches ``{'features', 'label', 'mask'}`` of ``epoch`` from batch ``start`` on."""
        order, b = self.order(epoch), self.batch_size
        for k in range(start, len(self)):
            idx = order[k * b : (k + 1) * b]
            mask = np.zeros(b, np.float32)
            mask[: len(idx)] = 1
            idx = np.pad(idx, (0, b - len(idx)), mode="edge")[self.local]
            rows = np.asarray([self._row[int(i)] for i in idx])
            yield {INPUT: self.features[rows], "label": self.labels[idx].astype(np.int32),
                   "mask": mask[self.local]}


def loaders(config, spec: zoo.ModelSpec, variables: dict, source: Source,
            splits: dict[str, np.ndarray], mesh, workdir: str) -> dict[str, FeatureLoader]:
    """A feature loader per split (one cache file for all of them)."""
    every = np.concatenate([splits[k] for k in ("train", "validation", "test")])
    feats = cached_features(config, spec, variables, source, every, mesh, workdir)
    out, at = {}, 0
    for name in ("train", "validation", "test"):
        n = len(splits[name])
        out[name] = FeatureLoader(feats[at : at + n], source.labels, splits[name],
                                  config.batch_size, train=name == "train", seed=config.seed,
                                  process_index=jax.process_index(),
                                  process_count=jax.process_count())
        at += n
    return out


def describe(config, num_examples: int) -> str:
    """The log line that says the head trains on cached features."""
    return (f"policy 'frozen' without augmentation: training the head on cached backbone "
            f"features ({num_examples} examples, {config.data.image_size} px, inference mode)")


def identity(x: Any) -> Any:
    """Cached features are already normalised and pooled."""
    return x
