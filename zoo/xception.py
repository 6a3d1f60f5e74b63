"""Xception (Chollet 2017), as ``keras.applications.Xception``.

Entry flow: two 3x3 'valid' convs (stride 2, then 1), then three residual blocks of two
separable convs and a 3x3 stride-2 'same' max-pool, with a 1x1 stride-2 conv shortcut.
Middle flow: eight residual blocks of three ReLU-separable conv-BN units (728 channels).
Exit flow: one residual block (728 -> 1024) and two separable convs (1536, 2048).
No conv has a bias; BN is Keras' default (epsilon 1e-3, momentum 0.99).

Layout: ``stem/{conv1,bn1,conv2,bn2}``; ``stage1/block{1,2,3}`` (entry),
``stage2/block{1..8}`` (middle), ``stage3/block{1,2}`` (exit), each with
``sepconv{k}`` (children ``depthwise``, ``pointwise``) and ``sepconv{k}_bn``, plus
``shortcut_conv``/``shortcut_bn`` in residual blocks with a projection; ``head``.
Keras leaves the shortcut layers unnamed (``conv2d``, ``batch_normalization_3``, ...):
:func:`keras_names` addresses them by rank (``conv2d#1``), see ``zoo.weights.convert``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from zoo import layers
from zoo.published import KerasFiles
from zoo.registry import TF, FeatureTap, ModelSpec, register

BN = dict(epsilon=1e-3, momentum=0.99)
# residual blocks with a projection: (sepconv1 filters, sepconv2 filters, ReLU first)
ENTRY = ((128, 128, False), (256, 256, True), (728, 728, True))
EXIT = (728, 1024, True)
MIDDLE_BLOCKS, MIDDLE_WIDTH = 8, 728


def sep_conv_bn(x, filters: int, index: int, train: bool, dtype: Any, act=None):
    """Separable 3x3 conv, BN (and ``act``): ``sepconv{index}``, ``sepconv{index}_bn``.

    Keras starts each unit with a ReLU; where a unit follows another directly (not after a
    residual add) that ReLU is written as the previous BN's ``act``: the same layers in
    the same order."""
    x = layers.SeparableConv(filters, 3, use_bias=False, dtype=dtype, name=f"sepconv{index}")(x)
    return layers.batch_norm(name=f"sepconv{index}_bn", dtype=dtype, act=act, **BN)(
        x, use_running_average=not train)


class ProjectionBlock(nn.Module):
    """Two separable units and a stride-2 max-pool, plus a 1x1 stride-2 conv shortcut."""

    filters: tuple[int, int]
    relu_first: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        shortcut = layers.Conv(self.filters[1], 1, 2, use_bias=False, dtype=self.dtype,
                               name="shortcut_conv")(x)
        shortcut = layers.batch_norm(name="shortcut_bn", dtype=self.dtype, **BN)(
            shortcut, use_running_average=not train)
        y = nn.relu(x) if self.relu_first else x
        y = sep_conv_bn(y, self.filters[0], 1, train, self.dtype, act=nn.relu)
        y = sep_conv_bn(y, self.filters[1], 2, train, self.dtype)
        return layers.max_pool(y, 3, 2, padding="SAME") + shortcut


class MiddleBlock(nn.Module):
    """Three ReLU-separable-BN units and an identity shortcut."""

    filters: int = MIDDLE_WIDTH
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        y = nn.relu(x)
        for k in (1, 2, 3):
            y = sep_conv_bn(y, self.filters, k, train, self.dtype, act=nn.relu if k < 3 else None)
        return x + y


class ExitConvs(nn.Module):
    """Separable 1536 and 2048, each followed by BN and ReLU (Keras block14)."""

    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        x = sep_conv_bn(x, 1536, 1, train, self.dtype, act=nn.relu)
        return sep_conv_bn(x, 2048, 2, train, self.dtype, act=nn.relu)


class Stem(nn.Module):
    """Conv 3x3/2 'valid' (32), BN, ReLU, conv 3x3 'valid' (64), BN, ReLU."""

    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        for k, (filters, stride) in enumerate(((32, 2), (64, 1)), 1):
            x = layers.Conv(filters, 3, stride, "VALID", use_bias=False, dtype=self.dtype,
                            name=f"conv{k}")(x)
            x = layers.batch_norm(name=f"bn{k}", dtype=self.dtype, act=nn.relu, **BN)(
                x, use_running_average=not train)
        return x


class Stage(nn.Module):
    """A sequence of blocks ``block1..n`` given as (class, kwargs) pairs."""

    blocks: tuple[tuple[str, dict], ...]
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        kinds = {"projection": ProjectionBlock, "middle": MiddleBlock, "exit": ExitConvs}
        for j, (kind, kwargs) in enumerate(self.blocks, 1):
            x = kinds[kind](**kwargs, dtype=self.dtype, name=f"block{j}")(x, train)
        return x


def stage_plan() -> tuple[tuple[tuple[str, dict], ...], ...]:
    """The blocks of the entry, middle and exit flows."""
    entry = tuple(("projection", dict(filters=(a, b), relu_first=r)) for a, b, r in ENTRY)
    middle = (("middle", {}),) * MIDDLE_BLOCKS
    a, b, r = EXIT
    return entry, middle, (("projection", dict(filters=(a, b), relu_first=r)), ("exit", {}))


class Xception(nn.Module):
    """Xception (``keras.applications.Xception``)."""

    num_classes: int | None = 1000
    include_top: bool = True
    pooling: str | None = None
    in_channels: int = 3
    dtype: Any = jnp.float32
    min_size: int = 71

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        layers.check_input(x, model="Xception", in_channels=self.in_channels,
                           min_size=self.min_size)
        x = Stem(dtype=self.dtype, name="stem")(x, train)
        for i, blocks in enumerate(stage_plan(), 1):
            x = Stage(blocks, dtype=self.dtype, name=f"stage{i}")(x, train)
        return layers.pooled_top(x, include_top=self.include_top, pooling=self.pooling,
                                 num_classes=self.num_classes, dtype=self.dtype)


def keras_names(model: Xception | None = None) -> dict[str, str]:
    """Keras layer name -> our module path; ``conv2d#k`` is Keras' k-th unnamed Conv2D."""
    names = {"block1_conv1": "stem/conv1", "block1_conv1_bn": "stem/bn1",
             "block1_conv2": "stem/conv2", "block1_conv2_bn": "stem/bn2",
             "predictions": "head"}
    keras_block = 2
    projections = 0
    for i, blocks in enumerate(stage_plan(), 1):
        for j, (kind, _) in enumerate(blocks, 1):
            path = f"stage{i}/block{j}"
            for k in (1, 2, 3) if kind == "middle" else (1, 2):
                names[f"block{keras_block}_sepconv{k}"] = f"{path}/sepconv{k}"
                names[f"block{keras_block}_sepconv{k}_bn"] = f"{path}/sepconv{k}_bn"
            if kind == "projection":
                projections += 1
                names[f"conv2d#{projections}"] = f"{path}/shortcut_conv"
                names[f"batch_normalization#{projections}"] = f"{path}/shortcut_bn"
            keras_block += 1
    return names


register(ModelSpec(
    name="xception", builder=Xception, family="xception", reference="keras",
    reference_name="keras.applications.Xception", reference_params=22_910_480,
    input_size=299, min_size=71, **TF,
    groups=(("stem", r"^stem/"), ("stage1", r"^stage1/"), ("stage2", r"^stage2/"),
            ("stage3", r"^stage3/"), ("head", r"^head/")),
    description="Xception: entry, middle (8 blocks) and exit flows of separable convs",
    keras_names=keras_names,
    weights=KerasFiles("xception/xception", "0a58e3b7378bc2990ea3b43d5981f1f6",
                       "b0042744bf5b25fce3cb969f33bebb97"),
    # the entry flow's blocks each halve the size: its first two are the stride 4 and 8 taps
    feature_taps=(FeatureTap("stem", 2, 64), FeatureTap("stage1/block1", 4, 128),
                  FeatureTap("stage1/block2", 8, 256), FeatureTap("stage2", 16, 728),
                  FeatureTap("stage3", 32, 2048)),
))
