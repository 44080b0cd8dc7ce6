"""The DA-KPN translation function against independent float64 NumPy references (docs/METHOD.md §1 steps 3-4)."""

import colorsys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from dakpn_jax import translation as T

PATHS = ("einsum", "shifted")


# --------------------------------------------------------------------------------------------------
# float64 NumPy references, written from the formulas (no code shared with the library).


def blur_tol(k):
    """A float32 error bound of the normalised K x K blur of values in [0, 1]: the numerator and Z
    are sums of n = K^2 non-negative terms, each within n u of its sum of |terms| (recursive
    summation, u = 2^-24; the numerator's sum is at most Z), the weights exp(.) within a few u,
    the division one more: |error| <= (2 n + 8) u of the output scale. Never below 1e-5, what these
    tests always allowed (above the bound for K <= 5). Processor-independent: it holds for any
    summation order XLA picks."""
    return max(1e-5, (2 * k * k + 8) * 2.0**-24)


def ref_blur(x, sigma, k):
    """out[p,c] = sum_{|i|,|j|<=r} exp(-(i^2+j^2)/(2 s^2 + eps)) x[p+(i,j),c] / Z, edge padding."""
    x = np.asarray(x, np.float64)
    s = np.broadcast_to(np.asarray(sigma, np.float64), x.shape)
    r = k // 2
    _, h, w, _ = x.shape
    xp = np.pad(x, ((0, 0), (r, r), (r, r), (0, 0)), mode="edge")
    num, z = np.zeros_like(x), np.zeros_like(x)
    for i in range(-r, r + 1):
        for j in range(-r, r + 1):
            wt = np.exp(-(i * i + j * j) / (2 * s**2 + T.BLUR_EPS))
            num += wt * xp[:, r + i : r + i + h, r + j : r + j + w]
            z += wt
    return num / z


def ref_kernels(x, kernels):
    """out[p,c] = sum_{i,j} k[p,(c),i,j] x[p+(i-r, j-r), c]; kernels (B,H,W,K,K) or (B,H,W,C,K,K)."""
    x = np.asarray(x, np.float64)
    kernels = np.asarray(kernels, np.float64)
    if kernels.ndim == 5:
        kernels = kernels[:, :, :, None]
    k = kernels.shape[-1]
    r = k // 2
    _, h, w, _ = x.shape
    xp = np.pad(x, ((0, 0), (r, r), (r, r), (0, 0)), mode="edge")
    return sum(kernels[..., i, j] * xp[:, i : i + h, j : j + w] for i in range(k) for j in range(k))


def ref_upsample(p, height, width):
    """Bilinear, half-pixel centres, source coordinate clamped to the image (align_corners=False)."""
    p = np.asarray(p, np.float64)
    _, h, w, _ = p.shape

    def axis(n_out, n_in):
        src = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        i0 = np.floor(src).astype(int)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, src - i0

    y0, y1, wy = axis(height, h)
    x0, x1, wx = axis(width, w)
    wy, wx = wy[None, :, None, None], wx[None, None, :, None]
    top = p[:, y0][:, :, x0] * (1 - wx) + p[:, y0][:, :, x1] * wx
    bot = p[:, y1][:, :, x0] * (1 - wx) + p[:, y1][:, :, x1] * wx
    return top * (1 - wy) + bot * wy


def ref_translate(x, params, noise, k):
    x = np.asarray(x, np.float64)
    b, h, w, _ = x.shape
    theta = ref_upsample(params, h, w)
    hsv = np.array([colorsys.rgb_to_hsv(*px) for px in x.reshape(-1, 3)]).reshape(x.shape)
    hsv = theta[..., 0:3] * hsv + theta[..., 3:6]
    hsv[..., 0] = np.mod(hsv[..., 0], 1.0)
    hsv[..., 1:] = np.clip(hsv[..., 1:], 0, 1)
    x1 = np.array([colorsys.hsv_to_rgb(*px) for px in hsv.reshape(-1, 3)]).reshape(x.shape)
    x2 = ref_blur(x1, theta[..., 6:9], k)
    return np.clip(x2 + theta[..., 9:12] * np.asarray(noise, np.float64), 0, 1)


