"""Detection sources: VOC-layout folders, tfds ``voc`` (``tfds.data_source``), generated shapes.

A :class:`DetectionSource` is random access, like ``train.data.Source``: ``example(i)``
returns ``{'image': HxWx3 uint8 RGB, 'boxes': (n, 4) float32 xyxy pixels, 'classes':
(n,) int32, 'difficult': (n,) bool}``. Boxes use continuous pixel coordinates (a box
over columns 0..9 is x0=0, x1=10); VOC's 1-based inclusive ``xmin`` becomes ``xmin - 1``
as in tfds. Boxes of zero extent or outside the image are dropped and counted.
"""

from __future__ import annotations

import dataclasses
import glob
import logging
import os
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
               "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
               "sheep", "sofa", "train", "tvmonitor")
SHAPES_CLASSES = ("circle", "square", "triangle")


@dataclasses.dataclass
class DetectionSource:
    """A random-access detection dataset."""

    spec: str
    class_names: tuple[str, ...]
    keys: list[str]
    get: Callable[[int], dict] = dataclasses.field(repr=False)
    dropped: int = 0  # degenerate boxes dropped while reading
    get_annotation: Callable[[int], dict] | None = dataclasses.field(default=None, repr=False)
    # the files example i is read from (image, annotation), for sources of files on disk
    get_files: Callable[[int], tuple[str, ...]] | None = dataclasses.field(default=None,
                                                                           repr=False)

    def __len__(self) -> int:
        return len(self.keys)

    def example(self, i: int) -> dict:
        """Example ``i``: image, boxes, classes, difficult (see the module docstring)."""
        return self.get(int(i))

    def annotation(self, i: int) -> dict:
        """Boxes, classes, difficult, width and height of example ``i`` (no decode if known)."""
        if self.get_annotation is not None:
            return self.get_annotation(int(i))
        ex = self.example(i)
        h, w = ex["image"].shape[:2]
        return {k: v for k, v in ex.items() if k != "image"} | {"width": w, "height": h}


