"""Where the reference weights live, and a verified, cached, atomic download of them.

A model's spec names the official file that ``keras.applications`` or ``torchvision``
itself downloads for it (``zoo.spec(name).weights(include_top=, alpha=, size=)``, built
from :class:`KerasFiles`, :class:`KerasMobileNetFiles` or :class:`TorchFile`), with the
digest the reference publishes; ``fetch(file)`` downloads it once into the cache and
returns the local path.

- Cache: ``$TRANSFER_ZOO_CACHE`` if set, else ``$XDG_CACHE_HOME/transfer-zoo``, else
  ``~/.cache/transfer-zoo``. A file there is never downloaded again; its digest is checked
  on every use (a copy put there by hand that is not the published file is refused).
- Integrity: a download goes to a temporary file in the cache directory, is checked
  (length against ``Content-Length``, then the digest) and only then renamed into place,
  so an interrupted or corrupt download is never used.
- Digests: torchvision file names carry the first hex digits of the file's SHA-256
  (``resnet18-f37072fd.pth``, checked like ``torch.hub``'s ``check_hash``); a full
  SHA-256 in :data:`SHA256` pins a file completely. keras.applications publishes MD5
  sums (``file_hash``), checked when no SHA-256 is known. A file without any published
  digest (Keras MobileNets) is accepted with a warning that prints its SHA-256.
- Offline: a failed download raises :class:`WeightsUnavailableError` naming the URL and
  the path where a manually fetched copy should be put.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import urllib.error
import urllib.request
import warnings
from pathlib import Path

from zoo.cache import cache_dir

# the published files' descriptors live with the specs that name them (data, no I/O)
from zoo.published import (  # noqa: E402, F401
    KERAS,
    SHA256,
    TORCH,
    KerasFiles,
    KerasMobileNetFiles,
    TorchFile,
    WeightFile,
    WeightsUnavailableError,
)


def digests(path: str | os.PathLike) -> tuple[str, str]:
    """(SHA-256, MD5) hex digests of a file."""
    sha, md5 = hashlib.sha256(), hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            sha.update(chunk)
            md5.update(chunk)
    return sha.hexdigest(), md5.hexdigest()


def verify(path: str | os.PathLike, file: WeightFile, *, cached: bool = False) -> None:
    """Raise :class:`WeightsUnavailableError` unless ``path`` has ``file``'s digest."""
    sha, md5 = digests(path)
    if file.sha256:
        ok, want, got = sha.startswith(file.sha256.lower()), file.sha256, sha
    elif file.md5:
        ok, want, got = md5 == file.md5.lower(), file.md5, md5
    else:
        warnings.warn(f"{file.url} has no published digest to check; its SHA-256 is {sha} "
                      "(pin it in zoo.weights.download.SHA256)", stacklevel=3)
        return
    if not ok and cached:
        raise WeightsUnavailableError(
            f"{path} is not the published {file.filename} (expected digest {want}, got "
            f"{got}): a corrupt or different file was put in the cache. Delete it to download "
            f"again, or fetch {file.url} yourself")
    if not ok:
        raise WeightsUnavailableError(
            f"{file.url}: digest mismatch (expected {want}, got {got}); the download is "
            "corrupt or not the published file, and was not kept")


def fetch(file: WeightFile | str, *, cache: str | os.PathLike | None = None) -> Path:
    """The local path of a published file, downloaded, verified and cached on first use."""
    file = WeightFile(file) if isinstance(file, str) else file
    folder = Path(cache) if cache is not None else cache_dir()
    dest = folder / file.filename
    if dest.exists():  # downloaded (verified) before, or put there by hand: checked again
        verify(dest, file, cached=True)
        return dest
    folder.mkdir(parents=True, exist_ok=True)
    print(f"Downloading {file.url} -> {dest}", file=sys.stderr)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{file.filename}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(file.url, timeout=60) as response:
                    expected = response.headers.get("Content-Length")
                    size = 0
                    for chunk in iter(lambda: response.read(1 << 20), b""):
                        out.write(chunk)
                        size += len(chunk)
            except (urllib.error.URLError, OSError) as e:
                raise WeightsUnavailableError(
                    f"cannot download {file.url} ({getattr(e, 'reason', e)}). Offline? Fetch "
                    f"that URL yourself and save it as {dest} (or set TRANSFER_ZOO_CACHE, or "
                    "pass path= to the file)") from None
        if expected is not None and int(expected) != size:
            raise WeightsUnavailableError(
                f"{file.url}: got {size} of {expected} bytes (interrupted download); "
                "nothing was kept, try again")
        verify(tmp, file)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dest


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        sha, md5 = digests(arg)
        print(f"{Path(arg).name}  sha256={sha}  md5={md5}")