def random_params(rng, shape):
    """Parameters in a realistic range: scales near 1, small biases, sigma in [0, 6], noise scale."""
    p = np.empty(shape + (12,), np.float32)
    p[..., 0:3] = rng.uniform(0.6, 1.4, shape + (3,))
    p[..., 3:6] = rng.uniform(-0.3, 0.3, shape + (3,))
    p[..., 6:9] = rng.uniform(0, 6, shape + (3,))
    p[..., 9:12] = rng.uniform(0, 0.1, shape + (3,))
    return p


# --------------------------------------------------------------------------------------------------
# Blur and free-form kernels.


@pytest.mark.smoke
@pytest.mark.parametrize("impl", PATHS)
@pytest.mark.parametrize("k", [3, 5, 25])
def test_blur_matches_numpy(impl, k):
    rng = np.random.default_rng(k)
    # 19 rows > BAND_ROWS: the shifted path stitches two bands; 12 < K columns: borders everywhere.
    x = rng.random((2, 19, 12, 3), dtype=np.float32)
    sigma = rng.uniform(0, 6, x.shape).astype(np.float32)
    sigma[0, :3] = 0.0  # exact zeros: delta kernel
    out = T.local_gaussian_blur(x, sigma, kernel_size=k, impl=impl)
    assert out.shape == x.shape and out.dtype == jnp.float32
    np.testing.assert_allclose(out, ref_blur(x, sigma, k), atol=blur_tol(k), rtol=0)


def test_blur_shared_sigma_auto_and_jit():
    rng = np.random.default_rng(0)
    x = rng.random((1, 21, 9, 3), dtype=np.float32)
    sigma = rng.uniform(0, 4, (1, 21, 9, 1)).astype(np.float32)
    f = jax.jit(lambda x, s: T.local_gaussian_blur(x, s, kernel_size=7))
    np.testing.assert_allclose(f(x, sigma), ref_blur(x, sigma, 7), atol=1e-5, rtol=0)
    assert T._resolve_impl("auto") == "shifted"  # the "auto" rule on every backend


def test_blur_zero_sigma_is_identity_and_constant_is_preserved():
    rng = np.random.default_rng(1)
    x = rng.random((1, 18, 11, 3), dtype=np.float32)
    for impl in PATHS:
        np.testing.assert_allclose(
            T.local_gaussian_blur(x, np.zeros_like(x), kernel_size=5, impl=impl),
            x,
            atol=1e-6,
            rtol=0,
        )
        const = np.full_like(x, 0.3)
        big = np.full_like(x, 5.0)
        np.testing.assert_allclose(
            T.local_gaussian_blur(const, big, kernel_size=5, impl=impl), const, atol=1e-6, rtol=0
        )


@pytest.mark.parametrize("impl", PATHS)
@pytest.mark.parametrize("per_channel", [False, True])
def test_local_kernels_match_numpy(impl, per_channel):
    rng = np.random.default_rng(2)
    k = 5
    x = rng.random((2, 20, 7, 3), dtype=np.float32)
    lead = (2, 20, 7, 3) if per_channel else (2, 20, 7)
    kernels = T.kpn_kernels_from_logits(rng.normal(size=lead + (k * k,)).astype(np.float32), k)
    assert kernels.shape == lead + (k, k)
    np.testing.assert_allclose(kernels.sum((-2, -1)), 1.0, atol=1e-6)
    np.testing.assert_allclose(
        T.apply_local_kernels(x, kernels, impl=impl), ref_kernels(x, kernels), atol=1e-5, rtol=0
    )


