"""MobileNet v1 (Howard et al. 2017) and v2 (Sandler et al. 2018), as ``keras.applications``.

- ``mobilenet``: ``keras.applications.MobileNet``. ``alpha`` scales every conv as
  ``int(filters * alpha)``; ``depth_multiplier`` multiplies the depthwise outputs;
  stride-2 depthwise convs pad ``((0, 1), (0, 1))`` then run 'valid' (not 'same': the
  two differ on odd sizes). The top is pooling, dropout and a 1x1 conv (``head``,
  kernel ``(1, 1, C, classes)`` as Keras' ``conv_preds``). BN epsilon 1e-3, momentum 0.99.
- ``mobilenetv2``: ``keras.applications.MobileNetV2``. Channels rounded with
  :func:`make_divisible` (multiples of 8); the last 1x1 conv keeps 1280 channels unless
  ``alpha > 1``. Stride-2 depthwise convs use Keras' ``correct_pad`` + 'valid', which is
  TensorFlow 'same'. BN epsilon 1e-3, momentum 0.999. The top is pooling and a Dense.

Layout: ``stem/{conv,bn}``; ``stage{i}/block{j}/{expand_conv,expand_bn,dw_conv,dw_bn,
pw_conv,pw_bn}`` (v1 blocks have no expansion; v2 calls the projection ``pw``);
``final/{conv,bn}`` (v2); ``head``. Stages are the rows of the papers' tables.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from zoo import layers
from zoo.published import KerasMobileNetFiles
from zoo.registry import TF, FeatureTap, ModelSpec, register

V1_BN = dict(epsilon=1e-3, momentum=0.99)
V2_BN = dict(epsilon=1e-3, momentum=0.999)

# v1 stages: (filters, blocks, stride of the first block)
V1_STAGES = ((64, 1, 1), (128, 2, 2), (256, 2, 2), (512, 6, 2), (1024, 2, 2))
# v2 stages, the paper's table 2: (expansion t, channels c, blocks n, first stride s)
V2_STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
             (6, 160, 3, 2), (6, 320, 1, 1))


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Keras' ``_make_divisible``: round to a multiple of ``divisor``, never 10% down."""
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


class DepthwiseSeparable(nn.Module):
    """v1 block: depthwise 3x3, BN, ReLU6, pointwise 1x1, BN, ReLU6."""

    filters: int
    stride: int = 1
    depth_multiplier: int = 1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        bn = functools.partial(layers.batch_norm, dtype=self.dtype, act=nn.relu6, **V1_BN)
        pad = "SAME" if self.stride == 1 else ((0, 1), (0, 1))  # ZeroPadding2D + 'valid'
        x = layers.DepthwiseConv(3, self.stride, pad, self.depth_multiplier, use_bias=False,
                                 dtype=self.dtype, name="dw_conv")(x)
        x = bn(name="dw_bn")(x, use_running_average=not train)
        x = layers.Conv(self.filters, 1, use_bias=False, dtype=self.dtype, name="pw_conv")(x)
        return bn(name="pw_bn")(x, use_running_average=not train)


class InvertedResidual(nn.Module):
    """v2 block: (1x1 expansion, BN, ReLU6), depthwise 3x3, BN, ReLU6, 1x1 projection, BN."""

    expansion: int
    filters: int
    stride: int = 1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        bn = functools.partial(layers.batch_norm, dtype=self.dtype, **V2_BN)
        conv = functools.partial(layers.Conv, kernel_size=1, use_bias=False, dtype=self.dtype)
        ura = not train
        y = x
        if self.expansion != 1:  # Keras: every block but the first ("expanded_conv")
            y = conv(self.expansion * x.shape[-1], name="expand_conv")(y)
            y = bn(name="expand_bn", act=nn.relu6)(y, use_running_average=ura)
        y = layers.DepthwiseConv(3, self.stride, "SAME", use_bias=False, dtype=self.dtype,
                                 name="dw_conv")(y)
        y = bn(name="dw_bn", act=nn.relu6)(y, use_running_average=ura)
        y = conv(self.filters, name="pw_conv")(y)
        y = bn(name="pw_bn")(y, use_running_average=ura)
        return x + y if self.stride == 1 and x.shape[-1] == self.filters else y


