"""Public datasets from where they are published: downloaded once, verified, cached.

- ``malaria`` (``config.data.source``): the NIH/NLM thin-smear cell images, the official
  ``cell_images.zip`` that tfds' ``malaria`` builder downloads (:data:`MALARIA`: its URL,
  size and SHA-256 as tfds records them), read straight from the zip *with its file
  names*, so the slide prefix (``C100P61ThinF`` in ``C100P61ThinF_IMG_..._cell_1.png``)
  gives a split by patient (``data.group_regex``). ``malaria:<path>``: a local copy (the
  zip, or a folder in its ``cell_images/{Parasitized,Uninfected}`` layout), not verified.
- ``bccd`` (detection ``data.source``): the BCCD blood-cell dataset from its repository
  (github.com/Shenggan/BCCD_Dataset) at a pinned commit: GitHub's zip archive of that
  commit, whose ``BCCD/`` folder (VOC layout, with the repository's own
  ``ImageSets/Main/{train,val,test}.txt``) is extracted and verified by its git tree id
  (:data:`BCCD_TREE`, what ``git rev-parse <commit>:BCCD`` prints: GitHub does not
  promise byte-stable archives, but their content is the commit's). ``bccd:<path>``: a
  local VOC folder or archive of the repository.
- ``tfds:<name>`` goes through :func:`tfds_source`: tfds ``malaria`` warns that its split
  cannot be patient-disjoint (it carries no file names), and an unprepared dataset with
  ``data.download=False`` says so instead of tfds' misleading message.

Cache: ``zoo.cache.cache_dir()/data`` (``$TRANSFER_ZOO_CACHE``, else ``$XDG_CACHE_HOME/
transfer-zoo``, else ``~/.cache/transfer-zoo``). A download goes to a temporary file next to
its destination, is checked (length, digest) and only then renamed into place: an
interrupted or corrupt download is never used. Offline, :class:`DataUnavailableError`
names the URL and the path where a copy fetched by hand goes.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import http.client
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import threading
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import numpy as np

from train import data as D
from train.errors import UserError
from zoo.cache import cache_dir

log = logging.getLogger(__name__)


class DataUnavailableError(UserError, OSError):
    """A public dataset is neither cached nor downloadable, or failed verification."""


@dataclasses.dataclass(frozen=True)
class PublicFile:
    """A published file: where it is, what it is called in the cache, how to check it."""

    url: str
    filename: str
    sha256: str | None = None  # None: the content is checked after extraction instead
    size: int | None = None


# tensorflow_datasets/datasets/malaria/checksums.tsv (tfds 4.9): URL, size, SHA-256.
MALARIA = PublicFile("https://data.lhncbc.nlm.nih.gov/public/Malaria/cell_images.zip",
                     "cell_images.zip",
                     "0a949556b2414159b5100192609805376654c4266d8d187be9b1922fad43c668",
                     353452851)
MALARIA_CLASSES = ("parasitized", "uninfected")  # the tfds label order

BCCD_COMMIT = "d272fb14cdff6e473fafeeeba32aba5f560e9e43"  # 2019-11-21, the repository's last
BCCD = PublicFile(f"https://github.com/Shenggan/BCCD_Dataset/archive/{BCCD_COMMIT}.zip",
                  f"BCCD_Dataset-{BCCD_COMMIT[:12]}.zip")
BCCD_TREE = "e4ad516b612329e16143e94f47a478d5832395d3"  # git rev-parse <commit>:BCCD
BCCD_CLASSES = ("RBC", "WBC", "Platelets")


def data_dir() -> Path:
    """Where public datasets are cached: ``zoo.cache.cache_dir() / 'data'``."""
    return cache_dir() / "data"


# ------------------------------------------------------------------------ download


def sha256(path: str | os.PathLike) -> str:
    """The SHA-256 hex digest of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _stamp(path: Path) -> str:
    st = path.stat()
    return f"{st.st_size}:{st.st_mtime_ns}"


