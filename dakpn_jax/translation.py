"""The DA-KPN translation function and its kernel-application paths (pure jnp, jit-able, differentiable).

Shapes are NHWC, batch first, float in [0, 1]. The translation (DESIGN.md section 1, steps 3-4) maps a
synthetic image ``x`` (B, H, W, 3) with per-pixel parameters ``theta`` (B, h, w, 12) laid out as
``[hsv_scale(3), hsv_bias(3), sigma(3), noise_scale(3)]`` and a noise field ``n`` (B, H, W, 3) to::

    theta  = upsample_params(theta_low, H, W)              # bilinear, half-pixel centres, no antialias
    hsv'   = hsv_scale * rgb_to_hsv(x) + hsv_bias          # hue wraps mod 1, s and v clipped to [0, 1]
    x1     = hsv_to_rgb(hsv')
    x2[p,c] = sum_{|i|,|j| <= r} w_pc(i, j) x1[p + (i, j), c]        # K = 2r + 1, edge padding
    w_pc(i, j) = exp(-(i^2 + j^2) / (2 sigma[p,c]^2 + eps)) / Z_pc    # normalised to sum 1
    out    = clip(x2 + noise_scale * n, 0, 1)

Every output pixel depends only on the input inside its K x K window and on theta at that pixel: no
pixel moves, so segmentation labels stay exact.

Kernel application (``impl=``), all paths compute the same function (to float32 rounding):

- ``"einsum"``: ``lax.conv_general_dilated_patches`` builds the (B, H, W, C * K * K) patch tensor and
    an einsum contracts it with the weights. Simple and fast on accelerators for small frames, but the
    patch tensor is K^2 = 625 times the image (15 GB for one 1052 x 1914 frame at K = 25).
- ``"shifted"``: the memory-lean path. A ``lax.fori_loop`` over the K window rows accumulates
    horizontally shifted slices of the edge-padded image, so it never holds more than a few images
    (plus, for the Gaussian, the K/2 + 1 distinct 1-D taps per pixel). It uses that the normalised
    Gaussian factorises per pixel, ``w(i, j) = g_i g_j / (sum g)^2`` with ``g_i = exp(-i^2 / d)``,
    so row offset i contributes ``g_i * sum_j g_j x[p + (i, j)]``.
- ``"auto"``: ``"einsum"`` on accelerators when the patch tensor is at most ``AUTO_EINSUM_MAX_BYTES``;
    ``"shifted"`` otherwise (always on CPU, where it is also the faster path; see
    experiments/bench_kernels.py).

A second kernel family, free-form per-pixel K x K kernels (the classic KPN: softmax-normalised
weights, :func:`kpn_kernels_from_logits`), runs on the same two paths via :func:`apply_local_kernels`.

Documented deviations from the paper's code: hue wraps and saturation/value are clipped after the
affine (the paper's code does neither), and the HSV conversion is exact at sector boundaries.
"""
from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
from jax import lax

NUM_PARAMS = 12
"""Per-pixel parameter count: hsv_scale(3), hsv_bias(3), sigma(3), noise_scale(3)."""

IDENTITY_PARAMS = (1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
"""Parameters for which :func:`translate` returns its input (up to float rounding)."""

BLUR_EPS = 1e-8
"""The eps in ``exp(-(i^2 + j^2) / (2 sigma^2 + eps))``: sigma = 0 gives the delta kernel (identity)."""

DEFAULT_KERNEL_SIZE = 25

IMPLS = ("auto", "einsum", "shifted")

AUTO_EINSUM_MAX_BYTES = 256 * 2**20
""""auto" uses the einsum path on GPU/TPU when the patch tensor B*H*W*C*K*K*4 bytes is at most this."""

BAND_ROWS = 16
"""Output rows per band of the shifted path (measured on a 2-core CPU: 8-32 within 10%, see
experiments/bench_kernels.py); the band's working set is about 2K images of band_rows x W pixels."""


# ----------------------------------------------------------------------------------------------------
# Validation helpers (trace time: shapes and dtypes are static).


def _as_float_array(x, name: str) -> jax.Array:
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"{name}: expected a floating dtype (images in [0, 1]), got {x.dtype} "
                         f"with shape {x.shape}")
    return x


def _check_nhwc(x: jax.Array, name: str, channels: int | None = None) -> None:
    if x.ndim != 4:
        raise ValueError(f"{name}: expected rank 4 (B, H, W, C), got shape {x.shape}")
    if min(x.shape) < 1:
        raise ValueError(f"{name}: empty dimension in shape {x.shape}")
    if channels is not None and x.shape[-1] != channels:
        raise ValueError(f"{name}: expected {channels} channels (B, H, W, {channels}), got shape {x.shape}")


