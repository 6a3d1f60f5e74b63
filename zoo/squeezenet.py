"""SqueezeNet 1.0 and 1.1 (Iandola et al. 2016) as in ``torchvision.models``.

Layout: ``stem/conv``, ``fire{2..9}/{squeeze,expand1x1,expand3x3}`` (the paper's fire
numbering), ``head`` (torchvision ``classifier.1``, a 1x1 conv: the logits are the
global average of a ReLU'd class map, as in the reference).
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

P = "pool"
# version: (stem features, stem kernel, plan of max-pools and (squeeze, expand) fires)
VERSIONS = {
    "1_0": (96, 7, (P, (16, 64), (16, 64), (32, 128), P, (32, 128), (48, 192), (48, 192),
                    (64, 256), P, (64, 256))),
    "1_1": (64, 3, (P, (16, 64), (16, 64), P, (32, 128), (32, 128), P, (48, 192), (48, 192),
                    (64, 256), (64, 256))),
}


class Fire(nn.Module):
    squeeze: int
    expand: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        conv = functools.partial(layers.Conv, dtype=self.dtype)
        x = nn.relu(conv(self.squeeze, 1, padding=0, name="squeeze")(x))
        a = nn.relu(conv(self.expand, 1, padding=0, name="expand1x1")(x))
        b = nn.relu(conv(self.expand, 3, padding=1, name="expand3x3")(x))
        return jnp.concatenate([a, b], axis=-1)


class SqueezeNet(nn.Module):
    version: str = "1_0"
    num_classes: int | None = 1000
    include_top: bool = True
    pooling: str | None = None
    dropout: float = 0.5
    in_channels: int = 3
    dtype: Any = jnp.float32
    min_size: int = 21

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        layers.check_input(x, model=f"SqueezeNet{self.version}", in_channels=self.in_channels,
                           min_size=self.min_size)
        stem_features, stem_kernel, plan = VERSIONS[self.version]
        x = layers.Conv(stem_features, stem_kernel, 2, padding=0, dtype=self.dtype,
                        name="stem")(x)
        x = nn.relu(x)
        fire = 2
        for item in plan:
            if item == P:
                x = layers.max_pool(x, 3, 2, padding=0, ceil_mode=True)
            else:
                x = Fire(*item, dtype=self.dtype, name=f"fire{fire}")(x)
                fire += 1
        if not self.include_top:
            return layers.pool_features(x, self.pooling)
        if not self.num_classes:
            return layers.global_pool(x, "avg")
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        x = layers.Conv(self.num_classes, 1, padding=0, dtype=self.dtype, name="head",
                        kernel_init=nn.initializers.normal(0.01))(x)
        return layers.global_pool(nn.relu(x), "avg")


def fire_indices(version: str) -> list[int]:
    """torchvision ``features`` indices of the fire modules, in order."""
    _, _, plan = VERSIONS[version]
    return [k for k, item in enumerate(plan, 2) if item != P]


def torch_names(model: SqueezeNet) -> dict[str, str]:
    """torchvision module name -> our module path."""
    names = {"features.0": "stem", "classifier.1": "head"}
    for fire, k in enumerate(fire_indices(model.version), 2):
        for part in ("squeeze", "expand1x1", "expand3x3"):
            names[f"features.{k}.{part}"] = f"fire{fire}/{part}"
    return names


# The last fire module before each max pool, and the last one (stride 16: no stride 32).
TAPS = {"1_0": (FeatureTap("fire4", 4, 256), FeatureTap("fire8", 8, 512),
                FeatureTap("fire9", 16, 512)),
        "1_1": (FeatureTap("fire3", 4, 128), FeatureTap("fire5", 8, 256),
                FeatureTap("fire9", 16, 512))}
WEIGHTS = {"1_0": TorchFile("squeezenet1_0-b66bff10.pth"),
           "1_1": TorchFile("squeezenet1_1-b8a52dc0.pth")}

for _version, _params, _min in (("1_0", 1_248_424, 21), ("1_1", 1_235_496, 17)):
    register(
        ModelSpec(
            name=f"squeezenet{_version}",
            builder=functools.partial(SqueezeNet, version=_version, min_size=_min),
            family="squeezenet",
            reference="torchvision",
            reference_name=f"torchvision.models.squeezenet{_version}",
            reference_params=_params,
            input_size=224,
            min_size=_min,
            **TORCH,
            groups=(("stem", r"^stem/"), *((f"fire{i}", rf"^fire{i}/") for i in range(2, 10)),
                    ("head", r"^head/")),
            description=f"SqueezeNet {_version.replace('_', '.')}",
            torch_names=torch_names,
            weights=WEIGHTS[_version],
            feature_taps=TAPS[_version],
        )
    )
