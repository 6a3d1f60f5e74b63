"""What a detection workdir records about its data, and the check evaluation makes with it.

A detection source's splits belong to the data (a VOC folder's ``ImageSets/Main/<split>.txt``,
tfds splits, the generated shapes), so the workdir cannot keep index lists as a classifier's
does. Instead ``splits.json`` records, for each split the data has (a VOC folder: all of its
``ImageSets`` lists; otherwise the run's train, validation and test splits), the example keys
(``train.workdir.data_fingerprint``: their number and a hash of the names) and, for files on
disk (VOC folders, BCCD), a short SHA-256 of each image file and of its annotation file.

Evaluating the run's own data checks the split against it: files added to or gone from the
split, images or annotations changed, are named (added files that were training images are
counted as such) and the evaluation is refused, as a classifier's is, unless ``rederive``:
the split's recorded files are then found again by name (added ones left out; changed ones
evaluated as they are now, which the report says). A re-run that resumes checks the same
and refuses changed data (a mixed run). Workdirs trained before this record existed are
evaluated unchecked, with a warning.
"""

from __future__ import annotations

import hashlib
import logging
import os
from typing import Any

import jax
import numpy as np

from train import workdir as W
from train.detection.data import DetectionSource, voc_splits
from train.errors import WorkdirError

log = logging.getLogger(__name__)

NAME = "splits.json"
DIGEST = 16  # hex digits of each file's SHA-256 kept (64 bits: a changed file is never missed)


def _file_digest(path: str) -> str:
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()[:DIGEST]
    except OSError:
        return "unreadable"


def fingerprint(source: DetectionSource, digests: dict[str, list[str]] | None = None
                ) -> dict[str, Any]:
    """One split's record: number of examples, hash of the names, the names and (files on
    disk) ``content``: key -> [image digest, annotation digest]. ``digests`` caches them
    across splits that share files."""
    out = W.data_fingerprint(len(source), source.keys) | {"files": list(source.keys)}
    if source.get_files is not None:
        digests = {} if digests is None else digests
        for i, key in enumerate(source.keys):
            if key not in digests:
                digests[key] = [_file_digest(p) for p in source.get_files(i)]
        out["content"] = {k: digests[k] for k in source.keys}
    return out


def info(config) -> dict[str, Any]:
    """What the record was made from (checked against ``config.json``)."""
    return {"task": "detection", "source": config.data.source, "seed": int(config.seed)}


def changes(saved: dict[str, Any], now: dict[str, Any], train_files=()) -> list[str]:
    """What differs between a split's record and the split as it is now (empty: nothing)."""
    before, after = saved.get("files") or [], now["files"]
    out, in_before, in_after = [], set(before), set(after)
    gone = [k for k in before if k not in in_after]
    added = [k for k in after if k not in in_before]
    if added:
        leak = len(set(added) & set(train_files))
        out.append(f"{len(added)} file(s) added (e.g. {', '.join(added[:3])}"
                   + (f"; {leak} of them from the training split)" if leak else ")"))
    if gone:
        out.append(f"{len(gone)} file(s) gone (e.g. {', '.join(gone[:3])})")
    if not added and not gone and saved.get("num_examples") != now["num_examples"]:
        out.append(f"{saved.get('num_examples')} examples then, {now['num_examples']} now")
    was, has = saved.get("content") or {}, now.get("content") or {}
    for part, what in ((0, "image"), (1, "annotation")):
        diff = [k for k in after if k in was and k in has and was[k][part] != has[k][part]]
        if diff:
            out.append(f"{len(diff)} {what} file(s) changed (e.g. {', '.join(diff[:3])})")
    return out


def _read(workdir: str) -> dict[str, Any] | None:
    path = os.path.join(workdir, NAME)
    if not os.path.exists(path):
        return None
    return W.read_json(path, "record of the run's data")