def _check_kernel_size(kernel_size) -> int:
    if (isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1
            or kernel_size % 2 == 0):
        raise ValueError(f"kernel_size: expected an odd int >= 1, got {kernel_size!r}")
    return kernel_size


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
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    v = jnp.maximum(jnp.maximum(r, g), b)
    c = v - jnp.minimum(jnp.minimum(r, g), b)
    s = jnp.where(v > 0, c / jnp.where(v > 0, v, 1), 0)
    safe_c = jnp.where(c > 0, c, 1)
    h = jnp.where(v == r, (g - b) / safe_c, jnp.where(v == g, (b - r) / safe_c + 2, (r - g) / safe_c + 4))
    h = jnp.where(c > 0, jnp.mod(h / 6, 1.0), 0)
    # mod of a tiny negative number rounds to exactly 1.0 in float32: keep hue in [0, 1).
    h = jnp.where(h >= 1, h - 1, h)
    return jnp.stack([h, s, v], axis=-1)


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
        raise ValueError(f"logits: expected (..., {kernel_size * kernel_size}) for "
                         f"kernel_size={kernel_size}, got shape {logits.shape}")
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
    """
    b, hp, wp, c = xp.shape
    k = kernel_size
    p = lax.conv_general_dilated_patches(
        xp, filter_shape=(k, k), window_strides=(1, 1), padding="VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=lax.Precision.HIGHEST)
    # The feature axis is ordered (C, K, K): c * K * K + i * K + j.
    return p.reshape(b, hp - k + 1, wp - k + 1, c, k, k)


def _einsum_gaussian(xp, sigma, kernel_size):
    taps = gaussian_taps(sigma, kernel_size)  # (B, H, W, C, K); w(i, j) = taps_i taps_j
    return jnp.einsum("bhwcij,bhwci,bhwcj->bhwc", _patches(xp, kernel_size), taps, taps,
                      precision=lax.Precision.HIGHEST)


def _einsum_kernels(xp, kernels):
    return jnp.einsum("bhwcij,bhwcij->bhwc", _patches(xp, kernels.shape[-1]), kernels,
                      precision=lax.Precision.HIGHEST)


def _shifted_gaussian_core(xp, sigma):
    """Gaussian blur of one band: xp (B, h+2r, w+2r, C) edge-padded, sigma (B, h, w, C) -> (B, h, w, C).

    With the r + 1 distinct normalised taps ``g_k = exp(-k^2 / d) / Z``, ``Z = sum_{|k|<=r} exp(-k^2/d)``::

        out = sum_{i=0..r} g_i * sum_{j=0..r} g_j * (P_i[., x - j] + P_i[., x + j]) (each once for 0)
        P_i = x[y - i] + x[y + i]   (P_0 = x[y])

    Pairing the symmetric offsets takes (r+1)^2 multiplies and about K^2 adds per pixel and channel,
    about 0.6x the 2 K^2 flops of the plain sum. The r + 1 row-pair slabs and taps live only for one
    band, so the memory stays a few images whatever the frame size.
    """
    _, hp, wp, _ = xp.shape
    h, w = sigma.shape[1:3]
    r = (hp - h) // 2
    d = 2 * jnp.square(sigma) + BLUR_EPS
    g = [jnp.exp(-float(k * k) / d) for k in range(r + 1)]
    z = g[0] + 2 * sum(g[1:], jnp.zeros_like(g[0]))
    out = jnp.zeros(sigma.shape, xp.dtype)
    for i in range(r + 1):
        p = xp[:, r + i:r + i + h]
        if i:
            p = p + xp[:, r - i:r - i + h]
        s = g[0] * p[:, :, r:r + w]
        for j in range(1, r + 1):
            s = s + g[j] * (p[:, :, r - j:r - j + w] + p[:, :, r + j:r + j + w])
        out = out + g[i] * s
    return out / jnp.square(z)


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
            acc = acc + ki[j] * rows[:, :, j:j + w]
        return acc

    return lax.fori_loop(0, k, row, jnp.zeros(xp.shape[:1] + (h, w) + xp.shape[3:], xp.dtype))


def _map_row_bands(core, xp, weights, band_rows):
    """Runs ``core(xp_band, weights_band)`` over bands of ``band_rows`` output rows and stitches them.

    xp (B, H+2r, W+2r, C) edge-padded, weights (B, H, W, ...) per output pixel. Each band reads its
    2r halo rows from the padded image, so the result equals the whole-frame computation exactly; the
    bands only bound the working set (and keep it in cache). The last band is padded and cropped.
    """
    bsz, h = weights.shape[:2]
    halo = xp.shape[1] - h
    if h <= band_rows:
        return core(xp, weights)
    nb = -(-h // band_rows)
    extra = nb * band_rows - h
    xp = jnp.pad(xp, ((0, 0), (0, extra), (0, 0), (0, 0)), mode="edge")
    weights = jnp.pad(weights, ((0, 0), (0, extra)) + ((0, 0),) * (weights.ndim - 2), mode="edge")

    def band(k):
        y0 = k * band_rows
        return core(lax.dynamic_slice_in_dim(xp, y0, band_rows + halo, axis=1),
                    lax.dynamic_slice_in_dim(weights, y0, band_rows, axis=1))

    out = lax.map(band, jnp.arange(nb))  # (nb, B, band_rows, W, C)
    out = jnp.moveaxis(out, 0, 1).reshape((bsz, nb * band_rows) + out.shape[3:])
    return out[:, :h]


def _resolve_impl(impl: str, shape: Sequence[int], kernel_size: int) -> str:
    """The "auto" rule: einsum on accelerators when the patch tensor is small, shifted otherwise."""
    if impl != "auto":
        return impl
    patch_bytes = 4 * kernel_size * kernel_size
    for d in shape:
        patch_bytes *= d
    if jax.default_backend() != "cpu" and patch_bytes <= AUTO_EINSUM_MAX_BYTES:
        return "einsum"
    return "shifted"


@functools.partial(jax.jit, static_argnames=("kernel_size", "impl"))
def _blur(x, sigma, kernel_size, impl):
    sigma = jnp.broadcast_to(sigma.astype(x.dtype), x.shape)
    xp = _pad_edge(x, kernel_size // 2)
    if impl == "einsum":
        return _einsum_gaussian(xp, sigma, kernel_size)
    return _map_row_bands(_shifted_gaussian_core, xp, sigma, BAND_ROWS)


def local_gaussian_blur(x: jax.Array, sigma: jax.Array, *, kernel_size: int = DEFAULT_KERNEL_SIZE,
                        impl: str = "auto") -> jax.Array:
    """Per-pixel, per-channel normalised Gaussian blur with edge padding (DESIGN.md step 4d).

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
        raise ValueError(f"sigma: expected shape {x.shape} (or {x.shape[:3] + (1,)}) to match x, "
                         f"got {sigma.shape}")
    kernel_size = _check_kernel_size(kernel_size)
    impl = _resolve_impl(_check_impl(impl), x.shape, kernel_size)
    return _blur(x, sigma, kernel_size, impl)


