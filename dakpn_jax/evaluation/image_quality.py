"""Translation quality on the paired view: PSNR, SSIM and a weight-free distribution distance.

All image arguments are float32 NHWC in [0, max_val] (default 1), batch first.

- :func:`psnr`: ``10 log10(max_val^2 / mean((x - y)^2))`` per image, (B,).
- :func:`ssim`: Wang, Bovik, Sheikh & Simoncelli (2004), Gaussian window 11 x 11 with sigma 1.5
  (normalised to sum 1), K1 = 0.01, K2 = 0.03, C1 = (K1 L)^2, C2 = (K2 L)^2, L = max_val::

      SSIM(p) = (2 mu_x mu_y + C1) (2 s_xy + C2) / ((mu_x^2 + mu_y^2 + C1) (s_x^2 + s_y^2 + C2))

  with Gaussian-weighted local means/(co)variances, evaluated only where the window fits ('valid',
  as in the paper's reference implementation), averaged over positions and the three colour channels
  (the paper defines it on grey levels; channel-averaging is the usual colour extension). (B,).
- :func:`sliced_wasserstein`: SWD between two image sets over Laplacian-pyramid patch descriptors
  (the "SWD" of Karras et al. 2018, written here from its definition). Per pyramid level, random
  7 x 7 x 3 neighbourhoods are drawn from every image; both descriptor sets are normalised by the
  *same* per-channel mean/std (pooled over both sets - the original normalises each set separately,
  which would hide the colour and contrast shifts that make up much of a syn->real gap); then for
  ``num_projections`` random unit directions the 1-D Wasserstein-1 distance between the projected
  sets (mean |sorted(a) - sorted(b)|) is averaged. Returned per level (finest first) and averaged.

Why SWD here: it needs no downloaded network (FID/KID need Inception weights and measure ImageNet
semantics), it is a proper distance between distributions (0 iff the projected distributions
agree, and random projections separate distributions in the limit), and its pyramid levels see
exactly what the benchmark's domain gap consists of - colour and tone (coarsest level),
blur/sharpness and sensor noise and texture (fine levels) - while being blind to layout, so a
translator cannot score by moving content. Being local it does not detect semantic flips; the
model score (``model_score.py``) does.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np


def _check_pair(x, y, name):
    if x.ndim != 4 or x.shape != y.shape:
        raise ValueError(f"{name}: x {x.shape} and y {y.shape} must be equal (B, H, W, C)")


def psnr(x: jax.Array, y: jax.Array, max_val: float = 1.0) -> jax.Array:
    """Peak signal-to-noise ratio in dB per image: x, y (B, H, W, C) -> (B,). Identical images give +inf."""
    x, y = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)
    _check_pair(x, y, "psnr")
    mse = jnp.mean(jnp.square(x - y), axis=(1, 2, 3))
    return 10.0 * jnp.log10(max_val**2 / mse)


def gaussian_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    """1-D Gaussian taps ``exp(-i^2 / (2 sigma^2))``, i = -(size-1)/2 .. (size-1)/2, normalised to sum 1."""
    i = np.arange(size, dtype=np.float64) - (size - 1) / 2
    g = np.exp(-(i**2) / (2 * sigma**2))
    return (g / g.sum()).astype(np.float32)


def _filter_valid(x, taps):
    """Separable 'valid' correlation of (B, H, W, C) with taps along H then W (depthwise)."""
    c = x.shape[-1]
    k = len(taps)
    t = jnp.asarray(taps)
    dn = ("NHWC", "HWIO", "NHWC")
    for shape in ((k, 1, 1, 1), (1, k, 1, 1)):  # along H, then along W
        kernel = jnp.tile(t.reshape(shape), (1, 1, 1, c))
        x = jax.lax.conv_general_dilated(
            x,
            kernel,
            (1, 1),
            "VALID",
            dimension_numbers=dn,
            feature_group_count=c,
            precision=jax.lax.Precision.HIGHEST,
        )
    return x


def ssim(
    x: jax.Array,
    y: jax.Array,
    max_val: float = 1.0,
    *,
    window_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> jax.Array:
    """Mean SSIM per image (see module docstring): x, y (B, H, W, C), H, W >= window_size -> (B,)."""
    x, y = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)
    _check_pair(x, y, "ssim")
    if min(x.shape[1], x.shape[2]) < window_size:
        raise ValueError(
            f"ssim: images {x.shape} smaller than the {window_size}x{window_size} window"
        )
    taps = gaussian_window(window_size, sigma)
    c1, c2 = (k1 * max_val) ** 2, (k2 * max_val) ** 2
    mx, my = _filter_valid(x, taps), _filter_valid(y, taps)
    sxx = _filter_valid(x * x, taps) - mx * mx
    syy = _filter_valid(y * y, taps) - my * my
    sxy = _filter_valid(x * y, taps) - mx * my
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return jnp.mean(s, axis=(1, 2, 3))


# ------------------------------------------------------------------ Laplacian pyramid + SWD

_BINOMIAL = np.array([1, 4, 6, 4, 1], np.float32) / 16.0


def _blur(x, taps):
    p = len(taps) // 2
    return _filter_valid(jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), mode="reflect"), taps)


def laplacian_pyramid(x: jax.Array, num_levels: int) -> list[jax.Array]:
    """Laplacian pyramid (Burt & Adelson) with the 5-tap binomial filter and reflect borders:
    level i = G_i - up(G_{i+1}) for i < num_levels - 1, last level = the low-pass G_{n-1};
    G_0 = x, G_{i+1} = blur(G_i)[::2, ::2], up = zero-insertion then 4 x blur. x: (B, H, W, C)."""
    levels, g = [], jnp.asarray(x, jnp.float32)
    for _ in range(num_levels - 1):
        down = _blur(g, _BINOMIAL)[:, ::2, ::2]
        b, h, w, c = down.shape
        up = jnp.zeros((b, 2 * h, 2 * w, c), g.dtype).at[:, ::2, ::2].set(down)
        up = _blur(up, 2 * _BINOMIAL)[:, : g.shape[1], : g.shape[2]]  # 2 per axis = 4 overall
        levels.append(g - up)
        g = down
    levels.append(g)
    return levels


def _patches(level, rng, per_image, size):
    """(B * per_image, size*size*C) random size x size neighbourhoods of (B, h, w, C)."""
    b, h, w, c = level.shape
    ky, kx = jax.random.split(rng)
    ys = jax.random.randint(ky, (b, per_image), 0, h - size + 1)
    xs = jax.random.randint(kx, (b, per_image), 0, w - size + 1)

    def one(img, y, x):
        return jax.lax.dynamic_slice(img, (y, x, 0), (size, size, c)).reshape(-1)

    return jax.vmap(jax.vmap(one, in_axes=(None, 0, 0)))(level, ys, xs).reshape(b * per_image, -1)


def sliced_wasserstein_1d(a: jax.Array, b: jax.Array, directions: jax.Array) -> jax.Array:
    """Mean over directions of W1 between the projected sets: a, b (N, D), directions (D, P) unit columns."""
    if a.shape != b.shape or a.ndim != 2 or directions.shape[0] != a.shape[1]:
        raise ValueError(
            f"sliced_wasserstein_1d: a {a.shape}, b {b.shape}, directions {directions.shape} mismatch"
        )
    pa = jnp.sort(a @ directions, axis=0)
    pb = jnp.sort(b @ directions, axis=0)
    return jnp.mean(jnp.abs(pa - pb))


def sliced_wasserstein(
    x: jax.Array,
    y: jax.Array,
    rng: jax.Array,
    *,
    num_levels: int | None = None,
    patch_size: int = 7,
    patches_per_image: int = 128,
    num_projections: int = 512,
    min_size: int = 16,
) -> dict[str, jax.Array]:
    """SWD between image sets x (N, H, W, 3) and y (M, H', W', 3) (see module docstring).

    ``rng`` (typed key) picks patch positions and projections; the same key gives the same
    numbers. Levels: down to a side of ``min_size`` unless ``num_levels`` is given. The larger
    descriptor set is randomly subsampled to the smaller one's size. Returns
    ``{"swd": mean over levels, "swd_level0": finest, ...}`` (scalars)."""
    x, y = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)
    if x.ndim != 4 or y.ndim != 4 or x.shape[-1] != y.shape[-1]:
        raise ValueError(
            f"sliced_wasserstein: x {x.shape} and y {y.shape} must be (N, H, W, C) image sets"
        )
    side = min(x.shape[1], x.shape[2], y.shape[1], y.shape[2])
    if num_levels is None:
        num_levels = max(1, int(np.floor(np.log2(side / min_size))) + 1)
    if side / 2 ** (num_levels - 1) < patch_size:
        raise ValueError(
            f"sliced_wasserstein: {num_levels} levels of {side}-px images leave the coarsest "
            f"level smaller than the {patch_size}-px patches"
        )
    out, keys = {}, jax.random.split(rng, num_levels)
    for i, (lx, ly, k) in enumerate(
        zip(laplacian_pyramid(x, num_levels), laplacian_pyramid(y, num_levels), keys)
    ):
        kx, ky, kd, ks = jax.random.split(k, 4)
        da, db = (
            _patches(lx, kx, patches_per_image, patch_size),
            _patches(ly, ky, patches_per_image, patch_size),
        )
        n = min(da.shape[0], db.shape[0])
        ka, kb = jax.random.split(ks)
        da, db = jax.random.permutation(ka, da)[:n], jax.random.permutation(kb, db)[:n]
        # Pooled per-channel normalisation: one affine map for both sets keeps colour/contrast shifts visible.
        c = lx.shape[-1]
        both = jnp.concatenate([da, db]).reshape(-1, c)
        mean, std = both.mean(0), both.std(0) + 1e-8
        norm = lambda d: ((d.reshape(n, -1, c) - mean) / std).reshape(n, -1)
        dirs = jax.random.normal(kd, (da.shape[1], num_projections))
        dirs = dirs / jnp.linalg.norm(dirs, axis=0, keepdims=True)
        out[f"swd_level{i}"] = sliced_wasserstein_1d(norm(da), norm(db), dirs)
    out["swd"] = jnp.mean(jnp.stack([out[f"swd_level{i}"] for i in range(num_levels)]))
    return out


# ------------------------------------------------------------------ paired-view driver


def class_color_stats(
    images: np.ndarray, labels: np.ndarray, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per-class mean RGB (C, 3) float64 over all pixels of each class, and pixel counts (C,).

    Label values >= ``num_classes`` (ignore pixels) are left out."""
    flat_y = labels.reshape(-1).astype(np.int64)
    valid = flat_y < num_classes
    flat_x = images.reshape(-1, 3)[valid].astype(np.float64)
    flat_y = flat_y[valid]
    counts = np.bincount(flat_y, minlength=num_classes).astype(np.float64)
    sums = np.stack(
        [np.bincount(flat_y, weights=flat_x[:, c], minlength=num_classes) for c in range(3)], -1
    )
    return sums / np.maximum(counts, 1)[:, None], counts


