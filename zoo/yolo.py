"""YOLO detectors (Redmon et al. 2016, 2018); Darknet-53 lives in ``zoo/darknet.py``.

- ``yolov3``: ``yolov3.cfg``: Darknet-53, then a three-scale neck and head, 9 anchors.
- ``yolov3_tiny``: ``yolov3-tiny.cfg``: 7 convs and max-pools, two scales, 6 anchors.
- ``yolov1``: the 2015 paper's network (Figure 3): 24 convs, 2 dense layers, 7x7x30.
- ``yolo_<backbone>`` (``yolo_resnet50``, ...): YOLOv3's neck and head on a zoo
  backbone, fed by the feature taps of its spec at strides 32, 16 and 8
  (``zoo.spec(backbone).feature_info()``). ``yolov3`` itself is exactly this on
  ``darknet53``. :func:`register_backbone` adds one for any registered backbone.

Outputs. A YOLOv3-style model returns a tuple with one array per scale, coarsest
(stride 32) first as in Darknet, each ``(N, H/s, W/s, A, 5 + C)``: raw ``tx, ty, tw, th``,
an objectness logit and class logits (``train/detection`` decodes them; the model holds
its ``anchors`` in input pixels, per scale). ``num_classes=None`` returns the features the
final 1x1 convs (``head/scale{i}``) see; ``include_top=False`` returns the backbone's
features (strides 32, 16, 8). YOLOv1 returns ``(N, S, S, 5 B + C)``: per cell B boxes as
``x, y, sqrt(w), sqrt(h), confidence``, then C class scores.

Darknet conventions (see ``zoo/darknet.py``): conv-BN-leaky blocks (:class:`ConvBN`),
RGB input in [0, 1], and Darknet figures that count BN statistics (``params +
batch_stats``). ``zoo/weights/darknet.py`` reads Darknet ``.weights`` files.

Layout: ``backbone/...`` (Darknet-53: ``stem``, ``stage{i}/downsample``,
``stage{i}/block{j}/conv{1,2}``), ``neck/scale{i}/{lateral,conv1..conv6}``, ``head/scale{i}``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from zoo import layers, mobilenet, resnet  # noqa: F401  (mobilenet, resnet: the yolo_ backbones)
from zoo.darknet import DARKNET_NORM, ConvBN, darknet_groups
from zoo.features import tap_outputs
from zoo.registry import FeatureTap, ModelSpec, register, spec

Anchors = tuple[tuple[tuple[float, float], ...], ...]
STRIDES = (32, 16, 8)  # of the scales, coarsest first as in Darknet

# Darknet's COCO anchors (pixels at 416), grouped per output scale, coarsest first.
YOLOV3_ANCHORS: Anchors = (((116, 90), (156, 198), (373, 326)),
                           ((30, 61), (62, 45), (59, 119)),
                           ((10, 13), (16, 30), (33, 23)))
# yolov3-tiny.cfg lists 6 anchors; its second [yolo] layer uses mask 1,2,3 (anchor 0 is
# never used). We use the evident intent, masks 3,4,5 and 0,1,2.
TINY_ANCHORS: Anchors = (((81, 82), (135, 169), (344, 319)), ((10, 14), (23, 27), (37, 58)))


def upsample2(x: jax.Array) -> jax.Array:
    """Nearest-neighbour 2x upsampling (Darknet ``[upsample] stride=2``)."""
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def check_detector_input(x: jax.Array, *, model: str, in_channels: int, min_size: int,
                         multiple: int = 32) -> None:
    """``layers.check_input`` plus sides divisible by the network's largest stride."""
    layers.check_input(x, model=model, in_channels=in_channels, min_size=min_size)
    h, w = x.shape[1:3]
    if h % multiple or w % multiple:
        raise ValueError(f"{model} needs image sides that are multiples of {multiple}, got "
                         f"{h}x{w}; letterbox the images to e.g. "
                         f"{-(-h // multiple) * multiple}x{-(-w // multiple) * multiple}")