def check_alpha(model: str, alpha: float, widest: float) -> None:
    """``alpha`` in (0, widest]: the widths Keras publishes go up to ``widest``, and a
    wider net has neither weights nor a reference to be checked against."""
    if not isinstance(alpha, int | float) or not 0 < alpha <= widest:
        raise ValueError(f"{model}: alpha={alpha!r} is outside (0, {widest}]; alpha scales the "
                         f"width (Keras publishes weights for {V_ALPHAS[model]})")


V_ALPHAS = {"MobileNet": "0.25, 0.5, 0.75, 1.0",
            "MobileNetV2": "0.35, 0.5, 0.75, 1.0, 1.3, 1.4"}


class MobileNet(nn.Module):
    """MobileNet v1 (``keras.applications.MobileNet``) with width ``alpha`` in (0, 1]."""

    alpha: float = 1.0
    depth_multiplier: int = 1
    dropout: float = 1e-3
    num_classes: int | None = 1000
    include_top: bool = True
    pooling: str | None = None
    in_channels: int = 3
    dtype: Any = jnp.float32
    min_size: int = 32

    def __post_init__(self) -> None:
        check_alpha("MobileNet", self.alpha, 1.0)
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        layers.check_input(x, model="MobileNet", in_channels=self.in_channels,
                           min_size=self.min_size)
        x = ConvBN(int(32 * self.alpha), 3, 2, V1_BN, dtype=self.dtype, name="stem")(x, train)
        for i, (filters, n, stride) in enumerate(V1_STAGES, 1):
            blocks = [dict(filters=int(filters * self.alpha), stride=stride if j == 0 else 1,
                           depth_multiplier=self.depth_multiplier) for j in range(n)]
            x = Stage("v1", tuple(blocks), dtype=self.dtype, name=f"stage{i}")(x, train)
        if not self.include_top:
            return layers.pool_features(x, self.pooling)
        x = layers.global_pool(x, "avg")
        if not self.num_classes:
            return x
        x = nn.Dropout(self.dropout)(x, deterministic=not train)[:, None, None, :]
        # Keras' conv_preds init (glorot uniform): the layers' He fan-out init gives a
        # 2-class head std 1.0, logits of +-40 on ImageNet features, a head that cannot train
        x = layers.Conv(self.num_classes, 1, dtype=self.dtype, name="head",
                        kernel_init=nn.initializers.glorot_uniform())(x)
        return x.reshape(x.shape[0], self.num_classes)


class MobileNetV2(nn.Module):
    """MobileNet v2 (``keras.applications.MobileNetV2``) with width ``alpha`` in (0, 1.4]."""

    alpha: float = 1.0
    num_classes: int | None = 1000
    include_top: bool = True
    pooling: str | None = None
    in_channels: int = 3
    dtype: Any = jnp.float32
    min_size: int = 32

    def __post_init__(self) -> None:
        check_alpha("MobileNetV2", self.alpha, 1.4)
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        layers.check_input(x, model="MobileNetV2", in_channels=self.in_channels,
                           min_size=self.min_size)
        x = ConvBN(make_divisible(32 * self.alpha), 3, 2, V2_BN, dtype=self.dtype,
                   name="stem")(x, train)
        for i, (t, c, n, s) in enumerate(V2_STAGES, 1):
            blocks = [dict(expansion=t, filters=make_divisible(int(c * self.alpha)),
                           stride=s if j == 0 else 1) for j in range(n)]
            x = Stage("v2", tuple(blocks), dtype=self.dtype, name=f"stage{i}")(x, train)
        last = make_divisible(1280 * self.alpha) if self.alpha > 1.0 else 1280
        x = ConvBN(last, 1, 1, V2_BN, dtype=self.dtype, name="final")(x, train)
        return layers.pooled_top(x, include_top=self.include_top, pooling=self.pooling,
                                 num_classes=self.num_classes, dtype=self.dtype)


class ConvBN(nn.Module):
    """Conv ('same', no bias), BN, ReLU6: the stem (3x3 stride 2) and v2's last 1x1 conv."""

    filters: int
    kernel: int
    stride: int
    bn: dict
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        x = layers.Conv(self.filters, self.kernel, self.stride, "SAME", use_bias=False,
                        dtype=self.dtype, name="conv")(x)
        bn = layers.batch_norm(name="bn", dtype=self.dtype, act=nn.relu6, **self.bn)
        return bn(x, use_running_average=not train)


