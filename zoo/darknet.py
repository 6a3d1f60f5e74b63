"""Darknet-53 (Redmon & Farhadi 2018): YOLOv3's backbone, also a classifier (``darknet53.cfg``).

Darknet conventions: every ``[convolutional]`` with batch norm is :class:`ConvBN` (conv
without bias, BN, leaky ReLU 0.1), padded symmetrically by ``k // 2``; inputs are RGB in
[0, 1]. A Darknet ``.weights`` file holds BN statistics too, so the Darknet figure
compares with our ``params + batch_stats`` (reference ``darknet``).

Layout: ``stem``, ``stage{i}/downsample``, ``stage{i}/block{j}/conv{1,2}`` (each a
ConvBN: ``conv``, ``bn``), ``head`` (the cfg's 1x1 conv after the average pool, as Dense).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from zoo import layers
from zoo.registry import FeatureTap, ModelSpec, register

DARKNET_NORM = dict(mean=(0.0, 0.0, 0.0), std=(255.0, 255.0, 255.0), channel_order="RGB")


class ConvBN(nn.Module):
    """Darknet ``[convolutional] batch_normalize=1``: conv (no bias), BN, leaky ReLU 0.1."""

    features: int
    kernel: int
    stride: int = 1
    dtype: Any = jnp.float32
    bn_momentum: float = 0.99  # Darknet: rolling = .99 rolling + .01 batch

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x = layers.Conv(self.features, self.kernel, self.stride, padding=self.kernel // 2,
                        use_bias=False, dtype=self.dtype, name="conv")(x)
        x = layers.batch_norm(epsilon=1e-5, momentum=self.bn_momentum, dtype=self.dtype,
                              name="bn")(x, use_running_average=not train)
        return nn.leaky_relu(x, 0.1)


class Residual(nn.Module):
    features: int
    dtype: Any = jnp.float32
    bn_momentum: float = 0.99

    @nn.compact
    def __call__(self, x, train: bool):
        cbn = functools.partial(ConvBN, dtype=self.dtype, bn_momentum=self.bn_momentum)
        y = cbn(self.features // 2, 1, name="conv1")(x, train)
        return x + cbn(self.features, 3, name="conv2")(y, train)


class DarknetStage(nn.Module):
    features: int
    num_blocks: int
    dtype: Any = jnp.float32
    bn_momentum: float = 0.99

    @nn.compact
    def __call__(self, x, train: bool):
        x = ConvBN(self.features, 3, 2, dtype=self.dtype, bn_momentum=self.bn_momentum,
                   name="downsample")(x, train)
        for j in range(1, self.num_blocks + 1):
            x = Residual(self.features, self.dtype, self.bn_momentum, name=f"block{j}")(x, train)
        return x


class Darknet53(nn.Module):
    """Darknet-53 (``darknet53.cfg``); the head is the cfg's 1x1 conv after the average pool."""

    stage_sizes: tuple[int, ...] = (1, 2, 8, 8, 4)
    num_classes: int | None = 1000
    include_top: bool = True
    pooling: str | None = None
    in_channels: int = 3
    dtype: Any = jnp.float32
    min_size: int = 32
    bn_momentum: float = 0.99

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        layers.check_input(x, model="Darknet53", in_channels=self.in_channels,
                           min_size=self.min_size)
        x = ConvBN(32, 3, dtype=self.dtype, bn_momentum=self.bn_momentum, name="stem")(x, train)
        for i, n in enumerate(self.stage_sizes, 1):
            x = DarknetStage(32 * 2**i, n, self.dtype, self.bn_momentum, name=f"stage{i}")(
                x, train)
        return layers.pooled_top(x, include_top=self.include_top, pooling=self.pooling,
                                 num_classes=self.num_classes, dtype=self.dtype)


def darknet_groups(prefix: str = "") -> tuple[tuple[str, str], ...]:
    """Darknet-53's parameter groups (stem, stage1..5), under ``prefix``."""
    return (("stem", f"^{prefix}stem/"),
            *((f"stage{i}", f"^{prefix}stage{i}/") for i in range(1, 6)))


register(ModelSpec(
    name="darknet53", builder=Darknet53, family="darknet", reference="darknet",
    reference_name="darknet53.cfg (pjreddie/darknet)", reference_params=41_645_640,
    input_size=256, min_size=32, **DARKNET_NORM,
    groups=(*darknet_groups(), ("head", "^head/")),
    description="Darknet-53: 52 convs with residual blocks (1, 2, 8, 8, 4), YOLOv3's backbone",
    feature_taps=(FeatureTap("stem", 1, 32),
                  *(FeatureTap(f"stage{i}", 2**i, 32 * 2**i) for i in range(1, 6))),
))
