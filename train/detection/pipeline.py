"""A prefetching batch loader over a :class:`DetectionSource` (deterministic, as train.pipeline).

Batches are ``{'image': uint8 (B, H, W, 3), 'boxes': float32 (B, M, 4) xyxy input pixels,
'classes': int32 (B, M), 'valid': bool (B, M), 'difficult': bool (B, M), 'mask': float32
(B,), 'index': int64 (B,)}``. Every random choice is a function of ``(seed, epoch,
example index)``, so a resumed run sees exactly the batches of an uninterrupted one.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

import numpy as np

from train.detection.augment import DetectionAugment, pad_boxes, prepare, resize
from train.detection.data import DetectionSource
from train.pipeline import epoch_order, example_rng, prefetched

log = logging.getLogger(__name__)


class DetectionLoader:
    """Batches of one split; training shuffles and drops the last partial batch."""

    def __init__(self, source: DetectionSource, indices, *, batch_size: int,
                 image_hw: tuple[int, int], max_boxes: int = 100, train: bool = False,
                 augment: DetectionAugment | None = None, seed: int = 0, workers: int = 2,
                 prefetch: int = 2, cache: bool = True):
        self.source, self.indices = source, np.asarray(indices, np.int64)
        if train and len(self.indices) < batch_size:
            raise ValueError(f"the training split has {len(self.indices)} images, fewer than "
                             f"batch_size={batch_size}")
        self.batch_size, self.image_hw, self.max_boxes = batch_size, tuple(image_hw), max_boxes
        self.train, self.augment = train, augment if train else None
        self.seed, self.workers, self.prefetch = seed, max(1, workers), max(0, prefetch)
        self._cache: dict[int, dict] | None = {} if cache else None
        self._lock = threading.Lock()
        self.dropped = 0  # boxes lost to augmentation (clipped away) or cut at max_boxes

    def __len__(self) -> int:
        """Batches per epoch."""
        n, b = len(self.indices), self.batch_size
        return n // b if self.train else -(-n // b)

    def order(self, epoch: int) -> np.ndarray:
        """Example indices of an epoch, in the order they are served."""
        return epoch_order(self.indices, self.seed, epoch) if self.train else self.indices

    def original(self, index: int) -> dict:
        """The source example, shrunk once (and cached) to the largest size training uses."""
        ex = self._cache.get(index) if self._cache is not None else None
        if ex is None:
            ex = dict(self.source.example(index))
            h, w = ex["image"].shape[:2]
            zoom = 1 + (self.augment.scale if self.augment else 0.0)
            s = min(1.0, max(self.image_hw[0] / h, self.image_hw[1] / w) * zoom)
            if s < 1.0:
                nw, nh = max(1, round(w * s)), max(1, round(h * s))
                ex["image"] = resize(ex["image"], nw, nh)
                ex["boxes"] = ex["boxes"] * np.asarray([nw / w, nh / h] * 2, np.float32)
            if self._cache is not None:
                self._cache[index] = ex
        return ex

    def example(self, index: int, epoch: int) -> dict:
        """Example ``index`` letterboxed to ``image_hw`` (augmented when training)."""
        rng = example_rng(self.seed, epoch, index)
        ex, dropped = prepare(self.original(index), self.image_hw, self.augment, rng)
        ex, cut = pad_boxes(ex, self.max_boxes)
        if dropped or cut:
            with self._lock:
                self.dropped += dropped + cut
            if cut:
                log.warning("example %d has %d boxes more than max_boxes=%d: cut", index, cut,
                            self.max_boxes)
        return ex

    def epoch(self, epoch: int, start: int = 0) -> Iterator[dict[str, np.ndarray]]:
        """The batches of ``epoch`` from batch number ``start`` on (for exact resume)."""
        for idx, mask, exs in prefetched(self.order(epoch), self.batch_size, start, len(self),
                                         lambda i: self.example(i, epoch), self.workers,
                                         self.prefetch):
            batch = {k: np.stack([e[k] for e in exs]) for k in exs[0]}
            yield batch | {"mask": mask, "index": idx}
