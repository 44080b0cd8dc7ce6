"""DA-KPN's label features on the parameter grid, and the area resampling they use (docs/METHOD.md §1
step 1). Pure array functions with no config: the trainer (`dakpn_jax.training.dakpn`) and the
family ceiling (`dakpn_jax.evaluation.family`) build features here, so they agree cell for cell.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def _area_weights(n: int, m: int) -> np.ndarray:
    """(m, n) area-resampling matrix: row i averages the input pixels [p, p + 1) weighted by their
    overlap with the output cell [i n / m, (i + 1) n / m), so every row sums to 1."""
    edges = np.arange(m + 1) * (n / m)
    p = np.arange(n)
    overlap = np.minimum(edges[1:, None], p[None, :] + 1) - np.maximum(edges[:-1, None], p[None, :])
    return (np.maximum(overlap, 0.0) * (m / n)).astype(np.float32)


def area_resize(x: jax.Array, size: tuple[int, int]) -> jax.Array:
    """(B, H, W, C) -> (B, h, w, C) by area averaging: each output cell is the mean of the input
    over its footprint, pixels cut by a cell border counted by their overlap (box averaging when
    h | H and w | W; downsampling, e.g. the paper's 1052 x 1914 -> 96 x 160)."""
    B, H, W, C = x.shape
    h, w = size
    if (h, w) == (H, W):
        return x
    if H % h == 0 and W % w == 0:
        return x.reshape(B, h, H // h, w, W // w, C).mean(axis=(2, 4))
    return jnp.einsum(
        "ip,jq,bpqc->bijc",
        _area_weights(H, h),
        _area_weights(W, w),
        x,
        precision=jax.lax.Precision.HIGHEST,
    )


def onehot_features(labels: jax.Array, num_classes: int, size: tuple[int, int]) -> jax.Array:
    """Labels (B, H, W) int (255 = ignore) -> class fractions (B, h, w, C) per parameter cell."""
    if labels.ndim != 3:
        raise ValueError(f"labels must be (B, H, W), got {labels.shape}")
    onehot = jax.nn.one_hot(
        labels.astype(jnp.int32), num_classes, dtype=jnp.float32
    )  # 255 -> zeros
    return area_resize(onehot, size)


def grid_for_frame(
    frame: tuple[int, int], grid: tuple[int, int], height: int, width: int
) -> tuple[int, int]:
    """``grid`` (defined at the training ``frame`` size) scaled to a (height, width) frame."""
    (H, W), (ph, pw) = frame, grid
    return max(1, round(ph * height / H)), max(1, round(pw * width / W))