def open_detection_source(spec: str, *, split: str = "train", seed: int = 0,
                          class_names: Sequence[str] | None = None, shapes_size: int = 512,
                          image_size: int = 128, data_dir: str | None = None,
                          download: bool = False) -> DetectionSource:
    """``voc:<folder>``, ``bccd[:<path>]``, ``tfds:<name>`` (e.g. ``tfds:voc/2007``) or ``shapes``.

    ``shapes`` makes ``shapes_size`` training images and a fifth as many (at least 64)
    for any other split, each split from its own seed.
    """
    kind, _, arg = spec.partition(":")
    if kind == "voc" and arg:
        return voc_folder_source(arg, split, class_names=class_names)
    if kind == "bccd":  # the public BCCD_Dataset, downloaded and verified (train/public.py)
        from train import public

        return voc_folder_source(public.bccd_folder(arg or None), split,
                                 class_names=class_names or public.BCCD_CLASSES)
    if kind == "tfds" and arg:
        return tfds_detection_source(arg, split=split, data_dir=data_dir, download=download)
    if kind == "shapes":
        offset = {"train": 0, "val": 1, "validation": 1, "test": 2}.get(split, 3)
        n = shapes_size if offset == 0 else max(64, shapes_size // 5)
        return shapes_source(n, seed=seed * 10 + offset, size=image_size)
    raise ValueError(f"unknown detection data {spec!r}; use 'voc:<folder>', 'bccd', "
                     "'tfds:<name>' or 'shapes'")


def clean_boxes(boxes: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Clip xyxy boxes to the image; return them and a keep mask (positive area inside)."""
    b = np.asarray(boxes, np.float32).reshape(-1, 4)
    keep = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
    keep &= (b[:, 2] > 0) & (b[:, 3] > 0) & (b[:, 0] < width) & (b[:, 1] < height)
    b = np.clip(b, 0, [width, height, width, height]).astype(np.float32)
    return b, keep


# ------------------------------------------------------------------------ VOC folders


def parse_voc_xml(path: str) -> dict:
    """One VOC annotation file -> filename, size, objects (VOC pixel coordinates)."""
    try:
        root = ET.parse(path).getroot()
        size = root.find("size")
        width, height = int(size.findtext("width")), int(size.findtext("height"))
        objects = []
        for obj in root.iter("object"):
            bb = obj.find("bndbox")
            objects.append({
                "name": obj.findtext("name").strip(),
                "box": [float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")],
                "difficult": int(obj.findtext("difficult") or 0) == 1,
            })
        return {"filename": root.findtext("filename"), "width": width, "height": height,
                "objects": objects}
    except (ET.ParseError, AttributeError, TypeError, ValueError) as e:
        raise ValueError(f"malformed VOC annotation {path}: {e}") from None


def voc_class_names(root: str) -> tuple[str, ...]:
    """The sorted object names over every annotation of a VOC folder."""
    names = set()
    for path in sorted(glob.glob(os.path.join(root, "Annotations", "*.xml"))):
        names.update(o["name"] for o in parse_voc_xml(path)["objects"])
    return tuple(sorted(names))


def voc_splits(root: str) -> list[str]:
    """The split names of a VOC folder (``ImageSets/Main/<split>.txt``, not the per-class
    ``<class>_<split>.txt`` lists)."""
    return sorted(os.path.basename(p)[:-4] for p in glob.glob(
        os.path.join(root, "ImageSets", "Main", "*.txt")) if "_" not in os.path.basename(p))


def voc_folder_source(root: str, split: str, *,
                      class_names: Sequence[str] | None = None) -> DetectionSource:
    """A VOC-layout folder (``Annotations/``, ``JPEGImages/``, ``ImageSets/Main/<split>.txt``)."""
    listing = os.path.join(root, "ImageSets", "Main", f"{split}.txt")
    if not os.path.isfile(listing):
        raise FileNotFoundError(f"no split {split!r} in VOC folder {root!r} ({listing} is "
                                f"missing); splits there: {voc_splits(root)}")
    with open(listing) as f:
        ids = [line.split()[0] for line in f if line.strip()]
    names = tuple(class_names) if class_names else voc_class_names(root)
    index = {n: i for i, n in enumerate(names)}
    records, dropped, unknown = [], 0, set()
    for key in ids:
        ann = parse_voc_xml(os.path.join(root, "Annotations", f"{key}.xml"))
        objs = [o for o in ann["objects"] if o["name"] in index]
        unknown.update(o["name"] for o in ann["objects"] if o["name"] not in index)
        raw = np.asarray([o["box"] for o in objs], np.float32).reshape(-1, 4)
        # zero extent as annotated (xmax <= xmin) is degenerate, then VOC -> continuous
        good = (raw[:, 2] > raw[:, 0]) & (raw[:, 3] > raw[:, 1])
        boxes, inside = clean_boxes(raw - [1, 1, 0, 0], ann["width"], ann["height"])
        keep = good & inside
        dropped += int(np.sum(~keep))
        records.append((ann["filename"] or f"{key}.jpg", ann["width"], ann["height"], boxes[keep],
                        np.asarray([index[o["name"]] for o in objs], np.int32)[keep],
                        np.asarray([o["difficult"] for o in objs], bool)[keep]))
    if unknown:
        log.warning("%s: ignored objects of classes not in %s: %s", root, names, sorted(unknown))
    if dropped:
        log.warning("%s/%s: dropped %d degenerate box(es) (zero area or outside the image)",
                    root, split, dropped)

    def annotation(i: int) -> dict:
        _, width, height, boxes, classes, difficult = records[i]
        return {"boxes": boxes, "classes": classes, "difficult": difficult, "width": width,
                "height": height}

    def files(i: int) -> tuple[str, str]:
        return (os.path.join(root, "JPEGImages", records[i][0]),
                os.path.join(root, "Annotations", f"{ids[i]}.xml"))

    def get(i: int) -> dict:
        with Image.open(files(i)[0]) as im:
            image = np.asarray(im.convert("RGB"))
        ann = annotation(i)
        if image.shape[:2] != (ann["height"], ann["width"]):
            raise ValueError(f"{records[i][0]}: image is {image.shape[1]}x{image.shape[0]}, its "
                             f"annotation says {ann['width']}x{ann['height']}")
        return {"image": image, "boxes": ann["boxes"], "classes": ann["classes"],
                "difficult": ann["difficult"]}

    return DetectionSource(f"voc:{root}", names, ids, get, dropped, annotation, files)


# ------------------------------------------------------------------------------ tfds


def tfds_detection_source(name: str, *, split: str = "train", data_dir: str | None = None,
                          download: bool = False) -> DetectionSource:
    """A tfds detection dataset with ``objects/{bbox,label}`` (``voc``, ``coco``...)."""
    import tensorflow_datasets as tfds

    ds = tfds.data_source(name, split=split, data_dir=data_dir, download=download)
    names = tuple(tfds.builder(name, data_dir=data_dir).info.features["objects"]["label"].names)
    def get(i: int) -> dict:
        r = ds[i]
        image = np.asarray(r["image"])
        if image.ndim == 2 or image.shape[-1] == 1:
            image = np.repeat(image.reshape(*image.shape[:2], 1), 3, -1)
        h, w = image.shape[:2]
        objs = r["objects"]
        yx = np.asarray(objs["bbox"], np.float32).reshape(-1, 4)  # normalised y0 x0 y1 x1
        labels = np.asarray(objs["label"], np.int32).reshape(-1)
        difficult = np.asarray(objs.get("is_difficult", np.zeros(len(yx), bool)), bool)
        n = min(len(yx), len(labels))  # equal in real data; tfds mock data is random
        difficult = np.pad(difficult.reshape(-1)[:n], (0, max(0, n - difficult.size)))
        boxes, keep = clean_boxes(yx[:n, [1, 0, 3, 2]] * [w, h, w, h], w, h)
        src.dropped += int(np.sum(~keep))  # counted as examples are read
        return {"image": image[..., :3].astype(np.uint8), "boxes": boxes[keep],
                "classes": labels[:n][keep], "difficult": difficult[keep]}

    src = DetectionSource(f"tfds:{name}", names, [str(i) for i in range(len(ds))], get)
    return src


# ------------------------------------------------------------------------ shapes


def shapes_source(n: int = 512, *, seed: int = 0, size: int = 128,
                  max_shapes: int = 4) -> DetectionSource:
    """Generated offline data: circles, squares and triangles on textured backgrounds.

    Deterministic by (seed, index); boxes are exact. Shapes do not overlap much (a new
    shape is placed where it covers at most 20% of an earlier one).
    """
    def get(i: int) -> dict:
        return shapes_example(seed, i, size, max_shapes)

    return DetectionSource("shapes", SHAPES_CLASSES, [f"shape_{i:05d}" for i in range(n)], get)


def shapes_example(seed: int, index: int, size: int = 128, max_shapes: int = 4) -> dict:
    """One generated image with 1..``max_shapes`` shapes."""
    rng = np.random.default_rng([seed, 7, index])
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    base = rng.uniform(40, 200, 3)
    img = base + 20 * np.sin(xx[..., None] / rng.uniform(4, 12) + rng.uniform(0, 6)) \
        + rng.normal(0, 8, (size, size, 3))
    boxes, classes = [], []
    target = int(rng.integers(1, max_shapes + 1))
    for _ in range(100):
        if len(boxes) == target:
            break
        s = rng.uniform(0.12, 0.4) * size
        x0, y0 = rng.uniform(0, size - s, 2)
        box = np.asarray([x0, y0, x0 + s, y0 + s], np.float32)
        if any(_overlap(box, b) > 0.2 for b in boxes):
            continue
        kind = int(rng.integers(3))
        cx, cy, r = x0 + s / 2, y0 + s / 2, s / 2
        if kind == 0:
            mask = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
        elif kind == 1:
            mask = (xx >= x0) & (xx <= x0 + s) & (yy >= y0) & (yy <= y0 + s)
        else:  # apex at the top centre, base along the bottom
            t = (yy - y0) / s
            mask = (t >= 0) & (t <= 1) & (np.abs(xx - cx) <= t * r)
        colour = (base + rng.choice([-1, 1], 3) * rng.uniform(60, 110, 3)) % 256
        img = np.where(mask[..., None], colour + rng.normal(0, 6, (size, size, 3)), img)
        boxes.append(box)
        classes.append(kind)
    return {"image": np.clip(img, 0, 255).astype(np.uint8),
            "boxes": np.asarray(boxes, np.float32).reshape(-1, 4),
            "classes": np.asarray(classes, np.int32), "difficult": np.zeros(len(boxes), bool)}


def _overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over the area of ``b``."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    return w * h / max((b[2] - b[0]) * (b[3] - b[1]), 1e-9)
