"""Preprocessing, augmentation and a prefetching batch loader over a :class:`Source`.

Everything on the host is uint8 RGB in [0, 255]; the model's own normalisation
(``spec.normalize``) runs inside the jitted step. The order of an epoch and every random
augmentation are functions of ``(seed, epoch, example index)`` alone, so a resumed run
sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import logging
import math
import os
from collections.abc import Callable, Iterator

import numpy as np
from PIL import Image

from train.data import Source

log = logging.getLogger(__name__)

# Salts of the seed sequences: the epoch order and each example's random augmentation are
# functions of (seed, salt, epoch[, index]) alone, so a resumed run sees the same batches.
ORDER_SALT, AUGMENT_SALT = 5, 6


def epoch_order(indices: np.ndarray, seed: int, epoch: int) -> np.ndarray:
    """The order in which every training loader serves ``indices`` in ``epoch``."""
    return np.random.default_rng([seed, ORDER_SALT, epoch]).permutation(indices)


def example_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The random generator of one example's augmentation in ``epoch``."""
    return np.random.default_rng([seed, AUGMENT_SALT, epoch, index])


def augment_seeds(seed: int, epoch: int, idx: np.ndarray) -> np.ndarray:
    """uint32 seeds of the examples ``idx`` for the device's augmentation in ``epoch``."""
    return np.asarray([example_rng(seed, epoch, int(i)).integers(2**32, dtype=np.uint32)
                       for i in idx], np.uint32)


@dataclasses.dataclass(frozen=True)
class Augment:
    """Random training augmentations (all off by default)."""

    hflip: bool = False
    vflip: bool = False
    rotate90: bool = False
    rotation: float = 0.0
    crop_scale: float = 1.0
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    device: bool = False  # apply them in the jitted step (train/device_augment.py)

    @property
    def active(self) -> bool:
        """Whether any augmentation is on."""
        return dataclasses.replace(self, device=False) != Augment()

    @property
    def on_host(self) -> bool:
        return self.active and not self.device

    @classmethod
    def from_config(cls, cfg) -> Augment:
        """From ``config.data.augment``."""
        return cls(**{f.name: cfg[f.name] for f in dataclasses.fields(cls) if f.name in cfg})