# The driver below calls these compiled: one compilation per shape instead of hundreds of op-by-op
# dispatches (the main job's scores stage spent most of its 57 s on those). Same formulas.
_psnr_ssim = jax.jit(lambda x, y: (psnr(x, y), ssim(x, y)))
_sliced_wasserstein = jax.jit(
    sliced_wasserstein,
    static_argnames=(
        "num_levels",
        "patch_size",
        "patches_per_image",
        "num_projections",
        "min_size",
    ),
)


def evaluate_paired_source(
    translate_fn: Callable[[np.ndarray, np.ndarray], np.ndarray],
    source,
    *,
    batch_size: int = 8,
    max_images: int | None = None,
    seed: int = 0,
    num_classes: int | None = None,
) -> dict[str, float]:
    """Scores a translator on a paired source (items ``{"synthetic", "real", "label"}``, uint8).

    ``translate_fn(images float32 [0, 1] (B, H, W, 3), labels int32 (B, H, W)) -> (B, H, W, 3)``
    (the shared translator contract; GAN translators ignore the labels); pass ``lambda x, y: x``
    for the untranslated baseline. Returns mean ``psnr`` and ``ssim`` of translate(synthetic)
    against the real rendering of the same scene, and ``swd`` (+ per level) between the translated
    set and the real renderings (same scenes; SWD is layout-blind so pairing does not help it).

    With ``num_classes``, also ``class_color_err``: the mean over classes present in the real
    renderings of ||mean RGB of the class in the translated set - in the real set||_2 (pixels
    pooled over all images), which says whether each class got its real colour."""
    n = len(source) if max_images is None else min(len(source), max_images)
    if n == 0:
        raise ValueError("evaluate_paired_source: the paired source is empty")
    ps, ss, fakes, reals = [], [], [], []
    colour = {
        k: [np.zeros((num_classes or 0, 3)), np.zeros(num_classes or 0)] for k in ("fake", "real")
    }
    for start in range(0, n, batch_size):
        items = [source[i] for i in range(start, min(n, start + batch_size))]
        for k in ("synthetic", "real", "label"):
            if k not in items[0]:
                raise ValueError(
                    f"evaluate_paired_source: source items need key '{k}' (have {sorted(items[0])})"
                )
        syn = np.stack([it["synthetic"] for it in items]).astype(np.float32) / 255.0
        real = np.stack([it["real"] for it in items]).astype(np.float32) / 255.0
        label = np.stack([it["label"] for it in items]).astype(np.int32)
        fake = np.clip(np.asarray(translate_fn(syn, label), np.float32), 0.0, 1.0)
        if fake.shape != real.shape:
            raise ValueError(
                f"evaluate_paired_source: translate_fn returned {fake.shape}, expected {real.shape}"
            )
        p, s = _psnr_ssim(fake, real)
        ps.append(np.asarray(p))
        ss.append(np.asarray(s))
        fakes.append(fake)
        reals.append(real)
        if num_classes:
            for k, im in (("fake", fake), ("real", real)):
                mean, count = class_color_stats(im, label, num_classes)
                colour[k][0] += mean * count[:, None]
                colour[k][1] += count
    out = {"psnr": float(np.mean(np.concatenate(ps))), "ssim": float(np.mean(np.concatenate(ss)))}
    if num_classes:
        present = colour["real"][1] > 0
        mean = {k: s[present] / c[present, None] for k, (s, c) in colour.items()}
        out["class_color_err"] = float(
            np.mean(np.linalg.norm(mean["fake"] - mean["real"], axis=-1))
        )
    swd = _sliced_wasserstein(np.concatenate(fakes), np.concatenate(reals), jax.random.key(seed))
    out.update({k: float(v) for k, v in swd.items()})
    return out
