"""Training-free, label-preserving controls (docs/METHOD.md §9): translators DA-KPN must beat.

Every control maps synthetic frames to "real-looking" ones without learning and without moving a
pixel, so the synthetic labels stay exact. All functions are pure jnp, NHWC float32 in [0, 1],
batch first, and jit-able:

- :func:`randomize` (same-family randomisation): the DA-KPN translation T(x; theta, n) with theta
  drawn uniformly from a fixed range, per image and per class region (:func:`random_class_params`).
  Does *learning* theta matter, or is T just augmentation? Two sets of ranges: ``DEFAULT_RANGES``
  were read from the benchmark's renderer (they cover its real gap: an optimistic, informed
  control), ``UNINFORMED_RANGES`` are what a user would pick without knowing the target domain
  (symmetric augmentation-sized ranges; the comment at their definition says how each was chosen).
- :func:`match_histograms`: per-channel histogram matching of each frame to a reference frame.
- :func:`reinhard`: Reinhard et al. (2001) mean / std transfer in the decorrelated l-alpha-beta space.
- :func:`fda`: Fourier domain adaptation (Yang and Soatto, CVPR 2020): the low-frequency amplitude
  spectrum of the frame is replaced by the reference's, the phase is kept.

The reference of each frame is "a random real training image": :func:`make_control` holds a pool of
real frames and picks one per frame from a hash of the frame's pixels and the control's seed, so the
choice is random across frames yet reproducible (the same frame always gets the same reference,
whatever the batch or the order an export visits it in). Randomisation draws its theta the same way.

:func:`make_control` returns ``translate_fn(images (B, H, W, 3), labels (B, H, W)) -> (B, H, W, 3)``,
the shape of a method module's ``make_translator``, so the protocol and `dakpn_jax.export` use a
control exactly like a trained translator. The spatially uniform DA-KPN (one theta per image) is a
*trained* control: ``configs/default.py`` with ``model.param_size = (1, 1)`` (see
`dakpn_jax.protocol.methods`), not a function here.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from dakpn_jax import translation

__all__ = [
    "CONTROLS",
    "DEFAULT_RANGES",
    "fda",
    "fda_mask",
    "frame_hash",
    "make_control",
    "match_histograms",
    "randomize",
    "random_class_params",
    "reinhard",
    "rgb_to_lab",
    "lab_to_rgb",
]


# ----------------------------------------------------------------------------- FDA


def fda_mask(height: int, width: int, beta: float) -> np.ndarray:
    """(H, W) bool: the low frequencies FDA swaps, in numpy's unshifted FFT layout.

    The centred square of half-width b = floor(beta * min(H, W)) around DC: the signed frequencies
    |k_y| <= b and |k_x| <= b, a (2b + 1)^2 square (as the FDA authors' NumPy code cuts it from the
    fftshift-ed spectrum: rows c - b .. c + b around the centre c). At b = 0 that is the DC term alone
    (each channel's mean); beta = 0 itself swaps nothing, so it is the identity. The square is
    symmetric under k -> -k, so the mixed spectrum stays Hermitian and its inverse FFT is real.
    """
    if not 0.0 <= float(beta) <= 0.5:
        raise ValueError(f"fda: beta must lie in [0, 0.5], got {beta!r}")
    if float(beta) == 0.0:
        return np.zeros((height, width), bool)
    b = int(np.floor(float(beta) * min(height, width)))
    ky = np.fft.fftfreq(height) * height
    kx = np.fft.fftfreq(width) * width
    return (np.abs(ky)[:, None] <= b) & (np.abs(kx)[None, :] <= b)


def fda(x: jax.Array, reference: jax.Array, beta: float = 0.01, *, clip: bool = True) -> jax.Array:
    """Fourier domain adaptation of x (B, H, W, C) to reference (B, H, W, C), per channel:

        X = FFT2(x),  R = FFT2(reference)
        out = IFFT2(A * exp(i angle(X))),  A = |R| on fda_mask(H, W, beta), |X| elsewhere

    clipped to [0, 1] (``clip``). beta = 0 is the identity. Differentiable, jit-able (beta static).
    """
    x = jnp.asarray(x, jnp.float32)
    reference = jnp.asarray(reference, jnp.float32)
    if x.ndim != 4 or reference.shape != x.shape:
        raise ValueError(
            f"fda: x and reference must be (B, H, W, C) of one shape, got {x.shape} and {reference.shape}"
        )
    mask = jnp.asarray(fda_mask(x.shape[1], x.shape[2], beta))[None, :, :, None]
    fx = jnp.fft.fft2(x, axes=(1, 2))
    fr = jnp.fft.fft2(reference, axes=(1, 2))
    amp = jnp.where(mask, jnp.abs(fr), jnp.abs(fx))
    out = jnp.real(jnp.fft.ifft2(amp * jnp.exp(1j * jnp.angle(fx)), axes=(1, 2)))
    return jnp.clip(out, 0.0, 1.0) if clip else out


# ----------------------------------------------------------------------------- histogram matching


def _match_channel(src: jax.Array, ref: jax.Array) -> jax.Array:
    """src (n,), ref (m,) -> src mapped through F_ref^-1(F_src(.)): empirical CDF F_src(v) =
    #{src <= v} / n, quantile F_ref^-1(q) = ref_sorted[ceil(q m) - 1]. Equal source values map to
    one output value (a pixel's output depends on its value only)."""
    n, m = src.shape[0], ref.shape[0]
    src_sorted, ref_sorted = jnp.sort(src), jnp.sort(ref)
    count = jnp.searchsorted(src_sorted, src, side="right")  # n F_src(v), an int in [1, n]
    if n == m:  # exact: ceil(count m / n) - 1 = count - 1
        idx = count - 1
    else:  # float32 ceil(count m / n): exact up to rounding for unequal sizes
        idx = jnp.ceil(count.astype(jnp.float32) * (m / n) - 1e-3).astype(jnp.int32) - 1
    return ref_sorted[jnp.clip(idx, 0, m - 1)]


def match_histograms(x: jax.Array, reference: jax.Array) -> jax.Array:
    """Per-image, per-channel histogram matching: x (B, H, W, C) to reference (B, H', W', C) (any
    size). For continuous values and equal pixel counts the output channel is a permutation of the
    reference channel, so their empirical CDFs agree everywhere."""
    x = jnp.asarray(x, jnp.float32)
    reference = jnp.asarray(reference, jnp.float32)
    if (
        x.ndim != 4
        or reference.ndim != 4
        or x.shape[0] != reference.shape[0]
        or x.shape[-1] != reference.shape[-1]
    ):
        raise ValueError(
            f"match_histograms: x {x.shape} and reference {reference.shape} must be (B, H, W, C) "
            "with the same B and C"
        )
    B, H, W, C = x.shape
    src = jnp.moveaxis(x.reshape(B, H * W, C), -1, 1)  # (B, C, n)
    ref = jnp.moveaxis(reference.reshape(B, -1, C), -1, 1)
    out = jax.vmap(jax.vmap(_match_channel))(src, ref)
    return jnp.moveaxis(out, 1, -1).reshape(B, H, W, C)


# ----------------------------------------------------------------------------- Reinhard

# Reinhard, Ashikhmin, Gooch, Shirley, "Color transfer between images", IEEE CG&A 2001, eqs. 4 and 6.
_RGB_TO_LMS = np.array(
    [[0.3811, 0.5783, 0.0402], [0.1967, 0.7244, 0.0782], [0.0241, 0.1288, 0.8444]]
)
_LMS_TO_LAB = np.diag([1 / np.sqrt(3), 1 / np.sqrt(6), 1 / np.sqrt(2)]) @ np.array(
    [[1.0, 1.0, 1.0], [1.0, 1.0, -2.0], [1.0, -1.0, 0.0]]
)
_LMS_EPS = 1.0 / 255.0  # log10 needs LMS > 0: black pixels are read as 1/255


def rgb_to_lab(x: jax.Array) -> jax.Array:
    """RGB (..., 3) in [0, 1] -> Reinhard's l-alpha-beta: LMS = M x, L = log10(max(LMS, eps)),
    lab = N L (decorrelated for natural images)."""
    lms = jnp.einsum("ij,...j->...i", jnp.asarray(_RGB_TO_LMS, jnp.float32), x)
    return jnp.einsum(
        "ij,...j->...i",
        jnp.asarray(_LMS_TO_LAB, jnp.float32),
        jnp.log10(jnp.maximum(lms, _LMS_EPS)),
    )


def lab_to_rgb(lab: jax.Array) -> jax.Array:
    """The inverse of :func:`rgb_to_lab` (exact where LMS >= eps)."""
    log_lms = jnp.einsum("ij,...j->...i", jnp.asarray(np.linalg.inv(_LMS_TO_LAB), jnp.float32), lab)
    return jnp.einsum(
        "ij,...j->...i", jnp.asarray(np.linalg.inv(_RGB_TO_LMS), jnp.float32), 10.0**log_lms
    )


def reinhard(x: jax.Array, reference: jax.Array, *, clip: bool = True) -> jax.Array:
    """Reinhard colour transfer of x (B, H, W, 3) to reference (B, H', W', 3): per image and
    l-alpha-beta channel, ``lab' = (lab - mean_x) * std_ref / std_x + mean_ref`` (std of a flat
    channel taken as 1e-6), back to RGB, clipped to [0, 1]."""
    x = jnp.asarray(x, jnp.float32)
    reference = jnp.asarray(reference, jnp.float32)
    if x.ndim != 4 or reference.ndim != 4 or x.shape[-1] != 3 or reference.shape[0] != x.shape[0]:
        raise ValueError(
            f"reinhard: x {x.shape} and reference {reference.shape} must be (B, H, W, 3) with one B"
        )
    lx, lr = rgb_to_lab(x), rgb_to_lab(reference)
    mx, sx = lx.mean(axis=(1, 2), keepdims=True), lx.std(axis=(1, 2), keepdims=True)
    mr, sr = lr.mean(axis=(1, 2), keepdims=True), lr.std(axis=(1, 2), keepdims=True)
    out = lab_to_rgb((lx - mx) * sr / jnp.maximum(sx, 1e-6) + mr)
    return jnp.clip(out, 0.0, 1.0) if clip else out


# ----------------------------------------------------------------------------- randomisation

DEFAULT_RANGES = (
    # (low, high) per theta entry, layout [hsv_scale(3), hsv_bias(3), sigma(3), noise_scale(3)].
    # Wide enough to cover the benchmark's real gap (hue shifts to -0.17, saturation x 0.34..1,
    # value x 0.66..1, blur to 2 px, noise std 0.015..0.03; dakpn_jax/data/procedural.py).
    (1.0, 1.0),
    (0.3, 1.1),
    (0.6, 1.1),
    (-0.2, 0.2),
    (-0.1, 0.1),
    (-0.1, 0.1),
    (0.0, 2.0),
    (0.0, 2.0),
    (0.0, 2.0),
    (0.0, 0.04),
    (0.0, 0.04),
    (0.0, 0.04),
)


# The same family with ranges a user would pick without looking at the target domain: symmetric
# about the identity and of the size of common photometric augmentation, read off nothing of the
# benchmark (so it cannot know, e.g., that real hues are shifted by -0.17 or real frames desaturated):
# - hue: no scaling (hue is an angle); a shift of +-0.1 of the circle (torchvision's
#   ColorJitter(hue=0.1), a usual setting);
# - saturation and value: scaled by [0.6, 1.4] (ColorJitter(saturation=0.4, brightness=0.4)), no
#   additive shift;
# - blur: sigma in [0, 1.5] px, a mild blur of the usual augmentation kind at this resolution;
# - noise: std in [0, 0.05], a usual additive Gaussian-noise augmentation.
UNINFORMED_RANGES = (
    (1.0, 1.0),
    (0.6, 1.4),
    (0.6, 1.4),
    (-0.1, 0.1),
    (0.0, 0.0),
    (0.0, 0.0),
    (0.0, 1.5),
    (0.0, 1.5),
    (0.0, 1.5),
    (0.0, 0.05),
    (0.0, 0.05),
    (0.0, 0.05),
)


NAMED_RANGES = {"default": DEFAULT_RANGES, "uninformed": UNINFORMED_RANGES}


def _ranges(ranges) -> np.ndarray:
    """(12, 2) float32 from ``ranges``: None (``DEFAULT_RANGES``), a name of ``NAMED_RANGES`` or
    12 (low, high) pairs."""
    if isinstance(ranges, str):
        if ranges not in NAMED_RANGES:
            raise ValueError(
                f"randomize: ranges={ranges!r} is not one of {sorted(NAMED_RANGES)} (or give 12 pairs)"
            )
        ranges = NAMED_RANGES[ranges]
    r = np.asarray(DEFAULT_RANGES if ranges is None else ranges, np.float32)
    if r.shape != (translation.NUM_PARAMS, 2) or np.any(r[:, 0] > r[:, 1]):
        raise ValueError(
            f"randomize: ranges must be 12 (low, high) pairs with low <= high, got {np.asarray(ranges)}"
        )
    return r


def random_class_params(
    keys: jax.Array, labels: jax.Array, num_classes: int, ranges=None, *, per_class: bool = True
) -> jax.Array:
    """theta (B, H, W, 12): for image b, a table of num_classes + 1 parameter vectors drawn
    uniformly from ``ranges`` with key ``keys[b]`` (the last row serves ignore / out-of-range
    labels), looked up by the label of each pixel. ``per_class=False``: one vector per image.
    theta is constant on every class region of every image."""
    r = jnp.asarray(_ranges(ranges))
    rows = num_classes + 1 if per_class else 1

    def table(key):
        return r[:, 0] + (r[:, 1] - r[:, 0]) * jax.random.uniform(
            key, (rows, translation.NUM_PARAMS)
        )

    tables = jax.vmap(table)(keys)  # (B, rows, 12)
    lab = labels.astype(jnp.int32)
    idx = (
        jnp.where((lab >= 0) & (lab < num_classes), lab, num_classes)
        if per_class
        else jnp.zeros_like(lab)
    )
    return jax.vmap(lambda t, i: t[i])(tables, idx)  # (B, H, W, 12)


def randomize(
    x: jax.Array,
    labels: jax.Array,
    keys: jax.Array,
    *,
    num_classes: int = 19,
    ranges=None,
    per_class: bool = True,
    kernel_size: int = 9,
    impl: str = "auto",
) -> jax.Array:
    """Same-family randomisation: T(x; theta, n) (`dakpn_jax.translate`) with theta from
    :func:`random_class_params` and a fresh N(0, 1) noise field n per image (key ``keys[b]``)."""
    x = jnp.asarray(x, jnp.float32)
    if x.ndim != 4 or labels.shape != x.shape[:3] or keys.shape[0] != x.shape[0]:
        raise ValueError(
            f"randomize: x {x.shape}, labels {labels.shape} and keys {keys.shape} must be "
            "(B, H, W, 3), (B, H, W) and (B, ...)"
        )
    k_theta, k_noise = jnp.moveaxis(jax.vmap(lambda k: jax.random.split(k))(keys), 1, 0)
    theta = random_class_params(k_theta, labels, num_classes, ranges, per_class=per_class)
    noise = jax.vmap(lambda k: jax.random.normal(k, x.shape[1:3] + (3,)))(k_noise)
    return translation.translate(x, theta, noise, kernel_size=kernel_size, impl=impl)


# ----------------------------------------------------------------------------- translators


def frame_hash(images: jax.Array) -> jax.Array:
    """(B,) uint32: a hash of each frame's 8-bit pixels (sum of pixel * fixed pseudo-random odd
    weights, mod 2^32). Identical frames hash alike; any change of one pixel level changes it."""
    B = images.shape[0]
    q = jnp.round(jnp.clip(images, 0.0, 1.0) * 255.0).astype(jnp.uint32).reshape(B, -1)
    w = np.random.default_rng(0x5EED).integers(0, 2**31, q.shape[1], dtype=np.uint32) * 2 + 1
    return jnp.sum(q * jnp.asarray(w, jnp.uint32), axis=1, dtype=jnp.uint32)


def _frame_keys(seed: int, images: jax.Array) -> jax.Array:
    base = jax.random.key(int(seed))
    return jax.vmap(lambda h: jax.random.key_data(jax.random.fold_in(base, h)))(frame_hash(images))


CONTROLS = ("randomize", "histogram", "reinhard", "fda")


def reference_pool(data_config, count: int = 64) -> np.ndarray:
    """(P, H, W, 3) uint8: the first ``count`` real-train frames of ``data_config``, the pool of
    "random real training images" the colour-statistics controls and FDA draw from (docs/METHOD.md §9)."""
    from dakpn_jax.data import sources  # pylint: disable=import-outside-toplevel

    src = sources.make_source(data_config, "real-train")
    n = min(len(src), int(count))
    if n <= 0:
        raise ValueError("controls need real-train images (data_config.num_real_train > 0)")
    return np.stack([src[i]["image"] for i in range(n)])


def make_control(
    name: str,
    *,
    reference=None,
    seed: int = 0,
    num_classes: int = 19,
    beta: float = 0.01,
    ranges=None,
    per_class: bool = True,
    kernel_size: int = 9,
) -> Callable:
    """Jitted ``translate_fn(images (B, H, W, 3) float [0, 1], labels (B, H, W) int) -> (B, H, W, 3)``.

    Args:
      name: one of ``CONTROLS``.
      reference: the pool of real frames (P, H', W', 3), uint8 or float in [0, 1]; needed by
        histogram, reinhard and fda (each frame gets pool[hash(frame, seed) mod P]; resized to the
        frame size for fda, which needs equal sizes). Unused by randomize.
      seed: the control's seed (which reference / which theta a frame gets).
      beta, ranges / per_class / kernel_size: see :func:`fda` and :func:`randomize`.
    """
    if name not in CONTROLS:
        raise ValueError(f"control {name!r} is unknown; expected one of {CONTROLS}")
    if name == "randomize":
        ranges = _ranges(ranges)  # validated (and a name resolved) now, not at the first call

        @jax.jit
        def translate_fn(images, labels):
            keys = jax.vmap(jax.random.wrap_key_data)(_frame_keys(seed, images))
            return randomize(
                images,
                jnp.asarray(labels),
                keys,
                num_classes=num_classes,
                ranges=ranges,
                per_class=per_class,
                kernel_size=kernel_size,
            )

        return translate_fn

    if (
        reference is None
        or np.ndim(reference) != 4
        or np.shape(reference)[-1] != 3
        or len(reference) == 0
    ):
        raise ValueError(
            f"control {name!r} needs reference=(P, H, W, 3) real frames, got shape "
            f"{None if reference is None else np.shape(reference)}"
        )
    ref = np.asarray(reference)
    pool = jnp.asarray(
        ref.astype(np.float32) / 255.0 if ref.dtype == np.uint8 else ref.astype(np.float32)
    )
    apply = {
        "histogram": match_histograms,
        "reinhard": reinhard,
        "fda": functools.partial(fda, beta=float(beta)),
    }[name]
    if name == "fda":
        fda_mask(8, 8, beta)  # validates beta now

    @jax.jit
    def translate_fn(images, labels):
        del labels  # colour statistics ignore the labels
        x = jnp.asarray(images, jnp.float32)
        idx = (
            frame_hash(x) % jnp.uint32(pool.shape[0])
            if pool.shape[0] > 1
            else jnp.zeros(x.shape[0], jnp.uint32)
        )
        idx = jax.random.permutation(jax.random.key(seed), pool.shape[0])[idx.astype(jnp.int32)]
        refs = pool[idx]
        if name == "fda" and refs.shape[1:3] != x.shape[1:3]:
            refs = jax.image.resize(refs, (refs.shape[0],) + x.shape[1:3] + (3,), "bilinear")
        return apply(x, refs)

    return translate_fn
