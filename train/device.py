"""Keeping the devices busy: batches placed ahead, results fetched once, never per step.

JAX dispatches a jitted call and returns at once; the host only waits when it reads a
result. So the loops here never read one per batch: the next batches are copied onto the
devices (sharded along ``data``) while the current step runs (:func:`prefetch`), and the
outputs of a whole pass stay on the devices until the pass ends (:func:`predict`).
Labels and masks never make the round trip: the host already has them.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import jax
import numpy as np

from train import step as T


def prefetch(batches: Iterable[dict[str, np.ndarray]], mesh, size: int = 2
             ) -> Iterator[tuple[dict[str, np.ndarray], dict[str, jax.Array]]]:
    """``(host batch, sharded device batch)`` pairs, the device copies made ``size`` batches
    ahead of the one yielded (the copies are asynchronous: the host moves on to preparing
    the next batch while the devices compute)."""
    queue: collections.deque = collections.deque()
    for batch in batches:
        queue.append((batch, T.shard_batch(batch, mesh)))
        if len(queue) > size:
            yield queue.popleft()
    while queue:
        yield queue.popleft()


def gather_local(local: Sequence[np.ndarray]) -> np.ndarray:
    """Per-batch host arrays of this process (its slice of each global batch) -> the
    global arrays, batch after batch, as every process sees them."""
    x = np.stack(local)  # [batches, local batch, ...]
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        x = np.asarray(multihost_utils.process_allgather(x))  # [processes, batches, ...]
        x = np.moveaxis(x, 0, 1).reshape(x.shape[1], -1, *x.shape[3:])
    return x.reshape(-1, *x.shape[2:])


def bound(dispatched: Sequence[Any], ahead: int) -> None:
    """Let the host run at most ``ahead`` calls ahead of the devices: wait for the result
    dispatched ``ahead + 1`` calls ago (the devices still have ``ahead`` queued, so they
    never idle), so a fast host never piles up the inputs of a whole pass in memory."""
    if len(dispatched) > ahead:
        jax.block_until_ready(dispatched[-ahead - 1])


def predict(fn: Callable, state: Any, batches: Iterable[dict[str, np.ndarray]], mesh, *,
            keep: Sequence[str] = (), size: int = 2, on_batch: Callable | None = None
            ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``fn(state, batch)`` over every batch without a per-batch wait: ``(outputs, kept)``,
    the outputs (an array or a pytree of them, e.g. a detector's dict) concatenated and
    ``kept[k]`` the host's ``batch[k]``, padding (``mask`` 0) removed from both.
    ``on_batch(batch)`` is called as each host batch is dispatched."""
    outs, masks, kept = [], [], {k: [] for k in keep}
    for host, dev in prefetch(batches, mesh, size):
        outs.append(fn(state, dev))
        bound(outs, size)
        masks.append(host["mask"])
        for k in keep:
            kept[k].append(host[k])
        if on_batch is not None:
            on_batch(host)
    if not outs:
        return np.zeros((0,)), {k: np.zeros((0,)) for k in keep}
    real = gather_local(masks) > 0
    out = jax.tree.map(lambda *o: np.concatenate([T.to_host(x) for x in o])[real], *outs)
    return out, {k: gather_local(v)[real] for k, v in kept.items()}
