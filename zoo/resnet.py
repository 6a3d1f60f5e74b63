"""ResNets (He et al. 2015, 2016) in the three flavours users meet most.

- ``v1``: ``keras.applications`` ResNet50/101/152. Bottleneck blocks with the stride
  in the first 1x1 conv (Caffe style); every conv has a bias; BN epsilon 1.001e-5.
- ``v2``: ``keras.applications`` ResNet50V2/101V2/152V2. Pre-activation bottlenecks;
  the stride sits in the *last* block of a stage and is a 1x1 max-pool on the identity
  shortcut; a ``post_bn`` closes the network.
- ``basic``: torchvision ResNet18/34. Basic 3x3 blocks, no conv biases, symmetric
  padding, BN epsilon 1e-5 and PyTorch momentum 0.1 (Flax momentum 0.9).

Layout: ``stem/{conv,bn}``, ``stage{i}/block{j}/{conv1,bn1,conv2,bn2,conv3,bn3}``,
``shortcut_{conv,bn}`` for projection shortcuts, ``preact_bn`` (v2), ``post_bn`` (v2),
``head``.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from zoo import layers
from zoo.published import KerasFiles, TorchFile
from zoo.registry import CAFFE, TF, TORCH, FeatureTap, ModelSpec, register

KERAS_BN = dict(epsilon=1.001e-5, momentum=0.99)
TORCH_BN = dict(epsilon=1e-5, momentum=0.9)


class BottleneckV1(nn.Module):
    filters: int
    stride: int = 1
    conv_shortcut: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        conv = functools.partial(layers.Conv, dtype=self.dtype)
        bn = functools.partial(layers.batch_norm, dtype=self.dtype, **KERAS_BN)
        ura = not train
        shortcut = x
        if self.conv_shortcut:
            shortcut = conv(4 * self.filters, 1, self.stride, name="shortcut_conv")(x)
            shortcut = bn(name="shortcut_bn")(shortcut, use_running_average=ura)
        y = conv(self.filters, 1, self.stride, name="conv1")(x)
        y = bn(name="bn1", act=nn.relu)(y, use_running_average=ura)
        y = conv(self.filters, 3, padding="SAME", name="conv2")(y)
        y = bn(name="bn2", act=nn.relu)(y, use_running_average=ura)
        y = conv(4 * self.filters, 1, name="conv3")(y)
        y = bn(name="bn3")(y, use_running_average=ura)
        return nn.relu(shortcut + y)


class BottleneckV2(nn.Module):
    filters: int
    stride: int = 1
    conv_shortcut: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        conv = functools.partial(layers.Conv, dtype=self.dtype)
        bn = functools.partial(layers.batch_norm, dtype=self.dtype, **KERAS_BN)
        ura = not train
        preact = bn(name="preact_bn", act=nn.relu)(x, use_running_average=ura)
        if self.conv_shortcut:
            shortcut = conv(4 * self.filters, 1, self.stride, name="shortcut_conv")(preact)
        else:  # Keras: MaxPooling2D(1, strides=stride), i.e. subsampling
            shortcut = x[:, :: self.stride, :: self.stride, :]
        y = conv(self.filters, 1, use_bias=False, name="conv1")(preact)
        y = bn(name="bn1", act=nn.relu)(y, use_running_average=ura)
        y = layers.pad(y, 1)
        y = conv(self.filters, 3, self.stride, padding="VALID", use_bias=False, name="conv2")(y)
        y = bn(name="bn2", act=nn.relu)(y, use_running_average=ura)
        y = conv(4 * self.filters, 1, name="conv3")(y)
        return shortcut + y


class BasicBlock(nn.Module):
    filters: int
    stride: int = 1
    conv_shortcut: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        conv = functools.partial(layers.Conv, use_bias=False, dtype=self.dtype)
        bn = functools.partial(layers.batch_norm, dtype=self.dtype, **TORCH_BN)
        ura = not train
        shortcut = x
        if self.conv_shortcut:
            shortcut = conv(self.filters, 1, self.stride, padding=0, name="shortcut_conv")(x)
            shortcut = bn(name="shortcut_bn")(shortcut, use_running_average=ura)
        y = conv(self.filters, 3, self.stride, padding=1, name="conv1")(x)
        y = bn(name="bn1", act=nn.relu)(y, use_running_average=ura)
        y = conv(self.filters, 3, padding=1, name="conv2")(y)
        y = bn(name="bn2")(y, use_running_average=ura)
        return nn.relu(shortcut + y)


BLOCKS = {"v1": BottleneckV1, "v2": BottleneckV2, "basic": BasicBlock}


def block_plan(variant: str, num_blocks: int, stride: int, first: bool):
    """(stride, conv_shortcut) of each block of a stage, as the reference builds it."""
    if variant == "v2":  # projection in block 1, stride in the last block
        return [(stride if j == num_blocks else 1, j == 1) for j in range(1, num_blocks + 1)]
    if variant == "v1":
        return [(stride, True)] + [(1, False)] * (num_blocks - 1)
    # torchvision: project only where shape changes (not in layer1 of ResNet18/34).
    return [(stride, stride != 1 or not first)] + [(1, False)] * (num_blocks - 1)


class Stage(nn.Module):
    variant: str
    filters: int
    num_blocks: int
    stride: int
    first: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        plan = block_plan(self.variant, self.num_blocks, self.stride, self.first)
        for j, (stride, projection) in enumerate(plan, 1):
            block = BLOCKS[self.variant](
                self.filters, stride, projection, dtype=self.dtype, name=f"block{j}"
            )
            x = block(x, train)
        return x


class Stem(nn.Module):
    variant: str
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        if self.variant == "basic":
            x = layers.Conv(64, 7, 2, padding=3, use_bias=False, dtype=self.dtype, name="conv")(x)
            x = layers.batch_norm(name="bn", dtype=self.dtype, act=nn.relu, **TORCH_BN)(
                x, use_running_average=not train)
            return layers.max_pool(x, 3, 2, padding=1)
        x = layers.Conv(64, 7, 2, padding=3, dtype=self.dtype, name="conv")(x)
        if self.variant == "v1":
            x = layers.batch_norm(name="bn", dtype=self.dtype, act=nn.relu, **KERAS_BN)(
                x, use_running_average=not train)
            # Keras pads with zeros (ZeroPadding2D, then a 'valid' pool); after a ReLU the
            # pool's own -inf padding gives the same maxima
            return layers.max_pool(x, 3, 2, padding=1)
        return layers.max_pool(layers.pad(x, 1), 3, 2)  # Keras: ZeroPadding2D + valid pool


class ResNet(nn.Module):
    """A ResNet; ``variant`` is ``v1`` / ``v2`` (Keras) or ``basic`` (torchvision)."""

    stage_sizes: tuple[int, ...]
    variant: str = "v1"
    num_classes: int | None = 1000
    include_top: bool = True
    pooling: str | None = None
    in_channels: int = 3
    dtype: Any = jnp.float32
    min_size: int = 32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        if self.variant not in BLOCKS:
            raise ValueError(f"ResNet variant is one of {sorted(BLOCKS)}, got {self.variant!r}")
        layers.check_input(x, model="ResNet", in_channels=self.in_channels, min_size=self.min_size)
        x = Stem(self.variant, dtype=self.dtype, name="stem")(x, train)
        widths = (64, 128, 256, 512)
        strides = (2, 2, 2, 1) if self.variant == "v2" else (1, 2, 2, 2)
        plan = zip(self.stage_sizes, widths, strides, strict=True)
        for i, (n, width, stride) in enumerate(plan, 1):
            x = Stage(self.variant, width, n, stride, first=i == 1, dtype=self.dtype,
                      name=f"stage{i}")(x, train)
        if self.variant == "v2":
            x = layers.batch_norm(name="post_bn", dtype=self.dtype, **KERAS_BN)(
                x, use_running_average=not train
            )
            x = nn.relu(x)
        return layers.pooled_top(x, include_top=self.include_top, pooling=self.pooling,
                                 num_classes=self.num_classes, dtype=self.dtype)


def keras_names(model: ResNet) -> dict[str, str]:
    """Keras layer name -> our module path (ResNet v1 and v2)."""
    names = {"conv1_conv": "stem/conv", "conv1_bn": "stem/bn", "post_bn": "post_bn",
             "predictions": "head"}
    for i, n in enumerate(model.stage_sizes, 1):
        for j in range(1, n + 1):
            k, p = f"conv{i + 1}_block{j}", f"stage{i}/block{j}"
            names[f"{k}_0_conv"], names[f"{k}_0_bn"] = f"{p}/shortcut_conv", f"{p}/shortcut_bn"
            names[f"{k}_preact_bn"] = f"{p}/preact_bn"
            for c in (1, 2, 3):
                names[f"{k}_{c}_conv"], names[f"{k}_{c}_bn"] = f"{p}/conv{c}", f"{p}/bn{c}"
    return names


def torch_names(model: ResNet) -> dict[str, str]:
    """torchvision module name -> our module path (basic-block ResNets)."""
    names = {"conv1": "stem/conv", "bn1": "stem/bn", "fc": "head"}
    for i, n in enumerate(model.stage_sizes, 1):
        for j in range(1, n + 1):
            k, p = f"layer{i}.{j - 1}", f"stage{i}/block{j}"
            names[f"{k}.downsample.0"] = f"{p}/shortcut_conv"
            names[f"{k}.downsample.1"] = f"{p}/shortcut_bn"
            for c in (1, 2):
                names[f"{k}.conv{c}"], names[f"{k}.bn{c}"] = f"{p}/conv{c}", f"{p}/bn{c}"
    return names


def _groups(num_stages: int, variant: str) -> tuple[tuple[str, str], ...]:
    last = rf"^(stage{num_stages}|post_bn)/" if variant == "v2" else rf"^stage{num_stages}/"
    return (
        ("stem", r"^stem/"),
        *((f"stage{i}", rf"^stage{i}/") for i in range(1, num_stages)),
        (f"stage{num_stages}", last),
        ("head", r"^head/"),
    )


def _taps(variant: str) -> tuple[FeatureTap, ...]:
    """Stage outputs at strides 4-32; a v2 stage ends with its stride-2 block, so there the
    stem gives stride 4 and the model's own output (``post_bn`` and ReLU) stride 32."""
    if variant == "v2":
        return (FeatureTap("stem", 4, 64), FeatureTap("stage1", 8, 256),
                FeatureTap("stage2", 16, 512), FeatureTap("", 32, 2048))
    widths = (64, 128, 256, 512) if variant == "basic" else (256, 512, 1024, 2048)
    return tuple(FeatureTap(f"stage{i}", 2 ** (i + 1), w) for i, w in enumerate(widths, 1))


