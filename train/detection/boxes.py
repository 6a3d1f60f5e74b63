"""Box arithmetic in JAX (works on NumPy arrays too). Boxes are ``xyxy`` unless named.

``xyxy`` = (x_min, y_min, x_max, y_max) in pixels, the continuous convention: a box
covering pixel columns 10..19 is (10, y, 20, y'); area = (x_max - x_min) (y_max - y_min).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

EPS = 1e-9


def xyxy_to_cxcywh(b: jax.Array) -> jax.Array:
    """(x0, y0, x1, y1) -> (cx, cy, w, h)."""
    return jnp.concatenate([(b[..., :2] + b[..., 2:]) / 2, b[..., 2:] - b[..., :2]], -1)


def cxcywh_to_xyxy(b: jax.Array) -> jax.Array:
    """(cx, cy, w, h) -> (x0, y0, x1, y1)."""
    return jnp.concatenate([b[..., :2] - b[..., 2:] / 2, b[..., :2] + b[..., 2:] / 2], -1)


def area(b: jax.Array) -> jax.Array:
    """Area of xyxy boxes (0 for degenerate ones)."""
    wh = jnp.clip(b[..., 2:] - b[..., :2], 0)
    return wh[..., 0] * wh[..., 1]


def pairwise_iou(a: jax.Array, b: jax.Array) -> jax.Array:
    """IoU of every box in ``a`` (..., N, 4) with every box in ``b`` (..., M, 4): (..., N, M)."""
    lo = jnp.maximum(a[..., :, None, :2], b[..., None, :, :2])
    hi = jnp.minimum(a[..., :, None, 2:], b[..., None, :, 2:])
    wh = jnp.clip(hi - lo, 0)
    inter = wh[..., 0] * wh[..., 1]
    union = area(a)[..., :, None] + area(b)[..., None, :] - inter
    return inter / jnp.maximum(union, EPS)


def wh_iou(wh1: jax.Array, wh2: jax.Array) -> jax.Array:
    """IoU of boxes given by (w, h) only, as if they shared a centre: (..., N, M)."""
    inter = (jnp.minimum(wh1[..., :, None, 0], wh2[..., None, :, 0])
             * jnp.minimum(wh1[..., :, None, 1], wh2[..., None, :, 1]))
    union = (wh1[..., :, None, 0] * wh1[..., :, None, 1]
             + wh2[..., None, :, 0] * wh2[..., None, :, 1] - inter)
    return inter / jnp.maximum(union, EPS)


def iou_loss_terms(p: jax.Array, t: jax.Array, kind: str = "iou") -> jax.Array:
    """Element-wise IoU, GIoU (Rezatofighi 2019) or CIoU (Zheng 2020) of matched boxes."""
    lo, hi = jnp.maximum(p[..., :2], t[..., :2]), jnp.minimum(p[..., 2:], t[..., 2:])
    wh = jnp.clip(hi - lo, 0)
    inter = wh[..., 0] * wh[..., 1]
    union = area(p) + area(t) - inter
    iou = inter / jnp.maximum(union, EPS)
    if kind == "iou":
        return iou
    c_lo, c_hi = jnp.minimum(p[..., :2], t[..., :2]), jnp.maximum(p[..., 2:], t[..., 2:])
    c_wh = jnp.clip(c_hi - c_lo, 0)
    if kind == "giou":
        hull = c_wh[..., 0] * c_wh[..., 1]
        return iou - (hull - union) / jnp.maximum(hull, EPS)
    if kind == "ciou":
        diag = jnp.sum(c_wh**2, -1)
        centre = jnp.sum(((p[..., :2] + p[..., 2:]) - (t[..., :2] + t[..., 2:])) ** 2, -1) / 4
        pw, ph = jnp.maximum(p[..., 2] - p[..., 0], EPS), jnp.maximum(p[..., 3] - p[..., 1], EPS)
        tw, th = jnp.maximum(t[..., 2] - t[..., 0], EPS), jnp.maximum(t[..., 3] - t[..., 1], EPS)
        v = (4 / jnp.pi**2) * (jnp.arctan(tw / th) - jnp.arctan(pw / ph)) ** 2
        alpha = jax.lax.stop_gradient(v / jnp.maximum(1 - iou + v, EPS))
        return iou - centre / jnp.maximum(diag, EPS) - alpha * v
    raise ValueError(f"kind must be 'iou', 'giou' or 'ciou', got {kind!r}")