# ------------------------------------------------------------------ neck and head


class NeckScale(nn.Module):
    """One scale of a YOLOv3 neck: [1x1 ``lateral`` conv of the previous scale's route,
    2x upsample, concatenation with this scale's backbone feature], then ConvBN layers
    ``conv1..`` from ``plan`` ((features, kernel) each); the route is ``conv{route_after}``."""

    plan: tuple[tuple[int, int], ...]
    route_after: int
    lateral: int = 0
    dtype: Any = jnp.float32
    bn_momentum: float = 0.99

    @nn.compact
    def __call__(self, feature, route, train: bool):
        cbn = functools.partial(ConvBN, dtype=self.dtype, bn_momentum=self.bn_momentum)
        x = feature
        if self.lateral:  # Darknet: route -4, 1x1, upsample, route -1 + backbone layer
            up = upsample2(cbn(self.lateral, 1, name="lateral")(route, train))
            x = jnp.concatenate([up, x], -1)
        for k, (f, size) in enumerate(self.plan, 1):
            x = cbn(f, size, name=f"conv{k}")(x, train)
            if k == self.route_after:
                route = x
        return route, x


def yolov3_plan(width: int) -> tuple[tuple[int, int], ...]:
    """yolov3.cfg's six convs per scale: 1x1 w, 3x3 2w, 1x1 w, 3x3 2w, 1x1 w (route), 3x3 2w."""
    return ((width, 1), (2 * width, 3)) * 3


class Neck(nn.Module):
    """YOLOv3's neck: one :class:`NeckScale` per scale, coarsest first."""

    widths: tuple[int, ...]
    dtype: Any = jnp.float32
    bn_momentum: float = 0.99

    @nn.compact
    def __call__(self, features, train: bool) -> list[jax.Array]:
        outs, route = [], None
        for i, (f, w) in enumerate(zip(features, self.widths, strict=True), 1):
            scale = NeckScale(yolov3_plan(w), 5, w if i > 1 else 0, self.dtype,
                              self.bn_momentum, name=f"scale{i}")
            route, out = scale(f, route, train)
            outs.append(out)
        return outs


class Head(nn.Module):
    """The final 1x1 convs (with bias, linear): one per scale, A x (5 + C) channels."""

    anchors: Anchors
    num_classes: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, features):
        outs = []
        for i, (x, anchors) in enumerate(zip(features, self.anchors, strict=True), 1):
            a, c = len(anchors), 5 + self.num_classes
            y = layers.Conv(a * c, 1, dtype=self.dtype, name=f"scale{i}")(x)
            outs.append(y.reshape(*y.shape[:3], a, c))
        return tuple(outs)


def backbone_taps(backbone: str, taps: Sequence[FeatureTap],
                  strides: Sequence[int]) -> list[FeatureTap]:
    """The taps of registered model ``backbone`` at ``strides``, in that order."""
    by_stride = {t.stride: t for t in taps}
    missing = [s for s in strides if s not in by_stride]
    if missing:
        raise ValueError(f"backbone {backbone}: YOLO needs feature taps at strides "
                         f"{tuple(strides)}; its spec has {sorted(by_stride)}")
    return [by_stride[s] for s in strides]