_KERAS_MD5 = {  # (with top, without top), as keras.applications publishes them
    "resnet50": ("2cb95161c43110f7111970584f804107", "4d473c1dd8becc155b73f8504c6f6626"),
    "resnet101": ("f1aeb4b969a6efcfb50fad2f0c20cfc5", "88cf7a10940856eca736dc7b7e228a21"),
    "resnet152": ("100835be76be38e30d865e96f2aaae62", "ee4c566cf9a93f14d82f913c2dc6dd0c"),
    "resnet50v2": ("3ef43a0b657b3be2300d5770ece849e0", "fac2f116257151a9d068a22e544a4917"),
    "resnet101v2": ("6343647c601c52e1368623803854d971", "c0ed64b8031c3730f411d2eb4eea35b5"),
    "resnet152v2": ("a49b44d1979771252814e80f8ec446f9", "ed17cf2e0169df9d443503ef94b23b33"),
}
WEIGHTS = {name: KerasFiles(f"resnet/{name}", *md5) for name, md5 in _KERAS_MD5.items()} | {
    "resnet18": TorchFile("resnet18-f37072fd.pth"),
    "resnet34": TorchFile("resnet34-b627a593.pth"),
}

_VARIANTS = {
    # name: (variant, stage sizes, reference name, reference params, normalisation)
    "resnet50": ("v1", (3, 4, 6, 3), "keras.applications.ResNet50", 25_636_712, CAFFE),
    "resnet101": ("v1", (3, 4, 23, 3), "keras.applications.ResNet101", 44_707_176, CAFFE),
    "resnet152": ("v1", (3, 8, 36, 3), "keras.applications.ResNet152", 60_419_944, CAFFE),
    "resnet50v2": ("v2", (3, 4, 6, 3), "keras.applications.ResNet50V2", 25_613_800, TF),
    "resnet101v2": ("v2", (3, 4, 23, 3), "keras.applications.ResNet101V2", 44_675_560, TF),
    "resnet152v2": ("v2", (3, 8, 36, 3), "keras.applications.ResNet152V2", 60_380_648, TF),
    "resnet18": ("basic", (2, 2, 2, 2), "torchvision.models.resnet18", 11_689_512, TORCH),
    "resnet34": ("basic", (3, 4, 6, 3), "torchvision.models.resnet34", 21_797_672, TORCH),
}

for _name, (_variant, _sizes, _ref, _params, _norm) in _VARIANTS.items():
    _min = 1 if _variant == "basic" else 32  # torchvision's and Keras' declared minimum
    register(
        ModelSpec(
            name=_name,
            builder=functools.partial(ResNet, stage_sizes=_sizes, variant=_variant, min_size=_min),
            family="resnet",
            reference="torchvision" if _variant == "basic" else "keras",
            reference_name=_ref,
            reference_params=_params,
            input_size=224,
            min_size=_min,
            **_norm,
            groups=_groups(len(_sizes), _variant),
            description=f"ResNet {_variant}, stages {_sizes}",
            keras_names=None if _variant == "basic" else keras_names,
            torch_names=torch_names if _variant == "basic" else None,
            weights=WEIGHTS[_name],
            feature_taps=_taps(_variant),
        )
    )
