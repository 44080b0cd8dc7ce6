"""The DA-KPN translation function and its kernel-application paths (pure jnp, jit-able, differentiable).

Shapes are NHWC, batch first, float in [0, 1]. The translation (docs/METHOD.md §1 steps 3-4) maps a
synthetic image ``x`` (B, H, W, 3) with per-pixel parameters ``theta`` (B, h, w, 12) laid out as
``[hsv_scale(3), hsv_bias(3), sigma(3), noise_scale(3)]`` and a noise field ``n`` (B, H, W, 3) to::

    theta  = upsample_params(theta_low, H, W)              # bilinear, half-pixel centres, no antialias
    hsv'   = hsv_scale * rgb_to_hsv(x) + hsv_bias          # hue wraps mod 1, s and v clipped to [0, 1]
    x1     = hsv_to_rgb(hsv')
    x2[p,c] = sum_{|i|,|j| <= r} w_pc(i, j) x1[p + (i, j), c]        # K = 2r + 1, edge padding
    w_pc(i, j) = exp(-(i^2 + j^2) / (2 sigma[p,c]^2 + eps)) / Z_pc    # normalised to sum 1
    out    = clip(x2 + noise_scale * n, 0, 1)

Locality: out[p] depends only on x and theta inside the K x K window around p (a neighbour's colour
affine changes that neighbour's colour), and on sigma and noise_scale at p alone. No pixel moves, so
segmentation labels stay exact.

Kernel application (``impl=``); all paths compute the same function (to float32 rounding, tested to
1e-5 against a float64 NumPy reference):

- ``"einsum"``: the (B, rows, W, C, K, K) patch tensor (stacked shifted slices) of
  a band of output rows and an einsum contracts it with the weights (for the Gaussian with the two
  1-D tap vectors, so the K x K weights are never formed). The patch tensor is K^2 = 625 times the
  band, so the bands are sized to keep it under :data:`EINSUM_BAND_BYTES` (64 MB; a whole 1052 x 1914
  frame at K = 25 would need 15 GB) and run one after another (``lax.map``, rematerialised in the
  backward pass). Simple and forward-mode differentiable.
- ``"shifted"``: the memory-lean path. The padded image is processed in bands of ``BAND_ROWS`` output
  rows (``lax.map``; each band reads its 2r halo rows, so bands are exact, not approximations). Inside
  a band, the normalised Gaussian factorises per pixel, ``w(i, j) = g_i g_j / Z^2`` with
  ``g_k = exp(-k^2 / d)``, and is symmetric, so the band is
  ``sum_{i=0..r} g_i sum_{j=0..r} g_j (P_i[x - j] + P_i[x + j]) / Z^2`` with row pairs
  ``P_i = x[y - i] + x[y + i]``, computed on (B * C, H, W) planes with a ``fori_loop`` over i and
  the column taps by a two-multiply recurrence (:func:`_shifted_gaussian_core` says why: on the CPU
  this runs 2.7x faster than the fully unrolled NHWC form, which LLVM left scalar). Peak memory is a
  few frames whatever K (the measured peak for a full GTA5 frame is in docs/RESULTS.md).
  Free-form kernels use a ``fori_loop`` over window rows with the column offsets unrolled, per band.
- ``"pallas"`` (:func:`translate` only): the fused kernel of :mod:`dakpn_jax.kernels.pallas_translate`,
  one Pallas program per output tile doing upsampling, colour affine, blur, noise and clip with the
  frame, parameters and noise read once (GPU via the Triton lowering; Pallas interpret mode on other
  backends, slow, for tests). Its gradient is the shifted path's VJP (custom VJP).
- ``"auto"``: ``"shifted"`` on every backend, except for :func:`translate` on the backends listed in
  :data:`PALLAS_AUTO_BACKENDS` (the GPU; never the CPU), where it is "pallas". Of the two unfused
  paths, shifted was the fastest at every size experiments/bench_kernels.py measured, on the CPU
  and on an H100; the fused kernel beat it at every size on an H200 (:data:`PALLAS_AUTO_BACKENDS`
  has the table; docs/RESULTS.md, "Kernel paths" and the 2026-12-04 device check). Choose
  ``"einsum"`` explicitly when you need forward-mode autodiff (jvp, jacfwd).

Gradients: both paths are differentiable in x, sigma (and kernels). The shifted Gaussian path has a
custom VJP (hand-written transpose + closed-form sigma derivative; autodiff of the unrolled band
compiled for about a minute and ran 2x slower), so it supports reverse mode only (grad, vjp, jacrev);
use ``impl="einsum"`` for forward mode (jvp, jacfwd).

A second kernel family, free-form per-pixel K x K kernels (the classic KPN: softmax-normalised
weights, :func:`kpn_kernels_from_logits`), runs on the same two paths via :func:`apply_local_kernels`.

Documented deviations from the paper's code: hue wraps and saturation/value are clipped after the
affine (the paper's code does neither), and the HSV conversion is exact at sector boundaries.
"""

