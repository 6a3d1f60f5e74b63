"""AlexNet (Krizhevsky et al. 2012) as in ``torchvision.models.alexnet``.

torchvision's single-tower variant (64-192-384-256-256 filters, no LRN). Layout:
``conv1``..``conv5``, ``fc1``, ``fc2``, ``head`` (torchvision ``features.{0,3,6,8,10}``,
``classifier.{1,4,6}``).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from zoo import layers
from zoo.published import TorchFile
from zoo.registry import TORCH, FeatureTap, ModelSpec, register

# (features, kernel, stride, padding, max-pool after)
CONVS = ((64, 11, 4, 2, True), (192, 5, 1, 2, True), (384, 3, 1, 1, False),
         (256, 3, 1, 1, False), (256, 3, 1, 1, True))


class AlexNet(nn.Module):
    num_classes: int | None = 1000
    include_top: bool = True
    pooling: str | None = None
    dropout: float = 0.5
    in_channels: int = 3
    dtype: Any = jnp.float32
    min_size: int = 63

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        layers.check_input(x, model="AlexNet", in_channels=self.in_channels,
                           min_size=self.min_size)
        for i, (feats, k, s, p, pool) in enumerate(CONVS, 1):
            x = nn.relu(layers.Conv(feats, k, s, padding=p, dtype=self.dtype, name=f"conv{i}")(x))
            if pool:
                x = layers.max_pool(x, 3, 2)
        if not self.include_top:
            return layers.pool_features(x, self.pooling)
        x = layers.adaptive_avg_pool(x, 6)
        # Flatten in torchvision's (C, H, W) order so imported weights keep their layout.
        x = jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)
        dense = functools.partial(nn.Dense, dtype=self.dtype)
        drop = nn.Dropout(self.dropout, deterministic=not train)
        x = nn.relu(dense(4096, name="fc1")(drop(x)))
        x = nn.relu(dense(4096, name="fc2")(drop(x)))
        return layers.classifier(x, num_classes=self.num_classes, dtype=self.dtype)


def torch_names(model: AlexNet) -> dict[str, str]:
    """torchvision module name -> our module path."""
    names = {f"features.{k}": f"conv{i}" for i, k in enumerate((0, 3, 6, 8, 10), 1)}
    return names | {"classifier.1": "fc1", "classifier.4": "fc2", "classifier.6": "head"}


register(
    ModelSpec(
        name="alexnet",
        builder=AlexNet,
        family="alexnet",
        reference="torchvision",
        reference_name="torchvision.models.alexnet",
        reference_params=61_100_840,
        input_size=224,
        min_size=63,
        **TORCH,
        groups=(*((f"conv{i}", rf"^conv{i}/") for i in range(1, 6)),
                ("top", r"^fc[12]/"), ("head", r"^head/")),
        description="AlexNet, torchvision's one-tower variant",
        torch_names=torch_names,
        weights=TorchFile("alexnet-owt-7be5be79.pth"),
        # the convs' ReLUs are not modules: only the last (pooled, ReLU'd) map is a tap
        feature_taps=(FeatureTap("", 32, 256),),
    )
)
