"""The random keys that initialise a model: one algorithm on every platform.

``jax.random.key(seed, impl="rbg")`` draws its bits with XLA's ``RngBitGenerator`` in its
``DEFAULT`` algorithm, which each backend picks for itself (the CPU's is Philox; a TPU's is
its own): the same seed could give other initial weights on another platform. Threefry
keys (JAX's default) are the same everywhere but XLA:CPU compiles a model's worth of
threefry initialisers about 10x slower (18 s instead of 2 s for a 3-layer net).

:func:`init_key` is an ``rbg`` key with the algorithm named: ``PHILOX`` (Philox-4x32-10),
split and folded as ``rbg`` keys are (threefry on the key), so on the CPU it draws exactly
the bits an ``rbg`` key draws there (the initial weights of every run so far), and every
lowering (cpu, cuda, rocm, tpu) states the algorithm instead of leaving it to the backend.
XLA documents ``RngBitGenerator``'s output as a function of its state and algorithm, not as
equal across backends; GPUs expand Philox into the same operations as the CPU. A run that
must start from the very same weights on two platforms can start from a checkpoint.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax
from jax.extend import random as _xrandom

_THREEFRY = _xrandom.threefry_prng_impl
_BITS = {8: jnp.uint8, 16: jnp.uint16, 32: jnp.uint32, 64: jnp.uint64}


def _seed(seed: jax.Array) -> jax.Array:
    half = _THREEFRY.seed(seed)
    return jnp.concatenate([half, half])


def _split(key: jax.Array, shape) -> jax.Array:
    halves = key.reshape(2, 2)
    return jax.vmap(_THREEFRY.split, (0, None), len(shape))(halves, shape).reshape(*shape, 4)


def _fold_in(key: jax.Array, data: jax.Array) -> jax.Array:
    return jax.vmap(_THREEFRY.fold_in, (0, None), 0)(key.reshape(2, 2), data).reshape(4)


def _random_bits(key: jax.Array, bit_width: int, shape) -> jax.Array:
    if bit_width not in _BITS:
        raise TypeError(f"random bits of width {bit_width}: 8, 16, 32 or 64")
    return lax.rng_bit_generator(key, tuple(shape), dtype=_BITS[bit_width],
                                 algorithm=lax.RandomAlgorithm.RNG_PHILOX)[1]


PHILOX = _xrandom.define_prng_impl(key_shape=(4,), seed=_seed, split=_split,
                                   random_bits=_random_bits, fold_in=_fold_in,
                                   name="zoo_philox", tag="zphx")


def init_key(seed: int) -> jax.Array:
    """A typed key for ``model.init``: Philox bits named in every lowering, the CPU's
    ``rbg`` bits on the CPU (see the module)."""
    return jax.random.key(seed, impl=PHILOX)