class Stage(nn.Module):
    """Blocks ``block1..n`` of one row of the paper's table (``v1`` or ``v2`` blocks)."""

    version: str
    blocks: tuple[dict, ...]
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        for j, kwargs in enumerate(self.blocks, 1):
            block = DepthwiseSeparable if self.version == "v1" else InvertedResidual
            x = block(**kwargs, dtype=self.dtype, name=f"block{j}")(x, train)
        return x


def keras_names(model: MobileNet | MobileNetV2) -> dict[str, str]:
    """Keras layer name -> our module path (MobileNet v1 or v2)."""
    if isinstance(model, MobileNet):
        names = {"conv1": "stem/conv", "conv1_bn": "stem/bn", "conv_preds": "head"}
        k = 0
        for i, (_, n, _) in enumerate(V1_STAGES, 1):
            for j in range(1, n + 1):
                k += 1
                for part in ("dw", "pw"):
                    names[f"conv_{part}_{k}"] = f"stage{i}/block{j}/{part}_conv"
                    names[f"conv_{part}_{k}_bn"] = f"stage{i}/block{j}/{part}_bn"
        return names
    names = {"Conv1": "stem/conv", "bn_Conv1": "stem/bn", "Conv_1": "final/conv",
             "Conv_1_bn": "final/bn", "predictions": "head"}
    k = 0
    for i, (_, _, n, _) in enumerate(V2_STAGES, 1):
        for j in range(1, n + 1):
            prefix, path = (f"block_{k}_" if k else "expanded_conv_"), f"stage{i}/block{j}"
            for ours, theirs in (("expand", "expand"), ("dw", "depthwise"), ("pw", "project")):
                names[f"{prefix}{theirs}"] = f"{path}/{ours}_conv"
                names[f"{prefix}{theirs}_BN"] = f"{path}/{ours}_bn"
            k += 1
    return names


def _groups(num_stages: int, last: str = "") -> tuple[tuple[str, str], ...]:
    final = rf"^(stage{num_stages}|{last})/" if last else rf"^stage{num_stages}/"
    return (("stem", r"^stem/"), *((f"stage{i}", rf"^stage{i}/") for i in range(1, num_stages)),
            (f"stage{num_stages}", final), ("head", r"^head/"))


def _v1_taps(model: MobileNet) -> tuple[FeatureTap, ...]:
    """Each stage's output (strides 2 to 32), at the model's width ``alpha``."""
    taps, stride = [], 2
    for i, (filters, _, s) in enumerate(V1_STAGES, 1):
        stride *= s
        taps.append(FeatureTap(f"stage{i}", stride, int(filters * model.alpha)))
    return tuple(taps)


def _v2_taps(model: MobileNetV2) -> tuple[FeatureTap, ...]:
    """The last stage at each stride 2 to 16, then ``final`` (the last 1x1 conv) at 32."""
    by_stride, stride = {}, 2
    for i, (_, c, _, s) in enumerate(V2_STAGES, 1):
        stride *= s
        by_stride[stride] = FeatureTap(f"stage{i}", stride, make_divisible(int(c * model.alpha)))
    last = make_divisible(1280 * model.alpha) if model.alpha > 1.0 else 1280
    by_stride[32] = FeatureTap("final", 32, last)
    return tuple(by_stride.values())


register(ModelSpec(
    name="mobilenet", builder=MobileNet, family="mobilenet", reference="keras",
    reference_name="keras.applications.MobileNet", reference_params=4_253_864,
    input_size=224, min_size=32, **TF, groups=_groups(len(V1_STAGES)),
    description="MobileNet v1; options alpha (0.25/0.5/0.75/1.0), depth_multiplier, dropout",
    keras_names=keras_names, feature_taps=_v1_taps,
    weights=KerasMobileNetFiles(1, alphas=(0.25, 0.5, 0.75, 1.0), sizes=(128, 160, 192, 224)),
))
register(ModelSpec(
    name="mobilenetv2", builder=MobileNetV2, family="mobilenet", reference="keras",
    reference_name="keras.applications.MobileNetV2", reference_params=3_538_984,
    input_size=224, min_size=32, **TF, groups=_groups(len(V2_STAGES), "final"),
    description="MobileNet v2; option alpha (0.35/0.5/0.75/1.0/1.3/1.4)",
    keras_names=keras_names, feature_taps=_v2_taps,
    weights=KerasMobileNetFiles(2, alphas=(0.35, 0.5, 0.75, 1.0, 1.3, 1.4),
                                sizes=(96, 128, 160, 192, 224)),
))