def test_einsum_path_in_row_bands_is_exact_and_differentiable(monkeypatch):
    """Forced into 3-row bands (a shape no other test uses, so the jit cache cannot hide the patch),
    the banded einsum path matches the float64 reference and the shifted path, forward and reverse
    mode, for both kernel families."""
    monkeypatch.setattr(
        T, "EINSUM_BAND_BYTES", 3 * 1 * 10 * 3 * 25 * 4
    )  # 3 rows of a 1 x . x 10 x 3 frame, K = 5
    rng = np.random.default_rng(14)
    x = rng.random((1, 23, 10, 3), dtype=np.float32)
    sigma = rng.uniform(0.3, 4, x.shape).astype(np.float32)
    blur = lambda impl: lambda x, s: T.local_gaussian_blur(x, s, kernel_size=5, impl=impl)
    np.testing.assert_allclose(blur("einsum")(x, sigma), ref_blur(x, sigma, 5), atol=1e-5, rtol=0)
    ct = rng.normal(size=x.shape).astype(np.float32)
    g_e = jax.vjp(blur("einsum"), x, sigma)[1](ct)
    g_s = jax.vjp(blur("shifted"), x, sigma)[1](ct)
    for a, b in zip(g_e, g_s):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)
    tx = rng.normal(size=x.shape).astype(np.float32)
    _, jvp_e = jax.jvp(
        blur("einsum"), (x, sigma), (tx, np.zeros_like(sigma))
    )  # forward mode still works
    np.testing.assert_allclose(jvp_e, ref_blur(tx, sigma, 5), atol=1e-5, rtol=0)  # linear in x
    kernels = T.kpn_kernels_from_logits(rng.normal(size=(1, 23, 10, 25)).astype(np.float32), 5)
    np.testing.assert_allclose(
        T.apply_local_kernels(x, kernels, impl="einsum"), ref_kernels(x, kernels), atol=1e-5, rtol=0
    )


def test_gaussian_kernels_through_kpn_path_equal_blur():
    """The two kernel families agree when the free-form kernels are the Gaussian ones."""
    rng = np.random.default_rng(3)
    x = rng.random((1, 17, 6, 3), dtype=np.float32)
    sigma = rng.uniform(0, 3, x.shape).astype(np.float32)
    taps = T.gaussian_taps(jnp.asarray(sigma), 5)
    kernels = taps[..., :, None] * taps[..., None, :]
    np.testing.assert_allclose(
        T.apply_local_kernels(x, kernels, impl="shifted"),
        T.local_gaussian_blur(x, sigma, kernel_size=5, impl="shifted"),
        atol=1e-6,
    )


# --------------------------------------------------------------------------------------------------
# Colour.


def colour_set(rng):
    special = [
        [0, 0, 0],
        [1, 1, 1],
        [0.5, 0.5, 0.5],
        [0.2, 0.2, 0.2],
        [1, 0, 0],
        [1, 1, 0],
        [0, 1, 0],
        [0, 1, 1],
        [0, 0, 1],
        [1, 0, 1],  # pure hues
        [1, 0.5, 0],
        [0.3, 0.3, 0.1],
        [0.1, 0.3, 0.3],
        [0.3, 0.1, 0.3],
    ]  # ties on the max
    return np.concatenate([np.asarray(special, np.float32), rng.random((500, 3), dtype=np.float32)])


@pytest.mark.smoke
def test_hsv_round_trip_and_reference():
    c = colour_set(np.random.default_rng(4))
    hsv = np.asarray(T.rgb_to_hsv(c))
    np.testing.assert_allclose(T.hsv_to_rgb(hsv), c, atol=1e-6, rtol=0)
    ref = np.array([colorsys.rgb_to_hsv(*px) for px in c.astype(np.float64)])
    assert np.all((hsv[:, 0] >= 0) & (hsv[:, 0] < 1))
    np.testing.assert_allclose(hsv, ref, atol=1e-6, rtol=0)
    # hsv -> rgb over the whole hue circle, hue outside [0, 1) wraps.
    h = np.random.default_rng(5).random((300, 3)).astype(np.float32)
    ref_rgb = np.array([colorsys.hsv_to_rgb(*px) for px in h.astype(np.float64)])
    np.testing.assert_allclose(T.hsv_to_rgb(h), ref_rgb, atol=1e-6, rtol=0)
    np.testing.assert_allclose(T.hsv_to_rgb(h + np.float32([2, 0, 0])), ref_rgb, atol=1e-5, rtol=0)


def test_color_affine_wraps_hue_and_clips():
    # red (h=0), s=1, v=0.8: hue bias -0.25 wraps to 0.75 (violet), saturation and value saturate.
    x = np.asarray([[0.8, 0.0, 0.0]], np.float32)
    out = T.color_affine(x, jnp.asarray([1.0, 2.0, 2.0]), jnp.asarray([-0.25, 0.0, 0.0]))
    np.testing.assert_allclose(out, [colorsys.hsv_to_rgb(0.75, 1.0, 1.0)], atol=1e-6)


