"""The translation's per-pixel formulas on separate channel arrays, shared by the XLA path
(`dakpn_jax.translation`) and the fused Pallas kernel (`dakpn_jax.kernels.pallas_translate`).

They live apart from `translation` because `translation` dispatches to the kernel module
(``impl="pallas"``) and the kernel module needs these formulas: with both in `translation` the two
modules imported each other.
"""

from __future__ import annotations

import jax.numpy as jnp

BLUR_EPS = 1e-8
"""The eps in ``exp(-(i^2 + j^2) / (2 sigma^2 + eps))``: sigma = 0 gives the delta kernel (identity)."""


def rgb_to_hsv_channels(r, g, b):
    """`translation.rgb_to_hsv` on separate channel arrays (any equal shapes): returns (h, s, v).

    Shared by the array API and the Pallas kernel, where the channels are separate arrays."""
    v = jnp.maximum(jnp.maximum(r, g), b)
    c = v - jnp.minimum(jnp.minimum(r, g), b)
    s = jnp.where(v > 0, c / jnp.where(v > 0, v, 1.0), 0.0)
    safe_c = jnp.where(c > 0, c, 1.0)
    h = jnp.where(
        v == r, (g - b) / safe_c, jnp.where(v == g, (b - r) / safe_c + 2, (r - g) / safe_c + 4)
    )
    h = jnp.where(c > 0, jnp.mod(h / 6, 1.0), 0.0)
    # mod of a tiny negative number rounds to exactly 1.0 in float32: keep hue in [0, 1).
    h = jnp.where(h >= 1, h - 1, h)
    return h, s, v


def colour_affine_channels(r, g, b, scale, bias):
    """Steps 4a-c on separate channel arrays (any equal shapes): the formulas of
    `translation.rgb_to_hsv`, the affine of `translation.color_affine` and `translation.hsv_to_rgb`;
    returns [r', g', b'].

    Used where the channels are separate arrays (the Pallas kernel)."""
    h, s, v = rgb_to_hsv_channels(r, g, b)
    h = jnp.mod(scale[0] * h + bias[0], 1.0)
    s = jnp.clip(scale[1] * s + bias[1], 0.0, 1.0)
    v = jnp.clip(scale[2] * v + bias[2], 0.0, 1.0)
    out = []
    for n in (5.0, 3.0, 1.0):
        k = jnp.mod(n + 6 * h, 6.0)
        out.append(v - v * s * jnp.clip(jnp.minimum(k, 4 - k), 0.0, 1.0))
    return out
