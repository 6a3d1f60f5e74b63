"""Deterministic train/validation/test splits: stratified by class, optionally grouped.

Grouped splits keep every example of a group (for malaria: a patient slide, the file-name
prefix before ``_IMG``) in one split. Splits are written to ``<workdir>/splits.json`` and
read back on resume, so a run never re-splits under a model. The file also records the
data the indices point into (``data``: number of examples and a hash of the file names,
``train.workdir.data_fingerprint``), which evaluation checks before it trusts the indices.
"""

from __future__ import annotations

import os
import re

import numpy as np

from train import workdir as W
from train.errors import WorkdirError

SPLIT_NAMES = ("train", "validation", "test")


def group_keys(keys: list[str] | None, regex: str) -> list[str]:
    """The group of each key: the first capture group of ``regex`` on the file's base name."""
    if keys is None:
        raise ValueError(
            "this data source has no file names, so it cannot be split by group; "
            "set --config.data.group_regex='' for a stratified split"
        )
    rx = re.compile(regex)
    groups = []
    for key in keys:
        m = rx.search(os.path.basename(key))
        if m is None:
            raise ValueError(f"group_regex {regex!r} does not match the file name {key!r}")
        groups.append(m.group(1) if m.groups() else m.group(0))
    return groups


def _stratified(labels: np.ndarray, fractions: np.ndarray, rng) -> list[np.ndarray]:
    parts: list[list[int]] = [[] for _ in fractions]
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        cuts = np.round(np.cumsum(fractions)[:-1] * len(idx)).astype(int)
        for k, chunk in enumerate(np.split(idx, cuts)):
            parts[k] += chunk.tolist()
    return [np.sort(np.asarray(p, np.int64)) for p in parts]


def _grouped(labels: np.ndarray, groups: list[str], fractions: np.ndarray, rng):
    """Greedy, largest groups first: each goes to the split where it most lowers
    sum((share - target)^2 / target) over classes. Dividing by the target makes every split
    fill in proportion (plain squared error sends everything to the biggest split first,
    leaving the last, smallest groups, often of one class, to the others)."""
    names, inverse = np.unique(np.asarray(groups), return_inverse=True)
    classes = np.unique(labels)
    counts = np.stack([np.bincount(inverse[labels == c], minlength=len(names)) for c in classes], 1)
    totals = counts.sum(0).astype(np.float64)  # [class]
    filled = np.zeros((len(fractions), len(classes)))  # [split, class]
    order = rng.permutation(len(names))
    order = order[np.argsort(-counts[order].sum(1), kind="stable")]
    assign = np.empty(len(names), np.int64)
    for g in order:
        share = filled / totals
        target = fractions[:, None]
        before = ((share - target) ** 2 / target).sum(1)
        after = ((share + counts[g] / totals - target) ** 2 / target).sum(1)
        gain = after - before  # how much worse (or better, < 0) each split gets
        k = int(np.argmin(gain))
        assign[g] = k
        filled[k] += counts[g]
    return [np.flatnonzero(assign[inverse] == k) for k in range(len(fractions))]


def make_splits(labels: np.ndarray, fractions=(0.8, 0.1, 0.1), *, seed: int = 0,
                groups: list[str] | None = None) -> dict[str, np.ndarray]:
    """Indices per split name; stratified by label, and grouped when ``groups`` is given."""
    f = np.asarray(fractions, np.float64)
    if f.shape != (3,) or np.any(f < 0) or not np.isclose(f.sum(), 1.0) or f[0] <= 0:
        raise ValueError(f"data.splits must be 3 fractions (train, val, test) summing to 1, "
                         f"with train > 0; got {tuple(fractions)}")
    if groups is not None and np.any(f == 0):  # an empty split gets no group
        keep = f > 0
        parts = iter(_grouped(np.asarray(labels), groups, f[keep],
                              np.random.default_rng([seed, 3])))
        empty = np.zeros(0, np.int64)
        return {n: next(parts) if k else empty for n, k in zip(SPLIT_NAMES, keep, strict=True)}
    rng = np.random.default_rng([seed, 3])
    labels = np.asarray(labels)
    parts = _stratified(labels, f, rng) if groups is None else _grouped(labels, groups, f, rng)
    return dict(zip(SPLIT_NAMES, parts, strict=True))


def subsample(labels: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """A stratified, deterministic subset of at most ``limit`` indices (all when 0)."""
    n = len(labels)
    if not limit or limit >= n:
        return np.arange(n)
    keep, _ = _stratified(np.asarray(labels), np.asarray([limit / n, 1 - limit / n]),
                          np.random.default_rng([seed, 4]))
    return keep


def save_splits(path: str, splits: dict[str, np.ndarray], info: dict,
                keys: list[str] | None = None) -> None:
    """Write the splits (indices, and file names when known) with what produced them and
    the fingerprint of the data they index."""
    out: dict = {"info": info, **{k: v.tolist() for k, v in splits.items()}}
    if keys is not None:
        out["files"] = {k: [keys[i] for i in v] for k, v in splits.items()}
    out["data"] = W.data_fingerprint(info.get("num_examples", 0), keys)
    W.write_json(path, out, indent=None)


def load_splits(path: str, info: dict) -> dict[str, np.ndarray] | None:
    """Splits saved for the same ``info`` (source, seed, fractions...), else None."""
    if not os.path.exists(path):
        return None
    saved = W.read_json(path, "record of the run's splits")
    if saved.get("info") != info:
        old = saved.get("info") or {}
        diff = [f"{k} {old.get(k)!r} then, {info.get(k)!r} now"
                for k in sorted(set(old) | set(info)) if old.get(k) != info.get(k)]
        raise WorkdirError(
            f"{path} was made for other data ({'; '.join(diff)}): this workdir's run was "
            "trained on the data as it was. Restore the data, or train in a new workdir "
            "(or --overwrite to discard this run)")
    return {k: np.asarray(saved[k], np.int64) for k in SPLIT_NAMES}