def _belongs(saved: dict[str, Any], config, workdir: str) -> None:
    want, got = saved.get("info") or {}, info(config)
    odd = [f"{k} {want.get(k)!r} in {NAME}, {got[k]!r} in config.json" for k in got
           if want.get(k) != got[k]]
    if odd:
        raise WorkdirError(f"{workdir}: config.json and {NAME} do not belong to the same run "
                           f"({'; '.join(odd)}); restore the run's own files, or train again "
                           "in a new workdir")


def record(config, workdir: str, sources: dict[str, DetectionSource], open_split) -> None:
    """At the start of a run: write ``splits.json`` for ``sources`` (split name -> opened
    source) and every other split of a VOC folder (``open_split(name)`` opens one); on a
    resumed run, check the data against the record instead and refuse what changed."""
    saved = _read(workdir)
    if saved is not None and saved.get("info", {}).get("task") == "detection":
        _belongs(saved, config, workdir)
        train = saved["splits"].get(config.detection.train_split, {}).get("files", ())
        digests: dict[str, list[str]] = {}
        for name, source in sources.items():
            if name in saved["splits"]:
                diff = changes(saved["splits"][name], fingerprint(source, digests), train)
                if diff:
                    raise WorkdirError(
                        f"the data of {workdir} changed since its run started: "
                        f"{config.data.source} {name} split: {'; '.join(diff)}. Resuming would "
                        "mix the two; restore the data, or train again in a new workdir "
                        "(or --overwrite to discard this run)")
        return
    sources = dict(sources)
    kind, _, root = next(iter(sources.values())).spec.partition(":")
    for name in voc_splits(root) if kind == "voc" else ():
        if name not in sources:
            try:
                sources[name] = open_split(name)
            except (OSError, ValueError) as e:  # a list the run never reads may be broken
                log.warning("%s: split %s not recorded (it cannot be read: %s); evaluating "
                            "it later is unchecked", root, name, e)
    digests = {}
    out = {"info": info(config),
           "splits": {name: fingerprint(src, digests) for name, src in sources.items()}}
    if jax.process_index() == 0:
        W.write_json(os.path.join(workdir, NAME), out, indent=None)


def check(workdir: str, config, source: DetectionSource, split: str, rederive: bool = False
          ) -> tuple[np.ndarray, str]:
    """The indices of ``source`` (split ``split`` of the run's own data) to evaluate, and
    what to add to the report's data line; refused when the data changed, unless
    ``rederive``."""
    everything = np.arange(len(source))
    saved = _read(workdir)
    if saved is None or saved.get("info", {}).get("task") != "detection":
        log.warning("%s has no record of its data (trained before %s was written for "
                    "detectors): the %s split is evaluated as it is now, unchecked",
                    workdir, NAME, split)
        return everything, ""
    _belongs(saved, config, workdir)
    if split not in saved["splits"]:
        log.warning("the %s split was not part of the data when %s was trained: evaluated "
                    "as it is now, unchecked", split, workdir)
        return everything, ""
    rec = saved["splits"][split]
    train = saved["splits"].get(config.detection.train_split, {}).get("files", ())
    now = fingerprint(source)
    diff = changes(rec, now, train)
    if not diff:
        return everything, ""
    if not rederive:
        raise WorkdirError(
            f"the data of {workdir} changed since it was trained: {config.data.source} {split} "
            f"split: {'; '.join(diff)}. Its {split} results would not be those of the data "
            "the run was made with. Restore the data, or pass --rederive to evaluate the "
            "split's recorded files found again by name (added ones left out, changed ones "
            "as they are now)")
    where = {k: i for i, k in enumerate(source.keys)}
    gone = [k for k in rec["files"] if k not in where]
    if gone:
        raise WorkdirError(f"{len(gone)} file(s) of the {split} split are gone from "
                           f"{source.spec} (e.g. {', '.join(gone[:3])}); restore them")
    was, has = rec.get("content") or {}, now.get("content") or {}
    changed = sum(was[k] != has[k] for k in rec["files"] if k in was and k in has)
    log.warning("data changed since training (%s): the %s split found again by file name",
                "; ".join(diff), split)
    how = ", re-derived by file name" + (f"; {changed} of its files changed since training"
                                         if changed else "")
    return np.asarray([where[k] for k in rec["files"]], np.int64), how
