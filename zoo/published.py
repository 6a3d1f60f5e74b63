"""The published reference weight files a model's spec names (``ModelSpec.weights``): their
URLs and digests, as data. No I/O here: :mod:`zoo.weights.download` fetches and verifies them.
"""

from __future__ import annotations

import dataclasses
import re

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
