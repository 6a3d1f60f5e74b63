"""A training workdir that keeps what it holds: one run at a time, one config, its own data.

- :class:`Lock`: one process per workdir (``fcntl.flock`` on ``<workdir>/.lock``, which
  names the holder: pid, host, start time). The kernel drops the lock when its process
  dies, so a lock left by a killed run is stale by construction and is taken over (said in
  the log); on file systems without ``flock`` a pid file is used, stale when its pid on
  this host is no longer running.
- :func:`check_config`: a re-run resumes only with the config the workdir was started
  with, apart from :data:`RESUMABLE` keys (how it logs, checkpoints and reads, never what
  it computes). Anything else is refused, naming the keys, unless ``overwrite``.
- :class:`Setup`: what a run writes while it is being checked (splits, classes, caches)
  is removed again when a check fails, and with ``overwrite`` the previous run is moved
  aside first and put back on failure, so a rejected command leaves the workdir as it was.
- :func:`data_fingerprint` / :func:`verify_data`: ``splits.json`` records the data it
  indexes (number of examples, a hash of the file names); evaluation checks the data it
  opens against it and refuses, saying what changed, when the saved indices would point
  at other images.
- :func:`write_result`: results (``eval_*.json``) are never overwritten silently: a
  previous file with other contents is kept as ``eval_<name>.<n>.json``.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import hashlib
import json
import logging
import os
import shutil
import socket
import tempfile
from collections.abc import Sequence
from typing import Any

from train.errors import WorkdirBusy, WorkdirError

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"
LOG_NAME = "train.log"
# Config keys a re-run may change and still resume: they change how a run reports,
# checkpoints and reads its data, never what it computes. Everything else (the model,
# the data, the optimizer, epochs, seed...) makes a different run: a new workdir, or
# --overwrite. (More epochs change the learning-rate schedule of the steps already done:
# train longer in a new workdir with --config.init=<this workdir>.)
RESUMABLE = frozenset({
    "progress", "log_every_steps", "checkpoint_every_steps", "keep_checkpoints",
    "num_devices", "features_dir", "data.workers", "data.prefetch", "data.cache",
    "data.cache_mb", "data.processes", "target_sensitivity", "tta",
    "data.download", "data.tfds_data_dir",
})


# --------------------------------------------------------------------------- the lock


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Lock:
    """An exclusive lock on a workdir for this process; ``with Lock(workdir): ...``."""

    def __init__(self, workdir: str):
        self.workdir = workdir
        self.path = os.path.join(workdir, LOCK_NAME)
        self.fd: int | None = None
        self.pidfile = False

    def _holder(self) -> dict:
        try:
            with open(self.path) as f:
                return json.loads(f.read() or "{}")
        except (OSError, ValueError):
            return {}

    def _busy(self, holder: dict) -> WorkdirBusy:
        who = (f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, since "
               f"{holder.get('started', '?')}") if holder else "another process"
        return WorkdirBusy(f"workdir {self.workdir} is in use by another run ({who}); wait for "
                           "it to finish (or stop it), or use another --workdir")

    def acquire(self) -> Lock:
        os.makedirs(self.workdir, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise self._busy(self._holder()) from None
        except (ImportError, OSError) as e:  # no flock here (some network file systems)
            os.close(fd)
            if isinstance(e, OSError) and e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP,
                                                          errno.ENOSYS, errno.EINVAL):
                raise
            return self._acquire_pidfile()
        old = self._holder()
        if old.get("pid") and old.get("pid") != os.getpid():
            log.info("workdir %s: took over the stale lock of pid %s on %s (no longer running)",
                     self.workdir, old.get("pid"), old.get("host"))
        self.fd = fd
        os.ftruncate(fd, 0)
        os.write(fd, self._record())
        return self

    def _record(self) -> bytes:
        now = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        return json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                           "started": now}).encode()

    def _acquire_pidfile(self) -> Lock:
        old = self._holder()
        here = old.get("host") == socket.gethostname()
        if old.get("pid") and old["pid"] != os.getpid():
            if not here or _pid_alive(int(old["pid"])):
                raise self._busy(old)
            log.info("workdir %s: removed the stale lock of pid %s (no longer running)",
                     self.workdir, old["pid"])
        tmp = f"{self.path}.{os.getpid()}"
        with open(tmp, "wb") as f:
            f.write(self._record())
        os.replace(tmp, self.path)
        self.pidfile = True
        return self

    def release(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, 0)
            os.close(self.fd)  # closing drops the flock
            self.fd = None
        elif self.pidfile:
            with contextlib.suppress(OSError):
                os.remove(self.path)
            self.pidfile = False

    def __enter__(self) -> Lock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


# --------------------------------------------------------------------------- the config


def flat(tree: dict, prefix: str = "") -> dict[str, Any]:
    """``{'data': {'source': x}}`` -> ``{'data.source': x}``."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_json(config) -> dict:
    """The config as the JSON ``config.json`` holds."""
    return json.loads(config.to_json_best_effort())


