"""Training-mode batch normalisation with a hand-written gradient."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def _moments(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-channel mean and (biased, two-pass) variance over N, H, W, in float32 or wider."""
    x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    axes = tuple(range(x.ndim - 1))
    mean = jnp.mean(x, axes)
    return mean, jnp.mean(jnp.square(x - mean), axes)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def normalize_batch(x, scale, bias, epsilon: float):
    """Training-mode batch normalisation over all axes but the last: ``(y, mean, var)``.

    The same numbers as :class:`flax.linen.BatchNorm` (two-pass variance), with a
    hand-written gradient: two reductions and one elementwise pass, where autodiff of the
    forward formula makes XLA:CPU read the activations several more times.
    """
    mean, var = _moments(x)
    y = (x - mean) * (jax.lax.rsqrt(var + epsilon) * scale) + bias
    return y, mean, var


def _normalize_fwd(x, scale, bias, epsilon):
    y, mean, var = normalize_batch(x, scale, bias, epsilon)
    return (y, mean, var), (x, mean, jax.lax.rsqrt(var + epsilon), scale, bias)


def _normalize_bwd(epsilon, res, cts):
    x, mean, rstd, scale, bias = res
    dy, dmean, dvar = cts
    n = x.size // x.shape[-1]
    axes = tuple(range(x.ndim - 1))
    xc = x.astype(mean.dtype) - mean
    dy32 = dy.astype(mean.dtype)
    dbias = jnp.sum(dy32, axes)
    dscale = jnp.sum(dy32 * xc, axes) * rstd  # sum(dy * xhat)
    dx = (scale * rstd) * (dy32 - (dbias + xc * rstd * dscale) / n)
    dx = dx + (dmean + 2 * dvar * xc) / n  # the batch statistics' own cotangents
    return dx.astype(x.dtype), dscale.astype(scale.dtype), dbias.astype(bias.dtype)


normalize_batch.defvjp(_normalize_fwd, _normalize_bwd)