@functools.partial(jax.jit, static_argnames=("impl",))
def _apply_kernels(x, kernels, impl):
    xp = _pad_edge(x, kernels.shape[-1] // 2)
    if impl == "einsum":
        return _einsum_kernels(xp, kernels)
    return _map_row_bands(_shifted_kernels_core, xp, kernels, BAND_ROWS)


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
    if (kernels.ndim != 6 or kernels.shape[:3] != x.shape[:3] or kernels.shape[3] not in (1, x.shape[3])
            or kernels.shape[4] != kernels.shape[5] or kernels.shape[5] % 2 == 0):
        raise ValueError(f"kernels: expected (B, H, W, K, K) or (B, H, W, C, K, K) with K odd and "
                         f"(B, H, W, C) = {x.shape}, got shape {shape}")
    kernel_size = kernels.shape[-1]
    impl = _resolve_impl(_check_impl(impl), x.shape, kernel_size)
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


def noise_field(seed: int, height: int, width: int, *, base_size: tuple[int, int] | None = None,
                channels: int = 3) -> jax.Array:
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


def sample_noise(key: jax.Array, batch: int, height: int, width: int, channels: int = 3) -> jax.Array:
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


def translate(x: jax.Array, params: jax.Array, noise: jax.Array, *, kernel_size: int = DEFAULT_KERNEL_SIZE,
                            impl: str = "auto") -> jax.Array:
    """The DA-KPN translation T(x; theta, n) (DESIGN.md section 1, steps 3-4; module docstring).

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
        raise ValueError(f"params: batch {params.shape[0]} (shape {params.shape}) != x batch {x.shape[0]} "
                         f"(shape {x.shape})")
    if noise.ndim != 4 or noise.shape[1:] != x.shape[1:] or noise.shape[0] not in (1, x.shape[0]):
        raise ValueError(f"noise: expected shape {x.shape} (or batch 1) to match x, got {noise.shape}")
    kernel_size = _check_kernel_size(kernel_size)
    impl = _resolve_impl(_check_impl(impl), x.shape, kernel_size)
    return _translate(x, params, noise, kernel_size, impl)


@functools.partial(jax.jit, static_argnames=("kernel_size", "impl"))
def _translate(x, params, noise, kernel_size, impl):
    theta = upsample_params(params.astype(x.dtype), x.shape[1], x.shape[2])
    hsv_scale, hsv_bias, sigma, noise_scale = split_params(theta)
    x1 = color_affine(x, hsv_scale, hsv_bias)
    x2 = _blur(x1, sigma, kernel_size, impl)
    return jnp.clip(x2 + noise_scale * noise.astype(x.dtype), 0, 1)
