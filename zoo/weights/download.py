"""Where the reference weights live, and a verified, cached, atomic download of them.

``reference_file(name, ...)`` gives the official URL that ``keras.applications`` or
``torchvision`` itself downloads for a model, with the digest the reference publishes;
``fetch(url, ...)`` downloads it once into the cache and returns the local path.

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

# Full SHA-256 digests by file name; they take precedence over the digests below.
# Fill in from a trusted download: `python -m zoo.weights.download FILE` prints it.
SHA256: dict[str, str] = {}

# keras.applications: name -> (file stem under KERAS, MD5 with top, MD5 without top).
KERAS_FILES: dict[str, tuple[str, str, str]] = {
    "vgg16": ("vgg16/vgg16", "64373286793e3c8b2b4e3219cbf3544b",
              "6d6bbae143d832006294945121d1f1fc"),
    "vgg19": ("vgg19/vgg19", "cbe5617147190e668d6c5d5026f83318",
              "253f8cb515780f3b799900260a226db6"),
    "resnet50": ("resnet/resnet50", "2cb95161c43110f7111970584f804107",
                 "4d473c1dd8becc155b73f8504c6f6626"),
    "resnet101": ("resnet/resnet101", "f1aeb4b969a6efcfb50fad2f0c20cfc5",
                  "88cf7a10940856eca736dc7b7e228a21"),
    "resnet152": ("resnet/resnet152", "100835be76be38e30d865e96f2aaae62",
                  "ee4c566cf9a93f14d82f913c2dc6dd0c"),
    "resnet50v2": ("resnet/resnet50v2", "3ef43a0b657b3be2300d5770ece849e0",
                   "fac2f116257151a9d068a22e544a4917"),
    "resnet101v2": ("resnet/resnet101v2", "6343647c601c52e1368623803854d971",
                    "c0ed64b8031c3730f411d2eb4eea35b5"),
    "resnet152v2": ("resnet/resnet152v2", "a49b44d1979771252814e80f8ec446f9",
                    "ed17cf2e0169df9d443503ef94b23b33"),
    "densenet121": ("densenet/densenet121", "9d60b8095a5708f2dcce2bca79d332c7",
                    "30ee3e1110167f948a6b9946edeeb738"),
    "densenet169": ("densenet/densenet169", "d699b8f76981ab1b30698df4c175e90b",
                    "b8c4d4c20dd625c148057b9ff1c1176b"),
    "densenet201": ("densenet/densenet201", "1ceb130c1ea1b78c3bf6114dbdfd8807",
                    "c13680b51ded0fb44dff2d8f86ac8bb1"),
    "xception": ("xception/xception", "0a58e3b7378bc2990ea3b43d5981f1f6",
                 "b0042744bf5b25fce3cb969f33bebb97"),
    "inception_v3": ("inception_v3/inception_v3", "9a0d58056eeedaa3f26cb7ebd46da564",
                     "bcbd6486424b2319ff4ef7d526e38f63"),
    "inception_resnet_v2": ("inception_resnet_v2/inception_resnet_v2",
                            "e693bd0210a403b3192acc6073ad2e96",
                            "d19885ff4a710c122648d3b5c3b684e4"),
}
# The resolutions and widths keras.applications publishes MobileNet weights for.
MOBILENET_ALPHAS = {"mobilenet": (0.25, 0.5, 0.75, 1.0),
                    "mobilenetv2": (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)}
MOBILENET_SIZES = {"mobilenet": (128, 160, 192, 224), "mobilenetv2": (96, 128, 160, 192, 224)}

# torchvision (IMAGENET1K_V1) for the zoo models whose reference is torchvision.
TORCH_FILES: dict[str, str] = {
    "resnet18": "resnet18-f37072fd.pth",
    "resnet34": "resnet34-b627a593.pth",
    "alexnet": "alexnet-owt-7be5be79.pth",
    "squeezenet1_0": "squeezenet1_0-b66bff10.pth",
    "squeezenet1_1": "squeezenet1_1-b8a52dc0.pth",
    "googlenet": "googlenet-1378be20.pth",
}


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


def reference_file(name: str, source: str, *, include_top: bool = True, alpha: float = 1.0,
                   size: int = 224) -> WeightFile:
    """The official file a reference library downloads for a zoo model."""
    if source == "keras":
        if name in MOBILENET_ALPHAS:
            if alpha not in MOBILENET_ALPHAS[name] or size not in MOBILENET_SIZES[name]:
                raise WeightsUnavailableError(
                    f"keras.applications publishes {name} weights for alpha in "
                    f"{MOBILENET_ALPHAS[name]} and sizes {MOBILENET_SIZES[name]}, not "
                    f"alpha={alpha}, size={size}")
            if name == "mobilenet":
                text = {0.25: "2_5", 0.5: "5_0", 0.75: "7_5", 1.0: "1_0"}[alpha]
                file = f"mobilenet/mobilenet_{text}_{size}_tf{'' if include_top else '_no_top'}.h5"
            else:
                file = (f"mobilenet_v2/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_"
                        f"{float(alpha)}_{size}{'' if include_top else '_no_top'}.h5")
            return _with_sha(WeightFile(KERAS + file))
        if name in KERAS_FILES:
            stem, md5_top, md5_notop = KERAS_FILES[name]
            suffix = "" if include_top else "_notop"
            return _with_sha(WeightFile(f"{KERAS}{stem}_weights_tf_dim_ordering_tf_kernels"
                                        f"{suffix}.h5", md5=md5_top if include_top else md5_notop))
    elif source == "torchvision" and name in TORCH_FILES:
        file = TORCH_FILES[name]
        prefix = re.search(r"-([a-f0-9]{8,})\.", file)
        return _with_sha(WeightFile(TORCH + file, sha256=prefix.group(1) if prefix else None))
    raise WeightsUnavailableError(
        f"no published {source} weights known for {name!r}; pass path= to a local file")


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
