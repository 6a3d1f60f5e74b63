"""A tiny conv net registered in the zoo only while a trainer test runs (seconds per step).

``registered()`` adds it and removes it again, so tests parametrised over
``zoo.list_models()`` never see it. Subprocess runners call ``register()``.
"""

from __future__ import annotations

import contextlib
from typing import Any

import jax.numpy as jnp
from flax import linen as nn

import zoo
from zoo import layers, registry

NAME = "tiny_test_net"


class ConvBN(nn.Module):
    features: int
    stride: int = 1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        x = layers.Conv(self.features, 3, self.stride, use_bias=False, dtype=self.dtype,
                        name="conv")(x)
        bn = layers.batch_norm(epsilon=1e-5, momentum=0.9, dtype=self.dtype, name="bn")
        return nn.relu(bn(x, use_running_average=not train))


class TinyNet(nn.Module):
    num_classes: int | None = 1000
    include_top: bool = True
    pooling: str | None = None
    in_channels: int = 3
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        x = ConvBN(8, 2, self.dtype, name="stem")(x, train)
        x = ConvBN(8, 1, self.dtype, name="stage1")(x, train)
        x = ConvBN(16, 2, self.dtype, name="stage2")(x, train)
        if not self.include_top:
            return layers.pool_features(x, self.pooling)
        return layers.classifier(layers.global_pool(x), num_classes=self.num_classes,
                                 dtype=self.dtype)


SPEC = registry.ModelSpec(
    name=NAME, builder=TinyNet, family="tests", reference="paper", reference_name="TinyNet",
    reference_params=0, input_size=16, min_size=8, **registry.TF,
    groups=(("stem", "^stem/"), ("stage1", "^stage1/"), ("stage2", "^stage2/"),
            ("head", "^head/")),
)


def register() -> None:
    """Register the tiny net (idempotent)."""
    if NAME not in zoo.list_models():
        zoo.register(SPEC)


@contextlib.contextmanager
def registered():
    """The tiny net is in the registry inside this context only."""
    register()
    try:
        yield NAME
    finally:
        if NAME in zoo.list_models():
            zoo.unregister(NAME)


def tiny_config(**overrides: Any):
    """The synthetic recipe shrunk to the tiny net: 16 px, 96 images, batch 8, 2 epochs."""
    from train.configs import base, synthetic

    c = synthetic.get_config()
    c.model.name = NAME
    c.data.image_size = 16
    c.data.synthetic_size = 96
    c.data.workers = 1
    c.batch_size = 8
    c.epochs = 2
    c.checkpoint_every_steps = 3
    c.log_every_steps = 4
    c.progress = False
    return base.override(c, overrides)