class YOLO(nn.Module):
    """YOLOv3's neck and head on a zoo backbone (``yolov3`` = this on ``darknet53``).

    ``widths`` sets the neck per scale (yolov3.cfg: 512, 256, 128) and, with ``anchors``,
    the number of scales: two widths and two anchor sets make a strides-32/16 detector.
    """

    backbone: str = "darknet53"
    backbone_options: tuple[tuple[str, Any], ...] = ()  # e.g. (("alpha", 0.35),)
    widths: tuple[int, ...] = (512, 256, 128)
    anchors: Anchors = YOLOV3_ANCHORS
    num_classes: int | None = 80
    include_top: bool = True
    pooling: str | None = None
    in_channels: int = 3
    dtype: Any = jnp.float32
    min_size: int = 32
    bn_momentum: float = 0.99

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> tuple[jax.Array, ...]:
        _no_pooling(self.pooling)
        name = f"YOLO({self.backbone})"
        check_detector_input(x, model=name, in_channels=self.in_channels, min_size=self.min_size)
        if len(self.widths) != len(self.anchors) or not 1 <= len(self.widths) <= 3:
            raise ValueError(f"{name}: one width and one anchor set per scale (1 to 3 scales)")
        extra = {"bn_momentum": self.bn_momentum} if self.backbone == "darknet53" else {}
        extra |= dict(self.backbone_options)
        net = spec(self.backbone).builder(include_top=False, num_classes=None,
                                          in_channels=self.in_channels, dtype=self.dtype,
                                          name="backbone", **extra)
        taps = backbone_taps(self.backbone, spec(self.backbone).feature_info(net),
                             STRIDES[: len(self.widths)])
        feats = tap_outputs(net, taps, x, train=train)
        if not self.include_top:
            return tuple(feats)
        outs = Neck(self.widths, self.dtype, self.bn_momentum, name="neck")(feats, train)
        if not self.num_classes:
            return tuple(outs)
        return Head(self.anchors, self.num_classes, self.dtype, name="head")(outs)


def _no_pooling(pooling: str | None) -> None:
    if pooling is not None:
        raise ValueError("detectors return feature maps: pooling must be None")


# ------------------------------------------------------------------- YOLOv3-tiny


class TinyBackbone(nn.Module):
    """yolov3-tiny.cfg layers 0-12: 3x3 convs 16..1024 with 2x2 max-pools (the last stride 1)."""

    dtype: Any = jnp.float32
    bn_momentum: float = 0.99

    @nn.compact
    def __call__(self, x, train: bool):
        for i, f in enumerate((16, 32, 64, 128, 256, 512, 1024), 1):
            x = ConvBN(f, 3, dtype=self.dtype, bn_momentum=self.bn_momentum, name=f"conv{i}")(
                x, train)
            if i == 5:
                route = x  # stride 16, concatenated at the second scale
            if i <= 5:
                x = layers.max_pool(x, 2, 2, padding="SAME")
            elif i == 6:  # Darknet pads size-1 at the end: the 13x13 grid stays 13x13
                x = layers.max_pool(x, 2, 1, padding=((0, 1), (0, 1)))
        return x, route


class YOLOv3Tiny(nn.Module):
    """YOLOv3-tiny (``yolov3-tiny.cfg``): two scales, strides 32 and 16."""

    anchors: Anchors = TINY_ANCHORS
    num_classes: int | None = 80
    include_top: bool = True
    pooling: str | None = None
    in_channels: int = 3
    dtype: Any = jnp.float32
    min_size: int = 32
    bn_momentum: float = 0.99

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> tuple[jax.Array, ...]:
        _no_pooling(self.pooling)
        check_detector_input(x, model="YOLOv3Tiny", in_channels=self.in_channels,
                             min_size=self.min_size)
        if len(self.anchors) != 2:
            raise ValueError("YOLOv3Tiny has two scales: give two anchor sets")
        c5, c4 = TinyBackbone(self.dtype, self.bn_momentum, name="backbone")(x, train)
        if not self.include_top:
            return c5, c4
        outs = TinyNeck(self.dtype, self.bn_momentum, name="neck")(c5, c4, train)
        if not self.num_classes:
            return outs
        return Head(self.anchors, self.num_classes, self.dtype, name="head")(outs)


