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
import math
from collections.abc import Callable, Iterator

import numpy as np
from PIL import Image

from train.data import Source

# Salts of the seed sequences: the epoch order and each example's random augmentation are
# functions of (seed, salt, epoch[, index]) alone, so a resumed run sees the same batches.
ORDER_SALT, AUGMENT_SALT = 5, 6


def epoch_order(indices: np.ndarray, seed: int, epoch: int) -> np.ndarray:
    """The order in which every training loader serves ``indices`` in ``epoch``."""
    return np.random.default_rng([seed, ORDER_SALT, epoch]).permutation(indices)


def example_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The random generator of one example's augmentation in ``epoch``."""
    return np.random.default_rng([seed, AUGMENT_SALT, epoch, index])


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

    @classmethod
    def from_config(cls, cfg) -> Augment:
        """From ``config.data.augment``."""
        return cls(**{f.name: cfg[f.name] for f in dataclasses.fields(cls)})


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


class Loader:
    """Batches of one split: ``{'image': uint8 [B,H,W,3], 'label': int32, 'mask': float32}``.

    Training loaders shuffle per epoch and drop the last partial batch; evaluation loaders
    keep order and pad the last batch (``mask`` 0 marks padding). In a multi-process run
    each process yields its own contiguous slice of every global batch.
    """

    def __init__(self, source: Source, indices: np.ndarray, *, batch_size: int,
                 image_size: int, train: bool = False, augment: Augment | None = None,
                 seed: int = 0, workers: int = 2, prefetch: int = 2, cache: bool = True,
                 process_index: int = 0, process_count: int = 1):
        if batch_size % process_count:
            raise ValueError(f"batch_size {batch_size} is not divisible by the "
                             f"{process_count} processes")
        if train and len(indices) < batch_size:
            raise ValueError(f"the training split has {len(indices)} examples, fewer than "
                             f"batch_size={batch_size}; lower --config.batch_size")
        self.source, self.indices = source, np.asarray(indices, np.int64)
        self.batch_size, self.image_size, self.train = batch_size, image_size, train
        self.augment = augment if train else None
        self.seed, self.workers, self.prefetch = seed, max(1, workers), max(0, prefetch)
        self.local = slice(process_index * batch_size // process_count,
                           (process_index + 1) * batch_size // process_count)
        self._cache: dict[int, np.ndarray] | None = {} if cache else None

    def __len__(self) -> int:
        """Batches per epoch."""
        n, b = len(self.indices), self.batch_size
        return n // b if self.train else -(-n // b)

    def order(self, epoch: int) -> np.ndarray:
        """Example indices of an epoch, in the order they are served."""
        return epoch_order(self.indices, self.seed, epoch) if self.train else self.indices

    def example(self, index: int, epoch: int) -> np.ndarray:
        """Example ``index`` resized (cached) and, when training, augmented for ``epoch``."""
        img = self._cache.get(index) if self._cache is not None else None
        if img is None:
            img = resize(self.source.image(index), self.image_size)
            if self._cache is not None:
                self._cache[index] = img
        if self.augment is not None:
            img = augment(img, self.augment, example_rng(self.seed, epoch, index))
        return img

    def epoch(self, epoch: int, start: int = 0) -> Iterator[dict[str, np.ndarray]]:
        """The batches of ``epoch`` from batch number ``start`` on (for exact resume)."""
        for idx, mask, examples in prefetched(self.order(epoch), self.batch_size, start,
                                              len(self), lambda i: self.example(i, epoch),
                                              self.workers, self.prefetch, self.local):
            yield {"image": np.stack(examples),
                   "label": self.source.labels[idx].astype(np.int32), "mask": mask}


def prefetched(order: np.ndarray, batch_size: int, start: int, stop: int, example: Callable,
               workers: int, prefetch: int, local: slice = slice(None)
               ) -> Iterator[tuple[np.ndarray, np.ndarray, list]]:
    """Batches ``start..stop-1`` of ``order`` as ``(indices, mask, examples)``, the examples
    computed by ``example(index)`` on ``workers`` threads, ``prefetch`` batches ahead.

    A last, partial batch is padded by repeating its last index (``mask`` 0 there) so every
    batch has one shape; ``local`` is this process's slice of each batch.
    """
    b = batch_size
    chunks = (order[k * b : (k + 1) * b] for k in range(start, stop))
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        pending: collections.deque = collections.deque()

        def submit() -> None:
            idx = next(chunks, None)
            if idx is not None:
                mask = np.zeros(b, np.float32)
                mask[: len(idx)] = 1
                idx = np.pad(idx, (0, b - len(idx)), mode="edge")[local]
                pending.append((idx, mask[local], [pool.submit(example, int(i)) for i in idx]))

        for _ in range(prefetch + 1):
            submit()
        while pending:
            idx, mask, futs = pending.popleft()
            submit()
            yield idx, mask, [f.result() for f in futs]
