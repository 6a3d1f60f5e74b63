"""Orbax checkpoints (last few + best by validation metric) and ``config.init`` loading.

Layout under ``<workdir>/checkpoints``: ``last/<step>/{state,meta}`` (every K steps and
at each epoch end, the newest ``keep`` kept) and ``best/<step>/{state,meta}`` (the best
validation score so far). ``meta`` is JSON: the data position (epoch, batch), the
running epoch sums and the best score, so that a resumed run continues bit for bit.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util

from train.freeze import flat_paths

log = logging.getLogger(__name__)


class Checkpoints:
    """The ``last`` and ``best`` checkpoint managers of one workdir."""

    def __init__(self, workdir: str, keep: int = 2):
        root = os.path.abspath(os.path.join(workdir, "checkpoints"))
        opts = lambda k: ocp.CheckpointManagerOptions(max_to_keep=k, create=True)
        items = ("state", "meta")
        self.last = ocp.CheckpointManager(os.path.join(root, "last"), options=opts(keep),
                                          item_names=items)
        self.best = ocp.CheckpointManager(os.path.join(root, "best"), options=opts(1),
                                          item_names=items)

    def save(self, state: Any, meta: dict, *, best: bool = False) -> None:
        """Save ``state`` at its step to ``last`` (and to ``best`` when ``best``)."""
        step = int(meta["step"])
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        if step not in self.last.all_steps():
            self.last.save(step, args=args)
        if best:
            self.best.save(step, args=args, force=True)

    @staticmethod
    def steps(directory: str) -> list[int]:
        """Finished checkpoint steps in a manager folder, oldest first (orbax writes to a
        temporary name and renames, so a save cut short by a crash is not listed)."""
        if not os.path.isdir(directory):
            return []
        return sorted(int(d) for d in os.listdir(directory) if d.isdigit())

    def latest(self, which: str = "last") -> int | None:
        """The newest step in ``last`` or ``best`` (None when empty)."""
        return getattr(self, which).latest_step()

    def restore(self, target: Any, which: str = "last") -> tuple[Any, dict]:
        """``(state, meta)`` of the newest ``which`` checkpoint, laid out like ``target``."""
        mngr = getattr(self, which)
        step = mngr.latest_step()
        if step is None:
            raise FileNotFoundError(f"no {which!r} checkpoint in {mngr.directory}")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        out = mngr.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
        return out["state"], out["meta"]

    def wait(self) -> None:
        """Block until asynchronous saves are on disk."""
        self.last.wait_until_finished()
        self.best.wait_until_finished()

    def close(self) -> None:
        self.last.close()
        self.best.close()


# --------------------------------------------------------------------------- config.init


def pretrained_variables(model_name: str, weights: str, **model_kwargs: Any) -> dict[str, Any]:
    """Reference weights (``config.init='imagenet'``, ``'keras'``, ``'torchvision'`` or a
    weights file) as ``{'params', 'batch_stats'}``, through ``zoo.pretrained.load``.

    ``model_kwargs`` describe the backbone the trainer builds (``num_classes=None`` for
    the reference head, ``include_top=False, pooling='avg'`` under an MLP head), so the
    reference classifier is left out and the trainer's fresh ``head`` is kept.
    """
    from zoo import pretrained

    if os.path.isfile(weights):
        return pretrained.load(model_name, path=weights, **model_kwargs)
    source = None if weights in ("imagenet", "reference") else weights
    return pretrained.load(model_name, source, **model_kwargs)


# The hook ``load_init`` calls for anything that is not an orbax checkpoint directory.
PRETRAINED: Callable[..., dict[str, Any]] = pretrained_variables


def restore_variables(path: str) -> dict[str, Any]:
    """``{'params', 'batch_stats'}`` from a workdir, a checkpoint folder or a pytree checkpoint."""
    path = os.path.abspath(path)
    if os.path.isdir(os.path.join(path, "checkpoints")):  # a training workdir: best, else last
        best = os.path.join(path, "checkpoints", "best")
        path = best if Checkpoints.steps(best) else os.path.join(path, "checkpoints", "last")
    steps = Checkpoints.steps(path)
    if steps:  # a CheckpointManager folder: its newest step
        path = os.path.join(path, str(steps[-1]))
    if os.path.isdir(os.path.join(path, "state")):
        path = os.path.join(path, "state")
    tree = ocp.StandardCheckpointer().restore(path)
    if "params" not in tree:
        raise ValueError(f"{path} holds no 'params' (found keys {sorted(tree)})")
    return {"params": tree["params"], "batch_stats": tree.get("batch_stats") or {}}


def load_init(init: str, model_name: str, variables: dict, *, init_head: bool = False,
              model_kwargs: dict | None = None) -> dict:
    """``variables`` with every leaf replaced from ``config.init`` (the head kept fresh).

    ``init`` is an orbax checkpoint directory (a training workdir, its checkpoint folder or
    a pytree of ``{'params', 'batch_stats'}``), or anything :data:`PRETRAINED` understands
    (called with ``model_kwargs``).

    Strict: a backbone leaf that the source lacks, or has in another shape, is an error;
    source leaves the model does not use (e.g. a reference top) are listed in the log.
    """
    if not init:
        return variables
    loaded = (restore_variables(init) if os.path.isdir(init)
              else PRETRAINED(model_name, init, **(model_kwargs or {})))
    out = {}
    for col in ("params", "batch_stats"):
        fresh, src = flat_paths(variables[col]), flat_paths(loaded.get(col) or {})
        missing, merged = [], {}
        for path, leaf in fresh.items():
            if path.startswith("head/") and not init_head:
                merged[path] = leaf
            elif path not in src or np.shape(src[path]) != leaf.shape:
                got = "absent" if path not in src else f"shape {np.shape(src[path])}"
                missing.append(f"{path} (needs {leaf.shape}, {got})")
            else:
                merged[path] = np.asarray(src[path], leaf.dtype)
        if missing:
            raise ValueError(f"config.init={init!r} does not fit {model_name}: "
                             f"{len(missing)} {col} leaves, e.g. {missing[:5]}")
        unused = sorted(p for p in src if p not in fresh)
        if unused:
            log.info("config.init: %d %s leaves not used by this model: %s", len(unused), col,
                     ", ".join(unused[:8]))
        out[col] = _unflatten(merged)
    return out


def _unflatten(flat: dict[str, Any]) -> dict[str, Any]:
    return traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in flat.items()})