class TinyNeck(nn.Module):
    """yolov3-tiny.cfg layers 13-22 without the two output convs."""

    dtype: Any = jnp.float32
    bn_momentum: float = 0.99

    @nn.compact
    def __call__(self, c5, c4, train: bool):
        kw = dict(dtype=self.dtype, bn_momentum=self.bn_momentum)
        route, out1 = NeckScale(((256, 1), (512, 3)), 1, name="scale1", **kw)(c5, None, train)
        _, out2 = NeckScale(((256, 3),), 1, 128, name="scale2", **kw)(c4, route, train)
        return out1, out2


# ------------------------------------------------------------------------- YOLOv1

# The paper's Figure 3, as (kernel, filters, stride) per block of layers; a 2x2 max-pool
# follows each of the first four blocks. Convs have biases (no batch norm in 2015).
YOLOV1_BLOCKS = (
    ((7, 64, 2),),
    ((3, 192, 1),),
    ((1, 128, 1), (3, 256, 1), (1, 256, 1), (3, 512, 1)),
    ((1, 256, 1), (3, 512, 1)) * 4 + ((1, 512, 1), (3, 1024, 1)),
    ((1, 512, 1), (3, 1024, 1)) * 2 + ((3, 1024, 1), (3, 1024, 2)),
    ((3, 1024, 1), (3, 1024, 1)),
)