# --------------------------------------------------------------------------------------------------
# Translate.


@pytest.mark.parametrize("impl", PATHS)
def test_translate_matches_numpy(impl):
    rng = np.random.default_rng(6)
    x = rng.random((2, 18, 14, 3), dtype=np.float32)
    params = random_params(rng, (2, 5, 4))  # low resolution, upsampled inside
    noise = rng.normal(size=(2, 18, 14, 3)).astype(np.float32)
    out = T.translate(x, params, noise, kernel_size=5, impl=impl)
    np.testing.assert_allclose(out, ref_translate(x, params, noise, 5), atol=1e-5, rtol=0)


def test_upsample_params_matches_numpy():
    rng = np.random.default_rng(7)
    p = rng.normal(size=(2, 3, 5, 12)).astype(np.float32)
    np.testing.assert_allclose(
        T.upsample_params(p, 7, 16), ref_upsample(p, 7, 16), atol=1e-5, rtol=0
    )
    assert T.upsample_params(p, 3, 5) is not None and np.array_equal(T.upsample_params(p, 3, 5), p)


@pytest.mark.parametrize("impl", PATHS)
def test_identity_params_return_input(impl):
    rng = np.random.default_rng(8)
    x = np.concatenate([colour_set(rng)[:14], rng.random((18 * 13 - 14, 3), dtype=np.float32)])
    x = x.reshape(1, 18, 13, 3)
    params = np.broadcast_to(np.float32(T.IDENTITY_PARAMS), (1, 4, 3, 12))
    noise = rng.normal(size=x.shape).astype(np.float32)
    np.testing.assert_allclose(
        T.translate(x, params, noise, kernel_size=25, impl=impl), x, atol=1e-6, rtol=0
    )


@pytest.mark.parametrize("impl", PATHS)
def test_locality_of_the_jacobian(impl):
    """d out[p] / d x and d out[p] / d theta vanish outside the K x K window around p; the blur and
    noise parameters act at p only (the colour affine of a neighbour moves that neighbour's colour)."""
    rng = np.random.default_rng(9)
    k, r = 5, 2
    h, w = 20, 11
    x = jnp.asarray(rng.uniform(0.1, 0.9, (1, h, w, 3)).astype(np.float32))
    params = jnp.asarray(random_params(rng, (1, h, w)))  # full resolution: no upsampling coupling
    params = params.at[..., 6:9].set(2.0).at[..., 9:12].set(0.0)
    noise = jnp.zeros_like(x)
    grad = jax.jit(
        jax.grad(
            lambda x, p, py, px: T.translate(x, p, noise, kernel_size=k, impl=impl)[
                0, py, px
            ].sum(),
            argnums=(0, 1),
        )
    )
    for py, px in [(9, 5), (0, 0), (17, 10)]:
        gx, gp = grad(x, params, py, px)
        gx = np.abs(np.asarray(gx[0])).sum(-1)
        g_affine = np.abs(np.asarray(gp[0, ..., 0:6])).sum(-1)
        g_blur = np.abs(np.asarray(gp[0, ..., 6:9])).sum(-1)
        inside = np.zeros((h, w), bool)
        inside[max(py - r, 0) : py + r + 1, max(px - r, 0) : px + r + 1] = True
        assert np.all(gx[~inside] == 0) and np.all(g_affine[~inside] == 0)
        assert np.all(gx[inside] > 0)  # sigma = 2: every window pixel contributes
        assert np.count_nonzero(g_blur) == 1 and g_blur[py, px] > 0


