"""Geometry that moves boxes with the pixels: letterbox, flip, random scale/crop; colour jitter.

All functions are NumPy on the host, uint8 RGB images and xyxy pixel boxes. Random ones
take a ``np.random.Generator`` so that an augmentation is a function of its seed.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from PIL import Image

from train.pipeline import colour_jitter

FILL = 114  # the grey Darknet/Ultralytics letterboxes with


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where an original image sits in the network input: ``x' = x * scale + (dx, dy)``."""

    scale: float
    dx: float
    dy: float

    def to_input(self, boxes: np.ndarray) -> np.ndarray:
        """Boxes of the original image -> boxes in the network input."""
        return np.asarray(boxes, np.float32) * self.scale + [self.dx, self.dy, self.dx, self.dy]

    def to_original(self, boxes: np.ndarray) -> np.ndarray:
        """Boxes in the network input -> boxes in the original image."""
        return (np.asarray(boxes, np.float32) - [self.dx, self.dy, self.dx, self.dy]) / self.scale


@dataclasses.dataclass(frozen=True)
class DetectionAugment:
    """Random training augmentations; all off by default.

    ``scale``: the letterboxed image is zoomed by a factor in [1 - scale, 1 + scale] and
    placed at a random offset (zoom-in crops, zoom-out pads); ``aspect`` jitters its
    aspect ratio by up to that factor. Boxes are clipped to the canvas and dropped when
    less than ``min_visible`` of their area, or less than ``min_size`` pixels of a side,
    remains.
    """

    hflip: bool = False
    vflip: bool = False
    scale: float = 0.0
    aspect: float = 0.0
    translate: bool = False
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    min_visible: float = 0.35
    min_size: float = 2.0

    @classmethod
    def from_config(cls, cfg) -> DetectionAugment:
        """From a mapping (e.g. ``config.data.augment``) with any of the field names."""
        return cls(**{f.name: cfg[f.name] for f in dataclasses.fields(cls) if f.name in cfg})


def resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Bilinear resize (antialiased when shrinking)."""
    if image.shape[1] == width and image.shape[0] == height:
        return image
    return np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))


def place(image: np.ndarray, out_hw: tuple[int, int], scale_x: float, scale_y: float,
          dx: float, dy: float) -> np.ndarray:
    """Resize by (scale_x, scale_y) and paste at (dx, dy) on a grey canvas (cropping overflow)."""
    h, w = image.shape[:2]
    nw, nh = max(1, round(w * scale_x)), max(1, round(h * scale_y))
    canvas = np.full((*out_hw, 3), FILL, np.uint8)
    x0, y0 = round(dx), round(dy)
    sx0, sy0 = max(0, -x0), max(0, -y0)
    cx0, cy0 = max(0, x0), max(0, y0)
    cw, ch = min(nw - sx0, out_hw[1] - cx0), min(nh - sy0, out_hw[0] - cy0)
    if cw > 0 and ch > 0:
        canvas[cy0:cy0 + ch, cx0:cx0 + cw] = resize(image, nw, nh)[sy0:sy0 + ch, sx0:sx0 + cw]
    return canvas


def letterbox(image: np.ndarray, boxes: np.ndarray,
              out_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, Placement]:
    """Resize keeping the aspect ratio to fit ``out_hw`` and centre on grey padding."""
    h, w = image.shape[:2]
    s = min(out_hw[0] / h, out_hw[1] / w)
    nw, nh = max(1, round(w * s)), max(1, round(h * s))
    dx, dy = (out_hw[1] - nw) // 2, (out_hw[0] - nh) // 2
    p = Placement(s, dx, dy)
    return place(image, out_hw, nw / w, nh / h, dx, dy), p.to_input(boxes), p


def clip_boxes(boxes: np.ndarray, before: np.ndarray, out_hw: tuple[int, int],
               min_visible: float, min_size: float) -> tuple[np.ndarray, np.ndarray]:
    """Clip to the canvas; keep boxes with enough of their area (vs ``before``) and side."""
    h, w = out_hw
    clipped = np.clip(boxes, 0, [w, h, w, h]).astype(np.float32)
    wh = clipped[:, 2:] - clipped[:, :2]
    area = lambda b: np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), -1)  # noqa: E731
    keep = (np.min(wh, -1) >= min_size) & (area(clipped) >= min_visible * area(before) - 1e-6)
    return clipped, keep


def random_place(image: np.ndarray, boxes: np.ndarray, out_hw: tuple[int, int],
                 aug: DetectionAugment, rng: np.random.Generator):
    """Letterbox with a random zoom, aspect and offset; returns image, boxes, keep mask."""
    h, w = image.shape[:2]
    base = min(out_hw[0] / h, out_hw[1] / w)
    zoom = rng.uniform(1 - aug.scale, 1 + aug.scale) if aug.scale else 1.0
    ar = math.exp(rng.uniform(-1, 1) * math.log1p(aug.aspect)) if aug.aspect else 1.0
    sx, sy = base * zoom * math.sqrt(ar), base * zoom / math.sqrt(ar)
    nw, nh = max(1, round(w * sx)), max(1, round(h * sy))
    sx, sy = nw / w, nh / h
    if aug.scale or aug.translate:  # anywhere that keeps the canvas covered or the image in
        dx = rng.uniform(min(0, out_hw[1] - nw), max(0, out_hw[1] - nw))
        dy = rng.uniform(min(0, out_hw[0] - nh), max(0, out_hw[0] - nh))
    else:
        dx, dy = (out_hw[1] - nw) / 2, (out_hw[0] - nh) / 2
    dx, dy = round(dx), round(dy)
    out = place(image, out_hw, sx, sy, dx, dy)
    moved = np.asarray(boxes, np.float32).reshape(-1, 4) * [sx, sy, sx, sy] + [dx, dy, dx, dy]
    clipped, keep = clip_boxes(moved, moved, out_hw, aug.min_visible, aug.min_size)
    return out, clipped, keep


def flip(image: np.ndarray, boxes: np.ndarray, horizontal: bool = True):
    """Mirror an image and its boxes (left-right, or top-bottom)."""
    b = np.asarray(boxes, np.float32).reshape(-1, 4).copy()
    if horizontal:
        w = image.shape[1]
        b[:, [0, 2]] = w - b[:, [2, 0]]
        return np.ascontiguousarray(image[:, ::-1]), b
    h = image.shape[0]
    b[:, [1, 3]] = h - b[:, [3, 1]]
    return np.ascontiguousarray(image[::-1]), b


def prepare(example: dict, out_hw: tuple[int, int], aug: DetectionAugment | None,
            rng: np.random.Generator | None) -> tuple[dict, int]:
    """Letterbox (and, when ``aug``, augment) one example; returns it and #boxes dropped."""
    image, boxes = example["image"], example["boxes"]
    if aug is None:
        image, boxes, _ = letterbox(image, boxes, out_hw)
        keep = np.ones(len(boxes), bool)
    else:
        image, boxes, keep = random_place(image, boxes, out_hw, aug, rng)
        if aug.hflip and rng.random() < 0.5:
            image, boxes = flip(image, boxes, True)
        if aug.vflip and rng.random() < 0.5:
            image, boxes = flip(image, boxes, False)
        if aug.brightness or aug.contrast or aug.saturation:
            image = colour_jitter(image, aug, rng)
    out = {"image": image, "boxes": boxes[keep], "classes": example["classes"][keep],
           "difficult": example["difficult"][keep]}
    return out, int(np.sum(~keep))


def pad_boxes(example: dict, max_boxes: int) -> tuple[dict, int]:
    """Fixed-size ground truth: ``boxes (M, 4)``, ``classes (M,)``, ``valid (M,)``; #cut."""
    n = min(len(example["boxes"]), max_boxes)
    boxes = np.zeros((max_boxes, 4), np.float32)
    classes = np.zeros((max_boxes,), np.int32)
    valid = np.zeros((max_boxes,), bool)
    difficult = np.zeros((max_boxes,), bool)
    boxes[:n], classes[:n] = example["boxes"][:n], example["classes"][:n]
    valid[:n], difficult[:n] = True, example["difficult"][:n]
    return ({"image": example["image"], "boxes": boxes, "classes": classes, "valid": valid,
             "difficult": difficult}, len(example["boxes"]) - n)
