"""Orbax checkpoints (last few + best by validation metric) and ``config.init`` loading.

Layout under ``<workdir>/checkpoints``: ``last/<step>/{state,meta}`` (every K steps and
at each epoch end, the newest ``keep`` kept) and ``best/<step>/{state,meta}`` (the best
validation score so far). ``meta`` is JSON: the data position (epoch, batch), the
running epoch sums and the best score, so that a resumed run continues bit for bit.

A checkpoint that cannot be read (a file truncated by a crash or a full disk) is not the
end of a run: restore falls back to the newest readable one (a ``best`` restore, finally,
to ``last``), with a warning that names the bad one, which is moved to
``checkpoints/unreadable/`` so that the resumed run can save that step again.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util

from train.errors import CheckpointError
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
        if best and step not in self.best.all_steps():  # a redone step may have been kept
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
        """``(state, meta)`` of the newest readable ``which`` checkpoint, laid out like
        ``target``; unreadable ones are named in the log and moved aside. A ``best`` restore
        with no readable ``best`` falls back to ``last``."""
        mngr = getattr(self, which)
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                  meta=ocp.args.JsonRestore())
        bad, paths = [], []
        for step in sorted(mngr.all_steps(), reverse=True):
            try:
                out = mngr.restore(step, args=args)
            except Exception as e:  # noqa: BLE001  (any failure: try the one before)
                paths.append(os.path.join(str(mngr.directory), str(step)))
                bad.append(_unreadable(paths[-1], e))
                continue
            self._set_aside(which, paths)
            return out["state"], out["meta"]
        self._set_aside(which, paths)
        if which == "best" and self.last.latest_step() is not None:
            log.warning("no readable 'best' checkpoint: using the newest 'last' one")
            return self.restore(target, "last")
        if bad:
            raise CheckpointError(f"no readable {which!r} checkpoint in {mngr.directory}: "
                                  f"{'; '.join(bad)}; start again with --overwrite")
        raise FileNotFoundError(f"no {which!r} checkpoint in {mngr.directory}")

    def _set_aside(self, which: str, paths: list[str]) -> None:
        """Move unreadable checkpoints of ``which`` to ``checkpoints/unreadable``."""
        if not paths:
            return
        mngr = getattr(self, which)
        root = os.path.dirname(str(mngr.directory))
        for path in paths:
            dest = os.path.join(root, "unreadable", f"{which}-{os.path.basename(path)}")
            base, n = dest, 1
            while os.path.exists(dest):
                dest, n = f"{base}.{n}", n + 1
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            shutil.move(path, dest)
            log.warning("moved the unreadable checkpoint %s to %s", path, dest)
        mngr.reload()

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


def _unreadable(path: str, e: Exception) -> str:
    """Log and describe an unreadable checkpoint folder (named, with its file when known)."""
    what = " ".join(str(e).split())[:300] or type(e).__name__
    if isinstance(e, json.JSONDecodeError) or "JSONDecodeError" in type(e).__name__:
        bad = _bad_json(path)  # orbax does not say which of its JSON files it was reading
        what = f"{', '.join(bad) or 'a JSON file'} is not valid JSON: {what}"
    log.warning("checkpoint %s is unreadable (%s): trying the one before", path, what)
    return f"{path} ({what})"


def _bad_json(path: str) -> list[str]:
    """The JSON files (orbax metadata) under a checkpoint folder that do not parse."""
    bad = []
    for d, _, files in os.walk(path):
        for f in files:
            if "metadata" in f.lower() or f.endswith(".json"):
                try:
                    with open(os.path.join(d, f), "rb") as fh:
                        json.loads(fh.read() or b"{}")
                except (ValueError, OSError):
                    bad.append(os.path.join(d, f))
    return sorted(bad)


def _restore_tree(path: str) -> dict[str, Any]:
    if os.path.isdir(os.path.join(path, "state")):
        path = os.path.join(path, "state")
    tree = ocp.StandardCheckpointer().restore(path)
    if "params" not in tree:
        raise ValueError(f"{path} holds no 'params' (found keys {sorted(tree)})")
    return {"params": tree["params"], "batch_stats": tree.get("batch_stats") or {}}


def restore_newest(directory: str) -> tuple[int, dict[str, Any]]:
    """``(step, {'params', 'batch_stats'})`` of the newest readable step of a manager
    folder (unreadable ones are named in the log and skipped)."""
    bad = []
    for step in reversed(Checkpoints.steps(directory)):
        try:
            return step, _restore_tree(os.path.join(directory, str(step)))
        except Exception as e:  # noqa: BLE001
            bad.append(_unreadable(os.path.join(directory, str(step)), e))
    if bad:
        raise CheckpointError(f"no readable checkpoint in {directory}: {'; '.join(bad)}")
    raise FileNotFoundError(f"no checkpoint in {directory}")


def restore_variables(path: str) -> dict[str, Any]:
    """``{'params', 'batch_stats'}`` from a workdir, a checkpoint folder or a pytree checkpoint
    (of a workdir: its best, else last, checkpoint; the newest readable one)."""
    path = os.path.abspath(path)
    if os.path.isdir(os.path.join(path, "checkpoints")):  # a training workdir: best, else last
        best = os.path.join(path, "checkpoints", "best")
        last = os.path.join(path, "checkpoints", "last")
        if Checkpoints.steps(best):
            try:
                return restore_newest(best)[1]
            except CheckpointError:
                if not Checkpoints.steps(last):
                    raise
                log.warning("no readable best checkpoint in %s: using the last one", path)
        path = last
    if Checkpoints.steps(path):  # a CheckpointManager folder: its newest readable step
        return restore_newest(path)[1]
    return _restore_tree(path)


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