class YOLOv1Stage(nn.Module):
    convs: tuple[tuple[int, int, int], ...]
    pool: bool
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        for j, (k, f, s) in enumerate(self.convs, 1):
            x = layers.Conv(f, k, s, padding=k // 2, dtype=self.dtype, name=f"conv{j}")(x)
            x = nn.leaky_relu(x, 0.1)
        return layers.max_pool(x, 2, 2) if self.pool else x


class YOLOv1(nn.Module):
    """YOLOv1 (Redmon et al. 2016): 448 px in, an S x S grid of B boxes and C classes out."""

    grid: int = 7
    boxes: int = 2
    num_classes: int | None = 20
    include_top: bool = True
    pooling: str | None = None
    in_channels: int = 3
    dtype: Any = jnp.float32
    min_size: int = 448
    dropout_rate: float = 0.5

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        layers.check_input(x, model="YOLOv1", in_channels=self.in_channels,
                           min_size=min(self.min_size, 64 * self.grid))
        if x.shape[1:3] != (64 * self.grid, 64 * self.grid):
            raise ValueError(f"YOLOv1 with a {self.grid}x{self.grid} grid takes "
                             f"{64 * self.grid}x{64 * self.grid} images, got "
                             f"{x.shape[1]}x{x.shape[2]}; letterbox them")
        for i, convs in enumerate(YOLOV1_BLOCKS, 1):
            x = YOLOv1Stage(convs, i <= 4, self.dtype, name=f"stage{i}")(x)
        if not self.include_top:
            return layers.pool_features(x, self.pooling)
        x = nn.leaky_relu(nn.Dense(4096, dtype=self.dtype, name="fc")(x.reshape(len(x), -1)), 0.1)
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        if not self.num_classes:
            return x
        per_cell = 5 * self.boxes + self.num_classes
        x = nn.Dense(self.grid**2 * per_cell, dtype=self.dtype, name="head")(x)
        return x.reshape(len(x), self.grid, self.grid, per_cell)


# -------------------------------------------------------------------- registration


def neck_head_count(channels: tuple[int, ...], widths: tuple[int, ...], anchors: Anchors,
                    num_classes: int, *, bn_stats: bool) -> int:
    """Parameters of YOLOv3's neck and head, by arithmetic on the cfg (no Flax involved).

    ``channels`` are the backbone's feature channels, coarsest first. A ConvBN counts
    k*k*cin*cout + 2*cout (gamma, beta) + 2*cout more with BN statistics.
    """
    per_bn = 4 if bn_stats else 2
    cbn = lambda k, cin, cout: k * k * cin * cout + per_bn * cout  # noqa: E731
    total, prev = 0, None
    for c, w, a in zip(channels, widths, anchors, strict=True):
        cin = c
        if prev is not None:
            total += cbn(1, prev, w)
            cin = c + w
        total += cbn(1, cin, w) + 2 * (cbn(3, w, 2 * w) + cbn(1, 2 * w, w)) + cbn(3, w, 2 * w)
        total += 2 * w * len(a) * (5 + num_classes) + len(a) * (5 + num_classes)
        prev = w
    return total


register(ModelSpec(
    name="yolov3", builder=YOLO, family="yolo", reference="darknet",
    reference_name="yolov3.cfg (pjreddie/darknet)", reference_params=62_001_757,
    input_size=416, min_size=32, **DARKNET_NORM, task="detection", num_classes=80,
    groups=(*darknet_groups("backbone/"), ("neck", "^neck/"), ("head", "^head/")),
    description="YOLOv3: Darknet-53, 3 scales (strides 32, 16, 8) x 3 anchors",
))
register(ModelSpec(
    name="yolov3_tiny", builder=YOLOv3Tiny, family="yolo", reference="darknet",
    reference_name="yolov3-tiny.cfg (pjreddie/darknet)", reference_params=8_858_734,
    input_size=416, min_size=32, **DARKNET_NORM, task="detection", num_classes=80,
    groups=(("stem", "^backbone/conv[1-3]/"), ("stage1", "^backbone/conv[45]/"),
            ("stage2", "^backbone/conv[67]/"), ("neck", "^neck/"), ("head", "^head/")),
    description="YOLOv3-tiny: 7 convs + max-pools, 2 scales (strides 32, 16) x 3 anchors",
))
register(ModelSpec(
    name="yolov1", builder=YOLOv1, family="yolo", reference="paper",
    reference_name="Redmon et al. 2016, You Only Look Once, Figure 3",
    reference_params=271_703_550, input_size=448, min_size=448, **DARKNET_NORM,
    task="detection", num_classes=20,
    groups=(*((f"stage{i}", f"^stage{i}/") for i in range(1, 7)), ("fc", "^fc/"),
            ("head", "^head/")),
    description="YOLOv1: 24 convs, 2 dense layers, 7x7 grid x 2 boxes, 20 classes (VOC)",
))

def register_backbone(backbone: str) -> ModelSpec:
    """Register ``yolo_<backbone>``: YOLOv3's neck and head on registered model ``backbone``,
    fed by its spec's feature taps at strides 32, 16 and 8 (at its default width)."""
    b = spec(backbone)
    channels = tuple(t.channels for t in backbone_taps(backbone, b.feature_info(), STRIDES))
    top = (channels[0] + 1) * b.num_classes  # the backbone's classifier: a Dense on stride 32
    count = b.reference_params - top + neck_head_count(
        channels, (512, 256, 128), YOLOV3_ANCHORS, 80, bn_stats=b.counts_batch_stats)
    for _, rx in b.groups:
        if not rx.startswith("^"):
            raise ValueError(f"{backbone}: group regexes must be anchored with '^'")
    return register(ModelSpec(
        name=f"yolo_{backbone}", builder=functools.partial(YOLO, backbone=backbone),
        family="yolo", reference=b.reference,
        reference_name=f"{b.reference_name} (include_top=False) + yolov3.cfg neck and head",
        reference_params=count, input_size=416, min_size=max(32, b.min_size),
        mean=b.mean, std=b.std, channel_order=b.channel_order, task="detection",
        num_classes=80,
        groups=(*((g, "^backbone/" + rx[1:]) for g, rx in b.groups if g != "head"),
                ("neck", "^neck/"), ("head", "^head/")),
        description=f"YOLOv3 neck and head on {backbone}'s stride 8/16/32 feature taps",
    ))


# The backbones are imported above: registered whatever order the zoo imports families in.
for _backbone in ("resnet18", "resnet50", "mobilenetv2"):
    register_backbone(_backbone)
