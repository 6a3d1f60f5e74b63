"""Labelled image sources: ``synthetic``, ``folder:<path>`` and ``tfds:<name>``.

A :class:`Source` is random access: ``labels`` and ``keys`` (file names, for grouped
splits) are known up front, ``image(i)`` decodes one RGB uint8 image on demand. Splits,
preprocessing and batching live in ``train/splits.py`` and ``train/pipeline.py``.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import difflib
import io
import logging
import os
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image

from train.errors import ImageError, UserError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")
SYNTHETIC_CLASSES = ("parasitized", "uninfected")  # the tfds `malaria` label order


@dataclasses.dataclass
class Source:
    """A random-access labelled image dataset."""

    spec: str
    class_names: tuple[str, ...]
    labels: np.ndarray
    keys: list[str] | None
    load: Callable[[int], np.ndarray] = dataclasses.field(repr=False)
    skipped: int = 0

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, i: int) -> np.ndarray:
        """Example ``i`` as an HxWx3 uint8 RGB array."""
        return self.load(int(i))


def open_source(spec: str, *, seed: int = 0, synthetic_size: int = 2000,
                tfds_split: str = "train", tfds_data_dir: str = "", download: bool = True,
                workers: int = 2) -> Source:
    """Open ``synthetic``, ``malaria[:<path>]``, ``folder:<path>`` or ``tfds:<name>`` as a
    :class:`Source` (``malaria`` and the tfds checks: ``train/public.py``)."""
    kind, _, arg = spec.partition(":")
    if kind == "synthetic":
        return synthetic_source(synthetic_size, seed=seed)
    if kind == "folder" and arg:
        return folder_source(arg, workers=workers)
    if kind == "malaria":
        from train import public

        return public.malaria_source(arg or None, workers=workers)
    if kind == "tfds" and arg:
        from train import public

        return public.tfds_source(arg, split=tfds_split, data_dir=tfds_data_dir or None,
                                  download=download)
    raise ValueError(f"unknown data source {spec!r}; use 'synthetic', 'malaria', "
                     "'folder:<path>' or 'tfds:<name>'")


# --------------------------------------------------------------------------- folders


def _readable(path: str) -> str | None:
    """None when the file decodes completely, else why not (a header and checksum check,
    ``Image.verify``, passes a PNG whose compressed stream is broken)."""
    try:
        decode(path)
        return None
    except Exception as e:  # noqa: BLE001  (any failure means: skip this file)
        return " ".join(str(e).split()) or type(e).__name__


# 16-bit and 32-bit integer greyscale: PNG/TIFF 16-bit samples span 0..65535.
_WIDE = {"I;16": 65535.0, "I;16L": 65535.0, "I;16B": 65535.0, "I;16N": 65535.0, "I": 65535.0}


def to_rgb(im: Image.Image) -> np.ndarray:
    """Any PIL image -> HxWx3 uint8 RGB.

    16-bit greyscale (``I;16*``, and ``I``, which PIL uses for 16-bit samples too) is scaled
    from 0..65535, not clipped at 255; float images (``F``) are read as 0..1 when they fit
    in it, else as 0..255; palette, alpha, CMYK, YCbCr, LAB, HSV and 1-bit images go
    through PIL's conversions (alpha is dropped).
    """
    mode = im.mode
    if mode in _WIDE or mode.startswith("I;16") or mode == "F":
        a = np.asarray(im).astype(np.float64)
        if mode == "F":
            scale = 255.0 if a.size and np.nanmax(a) <= 1.0 else 1.0
        else:
            scale = 255.0 / _WIDE.get(mode, 65535.0)
        grey = np.clip(np.rint(np.nan_to_num(a * scale)), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=-1)
    if mode == "RGB":
        return np.asarray(im)
    try:
        return np.asarray(im.convert("RGB"))
    except ValueError:  # e.g. premultiplied 'La': through its plain-alpha form
        return np.asarray(im.convert(mode.replace("a", "A")).convert("RGB"))


def decode(data: bytes | str) -> np.ndarray:
    """Encoded image bytes (or a file path) -> HxWx3 uint8 RGB, decoded completely."""
    src = io.BytesIO(data) if isinstance(data, bytes | bytearray) else data
    with Image.open(src) as im:
        im.load()
        return to_rgb(im)


def decode_file(path: str) -> np.ndarray:
    """An image file -> HxWx3 uint8 RGB; :class:`ImageError` naming the file when it cannot
    be read (missing, a folder, empty, truncated, broken, not an image)."""
    if os.path.isdir(path):
        raise ImageError(f"{path} is a folder, not an image file")
    if not os.path.exists(path):
        raise ImageError(f"{path}: no such file")
    if os.path.getsize(path) == 0:
        raise ImageError(f"{path} is empty (0 bytes)")
    try:
        return decode(path)
    except Exception as e:  # noqa: BLE001
        why = " ".join(str(e).split()) or type(e).__name__
        raise ImageError(f"cannot read image {path}: {why}") from e


def folder_source(root: str, *, workers: int = 2) -> Source:
    """``root/<class>/<image>`` (Kaggle ``cell_images`` layout).

    Every file is decoded once here: one that does not decode completely (truncated,
    a broken compressed stream, not an image) is skipped, counted and named in the log.
    """
    if not os.path.isdir(root):
        raise FileNotFoundError(f"image folder {root!r} does not exist; check the path in "
                                "data.source=folder:<path> (the folder holds <class>/<image>)")
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    if not classes:
        raise ValueError(f"{root!r} has no class subfolders (expected {root}/<class>/*.png)")
    files: list[tuple[str, int]] = []
    for label, name in enumerate(classes):
        found = sorted(f for f in os.listdir(os.path.join(root, name))
                       if f.lower().endswith(IMAGE_EXTENSIONS))
        if not found:
            raise ValueError(f"class folder {os.path.join(root, name)!r} has no images")
        files += [(f"{name}/{f}", label) for f in found]
    with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
        why = list(pool.map(_readable, (os.path.join(root, k) for k, _ in files), chunksize=64))
    bad = [f"{k} ({w})" for (k, _), w in zip(files, why, strict=True) if w is not None]
    if bad:
        log.warning("skipped %d unreadable image file(s) in %s: %s", len(bad), root,
                    "; ".join(bad[:5]) + (" ..." if len(bad) > 5 else ""))
    files = [f for f, w in zip(files, why, strict=True) if w is None]
    labels = np.asarray([lab for _, lab in files], np.int32)
    for label, name in enumerate(classes):
        if not np.any(labels == label):
            raise ValueError(f"class {name!r} in {root!r} has no readable images")
    keys = [k for k, _ in files]
    return Source(f"folder:{root}", tuple(classes), labels, keys,
                  lambda i: decode_file(os.path.join(root, keys[i])), skipped=len(bad))


# --------------------------------------------------------------------------- tfds


def tfds_source(name: str, *, split: str = "train", data_dir: str | None = None,
                download: bool = True) -> Source:
    """A tfds dataset through ``tfds.data_source`` (array_record; no TensorFlow needed)."""
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        base = name.split(":")[0].split("/")[0]
        close = difflib.get_close_matches(base, tfds.list_builders(with_community_datasets=False),
                                        n=3, cutoff=0.6)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise UserError(f"tfds has no dataset {name!r}; {hint}(tfds.list_builders() lists "
                        "them; a folder of images is folder:<path>)") from None
    ds = tfds.data_source(name, split=split, data_dir=data_dir, download=download)
    # Reading the labels decodes every image once (about 30 s for malaria's 27,558).
    # tfds.decode.SkipDecoding would avoid it, but needs TensorFlow under mock_data.
    labels = np.asarray([int(ds[i]["label"]) for i in range(len(ds))], np.int32)
    names = tuple(builder.info.features["label"].names)

    def load(i: int) -> np.ndarray:
        img = ds[i]["image"]
        return decode(img) if isinstance(img, bytes | bytearray) else _rgb(np.asarray(img))

    return Source(f"tfds:{name}", names, labels, None, load)


def _rgb(img: np.ndarray) -> np.ndarray:
    """A decoded tfds image array -> uint8 RGB (16-bit scaled from 0..65535, floats from
    0..1, never wrapped or clipped by a cast)."""
    if img.ndim == 2:
        img = img[..., None]
    if img.shape[-1] == 1:
        img = np.repeat(img, 3, axis=-1)
    img = img[..., :3]
    if img.dtype == np.uint8:
        return img
    x = img.astype(np.float64)
    if img.dtype in (np.uint16, np.int32, np.uint32):
        x = x * (255.0 / 65535.0)
    elif img.dtype.kind == "f" and x.size and np.nanmax(x) <= 1.0:
        x = x * 255.0
    return np.clip(np.rint(np.nan_to_num(x)), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- synthetic


def synthetic_source(size: int = 2000, *, seed: int = 0, slides: int = 40,
                     pixels: int = 64) -> Source:
    """Generated thin-smear cells: round pink cells, parasitized ones with stained dots.

    Deterministic by (seed, index); classes are ``parasitized`` (0) and ``uninfected``
    (1) as in tfds ``malaria``; keys look like ``S007_IMG_00123.png`` (slide prefix first)
    so that grouped splits can be exercised offline.
    """
    if size < 2:
        raise ValueError(f"synthetic_size must be at least 2, got {size}")
    labels = (np.random.default_rng([seed, 1]).permutation(size) % 2).astype(np.int32)
    keys = [f"S{i % slides:03d}_IMG_{i:05d}.png" for i in range(size)]
    return Source("synthetic", SYNTHETIC_CLASSES, labels, keys,
                  lambda i: synthetic_cell(bool(labels[i] == 0), seed, i, pixels))


def synthetic_cell(parasitized: bool, seed: int, index: int, pixels: int = 64) -> np.ndarray:
    """One cell crop: dark background, shaded pink disc, purple chromatin dots if infected."""
    rng = np.random.default_rng([seed, 2, index])
    yy, xx = np.mgrid[0:pixels, 0:pixels].astype(np.float32) / pixels
    cy, cx = 0.5 + rng.normal(0, 0.03, 2)
    ry, rx = rng.uniform(0.34, 0.46, 2)
    d = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2
    cell = np.clip((1.0 - d) * 8.0, 0.0, 1.0)[..., None]  # soft edge
    tint = np.asarray([rng.uniform(190, 235), rng.uniform(130, 175), rng.uniform(150, 195)])
    shade = 1.0 - 0.18 * d[..., None] + rng.normal(0, 0.02)  # paler centre, darker rim
    img = cell * tint * shade + (1 - cell) * rng.uniform(0, 12)
    spots = _spots(rng, parasitized)
    for (sy, sx, r, colour, strength) in spots:
        sy, sx = cy + sy * ry, cx + sx * rx
        blob = np.exp(-(((yy - sy) ** 2 + (xx - sx) ** 2) / (2 * r * r)))[..., None]
        img = img * (1 - strength * blob * cell) + colour * strength * blob * cell
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _spots(rng: np.random.Generator, parasitized: bool) -> Sequence[tuple]:
    """(y, x, radius, colour, strength) of stained dots; faint pale ones as distractors."""
    spots = []
    if parasitized:
        for _ in range(rng.integers(1, 4)):
            a, rr = rng.uniform(0, 2 * np.pi), rng.uniform(0, 0.7)
            colour = np.asarray([rng.uniform(70, 140), rng.uniform(30, 80), rng.uniform(110, 170)])
            spots.append((rr * np.sin(a), rr * np.cos(a), rng.uniform(0.025, 0.06), colour,
                          rng.uniform(0.5, 0.9)))
    elif rng.random() < 0.5:  # platelets / stain debris: pale, larger, low contrast
        a, rr = rng.uniform(0, 2 * np.pi), rng.uniform(0, 0.7)
        colour = np.asarray([rng.uniform(160, 200), rng.uniform(120, 150), rng.uniform(150, 190)])
        spots.append((rr * np.sin(a), rr * np.cos(a), rng.uniform(0.04, 0.09), colour,
                      rng.uniform(0.3, 0.6)))
    return spots
