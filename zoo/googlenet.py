"""GoogLeNet (Inception v1) as in torchvision, and BN-Inception (Inception v2) from the paper.

``googlenet``: ``torchvision.models.googlenet`` (Szegedy et al. 2014, "Going deeper with
convolutions"), with torchvision's own choices: BN after every conv (eps 1e-3, PyTorch
momentum 0.1), no conv biases, a 3x3 conv where the paper's third branch has 5x5,
ceil-mode max pools, symmetric padding. torchvision's pretrained weights run with
``transform_input=True``, which turns its ImageNet-normalised input into
``(pixel - 127.5) / 127.5``; this model has no such step, so its spec asks for that
normalisation directly (parity tests build the reference with ``transform_input=False``).
The two auxiliary classifiers of the paper (after 4a and 4d) exist with
``aux_logits=True``, for training: in ``train=True`` the model then returns
:class:`GoogLeNetOutputs` ``(logits, aux2, aux1)`` as torchvision does (the paper weights
each auxiliary loss by 0.3); in inference it returns the logits alone. Their parameters
sit under ``aux1`` / ``aux2`` and belong to the ``head`` group.

``inception_v2``: BN-Inception, Ioffe & Szegedy 2015, "Batch Normalization: Accelerating
Deep Network Training by Reducing Internal Covariate Shift", arXiv:1502.03167, appendix
Figure 5 (the network table). There is no Keras or torchvision model; we follow the table:
GoogLeNet's layout with every 5x5 conv replaced by two 3x3 convs ("double 3x3"), average
pooling in most pool branches, stride-2 modules 3c and 4e (max pool passed through, no
1x1 branch), BN after every conv (with scale, so conv biases are dropped) and no dropout
(section 4.2.1 removes it); auxiliary classifiers are not modelled. The 3x3 convolution
of the stem has its 1x1 "reduce" (64), as the table's columns say. Where the table is
inconsistent -- pool projections of 128 in 4c and 4d make those blocks 608 wide, not the
576 the table states, and then 4e 1056, not 1024 -- we take 96, as TF-slim's
``inception_v2.py`` (tensorflow/models, research/slim/nets) does. Details the table leaves
open follow TF-slim and Keras: 'same' padding everywhere (pool branches average without
the padding), the stride of 3c/4e on the last conv of each branch, BN epsilon 1e-3 and
momentum 0.99, an ordinary (not TF-slim's separable) 7x7 stem convolution, 224 px input.
``tests/test_inception.py`` derives the parameter count from the table.

Layout: ``stem/conv_{1..3}``, ``inception{3a..5b}/<branch>``, ``aux{1,2}/{conv,fc1,fc2}``,
``head``; each conv-BN a module with ``conv`` and ``bn``; branch convs ``branch1``,
``branch2_{1,2}``, ``branch3_{1,2[,3]}``, ``branch4`` (torchvision's ``branch4.1``).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import linen as nn

from zoo import layers
from zoo.inception import BN, Block, Branch, C, ConvBN, Pool, block_conv_paths, pool
from zoo.published import TorchFile
from zoo.registry import TF, FeatureTap, ModelSpec, register

TORCH_BN = BN(epsilon=1e-3, momentum=0.9, scale=True)  # PyTorch momentum 0.1
V2_BN = BN(epsilon=1e-3, momentum=0.99, scale=True)
POOL_T = Pool("max", 3, 2, 0, ceil_mode=True)  # torchvision MaxPool2d(3, 2, ceil_mode=True)


def _v1(ch1x1, ch3x3red, ch3x3, ch5x5red, ch5x5, pool_proj) -> tuple[Branch, ...]:
    """torchvision ``Inception``; its "5x5" branch uses a 3x3 kernel."""
    return (("branch1", (C(ch1x1, 1, 1, 0),)),
            ("branch2", (C(ch3x3red, 1, 1, 0), C(ch3x3, 3, 1, 1))),
            ("branch3", (C(ch5x5red, 1, 1, 0), C(ch5x5, 3, 1, 1))),
            ("branch4", (Pool("max", 3, 1, 1, ceil_mode=True), C(pool_proj, 1, 1, 0))))


GOOGLENET = (
    ("stem", (("conv", (C(64, 7, 2, 3), POOL_T, C(64, 1, 1, 0), C(192, 3, 1, 1), POOL_T)),)),
    ("inception3a", _v1(64, 96, 128, 16, 32, 32)),
    ("inception3b", _v1(128, 128, 192, 32, 96, 64)),
    ("maxpool3", POOL_T),
    ("inception4a", _v1(192, 96, 208, 16, 48, 64)),
    ("inception4b", _v1(160, 112, 224, 24, 64, 64)),
    ("inception4c", _v1(128, 128, 256, 24, 64, 64)),
    ("inception4d", _v1(112, 144, 288, 32, 64, 64)),
    ("inception4e", _v1(256, 160, 320, 32, 128, 128)),
    ("maxpool4", Pool("max", 2, 2, 0, ceil_mode=True)),
    ("inception5a", _v1(256, 160, 320, 32, 128, 128)),
    ("inception5b", _v1(384, 192, 384, 48, 128, 128)),
)
AUX_AFTER = {"inception4a": "aux1", "inception4d": "aux2"}


def _v2(ch1x1, ch3x3red, ch3x3, dblred, dbl, pool: str, proj: int | None, stride: int = 1):
    """A BN-Inception module from a row of the paper's table (``proj`` None: pass through)."""
    branches: list[Branch] = []
    if ch1x1:
        branches.append(("branch1", (C(ch1x1),)))
    branches += [("branch2", (C(ch3x3red), C(ch3x3, 3, stride))),
                 ("branch3", (C(dblred), C(dbl, 3), C(dbl, 3, stride)))]
    pool_step = Pool(pool, 3, stride)
    branches.append(("branch4", (pool_step,) if proj is None else (pool_step, C(proj))))
    return tuple(branches)