def resize(img: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize (with antialiasing when shrinking) to ``size`` x ``size``."""
    if img.shape[:2] == (size, size):
        return img
    return np.asarray(Image.fromarray(img).resize((size, size), Image.BILINEAR))


def augment(img: np.ndarray, aug: Augment, rng: np.random.Generator) -> np.ndarray:
    """One random augmentation of a square uint8 image; the output keeps its size."""
    size = img.shape[0]
    if aug.crop_scale < 1.0:
        img = _random_resized_crop(img, aug.crop_scale, rng)
    if aug.rotation:
        angle = rng.uniform(-aug.rotation, aug.rotation)
        img = np.asarray(Image.fromarray(img).rotate(angle, Image.BILINEAR))
    if aug.rotate90:
        img = np.rot90(img, int(rng.integers(4)))
    if aug.hflip and rng.random() < 0.5:
        img = img[:, ::-1]
    if aug.vflip and rng.random() < 0.5:
        img = img[::-1]
    if aug.brightness or aug.contrast or aug.saturation:
        img = colour_jitter(img, aug, rng)
    assert img.shape[:2] == (size, size)
    return np.ascontiguousarray(img)


def _random_resized_crop(img: np.ndarray, min_scale: float, rng) -> np.ndarray:
    size = img.shape[0]
    area = rng.uniform(min_scale, 1.0) * size * size
    aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
    h = min(size, max(1, round(math.sqrt(area / aspect))))
    w = min(size, max(1, round(math.sqrt(area * aspect))))
    y, x = int(rng.integers(size - h + 1)), int(rng.integers(size - w + 1))
    return resize(np.ascontiguousarray(img[y : y + h, x : x + w]), size)


def colour_jitter(image: np.ndarray, aug, rng) -> np.ndarray:
    """Random brightness, contrast and saturation of a uint8 image (geometry unchanged).

    ``aug`` is any object with ``brightness``, ``contrast`` and ``saturation`` (this
    module's :class:`Augment`, or the detection pipeline's ``DetectionAugment``).
    """
    x = image.astype(np.float32)
    if aug.brightness:
        x = x * rng.uniform(1 - aug.brightness, 1 + aug.brightness)
    if aug.contrast:
        m = x.mean()
        x = (x - m) * rng.uniform(1 - aug.contrast, 1 + aug.contrast) + m
    if aug.saturation:
        grey = x @ np.asarray([0.299, 0.587, 0.114], np.float32)
        s = rng.uniform(1 - aug.saturation, 1 + aug.saturation)
        x = (x - grey[..., None]) * s + grey[..., None]
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


class WorkerStreams:
    """A loader's batches from grain worker processes: one endless stream per loader across
    epochs (starting processes costs seconds). Mixed into a loader with ``train``,
    ``__len__``, ``processes``, ``prefetch`` and :meth:`batch_maker`."""

    _live: tuple[tuple[int, int], Iterator] | None = None  # (next position, batches)

    def batch_maker(self) -> Callable[[int], dict[str, np.ndarray]]:
        """A picklable function: global batch number -> batch (what a worker runs)."""
        raise NotImplementedError

    def _from_workers(self, epoch: int, start: int) -> Iterator[dict[str, np.ndarray]]:
        """The batches from the worker processes: asked for the position where the last
        pass stopped, the stream goes on from there (an evaluation loader's passes are all
        alike: epoch 0)."""
        per_epoch, epoch = len(self), epoch if self.train else 0
        if self._live is None or self._live[0] != (epoch, start):
            self.close()  # a stream at another position: its workers stop
            self._live = ((epoch, start), grain_stream(self.batch_maker(), epoch * per_epoch
                                                       + start, self.processes, self.prefetch))
        batches = self._live[1]
        self._live = None  # until the next batch is in hand, the stream's position is unsure
        for k in range(start, per_epoch):
            batch = next(batches)
            nxt = (epoch, k + 1) if k + 1 < per_epoch else (epoch + 1 if self.train else 0, 0)
            self._live = (nxt, batches)
            yield batch
            self._live = None
        self._live = (nxt, batches) if per_epoch > start else None

    def close(self) -> None:
        """Stop the worker processes, if any (asked again, the loader starts new ones)."""
        live, self._live = self._live, None
        if live is not None:
            live[1].close()


class Loader(WorkerStreams):
    """Batches of one split: ``{'image': uint8 [B,H,W,3], 'label': int32, 'mask': float32}``.

    Training loaders shuffle per epoch and drop the last partial batch; evaluation loaders
    keep order and pad the last batch (``mask`` 0 marks padding). In a multi-process run
    each process yields its own contiguous slice of every global batch.

    Examples are decoded, resized and augmented either on ``workers`` threads of this
    process (``processes=0``), where resized images are kept in memory up to ``cache_mb``
    MiB, or in ``processes`` worker processes (grain: ``grain.MapDataset`` of batch numbers,
    ``mp_prefetch``), which scale with the cores because decoding and augmentation hold
    Python's lock much of the time; the workers live across epochs and nothing is cached
    (each decodes what it serves). ``processes=-1`` picks: one per core beyond the first
    two, at most 8 (none on 2 cores, 1 on 3). Both give the same batches: an
    example is a function of ``(seed, epoch, index)`` alone.
    """

    def __init__(self, source: Source, indices: np.ndarray, *, batch_size: int,
                 image_size: int, train: bool = False, augment: Augment | None = None,
                 seed: int = 0, workers: int = 2, prefetch: int = 2, cache: bool = True,
                 cache_mb: float = 2048, processes: int = 0,
                 process_index: int = 0, process_count: int = 1):
        if batch_size % process_count:
            raise ValueError(f"batch_size {batch_size} is not divisible by the "
                             f"{process_count} processes")
        if train and len(indices) < batch_size:
            raise ValueError(f"the training split has {len(indices)} examples, fewer than "
                             f"batch_size={batch_size}; lower --config.batch_size")
        self.source, self.indices = source, np.asarray(indices, np.int64)
        self.batch_size, self.image_size, self.train = batch_size, image_size, train
        self.augment = augment if train and augment is not None and augment.active else None
        self.seed, self.workers, self.prefetch = seed, max(1, workers), max(0, prefetch)
        self.processes = auto_processes() if processes < 0 else processes
        self.local = slice(process_index * batch_size // process_count,
                           (process_index + 1) * batch_size // process_count)
        self._cache = Cache(cache_mb if cache and not self.processes else 0)

    def __len__(self) -> int:
        """Batches per epoch."""
        n, b = len(self.indices), self.batch_size
        return n // b if self.train else -(-n // b)

    def order(self, epoch: int) -> np.ndarray:
        """Example indices of an epoch, in the order they are served."""
        return epoch_order(self.indices, self.seed, epoch) if self.train else self.indices

    def example(self, index: int, epoch: int) -> np.ndarray:
        """Example ``index`` resized (cached) and, when training, augmented for ``epoch``."""
        img = self._cache.get(index)
        if img is None:
            img = self._cache.put(index, resize(self.source.image(index), self.image_size))
        if self.augment is not None and not self.augment.device:
            img = augment(img, self.augment, example_rng(self.seed, epoch, index))
        return img

    def epoch(self, epoch: int, start: int = 0) -> Iterator[dict[str, np.ndarray]]:
        """The batches of ``epoch`` from batch number ``start`` on (for exact resume)."""
        if self.processes:
            yield from self._from_workers(epoch, start)
            return
        for idx, mask, examples in prefetched(self.order(epoch), self.batch_size, start,
                                              len(self), lambda i: self.example(i, epoch),
                                              self.workers, self.prefetch, self.local):
            yield with_seeds({"image": np.stack(examples),
                              "label": self.source.labels[idx].astype(np.int32), "mask": mask},
                             self.augment, self.seed, epoch, idx)

    def batch_maker(self) -> BatchMaker:
        return BatchMaker(self.source, self.indices, self.batch_size, self.image_size,
                          self.train, self.augment, self.seed, self.local, len(self))


def with_seeds(batch: dict, aug: Augment | None, seed: int, epoch: int, idx: np.ndarray) -> dict:
    """``batch`` plus ``augment_seed`` when the device augments it."""
    if aug is not None and aug.device:
        batch["augment_seed"] = augment_seeds(seed, epoch, idx)
    return batch


def auto_processes() -> int:
    """Worker processes for ``processes=-1``: one per core beyond two, at most 8."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return min(8, max(0, (cores or 1) - 2))


class Cache:
    """Resized images by example index, up to ``mb`` MiB; once full it keeps what it has
    (with a new random order every epoch, keeping a fixed part hits as often as evicting
    would, without the churn) and says so once."""

    def __init__(self, mb: float):
        self.limit, self.bytes, self.items, self.full = int(mb * 2**20), 0, {}, False

    def get(self, index: int) -> np.ndarray | None:
        return self.items.get(index)

    def put(self, index: int, img: np.ndarray) -> np.ndarray:
        if self.bytes + img.nbytes <= self.limit:
            self.items[index] = img
            self.bytes += img.nbytes
        elif not self.full and self.limit:
            self.full = True
            log.info("image cache full at %.0f MiB (%d images); the others are decoded every "
                     "epoch (raise --config.data.cache_mb to keep more)", self.bytes / 2**20,
                     len(self.items))
        return img


@dataclasses.dataclass
class BatchMaker:
    """Batch number ``g`` of a loader's stream (epoch ``g // per_epoch``): what a worker
    process runs. Picklable (grain sends it to the workers with cloudpickle)."""

    source: Source
    indices: np.ndarray
    batch_size: int
    image_size: int
    train: bool
    augment: Augment | None
    seed: int
    local: slice
    per_epoch: int

    def order(self, epoch: int) -> np.ndarray:
        """The epoch's order, computed once per epoch in each worker (not per batch)."""
        if not self.train:
            return self.indices  # evaluation: every epoch is the same
        if getattr(self, "_order", (None,))[0] != epoch:
            self._order = (epoch, epoch_order(self.indices, self.seed, epoch))
        return self._order[1]

    def __call__(self, g: int) -> dict[str, np.ndarray]:
        epoch, k = divmod(int(g), self.per_epoch)
        order = self.order(epoch)
        idx, mask = batch_indices(order, self.batch_size, k, self.local)
        examples = []
        for i in idx:
            img = resize(self.source.image(int(i)), self.image_size)
            if self.augment is not None and not self.augment.device:
                img = augment(img, self.augment, example_rng(self.seed, epoch, int(i)))
            examples.append(img)
        return with_seeds({"image": np.stack(examples),
                           "label": self.source.labels[idx].astype(np.int32), "mask": mask},
                          self.augment, self.seed, epoch, idx)


def grain_stream(maker: Callable[[int], dict], first: int, processes: int, prefetch: int
                 ) -> Iterator[dict]:
    """``maker(first), maker(first + 1), ...`` computed by ``processes`` grain worker
    processes, ``prefetch`` each ahead (``maker`` goes to them with cloudpickle)."""
    import grain
    from absl import flags

    if not flags.FLAGS.is_parsed():  # grain reads its absl flags: their defaults, outside an app
        flags.FLAGS.mark_as_parsed()
    numbers = grain.MapDataset.range(first, 2**62)
    ds = numbers.map(maker).to_iter_dataset(grain.ReadOptions(num_threads=0))
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=processes, per_worker_buffer_size=max(1, prefetch)))
    return iter(ds)


