"""Pictures: PNG grids of images and colourised label maps.

save_grid("grid.png", [[synthetic, real, colorize(label)] for ...])
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
from PIL import Image

from dakpn_jax.data.labels import colorize  # re-exported: viz.colorize is the picture-side name

__all__ = ["colorize", "make_grid", "save_grid", "save_procedural_preview", "to_uint8"]


def to_uint8(image, name: str = "image") -> np.ndarray:
    """An (H, W, 3) picture as uint8: uint8 passes through, floats in [0, 1] are scaled and rounded.

    Float values outside [0, 1] are clipped (translations may overshoot by rounding); NaN is an error.
    (H, W) and (H, W, 1) arrays are shown as grey.
    """
    a = np.asarray(image)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[-1] not in (1, 3):
        raise ValueError(
            f"{name} must have shape (H, W, 3), (H, W, 1) or (H, W), got {np.shape(image)}"
        )
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    if a.dtype == np.uint8:
        return a
    if np.issubdtype(a.dtype, np.floating):
        if np.isnan(a).any():
            raise ValueError(f"{name} contains NaN")
        return (np.clip(a, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if a.dtype == bool:
        return a.astype(np.uint8) * 255
    raise ValueError(f"{name} must be uint8 or float in [0, 1], got dtype {a.dtype}")


def make_grid(
    rows: Sequence[Sequence[np.ndarray]], *, pad: int = 2, background: int = 255
) -> np.ndarray:
    """Tiles `rows` (a list of lists of pictures) into one uint8 (H_total, W_total, 3) array.

    Cells are placed top-left in a grid whose row heights and column widths are the largest picture in
    that row / column, separated by `pad` pixels of `background`. Rows may have different lengths.
    """
    if not rows or not any(len(r) for r in rows):
        raise ValueError("rows must hold at least one picture, got an empty grid")
    if pad < 0:
        raise ValueError(f"pad must be >= 0, got {pad}")
    cells = [
        [to_uint8(im, f"rows[{i}][{j}]") for j, im in enumerate(r)] for i, r in enumerate(rows)
    ]
    ncols = max(len(r) for r in cells)
    heights = [max((c.shape[0] for c in r), default=0) for r in cells]
    widths = [max((r[j].shape[1] for r in cells if j < len(r)), default=0) for j in range(ncols)]
    out = np.full(
        (sum(heights) + pad * (len(cells) + 1), sum(widths) + pad * (ncols + 1), 3),
        background,
        np.uint8,
    )
    y = pad
    for r, h in zip(cells, heights):
        x = pad
        for j, c in enumerate(r):
            out[y : y + c.shape[0], x : x + c.shape[1]] = c
            x += widths[j] + pad
        y += h + pad
    return out


def save_grid(path: str, rows: Sequence[Sequence[np.ndarray]], *, pad: int = 2) -> np.ndarray:
    """Writes `make_grid(rows)` to `path` as PNG (parent folders created) and returns the grid."""
    grid = make_grid(rows, pad=pad)
    parent = os.path.dirname(os.fspath(path))
    if parent:
        os.makedirs(parent, exist_ok=True)
    Image.fromarray(grid).save(path, format="PNG")
    return grid


def save_procedural_preview(path: str, config=None, *, num_rows: int = 4) -> np.ndarray:
    """A look at the embedded benchmark: rows of synthetic | real | colourised label (paired-eval).

    Args:
      path: PNG to write.
      config: a `procedural.ProceduralConfig` or ConfigDict with its fields (None: defaults).
      num_rows: scenes to show, at most the paired-eval length.

    Returns:
      The grid, uint8 (H_total, W_total, 3).
    """
    from dakpn_jax.data import procedural  # pylint: disable=import-outside-toplevel

    source = procedural.make_source("paired-eval", config)
    if (
        isinstance(num_rows, bool)
        or not isinstance(num_rows, int)
        or not 0 < num_rows <= len(source)
    ):
        raise ValueError(
            f"num_rows must be an int in [1, {len(source)}] (the paired-eval length), "
            f"got {num_rows!r}"
        )
    rows = []
    for i in range(num_rows):
        ex = source[i]
        rows.append([ex["synthetic"], ex["real"], colorize(ex["label"])])
    return save_grid(path, rows)
