"""VGG16 and VGG19 (Simonyan & Zisserman 2014), as in ``keras.applications``.

Layout: ``stage{i}/conv{j}`` (Keras ``block{i}_conv{j}``), then ``fc1``, ``fc2`` and
``head`` (Keras ``predictions``). Keras VGG has no batch norm and no dropout.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from zoo import layers
from zoo.published import KerasFiles
from zoo.registry import CAFFE, FeatureTap, ModelSpec, register

STAGE_SIZES = {16: (2, 2, 3, 3, 3), 19: (2, 2, 4, 4, 4)}
WIDTHS = (64, 128, 256, 512, 512)


class VGGStage(nn.Module):
    depth: int
    features: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        for j in range(1, self.depth + 1):
            x = layers.Conv(self.features, 3, padding="SAME", dtype=self.dtype, name=f"conv{j}")(x)
            x = nn.relu(x)
        return layers.max_pool(x, 2, 2)


class VGG(nn.Module):
    """VGG with Keras semantics for ``include_top`` / ``pooling`` / ``num_classes``."""

    stage_sizes: tuple[int, ...]
    num_classes: int | None = 1000
    include_top: bool = True
    pooling: str | None = None
    in_channels: int = 3
    dtype: Any = jnp.float32
    min_size: int = 32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        layers.check_input(x, model="VGG", in_channels=self.in_channels, min_size=self.min_size)
        for i, (depth, width) in enumerate(zip(self.stage_sizes, WIDTHS, strict=True), 1):
            x = VGGStage(depth, width, dtype=self.dtype, name=f"stage{i}")(x)
        if not self.include_top:
            return layers.pool_features(x, self.pooling)
        x = x.reshape(x.shape[0], -1)  # Keras Flatten: (H, W, C) order
        x = nn.relu(nn.Dense(4096, dtype=self.dtype, name="fc1")(x))
        x = nn.relu(nn.Dense(4096, dtype=self.dtype, name="fc2")(x))
        return layers.classifier(x, num_classes=self.num_classes, dtype=self.dtype)


def keras_names(model: VGG) -> dict[str, str]:
    """Keras layer name -> our module path."""
    names = {"fc1": "fc1", "fc2": "fc2", "predictions": "head"}
    for i, depth in enumerate(model.stage_sizes, 1):
        for j in range(1, depth + 1):
            names[f"block{i}_conv{j}"] = f"stage{i}/conv{j}"
    return names


# Each stage ends with its 2x2 max pool: strides 2 to 32.
TAPS = tuple(FeatureTap(f"stage{i}", 2**i, w) for i, w in enumerate(WIDTHS, 1))
WEIGHTS = {16: KerasFiles("vgg16/vgg16", "64373286793e3c8b2b4e3219cbf3544b",
                          "6d6bbae143d832006294945121d1f1fc"),
           19: KerasFiles("vgg19/vgg19", "cbe5617147190e668d6c5d5026f83318",
                          "253f8cb515780f3b799900260a226db6")}

for _depth, _params in ((16, 138_357_544), (19, 143_667_240)):
    register(
        ModelSpec(
            name=f"vgg{_depth}",
            builder=functools.partial(VGG, stage_sizes=STAGE_SIZES[_depth]),
            family="vgg",
            reference="keras",
            reference_name=f"keras.applications.VGG{_depth}",
            reference_params=_params,
            input_size=224,
            min_size=32,
            **CAFFE,
            groups=(
                *((f"stage{i}", rf"^stage{i}/") for i in range(1, 6)),
                ("top", r"^fc[12]/"),
                ("head", r"^head/"),
            ),
            description=f"VGG{_depth}: {sum(STAGE_SIZES[_depth])} 3x3 conv layers + 3 dense",
            keras_names=keras_names,
            weights=WEIGHTS[_depth],
            feature_taps=TAPS,
        )
    )