def verify(path: str | os.PathLike, file: PublicFile, *, cached: bool = False) -> None:
    """Raise :class:`DataUnavailableError` unless ``path`` has ``file``'s size and digest.

    A verified file gets a ``<name>.verified`` note (size, mtime, digest) so that a
    353 MB zip is hashed once, not on every run; a changed file is hashed again.
    """
    path = Path(path)
    note = path.with_name(path.name + ".verified")
    if cached and note.exists() and note.read_text().strip() == f"{_stamp(path)} {file.sha256}":
        return
    size = path.stat().st_size
    digest = sha256(path) if file.sha256 else None
    if (file.size is not None and size != file.size) or digest != file.sha256:
        what = (f"expected {file.size} bytes and SHA-256 {file.sha256}, got {size} bytes and "
                f"{digest}")
        if cached:
            raise DataUnavailableError(
                f"{path} is not the published {file.filename} ({what}): a corrupt or different "
                f"file is in the cache. Delete it to download {file.url} again")
        raise DataUnavailableError(f"{file.url}: {what}; the download is corrupt or not the "
                                   "published file, and was not kept")
    if cached and file.sha256:
        note.write_text(f"{_stamp(path)} {file.sha256}\n")


def fetch(file: PublicFile, *, cache: str | os.PathLike | None = None, hint: str = "") -> Path:
    """The local path of a published file: downloaded, verified and cached on first use.
    ``hint`` ends the offline error (another way to give the data)."""
    folder = Path(cache) if cache is not None else data_dir()
    dest = folder / file.filename
    if dest.exists():  # downloaded before, or put there by hand: checked again
        verify(dest, file, cached=True)
        return dest
    folder.mkdir(parents=True, exist_ok=True)
    print(f"Downloading {file.url} -> {dest}", file=sys.stderr)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{file.filename}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                _download(file.url, out)
            except DataUnavailableError:
                raise
            except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
                raise DataUnavailableError(
                    f"cannot download {file.url} ({getattr(e, 'reason', None) or e}). "
                    f"Offline? Fetch that URL yourself and save it as {dest}{hint}") from None
        verify(tmp, file)
        os.replace(tmp, dest)
        if file.sha256:
            dest.with_name(dest.name + ".verified").write_text(f"{_stamp(dest)} {file.sha256}\n")
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dest


def _download(url: str, out) -> None:
    """Copy ``url`` into the open file ``out``; an early end of the body is an error."""
    from tqdm import tqdm

    with urllib.request.urlopen(url, timeout=60) as response:
        expected = response.headers.get("Content-Length")
        total = int(expected) if expected is not None else None
        size = 0
        with tqdm(total=total, unit="B", unit_scale=True, disable=None, leave=False,
                  desc=url.rsplit("/", 1)[-1]) as bar:
            for chunk in iter(lambda: response.read(1 << 20), b""):
                out.write(chunk)
                size += len(chunk)
                bar.update(len(chunk))
    if total is not None and size != total:
        raise DataUnavailableError(f"{url}: got {size} of {total} bytes (interrupted download); "
                                   "nothing was kept, try again")


# ------------------------------------------------------------------------- malaria


_MALARIA_MEMBER = re.compile(r"^(|.*/)(parasitized|uninfected)/([^/]+\.png)$", re.IGNORECASE)


def malaria_source(path: str | None = None, *, file: PublicFile = MALARIA,
                   cache: str | os.PathLike | None = None, workers: int = 2) -> D.Source:
    """The NIH malaria cells with their file names (``Parasitized/<slide>_IMG_..._cell_N.png``).

    ``path``: a local zip or folder in the NIH layout (read as it is); ``None``: ``file``
    downloaded, verified and cached. Classes ``parasitized`` (0), ``uninfected`` (1).
    """
    if path is not None:
        if os.path.isdir(path):
            return _malaria_folder(path, workers)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"malaria:{path}: no such zip or folder (expected NIH's "
                                    "cell_images.zip or its cell_images/ folder)")
        return _malaria_zip(path, check=True, workers=workers)
    hint = " (or give a copy: data.source=malaria:<zip or folder>)"
    return _malaria_zip(str(fetch(file, cache=cache, hint=hint)), check=False, workers=workers)


def _malaria_folder(root: str, workers: int) -> D.Source:
    inner = os.path.join(root, "cell_images")
    src = D.folder_source(inner if os.path.isdir(inner) else root, workers=workers)
    names = tuple(n.lower() for n in src.class_names)
    if names != MALARIA_CLASSES:
        raise ValueError(f"malaria:{root}: expected class folders Parasitized and Uninfected, "
                         f"found {list(src.class_names)} (use folder:{root} for other data)")
    return dataclasses.replace(src, spec=f"malaria:{root}", class_names=MALARIA_CLASSES)


