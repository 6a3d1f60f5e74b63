"""Pure train and eval steps, jitted over a ``Mesh`` of devices (batch sharded, state replicated).

The same code runs on one CPU, several GPUs or a TPU slice: the batch is split along
``P('data')``, parameters and optimizer state are replicated, and XLA inserts the
cross-device reductions (gradients and batch-norm statistics are over the global batch,
so 4 devices compute what 1 device does). The state argument is donated.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import zoo
from train.freeze import frozen_batch_norm


@flax.struct.dataclass
class TrainState:
    """Everything a step changes: step count, variables, optimizer state, base RNG key."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: jax.Array


def create_state(variables: dict, tx: optax.GradientTransformation, seed: int) -> TrainState:
    """The state at step 0."""
    return TrainState(step=jnp.zeros((), jnp.int32), params=variables["params"],
                      batch_stats=variables["batch_stats"],
                      opt_state=tx.init(variables["params"]), rng=jax.random.PRNGKey(seed))


def cross_entropy(logits: jax.Array, labels: jax.Array, mask: jax.Array,
                  smoothing: float = 0.0) -> jax.Array:
    """Mean softmax cross-entropy over the unmasked examples (float32)."""
    targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), smoothing)
    losses = optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)
    return jnp.sum(losses * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def make_train_step(model, tx: optax.GradientTransformation, trainable: Callable[[str], bool],
                    normalize: Callable, label_smoothing: float = 0.0,
                    input_key: str = "image", freeze_bn_stats: bool = False,
                    loss_fn: Callable | None = None, augment: Callable | None = None
                    ) -> Callable:
    """``train_step(state, batch) -> (state, metrics)``; gradients only for trainable leaves.

    The model reads ``batch[input_key]`` (``features`` when the head trains on cached ones).
    ``freeze_bn_stats`` runs every batch norm on its running statistics (Keras fine-tuning).
    ``loss_fn(outputs, batch) -> (loss, metrics)`` replaces the classification loss (e.g.
    a detector's); its metrics join the step's, and ``correct`` is then 0.
    ``augment(images, seeds)`` augments the batch on the device first (``batch`` carries
    ``augment_seed``: ``train/device_augment.py``).
    """
    bn_trainable = (lambda path: False) if freeze_bn_stats else trainable

    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        flat = traverse_util.flatten_dict(state.params)
        train_keys = [k for k in flat if trainable("/".join(k))]
        fixed = {k: v for k, v in flat.items() if not trainable("/".join(k))}
        x = batch[input_key]
        x = normalize(x if augment is None else augment(x, batch["augment_seed"]))

        def objective(tp):
            params = traverse_util.unflatten_dict({**tp, **fixed})
            with frozen_batch_norm(bn_trainable):
                logits, new = model.apply(
                    {"params": params, "batch_stats": state.batch_stats}, x, train=True,
                    mutable=["batch_stats"],
                    rngs={"dropout": jax.random.fold_in(state.rng, state.step)})
            if loss_fn is not None:
                loss, extra = loss_fn(logits, batch)
                return loss, (extra, new.get("batch_stats", {}))
            loss = cross_entropy(logits, batch["label"], batch["mask"], label_smoothing)
            correct = jnp.sum((jnp.argmax(logits, -1) == batch["label"]) * batch["mask"])
            return loss, ({"correct": correct}, new.get("batch_stats", {}))

        grad_fn = jax.value_and_grad(objective, has_aux=True)
        (loss, (extra, batch_stats)), g = grad_fn({k: flat[k] for k in train_keys})
        # Frozen leaves get zeros that set_to_zero never reads (XLA drops them).
        grads = traverse_util.unflatten_dict({**g, **jax.tree.map(jnp.zeros_like, fixed)})
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        flat_up = traverse_util.flatten_dict(updates)
        new_flat = {k: flat[k] + flat_up[k] if k in g else flat[k] for k in flat}
        state = state.replace(step=state.step + 1, opt_state=opt_state, batch_stats=batch_stats,
                              params=traverse_util.unflatten_dict(new_flat))
        return state, {"loss": loss, "correct": jnp.zeros(()), **extra,
                       "count": jnp.sum(batch["mask"]),
                       "grad_norm": optax.global_norm(g),
                       "param_norm": optax.global_norm({k: new_flat[k] for k in g})}

    return train_step


# Test-time augmentation: the views of each image whose probabilities are averaged.
# 'flips': identity, left-right, up-down and both (= a half turn); 'dihedral': those and
# their transposes, the 8 symmetries of the square (every quarter turn, with and without a
# flip), for images with no up or left, such as cells under a microscope.
TTA_VIEWS = {"": 1, "flips": 4, "dihedral": 8}


def check_tta(tta: str) -> str:
    """``tta`` if it names a :data:`TTA_VIEWS` entry, else a ValueError listing them."""
    if tta not in TTA_VIEWS:
        raise ValueError(f"test-time augmentation {tta!r}: use one of "
                         f"{', '.join(repr(k) for k in TTA_VIEWS)} ('' = none)")
    return tta


def tta_views(images: jax.Array, tta: str) -> list[jax.Array]:
    """The ``TTA_VIEWS[tta]`` views of a ``[N, H, W, C]`` batch, the batch itself first."""
    if not check_tta(tta):
        return [images]
    views = [images, images[:, :, ::-1], images[:, ::-1], images[:, ::-1, ::-1]]
    if tta == "dihedral":
        if images.shape[1] != images.shape[2]:
            raise ValueError(f"test-time augmentation 'dihedral' transposes the images: they "
                             f"must be square (got {images.shape[1]}x{images.shape[2]}); use "
                             "'flips'")
        views += [jnp.swapaxes(v, 1, 2) for v in views]
    return views


def make_eval_step(model, normalize: Callable, input_key: str = "image", tta: str = ""
                   ) -> Callable:
    """``eval_step(state, batch) -> probabilities`` in inference mode (float32). ``tta``:
    the mean probability over the views of :func:`tta_views`, all in one batch through the
    model (on an accelerator, ``TTA_VIEWS[tta]`` times the batch's activations)."""
    check_tta(tta)

    def eval_step(state: TrainState, batch: dict) -> jax.Array:
        variables = {"params": state.params, "batch_stats": state.batch_stats}
        views = tta_views(batch[input_key], tta)
        x = views[0] if len(views) == 1 else jnp.concatenate(views)
        logits = model.apply(variables, normalize(x), train=False)
        probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
        if len(views) == 1:
            return probs
        return probs.reshape(len(views), -1, probs.shape[-1]).mean(0)

    return eval_step


def make_mesh(num_devices: int = 0) -> Mesh:
    """A 1-D ``('data',)`` mesh over the first ``num_devices`` devices (0 = all)."""
    devices = jax.devices()
    if num_devices:
        if num_devices > len(devices):
            raise ValueError(f"num_devices={num_devices} but only {len(devices)} are visible")
        devices = devices[:num_devices]
    return Mesh(np.asarray(devices), ("data",))


def check_batch_size(batch_size: int, mesh: Mesh) -> None:
    """Training batches are never padded: the global batch must split evenly."""
    n = mesh.devices.size
    if batch_size % n:
        raise ValueError(f"batch_size={batch_size} is not divisible by the {n} devices; set "
                         f"--config.batch_size={max(n, batch_size // n * n)} (a multiple of {n})")


def jit_steps(train_step: Callable, eval_step: Callable, mesh: Mesh) -> tuple[Callable, Callable]:
    """Jit both steps with the batch sharded over ``mesh`` and the state replicated/donated."""
    state_s, data_s = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    train = jax.jit(train_step, in_shardings=(state_s, data_s), out_shardings=(state_s, state_s),
                    donate_argnums=(0,), compiler_options=zoo.compiler_options())
    return train, jit_eval(eval_step, mesh)


def jit_eval(eval_step: Callable, mesh: Mesh) -> Callable:
    """Jit the eval step: batch sharded along ``data``, state replicated (not donated)."""
    state_s, data_s = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    return jax.jit(eval_step, in_shardings=(state_s, data_s), out_shardings=data_s,
                   compiler_options=zoo.compiler_options())


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Place a pytree (the state) on every device of ``mesh``."""
    return jax.device_put(tree, NamedSharding(mesh, P()))


def shard_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """This process's part of a global batch -> global arrays sharded along ``data``."""
    sharding = NamedSharding(mesh, P("data"))
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def to_host(x: jax.Array) -> np.ndarray:
    """A (possibly multi-process) sharded array, gathered to a numpy array on every host."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)
