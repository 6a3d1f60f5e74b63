"""The network a run trains: a zoo model with the classifier head the config asks for.

``head.kind='reference'`` keeps the model's own top (re-sized to the new classes);
``head.kind='mlp'`` takes the Keras transfer-learning shape (``include_top=False``,
global average pooling) and puts dense -> activation -> dropout -> dense on it. Either
way the classifier lives under ``head/``, and every backbone parameter keeps its zoo path
(``stem/...``, ``stage1/...``), so spec groups, freezing policies and weight import
address the same names.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

import zoo
from zoo.backend.prng import init_key

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
ACTIVATIONS = {"relu": nn.relu, "gelu": nn.gelu, "swish": nn.swish, "tanh": jnp.tanh}


class MLPHead(nn.Module):
    """dense -> activation -> dropout -> dense (the few layers trained on a frozen base)."""

    hidden: int
    num_classes: int
    activation: str = "relu"
    dropout: float = 0.2
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        x = ACTIVATIONS[self.activation](nn.Dense(self.hidden, dtype=self.dtype, name="dense1")(x))
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return nn.Dense(self.num_classes, dtype=self.dtype, name="dense2")(x)


class WithHead(nn.Module):
    """A backbone whose parameters stay at the root (shared scope) plus ``head``."""

    backbone: nn.Module
    head: nn.Module

    def setup(self) -> None:
        nn.share_scope(self, self.backbone)  # backbone paths unchanged: stem/..., stage1/...

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        return self.head(self.backbone(x, train=train), train=train)


def backbone_kwargs(config) -> dict[str, Any]:
    """``zoo.create`` options of the model without its classifier (what weights fill)."""
    kwargs = {k: v for k, v in config.model.items() if k != "name"}
    if config.head.kind == "reference":
        return {**kwargs, "num_classes": None}  # the model's own top, minus the classifier
    if config.head.kind == "mlp":
        return {**kwargs, "include_top": False, "pooling": "avg"}  # Keras transfer shape
    raise ValueError(f"config.head.kind must be 'reference' or 'mlp', got {config.head.kind!r}")


def build_model(config, num_classes: int) -> nn.Module:
    """The zoo model named by ``config.model`` with the head of ``config.head``."""
    if config.dtype not in DTYPES:
        raise ValueError(f"config.dtype must be one of {sorted(DTYPES)}, got {config.dtype!r}")
    dtype = DTYPES[config.dtype]
    kwargs = backbone_kwargs(config)
    name = config.model.name
    if config.head.kind == "reference":
        return zoo.create(name, dtype=dtype, **{**kwargs, "num_classes": num_classes})
    if config.head.activation not in ACTIVATIONS:
        raise ValueError(f"config.head.activation must be one of {sorted(ACTIVATIONS)}")
    head = MLPHead(config.head.hidden, num_classes, config.head.activation,
                   config.head.dropout, dtype=dtype, name="head")
    return WithHead(zoo.create(name, dtype=dtype, **kwargs), head)


def init_variables(model: nn.Module, image_size: int, seed: int) -> dict[str, Any]:
    """Fresh ``{'params', 'batch_stats'}`` for ``image_size`` inputs (jitted init).

    The key is :func:`zoo.backend.prng.init_key`'s: an ``rbg`` key with its algorithm
    (Philox) named for every platform; XLA:CPU compiles a model's worth of threefry random
    initialisers about 10x slower (18 s instead of 2 s for a 3-layer net here).
    """
    key = init_key(seed)
    x = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
    variables = jax.jit(lambda k: model.init({"params": k, "dropout": k}, x, train=False))(key)
    return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}