def batch_indices(order: np.ndarray, batch_size: int, k: int, local: slice = slice(None)
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Indices and mask of batch ``k`` of ``order``: a last, partial batch is padded by
    repeating its last index (``mask`` 0 there) so every batch has one shape; ``local`` is
    this process's slice."""
    b = batch_size
    idx = order[k * b : (k + 1) * b]
    mask = np.zeros(b, np.float32)
    mask[: len(idx)] = 1
    idx = np.pad(idx, (0, b - len(idx)), mode="edge")[local]
    return idx, mask[local]


def prefetched(order: np.ndarray, batch_size: int, start: int, stop: int, example: Callable,
               workers: int, prefetch: int, local: slice = slice(None)
               ) -> Iterator[tuple[np.ndarray, np.ndarray, list]]:
    """Batches ``start..stop-1`` of ``order`` as ``(indices, mask, examples)``, the examples
    computed by ``example(index)`` on ``workers`` threads, ``prefetch`` batches ahead
    (padding and slicing: :func:`batch_indices`)."""
    ks = iter(range(start, stop))
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        pending: collections.deque = collections.deque()

        def submit() -> None:
            k = next(ks, None)
            if k is not None:
                idx, mask = batch_indices(order, batch_size, k, local)
                pending.append((idx, mask, [pool.submit(example, int(i)) for i in idx]))

        for _ in range(prefetch + 1):
            submit()
        while pending:
            idx, mask, futs = pending.popleft()
            submit()
            yield idx, mask, [f.result() for f in futs]