def test_blur_gradients_match_finite_differences():
    rng = np.random.default_rng(10)
    x = jnp.asarray(rng.random((1, 18, 5, 3), dtype=np.float32))
    sigma = jnp.asarray(rng.uniform(0.7, 3.0, x.shape).astype(np.float32))
    for impl in PATHS:
        f = jax.jit(lambda x, s: T.local_gaussian_blur(x, s, kernel_size=3, impl=impl))
        # The shifted path has a custom VJP (reverse mode only, see dakpn_jax.translation).
        modes = ("rev",) if impl == "shifted" else ("fwd", "rev")
        check_grads(f, (x, sigma), order=1, modes=modes, eps=1e-2, atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("k", [5, 25])
def test_shifted_custom_vjp_equals_autodiff_of_einsum(k):
    """The shifted path's hand-written transpose and sigma derivative against plain autodiff."""
    rng = np.random.default_rng(13)
    x = rng.random(
        (2 if k < 25 else 1, 21, 9, 3), dtype=np.float32
    )  # 21 rows: two bands with halos
    sigma = rng.uniform(0, 6, x.shape).astype(np.float32)
    sigma[-1, :2] = 0.0
    ct = rng.normal(size=x.shape).astype(np.float32)
    grads = {}
    for impl in PATHS:
        _, vjp = jax.vjp(
            lambda x, s: T.local_gaussian_blur(x, s, kernel_size=k, impl=impl), x, sigma
        )
        grads[impl] = vjp(ct)
    # Two float32 paths, each within its summation bound (K^2 terms of normalised weights): twice
    # the blur's bound, relative to the larger of the cotangent's and the gradient's own scale.
    for a, b in zip(grads["shifted"], grads["einsum"]):
        scale = max(float(np.abs(ct).max()), float(np.abs(b).max()))
        np.testing.assert_allclose(a, b, atol=2 * blur_tol(k) * scale, rtol=0)


def test_affine_gradients_match_finite_differences():
    # Colours with distinct channels (away from sector boundaries), hue kept inside (0, 1) after the
    # affine and s, v inside (0, 1): the map is smooth there.
    x = jnp.asarray([[0.8, 0.3, 0.1], [0.2, 0.6, 0.4], [0.3, 0.35, 0.7]], jnp.float32)
    scale = jnp.asarray([[1.1, 0.9, 0.8]] * 3, jnp.float32)
    bias = jnp.asarray([[0.05, 0.0, 0.05]] * 3, jnp.float32)
    check_grads(
        jax.jit(T.color_affine),
        (x, scale, bias),
        order=1,
        modes=("fwd", "rev"),
        eps=1e-3,
        atol=2e-2,
        rtol=2e-2,
    )


def test_gradients_are_finite_everywhere():
    """Greys, black, white and hue wraps have guarded divisions: gradients are finite, not NaN."""
    c = colour_set(np.random.default_rng(11))[:140].reshape(1, 10, 14, 3)
    params = np.broadcast_to(np.float32(T.IDENTITY_PARAMS), (1, 2, 2, 12)).copy()
    g = jax.jit(
        jax.grad(
            lambda x, p: T.translate(x, p, jnp.zeros_like(x), kernel_size=3).sum(), argnums=(0, 1)
        )
    )(jnp.asarray(c), jnp.asarray(params))
    assert all(np.all(np.isfinite(np.asarray(a))) for a in g)


@pytest.mark.slow
def test_full_frame_in_one_call_equals_halo_tiles():
    """A 1052 x 1914 GTA5 frame, K = 25, one call of the lean path; halo tiles agree (no seams)."""
    rng = np.random.default_rng(12)
    hh, ww, k, r = 1052, 1914, 25, 12
    x = rng.random((1, hh, ww, 3), dtype=np.float32)
    params = random_params(rng, (1, 96, 160))
    noise = np.asarray(T.noise_field(0, hh, ww, base_size=(96, 160)))
    out = np.asarray(T.translate(x, params, noise, kernel_size=k, impl="shifted"))
    assert out.shape == x.shape and np.all(np.isfinite(out)) and out.min() >= 0 and out.max() <= 1
    # Tiles with a halo of r pixels cut from the edge-padded frame (x, theta and noise padded alike,
    # so the halo beyond the border is what edge padding means): corners, an interior tile across band
    # seams, the bottom-right remainder band. One tile shape, one compilation.
    theta = np.asarray(T.upsample_params(params, hh, ww))
    pad = lambda a: np.pad(a, ((0, 0), (r, r), (r, r), (0, 0)), mode="edge")
    xp, thetap, noisep = pad(x), pad(theta), pad(noise)
    th, tw = 40, 56
    tile_fn = jax.jit(
        lambda x, p, n: T.translate(x, p, n, kernel_size=k, impl="shifted")[:, r:-r, r:-r]
    )
    for y0, x0 in [(0, 0), (hh - th, ww - tw), (500, 900), (0, ww - tw), (hh - th, 0)]:
        window = np.s_[:, y0 : y0 + th + 2 * r, x0 : x0 + tw + 2 * r]
        t = tile_fn(xp[window], thetap[window], noisep[window])
        np.testing.assert_allclose(
            out[:, y0 : y0 + th, x0 : x0 + tw], t, atol=2 * blur_tol(k), rtol=0
        )  # two float32 computations, each within the blur's bound
    # And one interior tile against the float64 reference of the blur on the same pixels.
    x1_tile = np.asarray(
        T.color_affine(
            x[:, 480:560, 880:980], theta[:, 480:560, 880:980, 0:3], theta[:, 480:560, 880:980, 3:6]
        )
    )
    ref = ref_blur(x1_tile, theta[:, 480:560, 880:980, 6:9], k)[:, r:-r, r:-r]
    ref = np.clip(ref + theta[:, 492:548, 892:968, 9:12] * noise[:, 492:548, 892:968], 0, 1)
    np.testing.assert_allclose(out[:, 492:548, 892:968], ref, atol=blur_tol(k), rtol=0)


# --------------------------------------------------------------------------------------------------
# Noise and bad input.


def test_noise_helpers():
    a = np.asarray(T.noise_field(3, 64, 96))
    assert a.shape == (1, 64, 96, 3)
    np.testing.assert_array_equal(a, T.noise_field(3, 64, 96))  # fixed: same seed, same field
    assert not np.allclose(a, T.noise_field(4, 64, 96))
    assert abs(a.mean()) < 5 / np.sqrt(a.size) and abs(a.std() - 1) < 0.05
    up = np.asarray(T.noise_field(3, 128, 192, base_size=(64, 96)))
    assert up.shape == (1, 128, 192, 3)
    np.testing.assert_allclose(up, ref_upsample(a, 128, 192), atol=1e-5)
    s = T.sample_noise(jax.random.key(0), 4, 8, 10)
    assert s.shape == (4, 8, 10, 3) and not np.allclose(s[0], s[1])


@pytest.mark.smoke
def test_bad_input_raises_value_error_naming_the_shape():
    x = np.zeros((1, 8, 9, 3), np.float32)
    p = np.zeros((1, 2, 2, 12), np.float32)
    cases = [
        (lambda: T.local_gaussian_blur(x[0], x[0]), r"x.*\(8, 9, 3\)"),
        (lambda: T.local_gaussian_blur(x, x[..., :2]), r"sigma.*\(1, 8, 9, 2\)"),
        (lambda: T.local_gaussian_blur(x, x, kernel_size=4), "kernel_size.*4"),
        (lambda: T.local_gaussian_blur(x, x, kernel_size=0), "kernel_size.*0"),
        (lambda: T.local_gaussian_blur(x, x, impl="unfold"), "impl.*unfold"),
        (lambda: T.local_gaussian_blur(x.astype(np.uint8), x), r"x.*uint8.*\(1, 8, 9, 3\)"),
        (lambda: T.translate(x[..., :2], p, x), r"x.*\(1, 8, 9, 2\)"),
        (lambda: T.translate(x, p[..., :9], x), r"params.*\(1, 2, 2, 9\)"),
        (lambda: T.translate(x, p, x[:, :4]), r"noise.*\(1, 4, 9, 3\)"),
        (
            lambda: T.translate(x, np.zeros((2, 2, 2, 12), np.float32), x),
            r"params.*\(2, 2, 2, 12\)",
        ),
        (
            lambda: T.apply_local_kernels(x, np.zeros((1, 8, 9, 4, 4), np.float32)),
            r"kernels.*\(1, 8, 9, 4, 4\)",
        ),
        (
            lambda: T.apply_local_kernels(x, np.zeros((1, 8, 9, 3, 5), np.float32)),
            r"kernels.*\(1, 8, 9, 3, 5\)",
        ),
        (
            lambda: T.kpn_kernels_from_logits(np.zeros((1, 8, 9, 24), np.float32), 5),
            r"logits.*\(1, 8, 9, 24\)",
        ),
        (lambda: T.rgb_to_hsv(np.zeros((4, 4), np.float32)), r"x.*\(4, 4\)"),
    ]
    for fn, pattern in cases:
        with pytest.raises(ValueError, match=pattern):
            fn()