def read_json(path: str, what: str) -> Any:
    """A JSON file of the workdir; a damaged one is an error that names it."""
    try:
        with open(path) as f:
            return json.load(f)
    except ValueError as e:
        raise WorkdirError(f"{path} is not valid JSON ({e}): the {what} is damaged; restore "
                           "it, or start again with --overwrite") from None


class _Missing:
    """A key one of two configs lacks."""

    def __repr__(self) -> str:
        return "(absent)"


def _defaults() -> dict[str, Any]:
    from train.configs import base

    return flat(config_json(base.get_config()))


def config_changes(old: dict, new: dict) -> dict[str, tuple[Any, Any]]:
    """Keys whose values differ between two config JSONs: ``{key: (old, new)}``."""
    a, b = flat(old), flat(new)
    missing = _Missing()
    return {k: (a.get(k, missing), b.get(k, missing)) for k in sorted(set(a) | set(b))
            if a.get(k, missing) != b.get(k, missing)}


def _show(changes: dict[str, tuple[Any, Any]]) -> str:
    def value(v):
        return "(absent)" if not isinstance(v, str | int | float | bool | list | type(None)) \
            else json.dumps(v)
    items = [f"{k} {value(a)} -> {value(b)}" for k, (a, b) in changes.items()]
    return ", ".join(items[:6]) + (f" and {len(items) - 6} more" if len(items) > 6 else "")


def check_config(config, workdir: str) -> dict[str, tuple[Any, Any]]:
    """Refuse a config that would mix runs in ``workdir``; return the resumable changes."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        return {}
    changes = config_changes(read_json(path, "config of the run"), config_json(config))
    defaults = _defaults()
    blocking = {k: v for k, v in changes.items() if k not in RESUMABLE
                # a key this code added since the run started, at its default: unchanged
                and not (isinstance(v[0], _Missing) and defaults.get(k, v[0]) == v[1])}
    if blocking:
        raise WorkdirError(
            f"workdir {workdir} holds a run with another config ({_show(blocking)}); a re-run "
            "resumes only with the same config. Use a new --workdir, or --overwrite to discard "
            "this run and start again (to train longer: a new workdir with "
            "--config.init=<this workdir>)")
    return changes


def write_json(path: str, obj: Any, indent: int | None = 2) -> None:
    """Write JSON atomically (a full disk leaves the old file, never half a file)."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=indent)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def has_run(workdir: str) -> bool:
    """Whether ``workdir`` holds a run (a config or checkpoints)."""
    return any(os.path.exists(os.path.join(workdir, n)) for n in ("config.json", "checkpoints"))


class Setup:
    """The checks of a run's start as one step: :meth:`undo` on failure, :meth:`commit`."""

    def __init__(self, workdir: str, overwrite: bool = False, active: bool = True):
        """``active=False`` (every process of a multi-host run but the first): no moves, no
        removals, the first process does them."""
        self.workdir, self.aside, self.active = workdir, None, active
        self.before: set[str] = set()
        if not active:
            return
        if overwrite and has_run(workdir):
            self.aside = tempfile.mkdtemp(prefix=".replaced-", dir=workdir)
            for name in self._entries():
                os.rename(os.path.join(workdir, name), os.path.join(self.aside, name))
        self.before = set(self._entries())

    def _entries(self) -> list[str]:
        return [n for n in os.listdir(self.workdir)
                if n not in (LOCK_NAME, LOG_NAME) and not n.startswith(".replaced-")]

    def undo(self) -> None:
        """Remove what the failed start wrote; put a run moved aside back."""
        if not self.active:
            return
        for name in set(self._entries()) - self.before:
            path = os.path.join(self.workdir, name)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    os.remove(path)
        if self.aside:
            for name in os.listdir(self.aside):
                os.rename(os.path.join(self.aside, name), os.path.join(self.workdir, name))
            os.rmdir(self.aside)
            self.aside = None

    def commit(self) -> None:
        """The run has started: a run moved aside by ``overwrite`` is deleted."""
        if self.aside:
            names = sorted(os.listdir(self.aside))
            shutil.rmtree(self.aside, ignore_errors=True)
            log.warning("--overwrite: removed the previous run of %s (%s)", self.workdir,
                        ", ".join(names))
            self.aside = None


