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

import dataclasses
import hashlib
import os
import re
import sys
import tempfile
import urllib.error
import urllib.request
import warnings
from pathlib import Path

from zoo.cache import cache_dir

KERAS = "https://storage.googleapis.com/tensorflow/keras-applications/"
TORCH = "https://download.pytorch.org/models/"

# Full SHA-256 digests by file name; they take precedence over the digests the specs name.
# Fill in from a trusted download: `python -m zoo.weights.download FILE` prints it.
SHA256: dict[str, str] = {}


class WeightsUnavailableError(OSError):
    """Reference weights are neither cached nor downloadable, or failed verification."""


@dataclasses.dataclass(frozen=True)
class WeightFile:
    """A published weights file: its URL and the digests that identify it."""

    url: str
    sha256: str | None = None  # full digest, or a prefix of at least 8 hex digits
    md5: str | None = None

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


# The files a model's spec names (``ModelSpec.weights``): callables
# ``(include_top=, alpha=, size=) -> WeightFile``, written next to each registration.


@dataclasses.dataclass(frozen=True)
class KerasFiles:
    """A keras.applications model's files with and without top, with their MD5 sums."""

    stem: str  # under KERAS, e.g. "resnet/resnet50"
    md5_top: str | None = None
    md5_notop: str | None = None

    def __call__(self, *, include_top: bool = True, alpha: float = 1.0,
                 size: int = 224) -> WeightFile:
        suffix = "" if include_top else "_notop"
        return _with_sha(WeightFile(f"{KERAS}{self.stem}_weights_tf_dim_ordering_tf_kernels"
                                    f"{suffix}.h5",
                                    md5=self.md5_top if include_top else self.md5_notop))


@dataclasses.dataclass(frozen=True)
class KerasMobileNetFiles:
    """keras.applications MobileNet (``version`` 1) or MobileNetV2 (2) files: one per width
    ``alpha`` and input ``size`` published, with and without top; no digests published."""

    version: int
    alphas: tuple[float, ...]
    sizes: tuple[int, ...]

    def __call__(self, *, include_top: bool = True, alpha: float = 1.0,
                 size: int = 224) -> WeightFile:
        name = "mobilenet" if self.version == 1 else "mobilenetv2"
        if alpha not in self.alphas or size not in self.sizes:
            raise WeightsUnavailableError(
                f"keras.applications publishes {name} weights for alpha in {self.alphas} and "
                f"sizes {self.sizes}, not alpha={alpha}, size={size}")
        if self.version == 1:
            text = {0.25: "2_5", 0.5: "5_0", 0.75: "7_5", 1.0: "1_0"}[alpha]
            file = f"mobilenet/mobilenet_{text}_{size}_tf{'' if include_top else '_no_top'}.h5"
        else:
            file = (f"mobilenet_v2/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_"
                    f"{float(alpha)}_{size}{'' if include_top else '_no_top'}.h5")
        return _with_sha(WeightFile(KERAS + file))


@dataclasses.dataclass(frozen=True)
class TorchFile:
    """A torchvision file (one, with its classifier); its name carries a SHA-256 prefix."""

    filename: str  # under TORCH, e.g. "resnet18-f37072fd.pth"

    def __call__(self, *, include_top: bool = True, alpha: float = 1.0,
                 size: int = 224) -> WeightFile:
        prefix = re.search(r"-([a-f0-9]{8,})\.", self.filename)
        return _with_sha(WeightFile(TORCH + self.filename,
                                    sha256=prefix.group(1) if prefix else None))


def _with_sha(f: WeightFile) -> WeightFile:
    full = SHA256.get(f.filename)
    return dataclasses.replace(f, sha256=full) if full else f


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