INCEPTION_V2 = (
    ("stem", (("conv", (C(64, 7, 2), Pool("max", 3, 2), C(64), C(192, 3),
                        Pool("max", 3, 2))),)),
    ("inception3a", _v2(64, 64, 64, 64, 96, "avg", 32)),
    ("inception3b", _v2(64, 64, 96, 64, 96, "avg", 64)),
    ("inception3c", _v2(0, 128, 160, 64, 96, "max", None, stride=2)),
    ("inception4a", _v2(224, 64, 96, 96, 128, "avg", 128)),
    ("inception4b", _v2(192, 96, 128, 96, 128, "avg", 128)),
    ("inception4c", _v2(160, 128, 160, 128, 160, "avg", 96)),  # table: 128 (see docstring)
    ("inception4d", _v2(96, 128, 192, 160, 192, "avg", 96)),  # table: 128
    ("inception4e", _v2(0, 128, 192, 192, 256, "max", None, stride=2)),
    ("inception5a", _v2(352, 192, 320, 160, 224, "avg", 128)),
    ("inception5b", _v2(352, 192, 320, 192, 224, "max", 128)),
)


class GoogLeNetOutputs(NamedTuple):
    """What GoogLeNet returns in training with auxiliary heads (torchvision's order)."""

    logits: jax.Array
    aux2: jax.Array
    aux1: jax.Array


class AuxHead(nn.Module):
    """torchvision ``InceptionAux``: 4x4 average pool, 1x1 conv, two dense layers."""

    num_classes: int
    dropout: float = 0.7
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        x = layers.adaptive_avg_pool(x, 4)
        x = ConvBN(128, 1, 1, 0, bn=TORCH_BN, dtype=self.dtype, name="conv")(x, train)
        x = x.transpose(0, 3, 1, 2).reshape(x.shape[0], -1)  # flatten as torch (C, H, W)
        x = nn.relu(nn.Dense(1024, dtype=self.dtype, name="fc1")(x))
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return nn.Dense(self.num_classes, dtype=self.dtype, name="fc2")(x)