from __future__ import annotations

import functools
import operator

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

# The per-channel formulas the fused Pallas kernel shares; kept in a module of their own so that the
# kernel module imports them without importing this one (which dispatches to the kernel).
from dakpn_jax.translation_formulas import BLUR_EPS, rgb_to_hsv_channels

NUM_PARAMS = 12
"""Per-pixel parameter count: hsv_scale(3), hsv_bias(3), sigma(3), noise_scale(3)."""

IDENTITY_PARAMS = (1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
"""Parameters for which :func:`translate` returns its input (up to float rounding)."""

DEFAULT_KERNEL_SIZE = 25

IMPLS = ("auto", "einsum", "shifted", "pallas")

PALLAS_AUTO_BACKENDS: tuple[str, ...] = ("gpu",)
"""Backends on which ``impl="auto"`` picks the fused Pallas kernel for :func:`translate`. Never "cpu":
there the kernel only runs in interpret mode. "gpu" since 2026-12-04: on one H200 (jax 0.11.2),
``experiments/bench_kernels.py --op translate --impls pallas,shifted,einsum --sizes
8x96x160,1x263x478,1x1052x1914 --repeats 10 --bandwidth_gbs 4800`` (experiments/device_check.sh),
ms per forward call, median of 10, K = 25, float32; largest |difference| from shifted 1.5e-6:

    B x H x W      pallas  shifted  einsum
    8 x 96 x 160      0.3      1.5     1.3
    1 x 263 x 478     0.4      3.1     0.9
    1 x 1052 x 1914   1.8     12.7    17.3

The gradient stays the shifted path's VJP, so a DA-KPN train step gains nothing measurable from it
(128 x 256, batch 8: 3.63 ms/step with pallas, 3.40 with shifted, within the run-to-run spread);
translating frames (export, inference, on-the-fly translation) does."""


BAND_ROWS = 16
"""Output rows per band of the shifted path. The band's working set is about r + 1 slabs of
(band_rows + 2r) x (W + 2r) x C floats (a few MB for a 1914-px-wide frame). On the shared 2-core
CPU, bands of 4 to 32 rows timed within the (large) load noise of each other; 16 was never worse."""


# ----------------------------------------------------------------------------------------------------
# Validation helpers (trace time: shapes and dtypes are static).


def _as_float_array(x, name: str) -> jax.Array:
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(
            f"{name}: expected a floating dtype (images in [0, 1]), got {x.dtype} "
            f"with shape {x.shape}"
        )
    return x


def _check_nhwc(x: jax.Array, name: str, channels: int | None = None) -> None:
    if x.ndim != 4:
        raise ValueError(f"{name}: expected rank 4 (B, H, W, C), got shape {x.shape}")
    if min(x.shape) < 1:
        raise ValueError(f"{name}: empty dimension in shape {x.shape}")
    if channels is not None and x.shape[-1] != channels:
        raise ValueError(
            f"{name}: expected {channels} channels (B, H, W, {channels}), got shape {x.shape}"
        )


def _check_kernel_size(kernel_size) -> int:
    try:
        k = operator.index(kernel_size)  # ints and NumPy integers, not floats or bools
    except TypeError:
        k = None
    if k is None or isinstance(kernel_size, (bool, np.bool_)) or k < 1 or k % 2 == 0:
        raise ValueError(f"kernel_size: expected an odd int >= 1, got {kernel_size!r}")
    return k


def _check_impl(impl: str) -> str:
    if impl not in IMPLS:
        raise ValueError(f"impl: expected one of {IMPLS}, got {impl!r}")
    return impl


# ----------------------------------------------------------------------------------------------------
# Colour conversion.


def rgb_to_hsv(x: jax.Array) -> jax.Array:
    """RGB (..., 3) in [0, 1] -> HSV (..., 3): hue in [0, 1) (fraction of a turn), saturation, value.

    v = max(r, g, b), c = v - min(r, g, b), s = c / v (0 where v = 0), and
    h = ((g - b) / c mod 6, (b - r) / c + 2, (r - g) / c + 4)[argmax] / 6, 0 for greys (c = 0).
    Differentiable away from greys and sector boundaries (the divisions are guarded so gradients stay
    finite everywhere).
    """
    x = _as_float_array(x, "x")
    if x.ndim < 1 or x.shape[-1] != 3:
        raise ValueError(f"x: expected (..., 3) RGB, got shape {x.shape}")
    return jnp.stack(rgb_to_hsv_channels(x[..., 0], x[..., 1], x[..., 2]), axis=-1)


def hsv_to_rgb(x: jax.Array) -> jax.Array:
    """HSV (..., 3) -> RGB (..., 3); hue in turns (any real, used mod 1), saturation and value in [0, 1].

    Channel n in (R, G, B) <-> (5, 3, 1): ``v - v s max(0, min(k, 4 - k, 1))`` with ``k = (n + 6 h) mod 6``,
    a continuous piecewise-linear form of the six-sector formula.
    """
    x = _as_float_array(x, "x")
    if x.ndim < 1 or x.shape[-1] != 3:
        raise ValueError(f"x: expected (..., 3) HSV, got shape {x.shape}")
    h, s, v = x[..., 0:1], x[..., 1:2], x[..., 2:3]
    n = jnp.asarray([5.0, 3.0, 1.0], x.dtype)
    k = jnp.mod(n + 6 * h, 6)
    return v - v * s * jnp.clip(jnp.minimum(k, 4 - k), 0, 1)


# ----------------------------------------------------------------------------------------------------
# Kernel weights.


def gaussian_taps(sigma: jax.Array, kernel_size: int) -> jax.Array:
    """Normalised 1-D taps (..., K): ``g_i = exp(-i^2 / (2 sigma^2 + eps)) / sum_i g_i``, i = -r..r.

    The 2-D window weight of :func:`local_gaussian_blur` is the outer product ``g_i g_j``: since
    ``exp(-(i^2 + j^2) / d) = exp(-i^2 / d) exp(-j^2 / d)``, normalising the 1-D taps to sum 1 normalises
    the 2-D kernel too.
    """
    r = kernel_size // 2
    offsets = jnp.arange(-r, r + 1, dtype=sigma.dtype)
    d = 2 * jnp.square(sigma)[..., None] + BLUR_EPS
    g = jnp.exp(-jnp.square(offsets) / d)
    return g / jnp.sum(g, axis=-1, keepdims=True)


def kpn_kernels_from_logits(logits: jax.Array, kernel_size: int) -> jax.Array:
    """Classic KPN kernels: logits (..., K*K) -> softmax-normalised weights (..., K, K), each summing to 1."""
    kernel_size = _check_kernel_size(kernel_size)
    logits = _as_float_array(logits, "logits")
    if logits.ndim < 1 or logits.shape[-1] != kernel_size * kernel_size:
        raise ValueError(
            f"logits: expected (..., {kernel_size * kernel_size}) for "
            f"kernel_size={kernel_size}, got shape {logits.shape}"
        )
    w = jax.nn.softmax(logits, axis=-1)
    return w.reshape(*logits.shape[:-1], kernel_size, kernel_size)


# ----------------------------------------------------------------------------------------------------
# Kernel-application paths. Both kernel families (per-pixel Gaussian given by sigma, free-form K x K
# kernels) run on the same two paths: the einsum path contracts the patch tensor with the weights; the
# shifted path maps a per-band core over row bands of the edge-padded image.


def _pad_edge(x: jax.Array, r: int) -> jax.Array:
    return jnp.pad(x, ((0, 0), (r, r), (r, r), (0, 0)), mode="edge")


def _patches(xp: jax.Array, kernel_size: int) -> jax.Array:
    """Edge-padded (B, H+2r, W+2r, C) -> patches (B, H, W, C, K, K).

    ``patch[b, y, x, c, i, j] = xp[b, y + i, x + j, c]``, i.e. offset (i - r, j - r) in the unpadded image.
    Built by stacking K column shifts, then K row shifts of those (copies). ``lax.conv_general_dilated_patches``
    computes the same tensor as a convolution with a one-hot (K, K, C, C K^2) filter, i.e.
    2 C^2 K^4 flops per pixel (7 MFLOP at K = 25): 18 s for a 263 x 478 frame on the 2-core CPU.
    """
    b, hp, wp, c = xp.shape
    k = kernel_size
    h, w = hp - k + 1, wp - k + 1
    cols = jnp.stack(
        [xp[:, :, j : j + w] for j in range(k)], axis=-1
    )  # (B, H+2r, W, C, K): 2K slices,
    return jnp.stack([cols[:, i : i + h] for i in range(k)], axis=-2)  # not K^2 (compile time)


def _einsum_gaussian(xp, sigma, kernel_size):
    taps = gaussian_taps(sigma, kernel_size)  # (B, H, W, C, K); w(i, j) = taps_i taps_j
    return jnp.einsum(
        "bhwcij,bhwci,bhwcj->bhwc",
        _patches(xp, kernel_size),
        taps,
        taps,
        precision=lax.Precision.HIGHEST,
    )


def _einsum_kernels(xp, kernels):
    return jnp.einsum(
        "bhwcij,bhwcij->bhwc",
        _patches(xp, kernels.shape[-1]),
        kernels,
        precision=lax.Precision.HIGHEST,
    )


def _gaussian_taps_unnormalised(sigma, r):
    """[exp(-k^2 / d) for k = 0..r] with d = 2 sigma^2 + eps, and Z = sum_{|k| <= r} exp(-k^2 / d).

    (A recurrence g_k = g_{k-1} q^(2k-1) would not save exps: XLA's simplifier rewrites products of
    exps back into exps of sums.)
    """
    d = 2 * jnp.square(sigma) + BLUR_EPS
    g = [jnp.exp(-float(k * k) / d) for k in range(r + 1)]
    return g, g[0] + 2 * sum(g[1:], jnp.zeros_like(g[0]))


def _shifted_gaussian_core(xp, sigma, moment=False):
    """Gaussian blur of one band of planes: xp (N, h+2r, w+2r) edge-padded, sigma (N, h, w) -> (N, h, w).

    With ``g_k = exp(-k^2 / d)``, ``d = 2 sigma^2 + eps`` and ``Z = sum_{|k|<=r} g_k``::

        out = sum_{i=0..r} a_i g_i * sum_{j=0..r} g_j * (P_i[., x - j] + P_i[., x + j]) / Z^2  (j = 0 once)
        P_i = x[y - i] + x[y + i],   a_0 = 1/2 (P_0 = 2 x[y]), a_i = 1

    Pairing the symmetric offsets takes about (r+1)(5r+4) flops per pixel and channel with the tap
    recurrence below (0.54x the 2 K^2 of the plain sum at K = 25). With ``moment=True`` it also returns
    the second moment of the window, ``M = sum_{i,j} w(i, j) (i^2 + j^2) x[p + (i, j)]`` (concatenated
    on the plane axis), which the sigma gradient needs (:func:`_blur_shifted_bwd`).

    Why it is written this way (XLA:CPU, measured with experiments/bench_kernels.py):

    - planes (N = B * C, width minor), not NHWC, so the shifted reads are contiguous along the width;
    - a ``fori_loop`` over the row offset i: one fused loop of the unrolled 2r column offsets per i.
      Unrolled over i as well, XLA fused all (r+1)^2 offsets into one loop that LLVM left scalar
      (and recomputed the exps in every i), 2-3x slower;
    - the column taps by the recurrence ``g_j = g_{j-1} q^(2j-1)``, ``q = exp(-1 / d)``
      (``q^(2j+1) = q^(2j-1) q^2``): two multiplies per tap from two loop-invariant planes instead of
      reading r + 1 tap planes (or computing r + 1 exps) per i. The relative error grows by about
      2 ulp per step (1e-6 at j = 12); q = 0 (sigma = 0) gives the delta kernel exactly.
    """
    hp = xp.shape[1]
    h, w = sigma.shape[1:3]
    r = (hp - h) // 2
    d = 2 * jnp.square(sigma) + BLUR_EPS
    q, q2 = jnp.exp(-1.0 / d), jnp.exp(-2.0 / d)

    def taps():  # g_0 .. g_r by the recurrence (a generator: the loop body recomputes, never stores)
        g, step = jnp.ones_like(q), q
        yield g
        for _ in range(r):
            g = g * step
            step = step * q2
            yield g

    z = 2 * sum(taps(), jnp.zeros_like(q)) - 1  # 1 + 2 sum_{k >= 1} g_k

    def row_offset(i, carry):
        out, mom = carry
        p = lax.dynamic_slice_in_dim(xp, r + i, h, axis=1) + lax.dynamic_slice_in_dim(
            xp, r - i, h, axis=1
        )
        s = p[:, :, r : r + w]
        s2 = jnp.zeros_like(s)
        for j, g in enumerate(taps()):
            if j:
                t = g * (p[:, :, r - j : r - j + w] + p[:, :, r + j : r + j + w])
                s = s + t
                if moment:
                    s2 = s2 + float(j * j) * t
        fi = i.astype(xp.dtype)
        gi = jnp.exp(-jnp.square(fi) / d) * jnp.where(i == 0, 0.5, 1.0).astype(xp.dtype)
        out = out + gi * s
        if moment:
            mom = mom + gi * (jnp.square(fi) * s + s2)
        return out, mom

    zeros = jnp.zeros(sigma.shape, xp.dtype)
    out, mom = lax.fori_loop(0, r + 1, row_offset, (zeros, zeros))
    z2 = jnp.square(z)
    if moment:
        return jnp.concatenate([out / z2, mom / z2], axis=0)
    return out / z2


def _shifted_gaussian_adjoint_core(gp, r):
    """Transpose of the blur for one band of the padded input: x_bar_p = A(sigma)^T y_bar.

    gp: (2N, h+2r, w+2r), the output cotangent y_bar and sigma planes concatenated on the plane axis,
    both padded by 2r (y_bar with zeros, so padding contributes nothing). With ``F_ab = y_bar g_a g_b
    / Z^2`` (a, b = |i|, |j|) at the output pixel p, the padded-input gradient is the gather
    ``x_bar_p[q] = sum_{i,j} F_{|i||j|}[q + (r - i, r - j)]`` in the 2r-padded frame,
    computed as a horizontal pass per |i| (on every row of the band) and a vertical sum.
    Returns (N, h, w).
    """
    n2, hp, wp = gp.shape
    h, w = hp - 2 * r, wp - 2 * r
    ybar, sigma = gp[: n2 // 2], gp[n2 // 2 :]
    g, z = _gaussian_taps_unnormalised(sigma, r)
    ybar = ybar / jnp.square(z)
    # The taps are read at shifted positions below: materialise them once per band, otherwise XLA
    # fuses the exp into every shifted read (25x the exps).
    # A fori_loop over a (not unrolled) for the reason given in _shifted_gaussian_core: the unrolled
    # (r+1)^2 offsets became one scalar loop on XLA:CPU.
    taps = lax.optimization_barrier(jnp.stack(g))  # (r+1, N, h+2r, w+2r)
    cols = lambda f, o: f[:, :, o : o + w]

    def row_offset(a, out):
        u = ybar * lax.dynamic_index_in_dim(taps, a, 0, keepdims=False)
        # Horizontal pass on every row of the band: R_a[., x] = sum_j (u g_|j|)[., x + r - j].
        s = cols(u, r) * cols(taps[0], r)
        for b in range(1, r + 1):
            s = s + cols(u, r - b) * cols(taps[b], r - b) + cols(u, r + b) * cols(taps[b], r + b)
        # Vertical: out[y] += R_a[y + r - a] + R_a[y + r + a] (once for a = 0).
        twice = jnp.where(a > 0, 1.0, 0.0).astype(gp.dtype)
        return (
            out
            + lax.dynamic_slice_in_dim(s, r - a, h, axis=1)
            + twice * lax.dynamic_slice_in_dim(s, r + a, h, axis=1)
        )

    return lax.fori_loop(0, r + 1, row_offset, jnp.zeros((n2 // 2, h, w), gp.dtype))


def _shifted_kernels_core(xp, kernels):
    """Free-form kernels on one band: xp (B, h+2r, w+2r, C), kernels (B, h, w, C or 1, K, K).

    A fori_loop over the K window rows, the K column offsets unrolled: out += k[i, j] * x[p + (i, j)].
    """
    k = kernels.shape[-1]
    h, w = kernels.shape[1:3]
    kernels = jnp.moveaxis(kernels, (-2, -1), (0, 1))  # (K, K, B, h, w, C'): one tap = one slab.

    def row(i, acc):
        rows = lax.dynamic_slice_in_dim(xp, i, h, axis=1)  # (B, h, w + 2r, C)
        ki = lax.dynamic_index_in_dim(kernels, i, 0, keepdims=False)
        for j in range(k):
            acc = acc + ki[j] * rows[:, :, j : j + w]
        return acc

    return lax.fori_loop(0, k, row, jnp.zeros(xp.shape[:1] + (h, w) + xp.shape[3:], xp.dtype))


def _map_row_bands(core, halo_in, row_in, *, halo, band_rows):
    """Runs ``core(halo_band, row_band)`` over bands of ``band_rows`` output rows and stitches them.

    halo_in (B, H + halo, ...) is read with ``halo`` extra rows per band (e.g. the edge-padded image,
    halo = 2r), row_in (B, H, ...) per output row (e.g. sigma) or None. Each band reads its halo rows,
    so the result equals the whole-frame computation exactly; the bands only bound the working set
    (and keep it in cache). The last band is padded and cropped.
    """
    h = halo_in.shape[1] - halo
    if h <= band_rows:
        return core(halo_in, row_in)
    nb = -(-h // band_rows)
    extra = nb * band_rows - h
    pad_rows = lambda a: jnp.pad(a, ((0, 0), (0, extra)) + ((0, 0),) * (a.ndim - 2), mode="edge")
    halo_in = pad_rows(halo_in)
    row_in = None if row_in is None else pad_rows(row_in)

    def band(k):
        y0 = k * band_rows
        rows = None if row_in is None else lax.dynamic_slice_in_dim(row_in, y0, band_rows, axis=1)
        return core(lax.dynamic_slice_in_dim(halo_in, y0, band_rows + halo, axis=1), rows)

    out = lax.map(band, jnp.arange(nb))  # (nb, B, band_rows, ...)
    out = jnp.moveaxis(out, 0, 1).reshape((out.shape[1], nb * band_rows) + out.shape[3:])
    return out[:, :h]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _blur_shifted(xp, sigma, r):
    """Banded shifted blur of the edge-padded planes xp (N, H+2r, W+2r) with sigma (N, H, W).

    A custom VJP: differentiating the 13 x 25-term unrolled band through lax.map gives XLA a graph
    that compiles for a minute and runs 10x slower than the forward; the hand-written transpose
    (:func:`_shifted_gaussian_adjoint_core`) and the closed-form sigma derivative cost about two and
    one forward passes.
    """
    return _map_row_bands(_shifted_gaussian_core, xp, sigma, halo=2 * r, band_rows=BAND_ROWS)


def _blur_shifted_fwd(xp, sigma, r):
    core = functools.partial(_shifted_gaussian_core, moment=True)
    out_mom = _map_row_bands(core, xp, sigma, halo=2 * r, band_rows=BAND_ROWS)
    n = sigma.shape[0]
    return out_mom[:n], (sigma, out_mom)


def _blur_shifted_bwd(r, res, ybar):
    """sigma_bar and the padded-input gradient.

    With w(i, j) = exp(-(i^2 + j^2) / d) / W, d = 2 sigma^2 + eps, dd/dsigma = 4 sigma::

        d out / d sigma = 4 sigma / d^2 * (M - m * out),   M = sum w (i^2 + j^2) x,
                                                           m = sum w (i^2 + j^2) = 2 sum_k k^2 g_k / Z
    """
    sigma, out_mom = res
    n = sigma.shape[0]
    out, mom = out_mom[:n], out_mom[n:]
    g, z = _gaussian_taps_unnormalised(sigma, r)
    m = 4 * sum((float(k * k) * g[k] for k in range(1, r + 1)), jnp.zeros_like(z)) / z
    d = 2 * jnp.square(sigma) + BLUR_EPS
    sigma_bar = ybar * (4 * sigma / jnp.square(d)) * (mom - m * out)
    pad = ((0, 0), (2 * r, 2 * r), (2 * r, 2 * r))
    gp = jnp.concatenate([jnp.pad(ybar, pad), jnp.pad(sigma, pad, mode="edge")], axis=0)
    core = lambda band, _: _shifted_gaussian_adjoint_core(band, r)
    xp_bar = _map_row_bands(core, gp, None, halo=2 * r, band_rows=BAND_ROWS)
    return xp_bar, sigma_bar


_blur_shifted.defvjp(_blur_shifted_fwd, _blur_shifted_bwd)


def _resolve_impl(impl: str, *, fused: bool = False) -> str:
    """The "auto" rule (module docstring): the shifted path, measured the fastest unfused path on CPU
    and on an H100 at every benchmarked size; for the full translation (``fused``) the Pallas kernel
    on the backends of :data:`PALLAS_AUTO_BACKENDS`. "pallas" exists only for :func:`translate`."""
    if impl == "auto":
        return "pallas" if fused and jax.default_backend() in PALLAS_AUTO_BACKENDS else "shifted"
    if impl == "pallas" and not fused:
        raise ValueError(
            "impl: 'pallas' is the fused kernel of translate() only; use 'shifted' or "
            "'einsum' for local_gaussian_blur / apply_local_kernels"
        )
    return impl


EINSUM_BAND_BYTES = 64 * 2**20
"""Size bound of one band's patch tensor on the einsum path (B * rows * W * C * K^2 * 4 bytes)."""


def _einsum_banded(core, xp, row_in, kernel_size):
    """The einsum path in row bands: each band's patch tensor stays under :data:`EINSUM_BAND_BYTES`.

    ``core(xp_band, row_band)`` runs under ``jax.checkpoint``, so reverse mode recomputes a band's
    patches instead of saving every band's patch tensor as a residual (which would rebuild the whole
    K^2-times-the-image tensor). Forward mode works too (lax.map is a scan).
    """
    b, hp, wp, c = xp.shape
    k = kernel_size
    per_row = b * (wp - k + 1) * c * k * k * xp.dtype.itemsize
    rows = max(1, EINSUM_BAND_BYTES // per_row)
    return _map_row_bands(jax.checkpoint(core), xp, row_in, halo=k - 1, band_rows=rows)


@functools.partial(jax.jit, static_argnames=("kernel_size", "impl"))
def _blur(x, sigma, kernel_size, impl):
    sigma = jnp.broadcast_to(sigma.astype(x.dtype), x.shape)
    if impl == "einsum":
        core = lambda xb, sb: _einsum_gaussian(xb, sb, kernel_size)
        return _einsum_banded(core, _pad_edge(x, kernel_size // 2), sigma, kernel_size)
    return _planar_blur(x, sigma, kernel_size // 2)


def _planar_blur(x, sigma, r):
    """The shifted blur on (B * C, H, W) planes (see :func:`_shifted_gaussian_core`), NHWC in and out."""
    b, h, w, c = x.shape
    planes = lambda a: jnp.moveaxis(a, -1, 1).reshape(b * c, h, w)
    xp = jnp.pad(planes(x), ((0, 0), (r, r), (r, r)), mode="edge")
    out = _blur_shifted(xp, planes(sigma), r)
    return jnp.moveaxis(out.reshape(b, c, h, w), 1, -1)


def local_gaussian_blur(
    x: jax.Array, sigma: jax.Array, *, kernel_size: int = DEFAULT_KERNEL_SIZE, impl: str = "auto"
) -> jax.Array:
    """Per-pixel, per-channel normalised Gaussian blur with edge padding (docs/METHOD.md §1 step 4d).

    Args:
        x: (B, H, W, C) float images.
        sigma: (B, H, W, C) (or (B, H, W, 1), shared over channels) standard deviation in pixels, any
            real (only sigma^2 enters); 0 gives the identity.
        kernel_size: odd window size K = 2r + 1 >= 1.
        impl: "einsum", "shifted" or "auto" (module docstring).

    Returns:
        (B, H, W, C): ``out[p,c] = sum_{|i|,|j|<=r} w_pc(i,j) x[p+(i,j), c]`` with
        ``w_pc(i,j) = exp(-(i^2+j^2) / (2 sigma[p,c]^2 + eps)) / Z_pc`` and x edge-replicated outside.
    """
    x = _as_float_array(x, "x")
    sigma = _as_float_array(sigma, "sigma")
    _check_nhwc(x, "x")
    if sigma.ndim != 4 or sigma.shape[:3] != x.shape[:3] or sigma.shape[3] not in (1, x.shape[3]):
        raise ValueError(
            f"sigma: expected shape {x.shape} (or {x.shape[:3] + (1,)}) to match x, "
            f"got {sigma.shape}"
        )
    kernel_size = _check_kernel_size(kernel_size)
    impl = _resolve_impl(_check_impl(impl))
    return _blur(x, sigma, kernel_size, impl)


@functools.partial(jax.jit, static_argnames=("impl",))
def _apply_kernels(x, kernels, impl):
    xp = _pad_edge(x, kernels.shape[-1] // 2)
    if impl == "einsum":
        return _einsum_banded(_einsum_kernels, xp, kernels, kernels.shape[-1])
    r = kernels.shape[-1] // 2
    return _map_row_bands(_shifted_kernels_core, xp, kernels, halo=2 * r, band_rows=BAND_ROWS)


def apply_local_kernels(x: jax.Array, kernels: jax.Array, *, impl: str = "auto") -> jax.Array:
    """Free-form per-pixel K x K kernels (the classic KPN family), edge padding.

    Args:
        x: (B, H, W, C) float images.
        kernels: (B, H, W, K, K) shared over channels, or (B, H, W, C, K, K) per channel; K odd. Weights
            are used as given (e.g. softmax-normalised by :func:`kpn_kernels_from_logits`).
        impl: "einsum", "shifted" or "auto" (module docstring).

    Returns:
        (B, H, W, C): ``out[p,c] = sum_{i,j} kernels[p, (c,) i, j] x[p + (i - r, j - r), c]``.
    """
    x = _as_float_array(x, "x")
    kernels = _as_float_array(kernels, "kernels")
    _check_nhwc(x, "x")
    shape = kernels.shape
    if kernels.ndim == 5:
        kernels = kernels[:, :, :, None]
    if (
        kernels.ndim != 6
        or kernels.shape[:3] != x.shape[:3]
        or kernels.shape[3] not in (1, x.shape[3])
        or kernels.shape[4] != kernels.shape[5]
        or kernels.shape[5] % 2 == 0
    ):
        raise ValueError(
            f"kernels: expected (B, H, W, K, K) or (B, H, W, C, K, K) with K odd and "
            f"(B, H, W, C) = {x.shape}, got shape {shape}"
        )
    impl = _resolve_impl(_check_impl(impl))
    return _apply_kernels(x, kernels.astype(x.dtype), impl)


# ----------------------------------------------------------------------------------------------------
# Parameters, noise and the full translation.


def upsample_params(params: jax.Array, height: int, width: int) -> jax.Array:
    """Bilinear resize (B, h, w, P) -> (B, height, width, P): half-pixel centres (PyTorch's
    ``align_corners=False``), edge-clamped, no anti-aliasing. Same size returns the input unchanged."""
    params = _as_float_array(params, "params")
    if params.ndim != 4:
        raise ValueError(f"params: expected rank 4 (B, h, w, P), got shape {params.shape}")
    if height < 1 or width < 1:
        raise ValueError(f"height, width: expected >= 1, got ({height}, {width})")
    if params.shape[1:3] == (height, width):
        return params
    out_shape = (params.shape[0], height, width, params.shape[3])
    return jax.image.resize(params, out_shape, method="bilinear", antialias=False)


def noise_field(
    seed: int,
    height: int,
    width: int,
    *,
    base_size: tuple[int, int] | None = None,
    channels: int = 3,
) -> jax.Array:
    """The fixed noise field of the paper: one seeded N(0, 1) field (1, height, width, channels).

    Drawn at ``base_size`` (default: the frame size) and resized bilinearly to (height, width), so a
    field drawn at training resolution can be reused on full frames. Bilinear upsampling lowers the
    per-pixel variance (neighbouring pixels share samples); that is the paper's behaviour too.
    """
    if height < 1 or width < 1:
        raise ValueError(f"height, width: expected >= 1, got ({height}, {width})")
    bh, bw = base_size if base_size is not None else (height, width)
    if bh < 1 or bw < 1:
        raise ValueError(f"base_size: expected two ints >= 1, got {base_size!r}")
    n = jax.random.normal(jax.random.key(seed), (1, bh, bw, channels), jnp.float32)
    if (bh, bw) != (height, width):
        n = jax.image.resize(n, (1, height, width, channels), method="bilinear", antialias=False)
    return n


def sample_noise(
    key: jax.Array, batch: int, height: int, width: int, channels: int = 3
) -> jax.Array:
    """Fresh per-sample N(0, 1) noise (batch, height, width, channels): the non-default option."""
    return jax.random.normal(key, (batch, height, width, channels), jnp.float32)


def split_params(theta: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """(..., 12) -> hsv_scale, hsv_bias, sigma, noise_scale, each (..., 3)."""
    return theta[..., 0:3], theta[..., 3:6], theta[..., 6:9], theta[..., 9:12]


def color_affine(x: jax.Array, hsv_scale: jax.Array, hsv_bias: jax.Array) -> jax.Array:
    """Steps 4a-c: RGB -> HSV, per-pixel affine (hue mod 1, s and v clipped to [0, 1]) -> RGB."""
    hsv = hsv_scale * rgb_to_hsv(x) + hsv_bias
    h = jnp.mod(hsv[..., 0:1], 1.0)
    sv = jnp.clip(hsv[..., 1:3], 0, 1)
    return hsv_to_rgb(jnp.concatenate([h, sv], axis=-1))


def translate(
    x: jax.Array,
    params: jax.Array,
    noise: jax.Array,
    *,
    kernel_size: int = DEFAULT_KERNEL_SIZE,
    impl: str = "auto",
) -> jax.Array:
    """The DA-KPN translation T(x; theta, n) (docs/METHOD.md §1 steps 3-4; module docstring).

    Args:
        x: (B, H, W, 3) float RGB in [0, 1].
        params: (B, h, w, 12) parameters at any resolution, upsampled bilinearly to (H, W) inside;
            layout [hsv_scale(3), hsv_bias(3), sigma(3), noise_scale(3)].
        noise: (B, H, W, 3) noise field, or (1, H, W, 3) shared by the batch (e.g. :func:`noise_field`).
        kernel_size: odd blur window K.
        impl: kernel-application path, see module docstring.

    Returns:
        (B, H, W, 3) float in [0, 1].
    """
    x = _as_float_array(x, "x")
    params = _as_float_array(params, "params")
    noise = _as_float_array(noise, "noise")
    _check_nhwc(x, "x", channels=3)
    _check_nhwc(params, "params", channels=NUM_PARAMS)
    if params.shape[0] != x.shape[0]:
        raise ValueError(
            f"params: batch {params.shape[0]} (shape {params.shape}) != x batch {x.shape[0]} "
            f"(shape {x.shape})"
        )
    if noise.ndim != 4 or noise.shape[1:] != x.shape[1:] or noise.shape[0] not in (1, x.shape[0]):
        raise ValueError(
            f"noise: expected shape {x.shape} (or batch 1) to match x, got {noise.shape}"
        )
    kernel_size = _check_kernel_size(kernel_size)
    impl = _resolve_impl(_check_impl(impl), fused=True)
    return _translate(x, params, noise, kernel_size, impl)


@functools.lru_cache(maxsize=None)
def _xla_translate(kernel_size: int, impl: str):
    """The XLA translation as a hashable function of (x, params, noise): the pallas path's VJP."""
    return lambda x, params, noise: _translate(x, params, noise, kernel_size, impl)


@functools.partial(jax.jit, static_argnames=("kernel_size", "impl"))
def _translate(x, params, noise, kernel_size, impl):
    if impl == "pallas":
        from dakpn_jax.kernels import pallas_translate  # pylint: disable=import-outside-toplevel

        out = pallas_translate.fused_translate(
            x.astype(jnp.float32),
            params.astype(jnp.float32),
            noise.astype(jnp.float32),
            kernel_size,
            _xla_translate(kernel_size, "shifted"),
        )
        return out.astype(x.dtype)
    theta = upsample_params(params.astype(x.dtype), x.shape[1], x.shape[2])
    hsv_scale, hsv_bias, sigma, noise_scale = split_params(theta)
    x1 = color_affine(x, hsv_scale, hsv_bias)
    x2 = _blur(x1, sigma, kernel_size, impl)
    return jnp.clip(x2 + noise_scale * noise.astype(x.dtype), 0, 1)