class _Zip:
    """One ``ZipFile`` per process (worker processes must not share a file position);
    pickled as its path (the loader's worker processes get the source by pickle)."""

    def __init__(self, path: str):
        self.path, self._handles, self._lock = path, {}, threading.Lock()

    def __getstate__(self) -> dict:
        return {"path": self.path}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"])

    def read(self, name: str) -> bytes:
        pid = os.getpid()
        with self._lock:
            z = self._handles.get(pid)
            if z is None:
                z = self._handles[pid] = zipfile.ZipFile(self.path)
        return z.read(name)


def _malaria_zip(path: str, *, check: bool, workers: int) -> D.Source:
    try:
        with zipfile.ZipFile(path) as z:
            matches = [(m, info.filename) for info in z.infolist() if not info.is_dir()
                       for m in [_MALARIA_MEMBER.search(info.filename)] if m]
    except zipfile.BadZipFile as e:
        raise DataUnavailableError(f"{path} is not a readable zip ({e})") from None
    # the class folders nearest the top (cell_images/): a nested copy is not read twice
    top = min((m.group(1) for m, _ in matches), key=len, default="")
    found = [(m.group(2).lower(), m.group(3), name) for m, name in matches if m.group(1) == top]
    if not found:
        raise ValueError(f"{path} has no Parasitized/*.png or Uninfected/*.png (expected NIH's "
                         "cell_images.zip layout)")
    found.sort(key=lambda f: (MALARIA_CLASSES.index(f[0]), f[1]))
    archive = _Zip(path)
    skipped = 0
    if check:  # a copy we did not verify: decode-check every image once, skip bad ones
        def ok(member: str) -> bool:
            try:
                D.decode(archive.read(member))
                return True
            except Exception:  # noqa: BLE001  (any failure means: skip this file)
                return False

        with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
            good = list(pool.map(ok, (f[2] for f in found), chunksize=64))
        bad = [f[2] for f, g in zip(found, good, strict=True) if not g]
        if bad:
            log.warning("skipped %d unreadable image(s) in %s, e.g. %s", len(bad), path,
                        ", ".join(bad[:5]))
        found, skipped = [f for f, g in zip(found, good, strict=True) if g], len(bad)
    labels = np.asarray([MALARIA_CLASSES.index(c) for c, _, _ in found], np.int32)
    for k, name in enumerate(MALARIA_CLASSES):
        if not np.any(labels == k):
            raise ValueError(f"{path} has no {name} images")
    keys = [f"{c.capitalize()}/{name}" for c, name, _ in found]
    members = [m for _, _, m in found]
    spec = f"malaria:{path}" if check else "malaria"
    return D.Source(spec, MALARIA_CLASSES, labels, keys,
                    lambda i: D.decode(archive.read(members[i])), skipped=skipped)


# ---------------------------------------------------------------------------- BCCD


def git_tree_id(root: str | os.PathLike) -> str:
    """The git tree id of a folder of regular files (what ``git rev-parse C:dir`` prints
    for the same content committed with mode 100644): a digest of every file and name."""
    entries = []
    for entry in os.scandir(root):
        if entry.is_dir(follow_symlinks=False):
            entries.append((entry.name + "/", b"40000 " + entry.name.encode(),
                            git_tree_id(entry.path)))
        else:
            with open(entry.path, "rb") as f:
                data = f.read()
            blob = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
            entries.append((entry.name, b"100644 " + entry.name.encode(), blob))
    body = b"".join(head + b"\0" + bytes.fromhex(sha) for _, head, sha in sorted(entries))
    return hashlib.sha1(b"tree %d\0" % len(body) + body).hexdigest()