class GoogLeNet(nn.Module):
    """GoogLeNet (``version='v1'``, torchvision) or BN-Inception (``'v2'``, the paper)."""

    version: str = "v1"
    num_classes: int | None = 1000
    include_top: bool = True
    pooling: str | None = None
    aux_logits: bool = False
    dropout: float = 0.2
    aux_dropout: float = 0.7
    in_channels: int = 3
    dtype: Any = jnp.float32
    min_size: int = 15

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array | GoogLeNetOutputs:
        if self.version not in ("v1", "v2"):
            raise ValueError(f"GoogLeNet version is 'v1' or 'v2', got {self.version!r}")
        if self.aux_logits and (self.version != "v1" or not self.include_top
                                or not self.num_classes):
            raise ValueError("aux_logits needs version='v1' with a classifier "
                             "(include_top=True and num_classes set)")
        model = "googlenet" if self.version == "v1" else "inception_v2"
        layers.check_input(x, model=model, in_channels=self.in_channels,
                           min_size=self.min_size)
        plan, bn = (GOOGLENET, TORCH_BN) if self.version == "v1" else (INCEPTION_V2, V2_BN)
        aux = {}
        for name, block in plan:
            if isinstance(block, Pool):
                x = pool(x, block)
                continue
            x = Block(block, bn=bn, dtype=self.dtype, name=name)(x, train)
            if self.aux_logits and name in AUX_AFTER:
                head = AuxHead(self.num_classes, self.aux_dropout, dtype=self.dtype,
                               name=AUX_AFTER[name])
                # Like torchvision, the heads run only in training; init creates them.
                if train or self.is_initializing():
                    aux[AUX_AFTER[name]] = head(x, train)
        if not self.include_top:
            return layers.pool_features(x, self.pooling)
        x = layers.global_pool(x, "avg")
        if self.num_classes and self.dropout:
            x = nn.Dropout(self.dropout, deterministic=not train)(x)
        logits = layers.classifier(x, num_classes=self.num_classes, dtype=self.dtype)
        if self.aux_logits and train:
            return GoogLeNetOutputs(logits, aux["aux2"], aux["aux1"])
        return logits


def torch_names(model: GoogLeNet) -> dict[str, str]:
    """torchvision module name -> our module path (GoogLeNet)."""
    convs = {"conv1": "stem/conv_1", "conv2": "stem/conv_2", "conv3": "stem/conv_3"}
    for block, branches in GOOGLENET[1:]:
        if isinstance(branches, Pool):
            continue
        for branch in branches:
            paths = iter(block_conv_paths(block, (branch,)))
            name, steps = branch
            for pos, step in enumerate(steps):  # torchvision: nn.Sequential of the steps
                if isinstance(step, C):
                    index = f".{pos}" if len(steps) > 1 else ""
                    convs[f"{block}.{name}{index}"] = next(paths)
    for aux in AUX_AFTER.values():
        convs[f"{aux}.conv"] = f"{aux}/conv"
    # torchvision's BasicConv2d holds .conv and .bn, as our ConvBN does.
    names = {f"{t}.{part}": f"{p}/{part}" for t, p in convs.items() for part in ("conv", "bn")}
    names["fc"] = "head"
    for aux in AUX_AFTER.values():
        names |= {f"{aux}.fc1": f"{aux}/fc1", f"{aux}.fc2": f"{aux}/fc2"}
    return names


def _taps(*last: tuple[str, int]) -> tuple[FeatureTap, ...]:
    """The stem's 7x7/2 and 3x3 convs, then the last (block, channels) at strides 8, 16, 32."""
    return (FeatureTap("stem/conv_1", 2, 64), FeatureTap("stem/conv_3", 4, 192),
            *(FeatureTap(b, s, c) for (b, c), s in zip(last, (8, 16, 32), strict=True)))


def _groups(plan) -> tuple[tuple[str, str], ...]:
    blocks = [name for name, b in plan if not isinstance(b, Pool)]
    return (*((b, rf"^{b}/") for b in blocks), ("head", r"^(head|aux1|aux2)/"))


register(
    ModelSpec(
        name="googlenet",
        builder=functools.partial(GoogLeNet, version="v1", min_size=15),
        family="googlenet",
        reference="torchvision",
        reference_name="torchvision.models.googlenet",
        reference_params=6_624_904,
        input_size=224,
        min_size=15,
        **TF,
        groups=_groups(GOOGLENET),
        description="GoogLeNet / Inception v1 (torchvision), auxiliary heads optional",
        torch_names=torch_names,
        weights=TorchFile("googlenet-1378be20.pth"),
        feature_taps=_taps(("inception3b", 480), ("inception4e", 832), ("inception5b", 1024)),
    )
)
register(
    ModelSpec(
        name="inception_v2",
        builder=functools.partial(GoogLeNet, version="v2", dropout=0.0, min_size=32),
        family="googlenet",
        reference="paper",
        reference_name="Ioffe & Szegedy 2015 (arXiv:1502.03167), Figure 5",
        reference_params=11_194_984,
        input_size=224,
        min_size=32,
        **TF,
        groups=_groups(INCEPTION_V2),
        description="BN-Inception (Inception v2) from the paper's table",
        feature_taps=_taps(("inception3b", 320), ("inception4d", 576), ("inception5b", 1024)),
    )
)
