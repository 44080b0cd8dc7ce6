"""The fused DA-KPN translation as one Pallas kernel (GPU via the Triton lowering; interpret mode elsewhere).

One ``pallas_call`` computes docs/METHOD.md §1 steps 3-4, for a tile of ``TH x TW`` output pixels
per program (grid = (B, ceil(H / TH), ceil(W / TW))), reading the frame, the low-resolution
parameters and the noise once and writing the result once:

1. *Stage*: for the tile's halo window (TH + 2r) x (TW + 2r), edge-clamped, it gathers x, evaluates
   the bilinear upsampling of the colour parameters at those pixels (half-pixel centres,
   ``src = clip((y + 0.5) h / H - 0.5, 0, h - 1)``, the two neighbours and their weights; no
   anti-aliasing), applies the HSV affine (hue wraps mod 1, s and v clipped to [0, 1]) and stores the
   colour-affined window ``x1`` into a staging buffer laid out as the edge-padded frame
   (B, H + 2r, W + 2r, 3).
2. *Blur*: after a block barrier, each output pixel p reads its K x K window of x1 back from the
   staging buffer (L1/L2-resident: the window was just written by this program), with the paired
   symmetric offsets of the XLA "shifted" path,
   ``x2 = sum_{i,j=0..r} a_i a_j g_i g_j (x1[p+(i,j)] + x1[p+(i,-j)] + x1[p+(-i,j)] + x1[p+(-i,-j)]) / Z^2``,
   ``a_0 = 1/2`` (the offset-0 terms are counted twice), ``a_k = 1`` else, ``g_k = exp(-k^2 / d)``,
   ``d = 2 sigma^2 + eps``, ``Z = sum_{|k|<=r} g_k``; sigma at p is upsampled in the kernel.
3. *Noise and clip*: ``out = clip(x2 + noise_scale(p) * n(p), 0, 1)``, stored once.

Why a staging buffer: the Triton backend of Pallas has no scratch memory and cannot slice register
values, so the shifted window reads must be memory loads. Staging x1 costs one extra frame-sized
write (its halo overlaps merge in L2) and no extra DRAM reads; bytes moved per pixel are therefore
about 12 (x) + 12 (noise) + 12 (out) + 12 (staging) = 48 against the 36-byte floor of a perfect
fusion. Halo windows of neighbouring tiles overlap, so several programs store the same staging
location; they store bitwise the same value (the same function of the same inputs), which makes the
race benign. Edge tiles clamp their pixel indices into the frame, so phantom pixels past the border
compute (and store) exactly the border pixel's value.

Every load and store is a gather/scatter over (TH, TW) index grids with TH * TW a power of two (a
Triton requirement), each channel separately (3 is not a power of two). The same code runs in Pallas
interpret mode on any backend (how the tests run it on the CPU). TPU: Mosaic cannot lower these
gathers, so on TPU the kernel runs in interpret mode only (slow); a Mosaic variant (VMEM scratch,
DMA of halo windows) is future work.

Gradient: :func:`fused_translate` has a custom VJP: the fused kernel computes the forward value,
and the backward is the VJP of the XLA path given as ``reference`` (e.g. the "shifted" path), which
recomputes its own forward (so a training step costs one fused forward plus the XLA backward).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax

from dakpn_jax.translation_formulas import BLUR_EPS, colour_affine_channels

try:  # Pallas moves fast; never let a changed Pallas break importing dakpn_jax.
    from jax.experimental import pallas as pl
except ImportError:  # pragma: no cover - depends on the installed jax
    pl = None
try:
    from jax.experimental.pallas import triton as plgpu
except ImportError:  # pragma: no cover
    plgpu = None

TILE_ROWS = 16
TILE_COLS = 64
"""Default output tile (TH, TW); TH * TW must be a power of two (Triton). Unmeasured on a GPU: tune with
experiments/bench_kernels.py --tile when a device is lent."""


def available() -> bool:
    """Whether this jax has the Pallas API the kernel uses."""
    return pl is not None and hasattr(pl, "pallas_call") and hasattr(pl, "program_id")


def default_interpret() -> bool:
    """Compile with Triton on GPU; run in Pallas interpret mode everywhere else (CPU tests, TPU)."""
    return jax.default_backend() != "gpu"


def _chunk_starts(tile: int, halo: int) -> list[int]:
    """Offsets of ``tile``-sized chunks covering ``tile + halo`` positions (the last one flush with the end)."""
    n = -(-(tile + halo) // tile)
    return sorted({min(m * tile, halo) for m in range(n)})


def _bilinear_axis(pos, n_out: int, n_in: int):
    """Source indices and weight of the half-pixel-centre bilinear resize along one axis (pos int32)."""
    src = (pos.astype(jnp.float32) + 0.5) * (n_in / n_out) - 0.5
    src = jnp.clip(src, 0.0, float(n_in - 1))
    i0 = jnp.floor(src).astype(jnp.int32)
    i1 = jnp.minimum(i0 + 1, n_in - 1)
    return i0, i1, src - i0.astype(jnp.float32)


def _param(p_ref, b, ry, rx, c: int):
    """theta[.., c] at the pixels (ry rows x rx cols), bilinear from the low-resolution p_ref."""
    y0, y1, wy = ry
    x0, x1, wx = rx
    top = p_ref[b, y0, x0, c] * (1 - wx) + p_ref[b, y0, x1, c] * wx
    bot = p_ref[b, y1, x0, c] * (1 - wx) + p_ref[b, y1, x1, c] * wx
    return top * (1 - wy) + bot * wy


def _kernel(
    x_ref,
    p_ref,
    n_ref,
    o_ref,
    s_ref,
    *,
    r: int,
    th: int,
    tw: int,
    shared_noise: bool,
    barrier: bool,
):
    _, height, width, _ = x_ref.shape
    ph, pw = p_ref.shape[1:3]
    b = pl.program_id(0)
    y0 = pl.program_id(1) * th
    x0 = pl.program_id(2) * tw
    iy = lax.iota(jnp.int32, th)[:, None]  # (th, 1)
    ix = lax.iota(jnp.int32, tw)[None, :]  # (1, tw)

    # 1. Stage the colour-affined halo window in padded coordinates (padded = image + r). A loop over
    # the chunks (not unrolled): one copy of the body keeps the Triton program (and the interpret-mode
    # XLA graph) small.
    hp, wp = height + 2 * r, width + 2 * r
    n_cx = len(_chunk_starts(tw, 2 * r))
    n_chunks = len(_chunk_starts(th, 2 * r)) * n_cx

    def stage(m, carry):
        # = _chunk_starts(th, 2r)[m // n_cx] and _chunk_starts(tw, 2r)[m % n_cx]; lax.div / lax.rem
        # (m >= 0), since jnp's floor-mod sign fix-up mis-lowers in the Triton backend of jax 0.10.
        sy = jnp.minimum(lax.div(m, jnp.int32(n_cx)) * th, 2 * r)
        sx = jnp.minimum(lax.rem(m, jnp.int32(n_cx)) * tw, 2 * r)
        prow = jnp.minimum(y0 + sy + iy, hp - 1)
        irow = jnp.clip(prow - r, 0, height - 1)
        pcol = jnp.minimum(x0 + sx + ix, wp - 1)
        icol = jnp.clip(pcol - r, 0, width - 1)
        ry = _bilinear_axis(irow, height, ph)
        rx = _bilinear_axis(icol, width, pw)
        rgb = [x_ref[b, irow, icol, c] for c in range(3)]
        scale = [_param(p_ref, b, ry, rx, c) for c in range(0, 3)]
        bias = [_param(p_ref, b, ry, rx, c) for c in range(3, 6)]
        for c, v in enumerate(colour_affine_channels(*rgb, scale, bias)):
            s_ref[b, prow, pcol, c] = v
        return carry

    lax.fori_loop(0, n_chunks, stage, 0)
    if barrier:  # make this program's staged window visible to all of its threads
        plgpu.debug_barrier()

    # 2. and 3. Blur each channel from the staged window, add the noise, clip, store once. The channel
    # is a loop index too (dynamic channel indices are plain scalar offsets in every backend).
    yc = jnp.minimum(y0 + iy, height - 1)  # phantom pixels past the border redo the border pixel
    xc = jnp.minimum(x0 + ix, width - 1)
    ry = _bilinear_axis(yc, height, ph)
    rx = _bilinear_axis(xc, width, pw)
    nb = 0 if shared_noise else b

    def channel(c, carry):
        sigma = _param(p_ref, b, ry, rx, 6 + c)
        d = 2 * sigma * sigma + BLUR_EPS
        q, q2 = jnp.exp(-1.0 / d), jnp.exp(-2.0 / d)
        # g_j = exp(-j^2 / d) by the recurrence g_j = g_{j-1} q^(2j-1) (q^(2j+1) = q^(2j-1) q^2):
        # two multiplies per tap instead of an exp; relative error ~ 2j ulp.
        z = jnp.ones_like(d)
        g, step = jnp.ones_like(d), q
        for _ in range(1, r + 1):
            g = g * step
            step = step * q2
            z = z + 2 * g

        def window_row(i, acc):
            # a_i g_i; a_i = (min(i, 1) + 1) / 2 in integer arithmetic (a traced select of scalars
            # mis-lowers in the Triton backend of jax 0.10).
            a_i = (jnp.minimum(i, 1) + 1).astype(jnp.float32) * 0.5
            gi = jnp.exp(-(i * i).astype(jnp.float32) / d) * a_i
            rows_p, rows_m = yc + r + i, yc + r - i
            s = jnp.zeros_like(acc)
            g, step = jnp.full_like(d, 0.5), q
            for j in range(r + 1):
                cp, cm = xc + r + j, xc + r - j
                t = (
                    s_ref[b, rows_p, cp, c]
                    + s_ref[b, rows_p, cm, c]
                    + s_ref[b, rows_m, cp, c]
                    + s_ref[b, rows_m, cm, c]
                )
                s = s + g * t
                g = (
                    g * step * (2.0 if j == 0 else 1.0)
                )  # a_0 = 1/2, a_j = 1: undo the half after j = 0
                step = step * q2
            return acc + gi * s

        acc = lax.fori_loop(0, r + 1, window_row, jnp.zeros((th, tw), jnp.float32))
        ns = _param(p_ref, b, ry, rx, 9 + c)
        o_ref[b, yc, xc, c] = jnp.clip(acc / (z * z) + ns * n_ref[nb, yc, xc, c], 0.0, 1.0)
        return carry

    lax.fori_loop(0, 3, channel, 0)


def fused_translate_forward(
    x,
    params,
    noise,
    *,
    kernel_size: int,
    tile=(TILE_ROWS, TILE_COLS),
    interpret: bool | None = None,
):
    """Forward value of the translation by the fused kernel (no gradient; see :func:`fused_translate`).

    Args:
        x: (B, H, W, 3) float32 RGB. params: (B, h, w, 12) at any resolution. noise: (B or 1, H, W, 3).
        kernel_size: odd K = 2r + 1. tile: output tile (TH, TW), TH * TW a power of two.
        interpret: Pallas interpret mode; None = :func:`default_interpret`.

    Returns:
        (B, H, W, 3) float32 in [0, 1].
    """
    if not available():
        raise RuntimeError(
            "impl='pallas' needs jax.experimental.pallas (pallas_call, program_id); "
            f"this jax {jax.__version__} does not provide it"
        )
    th, tw = (int(t) for t in tile)
    if th < 1 or tw < 1 or (th * tw) & (th * tw - 1):
        raise ValueError(f"tile: expected (TH, TW) >= 1 with TH * TW a power of two, got {tile!r}")
    interpret = default_interpret() if interpret is None else bool(interpret)
    if not interpret and (plgpu is None or not hasattr(plgpu, "debug_barrier")):
        raise RuntimeError(
            f"impl='pallas' on GPU needs jax.experimental.pallas.triton.debug_barrier; this "
            f"jax {jax.__version__} does not provide it (run with interpret=True)"
        )
    bsz, height, width, _ = x.shape
    r = kernel_size // 2
    kernel = functools.partial(
        _kernel, r=r, th=th, tw=tw, shared_noise=noise.shape[0] == 1, barrier=not interpret
    )
    out_shape = (
        jax.ShapeDtypeStruct(x.shape, jnp.float32),
        jax.ShapeDtypeStruct((bsz, height + 2 * r, width + 2 * r, 3), jnp.float32),
    )
    kwargs = {}
    if not interpret and plgpu is not None:
        params_cls = getattr(plgpu, "CompilerParams", None) or getattr(
            plgpu, "TritonCompilerParams"
        )
        kwargs["compiler_params"] = params_cls(num_warps=4, num_stages=1)
    call = pl.pallas_call(
        kernel,
        out_shape=out_shape,
        grid=(bsz, pl.cdiv(height, th), pl.cdiv(width, tw)),
        interpret=interpret,
        name="dakpn_fused_translate",
        **kwargs,
    )
    out, _ = call(x.astype(jnp.float32), params.astype(jnp.float32), noise.astype(jnp.float32))
    return out


def fused_translate(
    x,
    params,
    noise,
    kernel_size: int,
    reference,
    tile=(TILE_ROWS, TILE_COLS),
    interpret: bool | None = None,
):
    """The translation with the fused forward and ``reference``'s VJP (reverse mode only).

    ``reference(x, params, noise)`` is a differentiable XLA implementation of the same function
    (e.g. ``translation._translate`` with ``impl="shifted"``); it must be hashable (static).
    """
    return _fused(x, params, noise, kernel_size, reference, tuple(tile), interpret)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6))
def _fused(x, params, noise, kernel_size, reference, tile, interpret):
    return fused_translate_forward(
        x, params, noise, kernel_size=kernel_size, tile=tile, interpret=interpret
    )


def _fused_fwd(x, params, noise, kernel_size, reference, tile, interpret):
    out = fused_translate_forward(
        x, params, noise, kernel_size=kernel_size, tile=tile, interpret=interpret
    )
    return out, (x, params, noise)


def _fused_bwd(kernel_size, reference, tile, interpret, res, ct):
    _, vjp = jax.vjp(reference, *res)
    return vjp(ct)


_fused.defvjp(_fused_fwd, _fused_bwd)


def bytes_moved(
    batch: int, height: int, width: int, param_size: tuple[int, int], kernel_size: int
) -> dict:
    """DRAM bytes of one call: the floor (x, params, noise read once; out written once) and this kernel's
    (plus the staging write). For the memory-bound floor of experiments/bench_kernels.py."""
    px = batch * height * width
    floor = px * 3 * 4 * 3 + batch * math.prod(param_size) * 12 * 4
    r = kernel_size // 2
    staging = batch * (height + 2 * r) * (width + 2 * r) * 3 * 4
    return {"floor": floor, "kernel": floor + staging}
