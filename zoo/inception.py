"""Inception v3 (Szegedy et al. 2016) and Inception-ResNet v2 (Szegedy et al. 2017).

Both as in ``keras.applications`` (InceptionV3, InceptionResNetV2). Keras details that
matter for parity: every conv is followed by a BatchNorm *without* scale (``scale=False``,
epsilon 1e-3, momentum 0.99) and a ReLU, and has no bias; the only convolutions with a
bias are the 1x1 "up" projections of the Inception-ResNet blocks, which have no BN; the
pooling branches average over 3x3 windows with 'same' padding *excluding* the padding
from the mean (TensorFlow semantics); residual blocks add ``scale * up`` to their input.

Every network here is a table: a block is a tuple of named branches, a branch a tuple of
steps (:class:`C` conv-BN-ReLU, :class:`Pool`, :class:`Split` for parallel convs whose
outputs are concatenated), and the branch outputs are concatenated. The same tables name
the parameters and give the Keras creation order of the unnamed layers (``conv2d_7``...),
so the weight name maps are derived from them rather than written twice.

Layout (Inception v3): ``stem/conv_{1..5}``, ``mixed{0..10}/<branch>``, ``head``, each
conv-BN a module with ``conv`` and ``bn``. Branch convs are named as in torchvision's
Inception v3 (``branch5x5_1``, ``branch3x3_2a``, ``branch_pool``). Inception-ResNet v2:
``stem``, ``mixed_5b``, ``stage1/block{1..10}`` (block35), ``mixed_6a``,
``stage2/block{1..20}`` (block17), ``mixed_7a``, ``stage3/block{1..10}`` (block8), each
block with ``branch_{0,1,2}[_k]`` and its ``conv`` projection, ``conv_7b``, ``head``.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import linen as nn

from zoo import layers
from zoo.published import KerasFiles
from zoo.registry import TF, FeatureTap, ModelSpec, register


class BN(NamedTuple):
    """Batch-norm settings of a family (momentum in the Keras/Flax sense)."""

    epsilon: float = 1e-3
    momentum: float = 0.99
    scale: bool = True


KERAS_BN = BN(epsilon=1e-3, momentum=0.99, scale=False)


class C(NamedTuple):
    """A conv (no bias) + batch norm + ReLU step of a branch."""

    features: int
    kernel: int | tuple[int, int] = 1
    stride: int = 1
    padding: str | int = "SAME"


class Pool(NamedTuple):
    """A pooling step: ``kind`` is 'avg' (padding excluded from the mean) or 'max'."""

    kind: str
    window: int = 3
    stride: int = 1
    padding: str | int = "SAME"
    ceil_mode: bool = False


class Split(NamedTuple):
    """Parallel convs on the same input, concatenated (Inception v3's 1x3 / 3x1 pairs)."""

    convs: tuple[C, ...]


Step = C | Pool | Split
Branch = tuple[str, tuple[Step, ...]]


def conv_names(branch: Branch) -> list[str]:
    """Names of a branch's conv modules in creation order (torchvision's convention).

    A branch with a single conv is named after the branch; otherwise its convs are
    ``{branch}_{i}``, and the convs of a split share an index: ``{branch}_{i}a``, ``..b``.
    """
    name, steps = branch
    convs = [s for s in steps if not isinstance(s, Pool)]
    if len(convs) == 1 and isinstance(convs[0], C):
        return [name]
    out = []
    for i, step in enumerate(convs, 1):
        if isinstance(step, Split):
            out += [f"{name}_{i}{chr(ord('a') + k)}" for k in range(len(step.convs))]
        else:
            out.append(f"{name}_{i}")
    return out


def block_conv_paths(block: str, branches: tuple[Branch, ...]) -> list[str]:
    """Paths of a block's conv-BN modules, in creation order."""
    return [f"{block}/{c}" for b in branches for c in conv_names(b)]


class ConvBN(nn.Module):
    """Convolution without bias, batch norm, ReLU."""

    features: int
    kernel: int | tuple[int, int] = 1
    stride: int = 1
    padding: str | int = "SAME"
    bn: BN = BN()
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        x = layers.Conv(self.features, self.kernel, self.stride, padding=self.padding,
                        use_bias=False, dtype=self.dtype, name="conv")(x)
        x = layers.batch_norm(epsilon=self.bn.epsilon, momentum=self.bn.momentum,
                              scale=self.bn.scale, dtype=self.dtype, name="bn")(
            x, use_running_average=not train)
        return nn.relu(x)


def pool(x: jax.Array, p: Pool) -> jax.Array:
    """Apply a :class:`Pool` step."""
    if p.kind == "max":
        return layers.max_pool(x, p.window, p.stride, p.padding, ceil_mode=p.ceil_mode)
    if p.kind != "avg" or p.ceil_mode:
        raise ValueError(f"unsupported pooling step {p}")
    pads = p.padding.upper() if isinstance(p.padding, str) else ((p.padding, p.padding),) * 2
    return nn.avg_pool(x, (p.window, p.window), (p.stride, p.stride), pads,
                       count_include_pad=False)


def run_branches(x, branches: tuple[Branch, ...], *, train: bool, bn: BN, dtype: Any):
    """Run each branch on ``x`` and concatenate; call inside a compact method.

    The conv modules are created in the calling module, named by :func:`conv_names`.
    """
    outputs = []
    for branch in branches:
        names: Iterator[str] = iter(conv_names(branch))

        def conv(c: C, y):
            return ConvBN(*c, bn=bn, dtype=dtype, name=next(names))(y, train)  # noqa: B023

        y = x
        for step in branch[1]:
            if isinstance(step, Pool):
                y = pool(y, step)
            elif isinstance(step, Split):
                y = jnp.concatenate([conv(c, y) for c in step.convs], axis=-1)
            else:
                y = conv(step, y)
        outputs.append(y)
    return outputs[0] if len(outputs) == 1 else jnp.concatenate(outputs, axis=-1)


class Block(nn.Module):
    """An Inception block: branches run on the same input, outputs concatenated."""

    branches: tuple[Branch, ...]
    bn: BN = BN()
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        return run_branches(x, self.branches, train=train, bn=self.bn, dtype=self.dtype)


class ResidualBlock(nn.Module):
    """An Inception-ResNet block: ``x + scale * conv1x1(concat(branches))``, then ReLU."""

    branches: tuple[Branch, ...]
    scale: float
    activation: bool = True
    bn: BN = KERAS_BN
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        mixed = run_branches(x, self.branches, train=train, bn=self.bn, dtype=self.dtype)
        up = layers.Conv(x.shape[-1], 1, use_bias=True, dtype=self.dtype, name="conv")(mixed)
        x = x + up * self.scale
        return nn.relu(x) if self.activation else x


class Residual(NamedTuple):
    """A stage of repeated Inception-ResNet blocks (``keras_prefix`` names them in Keras)."""

    keras_prefix: str
    branches: tuple[Branch, ...]
    num_blocks: int
    scale: float
    linear_last: bool = False  # the very last block has scale 1 and no ReLU


class ResidualStage(nn.Module):
    plan: Residual
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        p = self.plan
        for j in range(1, p.num_blocks + 1):
            last = p.linear_last and j == p.num_blocks
            x = ResidualBlock(p.branches, 1.0 if last else p.scale, activation=not last,
                              dtype=self.dtype, name=f"block{j}")(x, train)
        return x


# ------------------------------------------------------------------ tables

V = "VALID"
AVG = Pool("avg")  # Keras AveragePooling2D(3, strides=1, padding='same')
MAX = Pool("max", 3, 2, V)  # Keras MaxPooling2D(3, strides=2)
STEM = (("conv", (C(32, 3, 2, V), C(32, 3, 1, V), C(64, 3), MAX, C(80, 1, 1, V),
                  C(192, 3, 1, V), MAX)),)


def _v3_a(pool_features: int) -> tuple[Branch, ...]:
    return (("branch1x1", (C(64),)),
            ("branch5x5", (C(48), C(64, 5))),
            ("branch3x3dbl", (C(64), C(96, 3), C(96, 3))),
            ("branch_pool", (AVG, C(pool_features))))


def _v3_c(c7: int) -> tuple[Branch, ...]:
    return (("branch1x1", (C(192),)),
            ("branch7x7", (C(c7), C(c7, (1, 7)), C(192, (7, 1)))),
            ("branch7x7dbl", (C(c7), C(c7, (7, 1)), C(c7, (1, 7)), C(c7, (7, 1)),
                              C(192, (1, 7)))),
            ("branch_pool", (AVG, C(192))))


_V3_E = (("branch1x1", (C(320),)),
         ("branch3x3", (C(384), Split((C(384, (1, 3)), C(384, (3, 1)))))),
         ("branch3x3dbl", (C(448), C(384, 3), Split((C(384, (1, 3)), C(384, (3, 1)))))),
         ("branch_pool", (AVG, C(192))))

INCEPTION_V3 = (
    ("stem", STEM),
    ("mixed0", _v3_a(32)), ("mixed1", _v3_a(64)), ("mixed2", _v3_a(64)),
    ("mixed3", (("branch3x3", (C(384, 3, 2, V),)),
                ("branch3x3dbl", (C(64), C(96, 3), C(96, 3, 2, V))),
                ("branch_pool", (MAX,)))),
    ("mixed4", _v3_c(128)), ("mixed5", _v3_c(160)), ("mixed6", _v3_c(160)),
    ("mixed7", _v3_c(192)),
    ("mixed8", (("branch3x3", (C(192), C(320, 3, 2, V))),
                ("branch7x7x3", (C(192), C(192, (1, 7)), C(192, (7, 1)), C(192, 3, 2, V))),
                ("branch_pool", (MAX,)))),
    ("mixed9", _V3_E), ("mixed10", _V3_E),
)

INCEPTION_RESNET_V2 = (
    ("stem", STEM),
    ("mixed_5b", (("branch_0", (C(96),)), ("branch_1", (C(48), C(64, 5))),
                  ("branch_2", (C(64), C(96, 3), C(96, 3))), ("branch_pool", (AVG, C(64))))),
    ("stage1", Residual("block35", (("branch_0", (C(32),)), ("branch_1", (C(32), C(32, 3))),
                                    ("branch_2", (C(32), C(48, 3), C(64, 3)))), 10, 0.17)),
    ("mixed_6a", (("branch_0", (C(384, 3, 2, V),)),
                  ("branch_1", (C(256), C(256, 3), C(384, 3, 2, V))),
                  ("branch_pool", (MAX,)))),
    ("stage2", Residual("block17", (("branch_0", (C(192),)),
                                    ("branch_1", (C(128), C(160, (1, 7)), C(192, (7, 1))))),
                        20, 0.1)),
    ("mixed_7a", (("branch_0", (C(256), C(384, 3, 2, V))),
                  ("branch_1", (C(256), C(288, 3, 2, V))),
                  ("branch_2", (C(256), C(288, 3), C(320, 3, 2, V))),
                  ("branch_pool", (MAX,)))),
    ("stage3", Residual("block8", (("branch_0", (C(192),)),
                                   ("branch_1", (C(192), C(224, (1, 3)), C(256, (3, 1))))),
                        10, 0.2, linear_last=True)),
)
PLANS = {"inception_v3": INCEPTION_V3, "inception_resnet_v2": INCEPTION_RESNET_V2}


class Inception(nn.Module):
    """Inception v3 or Inception-ResNet v2 (``arch``), as in keras.applications."""

    arch: str = "inception_v3"
    num_classes: int | None = 1000
    include_top: bool = True
    pooling: str | None = None
    in_channels: int = 3
    dtype: Any = jnp.float32
    min_size: int = 75

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        if self.arch not in PLANS:
            raise ValueError(f"Inception arch is one of {sorted(PLANS)}, got {self.arch!r}")
        layers.check_input(x, model=self.arch, in_channels=self.in_channels,
                           min_size=self.min_size)
        for name, block in PLANS[self.arch]:
            if isinstance(block, Residual):
                x = ResidualStage(block, dtype=self.dtype, name=name)(x, train)
            else:
                x = Block(block, bn=KERAS_BN, dtype=self.dtype, name=name)(x, train)
        if self.arch == "inception_resnet_v2":
            x = ConvBN(1536, 1, bn=KERAS_BN, dtype=self.dtype, name="conv_7b")(x, train)
        return layers.pooled_top(x, include_top=self.include_top, pooling=self.pooling,
                                 num_classes=self.num_classes, dtype=self.dtype)


def keras_names(model: Inception) -> dict[str, str]:
    """Keras layer name -> our module path.

    Keras leaves most conv/BN layers of these models unnamed, so they are called
    ``conv2d_{k}`` / ``batch_normalization_{k}`` in creation order: ``k`` counts from 1
    as in the published Keras 2 files (:func:`zoo.weights.convert.renumber_keras_auto_names`
    brings names from any other session to that form).
    """
    names = {"predictions": "head"}
    auto: list[str] = []
    for block, plan in PLANS[model.arch]:
        if isinstance(plan, Residual):
            for j in range(1, plan.num_blocks + 1):
                auto += block_conv_paths(f"{block}/block{j}", plan.branches)
                names[f"{plan.keras_prefix}_{j}_conv"] = f"{block}/block{j}/conv"
        else:
            auto += block_conv_paths(block, plan)
    for k, path in enumerate(auto, 1):
        names[f"conv2d_{k}"], names[f"batch_normalization_{k}"] = f"{path}/conv", f"{path}/bn"
    if model.arch == "inception_resnet_v2":
        names |= {"conv_7b": "conv_7b/conv", "conv_7b_bn": "conv_7b/bn"}
    return names


def _groups(arch: str) -> tuple[tuple[str, str], ...]:
    blocks = [name for name, _ in PLANS[arch]]
    groups = [(b, rf"^{re.escape(b)}/") for b in blocks]
    if arch == "inception_resnet_v2":  # the final 1x1 conv closes the last stage
        groups[-1] = (blocks[-1], rf"^({blocks[-1]}|conv_7b)/")
    return (*groups, ("head", r"^head/"))


# The stem's third conv (stride 2) and fifth (4), then the last block at strides 8, 16, 32
# (timm's taps for these models).
_STEM_TAPS = (FeatureTap("stem/conv_3", 2, 64), FeatureTap("stem/conv_5", 4, 192))
TAPS = {
    "inception_v3": (*_STEM_TAPS, FeatureTap("mixed2", 8, 288), FeatureTap("mixed7", 16, 768),
                     FeatureTap("mixed10", 32, 2048)),
    "inception_resnet_v2": (*_STEM_TAPS, FeatureTap("stage1", 8, 320),
                            FeatureTap("stage2", 16, 1088), FeatureTap("conv_7b", 32, 1536)),
}
WEIGHTS = {
    "inception_v3": KerasFiles("inception_v3/inception_v3", "9a0d58056eeedaa3f26cb7ebd46da564",
                               "bcbd6486424b2319ff4ef7d526e38f63"),
    "inception_resnet_v2": KerasFiles("inception_resnet_v2/inception_resnet_v2",
                                      "e693bd0210a403b3192acc6073ad2e96",
                                      "d19885ff4a710c122648d3b5c3b684e4"),
}

for _name, _ref, _params in (
    ("inception_v3", "InceptionV3", 23_851_784),
    ("inception_resnet_v2", "InceptionResNetV2", 55_873_736),
):
    register(
        ModelSpec(
            name=_name,
            builder=functools.partial(Inception, arch=_name),
            family="inception",
            reference="keras",
            reference_name=f"keras.applications.{_ref}",
            reference_params=_params,
            input_size=299,
            min_size=75,
            **TF,
            groups=_groups(_name),
            description=f"{_ref} (Keras), BN without scale",
            keras_names=keras_names,
            weights=WEIGHTS[_name],
            feature_taps=TAPS[_name],
        )
    )
