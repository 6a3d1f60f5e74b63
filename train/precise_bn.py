"""Batch-norm statistics recomputed from training batches before each validation (PreciseBN).

A batch norm's running statistics are an exponential moving average of its batch statistics
(new = m * old + (1 - m) * batch) over weights that kept changing. With the momenta of the
reference models (Keras: 0.99, MobileNetV2 0.999) and a short run from scratch, the average
lags far behind the weights it is used with, and inference collapses (MobileNet v1 from
scratch on the malaria cells: training accuracy 0.84, validation 0.51-0.56). PreciseBN (Wu &
Johnson, "Rethinking 'Batch' in BatchNorm", 2021) replaces the running statistics by the
mean of the batch statistics of the current weights over ``config.recompute_bn_batches``
training batches (the epoch's last ones, augmented as in training), before each validation;
the checkpoint keeps them, and training goes on from them.

Any batch norm of the zoo is Flax's ``BatchNorm``: its batch statistics are read through its
own update, run twice from known states (0 and 1): ``a = (1 - m) s`` and ``b = m + (1 - m) s``
give ``s = a / (1 - (b - a))`` whatever the layer's momentum. Batch norms whose statistics
are frozen (the policy, ``freeze_bn_stats``) run on their running statistics, as in training,
and are left as they are.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
from flax import traverse_util
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import zoo
from train.freeze import frozen_batch_norm


def make_stats_fn(model, normalize: Callable, trainable: Callable[[str], bool], mesh,
                  input_key: str = "image") -> Callable:
    """``stats(params, batch_stats, images) -> batch_stats`` of this batch (jitted; images
    sharded along ``data``): each batch norm with trainable statistics gets the batch's
    mean and variance, the others keep theirs."""

    def stats(params: Any, batch_stats: Any, images: jax.Array) -> Any:
        flat = traverse_util.flatten_dict(batch_stats)
        moving = {k: _moves(k, trainable) for k in flat}
        x = normalize(images)

        def updated(fill: float) -> dict:
            start = {k: jnp.full_like(v, fill) if moving[k] else v for k, v in flat.items()}
            with frozen_batch_norm(trainable):
                _, new = model.apply({"params": params,
                                      "batch_stats": traverse_util.unflatten_dict(start)},
                                     x, train=True, mutable=["batch_stats"],
                                     rngs={"dropout": jax.random.PRNGKey(0)})
            return traverse_util.flatten_dict(new["batch_stats"])

        a, b = updated(0.0), updated(1.0)
        out = {}
        for k, v in flat.items():
            if not moving[k]:
                out[k] = v
                continue
            keep = 1.0 - (b[k] - a[k])  # 1 - m; 0 where the layer did not run
            out[k] = jnp.where(keep > 1e-12, a[k] / jnp.where(keep > 1e-12, keep, 1.0), v)
        return traverse_util.unflatten_dict(out)

    state_s, data_s = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    return jax.jit(stats, in_shardings=(state_s, state_s, data_s), out_shardings=state_s,
                   compiler_options=zoo.compiler_options())


def recompute(stats_fn: Callable, state: Any, images: Iterable[jax.Array]) -> Any:
    """``state`` with its batch statistics the mean over the batches of ``images`` (global
    arrays, sharded along ``data``)."""
    total, n = None, 0
    for x in images:
        s = stats_fn(state.params, state.batch_stats, x)
        total, n = (s if total is None else jax.tree.map(jnp.add, total, s)), n + 1
    if total is None:
        return state
    return state.replace(batch_stats=jax.tree.map(lambda t: t / n, total))


def _moves(key: tuple[str, ...], trainable: Callable[[str], bool]) -> bool:
    """Whether the batch norm owning statistic ``key`` updates it in training (decided by
    its ``mean``, as ``train.freeze.frozen_batch_norm`` decides)."""
    return trainable("/".join((*key[:-1], "mean")))


def any_moving(batch_stats: Any, trainable: Callable[[str], bool]) -> bool:
    """Whether some batch norm's statistics train (else there is nothing to recompute)."""
    return any(_moves(k, trainable) for k in traverse_util.flatten_dict(batch_stats))