def bccd_folder(path: str | None = None, *, file: PublicFile = BCCD, tree: str = BCCD_TREE,
                cache: str | os.PathLike | None = None) -> str:
    """A VOC folder of BCCD (``Annotations/``, ``JPEGImages/``, ``ImageSets/Main/``).

    ``path``: a local VOC folder (returned as it is), or a local zip of the repository
    (extracted and verified like a download). ``None``: the pinned commit's archive,
    downloaded, its ``BCCD/`` extracted and checked against ``tree`` (the git tree id).
    """
    if path is not None and os.path.isdir(path):
        inner = os.path.join(path, "BCCD")
        return inner if os.path.isdir(os.path.join(inner, "Annotations")) else path
    folder = Path(cache) if cache is not None else data_dir()
    target = folder / f"bccd-{tree[:12]}"
    if (target / ".verified").exists():
        return str(target)
    if path is not None and not os.path.isfile(path):
        raise FileNotFoundError(f"bccd:{path}: no such folder or zip")
    archive = Path(path) if path is not None else fetch(
        file, cache=folder, hint=" (or give a copy: data.source=bccd:<zip or VOC folder>)")
    folder.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder, prefix=f".{target.name}.", suffix=".part"))
    os.chmod(tmp, 0o755)
    try:
        _extract_bccd(archive, tmp)
        got = git_tree_id(tmp)
        if got != tree:
            if path is None:
                archive.unlink()  # not what the commit holds: fetch it again next time
            raise DataUnavailableError(
                f"{archive}: its BCCD/ folder is not BCCD_Dataset at commit {BCCD_COMMIT[:12]} "
                f"(git tree {got}, expected {tree}); it was not kept")
        (tmp / ".verified").write_text(json.dumps({"url": file.url, "tree": tree}) + "\n")
        if target.exists():  # a half-made folder from an interrupted run (no .verified)
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return str(target)


def _extract_bccd(archive: Path, dest: Path) -> None:
    """The archive's ``*/BCCD/...`` members into ``dest`` (paths checked: no escape)."""
    try:
        with zipfile.ZipFile(archive) as z:
            n = 0
            for info in z.infolist():
                parts = info.filename.split("/")
                if "BCCD" not in parts[:2] or info.is_dir():
                    continue
                rel = parts[parts.index("BCCD") + 1:]
                if not rel or any(p in ("", ".", "..") for p in rel):
                    continue
                out = dest.joinpath(*rel)
                out.parent.mkdir(parents=True, exist_ok=True)
                with z.open(info) as src, open(out, "wb") as f:
                    shutil.copyfileobj(src, f)
                n += 1
    except (zipfile.BadZipFile, EOFError) as e:
        if archive.parent == dest.parent and archive.exists():
            archive.unlink()  # a cached download that does not read: fetch it again
        raise DataUnavailableError(f"{archive} is not a readable zip ({e}); it was not kept"
                                   if archive.parent == dest.parent else
                                   f"{archive} is not a readable zip ({e})") from None
    if n == 0:
        raise DataUnavailableError(f"{archive} has no BCCD/ folder (expected an archive of "
                                   "github.com/Shenggan/BCCD_Dataset)")


# ---------------------------------------------------------------------------- tfds


def tfds_source(name: str, *, split: str = "train", data_dir: str | None = None,
                download: bool = True) -> D.Source:
    """``train.data.tfds_source`` with the malaria warning and clear offline errors."""
    if name.split("/")[0].split(":")[0] == "malaria":
        log.warning("tfds malaria has no file names, so its split cannot be patient-disjoint: "
                    "cells of one patient land in train and test and the accuracy is "
                    "optimistic (Rajaraman et al. 2018: 0.986 by cell, 0.959 by patient). "
                    "data.source=malaria reads NIH's cell_images.zip with its file names")
    try:
        return D.tfds_source(name, split=split, data_dir=data_dir, download=download)
    except ModuleNotFoundError as e:
        if e.name == "importlib_resources":
            raise DataUnavailableError("tensorflow_datasets needs the importlib_resources "
                                       "package: pip install importlib_resources") from None
        raise
    except Exception:
        if download or _prepared(name, data_dir):
            raise
        where = data_dir or "the tfds data folder (~/tensorflow_datasets)"
        hint = "; or use data.source=malaria (NIH's zip)" if name.startswith("malaria") else ""
        raise DataUnavailableError(
            f"tfds {name!r} is not prepared in {where}, and data.download=False forbids "
            f"downloading it: set data.download=True (online), or prepare it with "
            f"tfds.data_source({name!r}) where there is network{hint}") from None


def _prepared(name: str, data_dir: str | None) -> bool:
    import tensorflow_datasets as tfds

    try:
        return bool(tfds.builder(name, data_dir=data_dir).is_prepared())
    except Exception:  # noqa: BLE001  (an unknown name: let the original error speak)
        return True
