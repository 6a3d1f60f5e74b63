"""The training augmentation inside the jitted step (``data.augment.device=True``).

On a GPU or TPU the host's share of an augmented batch (a PIL rotation, a float32 colour
jitter per image) can cost more than the device's step. With ``device`` on, the host only
decodes and resizes (and caches what it resized); each example carries a 32-bit seed drawn
from the same ``(seed, epoch, index)`` generator as the host's augmentation
(``train.pipeline.example_rng``), and this module applies the same augmentations
(``train.pipeline.Augment``, in the host's order: random resized crop, rotation, quarter
turns, flips, then brightness, contrast, saturation) to the whole batch on the device.

Geometry is one inverse affine map per example, sampled bilinearly once (the host
resamples twice when it crops and rotates): the crop's edges clamp as PIL's resize does,
and beyond them is black, as PIL's rotation fills. A batch costs one gather whatever is
switched on.
The random numbers come from JAX (``jax.random.key(seed)``, the default implementation),
not NumPy: the device's augmented images differ from the host's, while order, resume and
every platform give the same ones.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from train.pipeline import Augment

GREY = (0.299, 0.587, 0.114)


def _geometry(key: jax.Array, size: int, aug: Augment) -> tuple[jax.Array, jax.Array]:
    """Input (row, column) coordinates ``[2, size, size]`` of every output pixel, and
    whether it lies inside the (cropped) image."""
    k_scale, k_aspect, k_y, k_x, k_angle, k_rot, k_h, k_v = jax.random.split(key, 8)
    half = size / 2
    centres = jnp.arange(size, dtype=jnp.float32) + 0.5 - half
    y, x = jnp.meshgrid(centres, centres, indexing="ij")  # centred output coordinates
    if aug.hflip:
        x = jnp.where(jax.random.bernoulli(k_h), -x, x)
    if aug.vflip:
        y = jnp.where(jax.random.bernoulli(k_v), -y, y)
    if aug.rotate90:  # np.rot90 k times: out[i, j] = in[j, W-1-i], i.e. (y, x) <- (x, -y)
        k = jax.random.randint(k_rot, (), 0, 4)
        for turn in range(1, 4):
            y, x = jnp.where(k >= turn, x, y), jnp.where(k >= turn, -y, x)
    if aug.rotation:
        a = jnp.deg2rad(jax.random.uniform(k_angle, (), minval=-aug.rotation,
                                           maxval=aug.rotation))
        y, x = jnp.cos(a) * y + jnp.sin(a) * x, jnp.cos(a) * x - jnp.sin(a) * y
    h = w = jnp.float32(size)
    top = left = jnp.float32(0)
    if aug.crop_scale < 1.0:  # as train.pipeline._random_resized_crop
        area = jax.random.uniform(k_scale, (), minval=aug.crop_scale, maxval=1.0) * size * size
        aspect = jnp.exp(jax.random.uniform(k_aspect, (), minval=math.log(3 / 4),
                                            maxval=math.log(4 / 3)))
        h = jnp.clip(jnp.round(jnp.sqrt(area / aspect)), 1, size)
        w = jnp.clip(jnp.round(jnp.sqrt(area * aspect)), 1, size)
        top = jnp.floor(jax.random.uniform(k_y, ()) * (size - h + 1))
        left = jnp.floor(jax.random.uniform(k_x, ()) * (size - w + 1))
    # (y, x) now address the resized crop; beyond its edges the host's rotation filled black
    inside = (jnp.abs(y) <= half) & (jnp.abs(x) <= half)
    rows = jnp.clip(top + h / 2 + y * h / size - 0.5, top, top + h - 1)  # resize: edges clamp
    cols = jnp.clip(left + w / 2 + x * w / size - 0.5, left, left + w - 1)
    return jnp.stack([rows, cols]), inside


def _colour(x: jax.Array, key: jax.Array, aug: Augment) -> jax.Array:
    """As ``train.pipeline.colour_jitter`` on float32 (no rounding to uint8 between)."""
    k_b, k_c, k_s = jax.random.split(key, 3)
    if aug.brightness:
        x = x * jax.random.uniform(k_b, (), minval=1 - aug.brightness, maxval=1 + aug.brightness)
    if aug.contrast:
        m = jnp.mean(x)
        x = (x - m) * jax.random.uniform(k_c, (), minval=1 - aug.contrast,
                                         maxval=1 + aug.contrast) + m
    if aug.saturation:
        grey = x @ jnp.asarray(GREY, jnp.float32)
        s = jax.random.uniform(k_s, (), minval=1 - aug.saturation, maxval=1 + aug.saturation)
        x = (x - grey[..., None]) * s + grey[..., None]
    return jnp.clip(x, 0, 255)


def geometric(aug: Augment) -> bool:
    return bool(aug.hflip or aug.vflip or aug.rotate90 or aug.rotation or aug.crop_scale < 1)


def apply(images: jax.Array, seeds: jax.Array, aug: Augment) -> jax.Array:
    """Augment ``images`` (uint8 or float ``[B, S, S, C]``, values 0-255) with one seed per
    example (uint32 ``[B]``); float32 ``[B, S, S, C]``, values 0-255."""
    size = images.shape[1]

    def one(img: jax.Array, seed: jax.Array) -> jax.Array:
        k_geo, k_col = jax.random.split(jax.random.key(seed))
        x = img.astype(jnp.float32)
        if geometric(aug):
            coords, inside = _geometry(k_geo, size, aug)
            x = jax.vmap(lambda c: jax.scipy.ndimage.map_coordinates(
                c, list(coords), order=1, mode="nearest"), in_axes=-1, out_axes=-1)(x)
            x = jnp.where(inside[..., None], x, 0.0)
        if aug.brightness or aug.contrast or aug.saturation:
            x = _colour(x, k_col, aug)
        return x

    return jax.vmap(one)(images, seeds.astype(jnp.uint32))
