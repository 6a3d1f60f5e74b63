"""DenseNets (Huang et al. 2017) as in ``keras.applications`` DenseNet121/169/201.

Keras details that matter for parity: the stem pads explicitly (``ZeroPadding2D`` 3, a
'valid' 7x7/2 conv, ``ZeroPadding2D`` 1, a 'valid' 3x3/2 max-pool); convolutions have no
bias; BN epsilon is 1.001e-5; each layer of a dense block is BN-ReLU-1x1(4k)-BN-ReLU-3x3(k)
with growth rate k = 32, its output concatenated to its input; transitions are
BN-ReLU-1x1 (half the channels)-2x2 average pool; a final BN-ReLU precedes the head.
The reference weights expect Keras' ``'torch'`` preprocessing (ImageNet mean/std on 0-1).

Layout: ``stem/{conv,bn}``, ``stage{i}/block{j}/{bn1,conv1,bn2,conv2}``,
``stage{i}/transition/{bn,conv}`` (stages 1-3), ``post_bn``, ``head``.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from zoo import layers
from zoo.published import KerasFiles
from zoo.registry import TORCH, FeatureTap, ModelSpec, register

KERAS_BN = dict(epsilon=1.001e-5, momentum=0.99)
GROWTH_RATE = 32


class DenseLayer(nn.Module):
    """One layer of a dense block: its ``growth_rate`` new channels joined to its input."""

    growth_rate: int = GROWTH_RATE
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        conv = functools.partial(layers.Conv, use_bias=False, dtype=self.dtype)
        bn = functools.partial(layers.batch_norm, dtype=self.dtype, **KERAS_BN)
        y = bn(name="bn1", act=nn.relu)(x, use_running_average=not train)
        y = conv(4 * self.growth_rate, 1, name="conv1")(y)
        y = bn(name="bn2", act=nn.relu)(y, use_running_average=not train)
        y = conv(self.growth_rate, 3, padding="SAME", name="conv2")(y)
        return jnp.concatenate([x, y], axis=-1)


class Transition(nn.Module):
    """BN-ReLU, a 1x1 conv that halves the channels, 2x2 average pooling."""

    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        x = layers.batch_norm(name="bn", dtype=self.dtype, act=nn.relu, **KERAS_BN)(
            x, use_running_average=not train)
        x = layers.Conv(x.shape[-1] // 2, 1, use_bias=False, dtype=self.dtype, name="conv")(x)
        return layers.avg_pool(x, 2, 2)


class Stage(nn.Module):
    num_layers: int
    transition: bool
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        for j in range(1, self.num_layers + 1):
            x = DenseLayer(dtype=self.dtype, name=f"block{j}")(x, train)
        if self.transition:
            x = Transition(dtype=self.dtype, name="transition")(x, train)
        return x


class Stem(nn.Module):
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        x = layers.Conv(64, 7, 2, padding=3, use_bias=False, dtype=self.dtype, name="conv")(x)
        x = layers.batch_norm(name="bn", dtype=self.dtype, act=nn.relu, **KERAS_BN)(
            x, use_running_average=not train)
        # Keras: ZeroPadding2D then a 'valid' pool; after a ReLU the pool's own -inf padding
        # gives the same maxima
        return layers.max_pool(x, 3, 2, padding=1)


class DenseNet(nn.Module):
    """A Keras DenseNet; ``blocks`` is the number of layers of each of the 4 dense blocks."""

    blocks: tuple[int, ...]
    num_classes: int | None = 1000
    include_top: bool = True
    pooling: str | None = None
    in_channels: int = 3
    dtype: Any = jnp.float32
    min_size: int = 32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        layers.check_input(x, model="DenseNet", in_channels=self.in_channels,
                           min_size=self.min_size)
        bn = functools.partial(layers.batch_norm, dtype=self.dtype, **KERAS_BN)
        x = Stem(dtype=self.dtype, name="stem")(x, train)
        for i, n in enumerate(self.blocks, 1):
            x = Stage(n, transition=i < len(self.blocks), dtype=self.dtype,
                      name=f"stage{i}")(x, train)
        x = bn(name="post_bn", act=nn.relu)(x, use_running_average=not train)
        return layers.pooled_top(x, include_top=self.include_top, pooling=self.pooling,
                                 num_classes=self.num_classes, dtype=self.dtype)


def keras_names(model: DenseNet) -> dict[str, str]:
    """Keras layer name -> our module path."""
    names = {"conv1_conv": "stem/conv", "conv1_bn": "stem/bn", "bn": "post_bn",
             "predictions": "head"}
    for i, n in enumerate(model.blocks, 1):
        for j in range(1, n + 1):
            k, p = f"conv{i + 1}_block{j}", f"stage{i}/block{j}"
            names |= {f"{k}_0_bn": f"{p}/bn1", f"{k}_1_conv": f"{p}/conv1",
                      f"{k}_1_bn": f"{p}/bn2", f"{k}_2_conv": f"{p}/conv2"}
        if i < len(model.blocks):
            names[f"pool{i + 1}_bn"] = f"stage{i}/transition/bn"
            names[f"pool{i + 1}_conv"] = f"stage{i}/transition/conv"
    return names


def _taps(blocks: tuple[int, ...]) -> tuple[FeatureTap, ...]:
    """Each dense block's output (its last layer's, before the transition) at strides 4, 8
    and 16, then the model's own output (``post_bn`` and ReLU) at 32."""
    taps, channels = [], 64
    for i, n in enumerate(blocks, 1):
        channels += n * GROWTH_RATE
        path = f"stage{i}/block{n}" if i < len(blocks) else ""
        taps.append(FeatureTap(path, 2 ** (i + 1), channels))
        channels //= 2  # the transition's 1x1 conv
    return tuple(taps)


_KERAS_MD5 = {  # (with top, without top), as keras.applications publishes them
    "densenet121": ("9d60b8095a5708f2dcce2bca79d332c7", "30ee3e1110167f948a6b9946edeeb738"),
    "densenet169": ("d699b8f76981ab1b30698df4c175e90b", "b8c4d4c20dd625c148057b9ff1c1176b"),
    "densenet201": ("1ceb130c1ea1b78c3bf6114dbdfd8807", "c13680b51ded0fb44dff2d8f86ac8bb1"),
}

_VARIANTS = {
    "densenet121": ((6, 12, 24, 16), "DenseNet121", 8_062_504),
    "densenet169": ((6, 12, 32, 32), "DenseNet169", 14_307_880),
    "densenet201": ((6, 12, 48, 32), "DenseNet201", 20_242_984),
}

for _name, (_blocks, _ref, _params) in _VARIANTS.items():
    register(
        ModelSpec(
            name=_name,
            builder=functools.partial(DenseNet, blocks=_blocks),
            family="densenet",
            reference="keras",
            reference_name=f"keras.applications.{_ref}",
            reference_params=_params,
            input_size=224,
            min_size=32,
            **TORCH,
            groups=(("stem", r"^stem/"), ("stage1", r"^stage1/"), ("stage2", r"^stage2/"),
                    ("stage3", r"^stage3/"), ("stage4", r"^(stage4|post_bn)/"),
                    ("head", r"^head/")),
            description=f"DenseNet, dense blocks {_blocks}, growth rate {GROWTH_RATE}",
            keras_names=keras_names,
            weights=KerasFiles(f"densenet/{_name}", *_KERAS_MD5[_name]),
            feature_taps=_taps(_blocks),
        )
    )