# --------------------------------------------------------------------------- the data


def data_fingerprint(num_examples: int, keys: Sequence[str] | None) -> dict[str, Any]:
    """What ``splits.json`` records about the data its indices point into."""
    out: dict[str, Any] = {"num_examples": int(num_examples)}
    if keys is not None:
        out["files_sha256"] = hashlib.sha256("\n".join(keys).encode()).hexdigest()
    return out


def verify_data(saved: dict, source, path: str) -> list[str] | None:
    """Check the opened ``source`` against ``splits.json`` (``saved``).

    Returns None when the data is the one the splits were made on, else the lines that
    say what changed (for a message).
    """
    want = saved.get("data") or {"num_examples": saved.get("info", {}).get("num_examples")}
    got = data_fingerprint(len(source), source.keys)
    changed = []
    if want.get("num_examples") is not None and want["num_examples"] != got["num_examples"]:
        changed.append(f"{want['num_examples']} examples then, {got['num_examples']} now")
    if "files_sha256" in want and want.get("files_sha256") != got.get("files_sha256"):
        changed.append("the file names differ")
    recorded = saved.get("files")
    if recorded and source.keys is not None:  # files the splits name, against those found
        before = {f for part in recorded.values() for f in part}
        now = set(source.keys)
        gone = sorted(before - now)
        if gone:
            changed.append(f"{len(gone)} file(s) of the splits are gone (e.g. "
                           f"{', '.join(gone[:3])})")
        limit = saved.get("info", {}).get("limit")
        added = sorted(now - before)
        if added and not limit:
            changed.append(f"{len(added)} file(s) added (e.g. {', '.join(added[:3])})")
        for name, part in recorded.items():
            idx, keys = saved.get(name, []), source.keys
            if len(part) == len(idx) and any(i >= len(keys) or keys[i] != f
                                             for i, f in zip(idx, part, strict=True)):
                changed.append(f"the saved {name} indices now point at other files")
                break
    return changed or None


def rederive(saved: dict, source, split: str, path: str) -> list[int]:
    """The indices in ``source`` of the files ``splits.json`` lists for ``split``."""
    files = (saved.get("files") or {}).get(split)
    if files is None or source.keys is None:
        raise WorkdirError(f"{path} lists no file names, so the {split} split cannot be found "
                           "again in changed data; evaluate the data as it was trained")
    where = {k: i for i, k in enumerate(source.keys)}
    gone = [f for f in files if f not in where]
    if gone:
        raise WorkdirError(f"{len(gone)} file(s) of the {split} split are gone from "
                           f"{source.spec} (e.g. {', '.join(gone[:3])}); restore them")
    return [where[f] for f in files]


# --------------------------------------------------------------------------- results


def write_result(path: str, obj: Any) -> str | None:
    """Write a result JSON; a previous one with other contents is kept as ``<stem>.<n>.json``
    (returned, and said in the log)."""
    kept = None
    if os.path.exists(path):
        try:
            with open(path) as f:
                same = json.load(f) == json.loads(json.dumps(obj))
        except ValueError:
            same = False
        if not same:
            stem, ext = os.path.splitext(path)
            n = 1
            while os.path.exists(f"{stem}.{n}{ext}"):
                n += 1
            kept = f"{stem}.{n}{ext}"
            os.replace(path, kept)
            log.warning("%s: the previous result differs and is kept as %s", path, kept)
    write_json(path, obj)
    return kept
