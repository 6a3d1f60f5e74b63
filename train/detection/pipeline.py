"""A prefetching batch loader over a :class:`DetectionSource` (deterministic, as train.pipeline).

Batches are ``{'image': uint8 (B, H, W, 3), 'boxes': float32 (B, M, 4) xyxy input pixels,
'classes': int32 (B, M), 'valid': bool (B, M), 'difficult': bool (B, M), 'mask': float32
(B,), 'index': int64 (B,)}``. Every random choice is a function of ``(seed, epoch,
example index)``, so a resumed run sees exactly the batches of an uninterrupted one.

Examples are made on ``workers`` threads of this process (``processes=0``; shrunk
originals kept in memory up to ``cache_mb`` MiB), or by ``processes`` grain worker
processes (``train.pipeline.WorkerStreams``: one stream across epochs, nothing cached),
which give the same batches in the same order.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Iterator

import numpy as np

from train.detection.augment import DetectionAugment, pad_boxes, prepare, resize
from train.detection.data import DetectionSource
from train.pipeline import (
    Cache,
    WorkerStreams,
    auto_processes,
    batch_indices,
    epoch_order,
    example_rng,
    prefetched,
)

log = logging.getLogger(__name__)

# per-example counts a batch carries from where it was made (a thread or a worker process)
# to the loader, which takes them out: boxes lost (clipped away or cut), boxes cut
_LOST, _CUT = "_boxes_lost", "_boxes_cut"


class _Shrunk(dict):
    """A shrunk source example; ``nbytes`` for ``train.pipeline.Cache``."""

    @property
    def nbytes(self) -> int:
        return sum(np.asarray(v).nbytes for v in self.values())


def shrink(ex: dict, image_hw: tuple[int, int], augment: DetectionAugment | None) -> dict:
    """A source example shrunk to the largest size training uses (zoomed in by at most
    ``1 + augment.scale``), its boxes with it."""
    ex = _Shrunk(ex)
    h, w = ex["image"].shape[:2]
    zoom = 1 + (augment.scale if augment else 0.0)
    s = min(1.0, max(image_hw[0] / h, image_hw[1] / w) * zoom)
    if s < 1.0:
        nw, nh = max(1, round(w * s)), max(1, round(h * s))
        ex["image"] = resize(ex["image"], nw, nh)
        ex["boxes"] = ex["boxes"] * np.asarray([nw / w, nh / h] * 2, np.float32)
    return ex


def make_example(original: dict, index: int, epoch: int, *, image_hw: tuple[int, int],
                 augment: DetectionAugment | None, seed: int, max_boxes: int) -> dict:
    """Example ``index`` letterboxed (augmented when training) for ``epoch``, with its
    counts of lost and cut boxes."""
    ex, dropped = prepare(original, image_hw, augment, example_rng(seed, epoch, index))
    ex, cut = pad_boxes(ex, max_boxes)
    return ex | {_LOST: dropped + cut, _CUT: cut}


def collate(examples: list[dict], idx: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
    """One batch of examples (the counts as per-example arrays)."""
    batch = {k: np.stack([e[k] for e in examples]) for k in examples[0]}
    return batch | {"mask": mask, "index": idx}


@dataclasses.dataclass
class DetectionBatchMaker:
    """Batch number ``g`` of a detection loader's stream (epoch ``g // per_epoch``): what a
    worker process runs (picklable: grain sends it with cloudpickle)."""

    source: DetectionSource
    indices: np.ndarray
    batch_size: int
    image_hw: tuple[int, int]
    max_boxes: int
    train: bool
    augment: DetectionAugment | None
    seed: int
    per_epoch: int

    def order(self, epoch: int) -> np.ndarray:
        if not self.train:
            return self.indices
        if getattr(self, "_order", (None,))[0] != epoch:
            self._order = (epoch, epoch_order(self.indices, self.seed, epoch))
        return self._order[1]

    def __call__(self, g: int) -> dict[str, np.ndarray]:
        epoch, k = divmod(int(g), self.per_epoch)
        idx, mask = batch_indices(self.order(epoch), self.batch_size, k)
        examples = [make_example(shrink(self.source.example(int(i)), self.image_hw, self.augment),
                                 int(i), epoch, image_hw=self.image_hw, augment=self.augment,
                                 seed=self.seed, max_boxes=self.max_boxes) for i in idx]
        return collate(examples, idx, mask)


class DetectionLoader(WorkerStreams):
    """Batches of one split; training shuffles and drops the last partial batch."""

    def __init__(self, source: DetectionSource, indices, *, batch_size: int,
                 image_hw: tuple[int, int], max_boxes: int = 100, train: bool = False,
                 augment: DetectionAugment | None = None, seed: int = 0, workers: int = 2,
                 prefetch: int = 2, cache: bool = True, cache_mb: float = 2048,
                 processes: int = 0):
        self.source, self.indices = source, np.asarray(indices, np.int64)
        if train and len(self.indices) < batch_size:
            raise ValueError(f"the training split has {len(self.indices)} images, fewer than "
                             f"batch_size={batch_size}")
        self.batch_size, self.image_hw, self.max_boxes = batch_size, tuple(image_hw), max_boxes
        self.train, self.augment = train, augment if train else None
        self.seed, self.workers, self.prefetch = seed, max(1, workers), max(0, prefetch)
        self.processes = auto_processes() if processes < 0 else processes
        self._cache = Cache(cache_mb if cache and not self.processes else 0)
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
        ex = self._cache.get(index)
        if ex is None:
            ex = self._cache.put(index, shrink(self.source.example(index), self.image_hw,
                                               self.augment))
        return ex

    def example(self, index: int, epoch: int) -> dict:
        """Example ``index`` letterboxed to ``image_hw`` (augmented when training)."""
        ex = make_example(self.original(index), index, epoch, image_hw=self.image_hw,
                          augment=self.augment, seed=self.seed, max_boxes=self.max_boxes)
        self._count(ex.pop(_LOST), ex.pop(_CUT), index)
        return ex

    def _count(self, lost: int, cut: int, index: int) -> None:
        if lost:
            with self._lock:
                self.dropped += int(lost)
        if cut:
            log.warning("example %d has %d boxes more than max_boxes=%d: cut", index, cut,
                        self.max_boxes)

    def batch_maker(self) -> DetectionBatchMaker:
        return DetectionBatchMaker(self.source, self.indices, self.batch_size, self.image_hw,
                                   self.max_boxes, self.train, self.augment, self.seed,
                                   len(self))

    def epoch(self, epoch: int, start: int = 0) -> Iterator[dict[str, np.ndarray]]:
        """The batches of ``epoch`` from batch number ``start`` on (for exact resume)."""
        if self.processes:
            for batch in self._from_workers(epoch, start):
                lost, cut = batch.pop(_LOST), batch.pop(_CUT)
                for i, n_lost, n_cut in zip(batch["index"], lost, cut, strict=True):
                    self._count(n_lost, n_cut, int(i))
                yield batch
            return
        for idx, mask, exs in prefetched(self.order(epoch), self.batch_size, start, len(self),
                                         lambda i: self.example(i, epoch), self.workers,
                                         self.prefetch):
            yield collate(exs, idx, mask)
