"""The training-free controls (dakpn_jax/controls.py, docs/METHOD.md §9) against float64 NumPy references,
and the spatially uniform DA-KPN (one theta per image)."""

import colorsys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dakpn_jax import controls, translation


def _rand(shape, seed):
    return np.random.default_rng(seed).uniform(0.05, 0.95, shape).astype(np.float32)


# ----------------------------------------------------------------------------- FDA


def _spec_mask(H, W, beta):
    """The spec (docs/METHOD.md §9): a centred square of half-width b = floor(beta min(H, W)) around DC, cut
    as the FDA authors' NumPy code does: rows c - b .. c + b and columns likewise of the
    fftshift-ed spectrum (c = floor(H / 2)), mapped back to numpy's unshifted layout."""
    b = int(np.floor(beta * min(H, W)))
    shifted = np.zeros((H, W), bool)
    cy, cx = H // 2, W // 2
    shifted[cy - b : cy + b + 1, cx - b : cx + b + 1] = True
    return np.fft.ifftshift(shifted)


@pytest.mark.parametrize("beta", [0.09, 0.2])
def test_fda_low_frequency_amplitude_is_the_targets_and_phase_is_kept(beta):
    H, W = 32, 48
    x, ref = _rand((2, H, W, 3), 0), _rand((2, H, W, 3), 1)
    out = np.asarray(controls.fda(x, ref, beta, clip=False), np.float64)
    fx = np.fft.fft2(x.astype(np.float64), axes=(1, 2))
    fr = np.fft.fft2(ref.astype(np.float64), axes=(1, 2))
    fo = np.fft.fft2(out, axes=(1, 2))
    mask = _spec_mask(H, W, beta)
    assert mask.sum() == (2 * int(np.floor(beta * H)) + 1) ** 2 > 1
    m = np.broadcast_to(mask[None, :, :, None], fo.shape)
    np.testing.assert_allclose(np.abs(fo)[m], np.abs(fr)[m], rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(np.abs(fo)[~m], np.abs(fx)[~m], rtol=1e-3, atol=1e-3)
    big = np.abs(fx) > 1e-2  # the phase of (near-)zero coefficients is noise
    dphase = np.angle(fo[big] * np.conj(fx[big]))
    np.testing.assert_allclose(dphase, 0.0, atol=2e-3)
    # An independent float64 NumPy FDA gives the same image.
    want = np.real(
        np.fft.ifft2(np.where(m, np.abs(fr), np.abs(fx)) * np.exp(1j * np.angle(fx)), axes=(1, 2))
    )
    np.testing.assert_allclose(out, want, atol=1e-4)
    clipped = np.asarray(controls.fda(x, ref, beta))
    np.testing.assert_allclose(clipped, np.clip(want, 0, 1), atol=1e-4)


def test_fda_beta_zero_is_identity_and_bad_beta_is_refused():
    x, ref = _rand((1, 16, 32, 3), 2), _rand((1, 16, 32, 3), 3)
    np.testing.assert_allclose(np.asarray(controls.fda(x, ref, 0.0)), x, atol=1e-5)
    # floor(0.03 * 16) = 0: the DC term alone, i.e. each channel's mean becomes the reference's.
    dc = np.asarray(controls.fda(x, ref, 0.03, clip=False), np.float64)
    want = x - x.mean(axis=(1, 2), keepdims=True) + ref.mean(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(dc, want, atol=1e-5)
    with pytest.raises(ValueError, match="beta"):
        controls.fda(x, ref, 0.7)
    with pytest.raises(ValueError, match="one shape"):
        controls.fda(x, ref[:, :8], 0.05)


# ----------------------------------------------------------------------------- histogram matching


def test_histogram_matching_cdf_equals_the_references_at_the_references_values():
    x, ref = _rand((2, 12, 20, 3), 4), _rand((2, 12, 20, 3), 5) ** 2  # continuous: no ties
    out = np.asarray(controls.match_histograms(x, ref))
    for b in range(2):
        for c in range(3):
            r, o = ref[b, ..., c].ravel(), out[b, ..., c].ravel()
            cdf_ref = (r[None, :] <= r[:, None]).mean(1)
            cdf_out = (o[None, :] <= r[:, None]).mean(1)
            np.testing.assert_array_equal(cdf_out, cdf_ref)
            # ... and it is a monotone map of the source: ranks are kept.
            np.testing.assert_array_equal(
                np.argsort(x[b, ..., c].ravel()), np.argsort(o, kind="stable")
            )


def test_histogram_matching_other_reference_size_and_ties():
    x = np.round(_rand((1, 16, 16, 3), 6) * 20) / 20  # many ties
    ref = _rand((1, 10, 30, 3), 7)
    out = np.asarray(controls.match_histograms(x, ref))
    for c in range(3):
        r, o = ref[0, ..., c].ravel(), out[0, ..., c].ravel()
        # Equal inputs give equal outputs (a pixel's output depends on its value alone) ...
        for v in np.unique(x[0, ..., c]):
            assert len(np.unique(o[x[0, ..., c].ravel() == v])) == 1
        # ... and the CDF matches up to the size of the largest tie group.
        cdf_ref = (r[None, :] <= r[:, None]).mean(1)
        cdf_out = (o[None, :] <= r[:, None]).mean(1)
        ties = max(np.unique(x[0, ..., c], return_counts=True)[1]) / o.size
        assert np.max(np.abs(cdf_out - cdf_ref)) <= ties + 1.0 / r.size + 1e-9


# ----------------------------------------------------------------------------- Reinhard


def _lab64(x):
    """Reinhard et al. 2001, eqs. 4 and 6 (float64, written from the paper)."""
    m = np.array([[0.3811, 0.5783, 0.0402], [0.1967, 0.7244, 0.0782], [0.0241, 0.1288, 0.8444]])
    n = np.diag([3**-0.5, 6**-0.5, 2**-0.5]) @ np.array([[1, 1, 1], [1, 1, -2], [1, -1, 0]])
    return np.log10(np.maximum(x.astype(np.float64) @ m.T, 1 / 255)) @ n.T


def test_reinhard_matches_the_references_lab_mean_and_std():
    x, ref = _rand((2, 16, 24, 3), 8) * 0.6 + 0.2, _rand((2, 8, 12, 3), 9) * 0.5 + 0.25
    out = np.asarray(controls.reinhard(x, ref, clip=False))
    lo, lr = _lab64(out), _lab64(ref)
    np.testing.assert_allclose(lo.mean((1, 2)), lr.mean((1, 2)), atol=2e-4)
    np.testing.assert_allclose(lo.std((1, 2)), lr.std((1, 2)), rtol=2e-3, atol=2e-4)
    np.testing.assert_allclose(
        np.asarray(controls.lab_to_rgb(controls.rgb_to_lab(x))), x, atol=2e-5
    )


# ----------------------------------------------------------------------------- randomisation


def _labels(B, H, W, seed):
    rng = np.random.default_rng(seed)
    y = np.zeros((B, H, W), np.int32)
    for b in range(B):  # vertical stripes of random classes, plus ignore pixels
        cuts = np.sort(rng.choice(np.arange(1, W), 3, replace=False))
        for j, (a, e) in enumerate(zip([0, *cuts], [*cuts, W])):
            y[b, :, a:e] = rng.integers(0, 19)
        y[b, :2, :3] = 255
    return y


def test_random_class_params_stay_in_range_and_are_constant_per_class_region():
    B, H, W = 3, 8, 16
    y = _labels(B, H, W, 0)
    keys = jax.vmap(lambda i: jax.random.key_data(jax.random.key(i)))(jnp.arange(B))
    theta = np.asarray(controls.random_class_params(keys, jnp.asarray(y), 19))
    r = np.asarray(controls.DEFAULT_RANGES)
    assert theta.shape == (B, H, W, 12)
    assert np.all(theta >= r[:, 0] - 1e-7) and np.all(theta <= r[:, 1] + 1e-7)
    for b in range(B):
        for c in np.unique(y[b]):
            region = theta[b][y[b] == c]
            np.testing.assert_array_equal(region, np.broadcast_to(region[0], region.shape))
    assert len({tuple(theta[b, 4, 8]) for b in range(B)}) > 1  # images get different draws
    with pytest.raises(ValueError, match="ranges"):
        controls.random_class_params(keys, jnp.asarray(y), 19, ranges=[(0, 1)] * 11)


def test_randomize_never_moves_a_pixel():
    """Without blur and noise, each output pixel is the HSV affine of its own input pixel with its
    class's theta (colorsys float64 reference): nothing moves, so labels and edges stay exact."""
    B, H, W = 2, 6, 10
    x, y = _rand((B, H, W, 3), 10), _labels(B, H, W, 1)
    ranges = [(0.8, 1.2), (0.5, 1.1), (0.6, 1.1), (-0.2, 0.2), (-0.1, 0.1), (-0.1, 0.1)] + [
        (0.0, 0.0)
    ] * 6
    keys = jax.vmap(lambda i: jax.random.key_data(jax.random.key(i)))(jnp.arange(B) + 7)
    out = np.asarray(controls.randomize(x, jnp.asarray(y), keys, ranges=ranges, kernel_size=3))
    k_theta = jax.vmap(lambda k: jax.random.split(k)[0])(keys)
    theta = np.asarray(
        controls.random_class_params(k_theta, jnp.asarray(y), 19, ranges), np.float64
    )
    for b in range(B):
        for i in range(H):
            for j in range(W):
                t = theta[b, i, j]
                h, s, v = colorsys.rgb_to_hsv(*x[b, i, j].astype(np.float64))
                hsv = (
                    (t[0] * h + t[3]) % 1.0,
                    np.clip(t[1] * s + t[4], 0, 1),
                    np.clip(t[2] * v + t[5], 0, 1),
                )
                np.testing.assert_allclose(out[b, i, j], colorsys.hsv_to_rgb(*hsv), atol=2e-4)


def test_make_control_is_reproducible_per_frame_and_validates():
    x = _rand((3, 16, 32, 3), 11)
    y = _labels(3, 16, 32, 2)
    ref = (np.random.default_rng(0).uniform(0, 1, (5, 16, 32, 3)) * 255).astype(np.uint8)
    for name in controls.CONTROLS:
        fn = controls.make_control(name, reference=ref, seed=3, beta=0.1, kernel_size=5)
        a = np.asarray(fn(x, y))
        b = np.asarray(fn(x[::-1], y[::-1]))[::-1]  # same frames, other batch positions
        np.testing.assert_allclose(a, b, atol=1e-6, err_msg=name)
        assert a.shape == x.shape and 0.0 <= a.min() and a.max() <= 1.0
    with pytest.raises(ValueError, match="reference"):
        controls.make_control("histogram")
    with pytest.raises(ValueError, match="unknown"):
        controls.make_control("nope")


# ----------------------------------------------------------------------------- uniform DA-KPN


def test_uniform_dakpn_theta_is_constant_over_the_image():
    """configs/default.py:tiny with model.param_size = (1, 1) (the protocol's dakpn_uniform row):
    theta is one vector per image, and the translator applies exactly that constant map."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from configs import default
    from dakpn_jax.training import (
        dakpn,
        gan_common as gc,
        dakpn_config,
        dakpn_networks,
        dakpn_segmenter,
    )

    config = default.get_config("tiny")
    config.model.param_size = (1, 1)
    state = dakpn.init_state(config, jax.random.key(0))
    # Move the head off its identity init so theta depends on the features.
    leaves, tree = jax.tree.flatten(state["params"]["kpn"])
    keys = jax.random.split(jax.random.key(1), len(leaves))
    state["params"]["kpn"] = jax.tree.unflatten(
        tree, [l + 0.3 * jax.random.normal(k, l.shape) for l, k in zip(leaves, keys)]
    )
    H, W = config.data.height, config.data.width
    x, y = jnp.asarray(_rand((2, H, W, 3), 12)), jnp.asarray(_labels(2, H, W, 3))
    feats = dakpn_segmenter.make_feature_fn(config)(x, y, dakpn_config.grid_for(config, H, W))
    theta_low = dakpn_networks.predict_params(
        gc.merge(dakpn_networks.graphdefs(config)["kpn"], state["params"]["kpn"]), feats, x
    )
    assert theta_low.shape == (2, 1, 1, 12)
    theta = np.asarray(translation.upsample_params(theta_low, H, W))
    np.testing.assert_allclose(theta, np.broadcast_to(theta[:, :1, :1], theta.shape), atol=1e-6)
    assert not np.allclose(theta[0, 0, 0], theta[1, 0, 0])  # one theta per image, not one overall
    out = dakpn.make_translator(config, state)(x, y)
    noise = translation.noise_field(config.model.noise_seed, H, W, base_size=(H, W))
    want = translation.translate(
        x, jnp.broadcast_to(theta_low, (2, H, W, 12)), noise, kernel_size=config.model.kernel_size
    )
    np.testing.assert_allclose(np.asarray(out), np.asarray(want), atol=1e-5)


def test_uninformed_randomisation_draws_within_its_generic_ranges():
    """The uninformed control's theta lies in ranges fixed without the target domain: symmetric
    about the identity (hue shift +-0.1, saturation and value x [0.6, 1.4], no additive s / v shift,
    sigma <= 1.5 px, noise std <= 0.05); a name resolves to its table, an unknown name is refused."""
    from dakpn_jax import controls as ctl

    expected = np.array(
        [
            [1.0, 1.0],
            [0.6, 1.4],
            [0.6, 1.4],
            [-0.1, 0.1],
            [0.0, 0.0],
            [0.0, 0.0],
            [0.0, 1.5],
            [0.0, 1.5],
            [0.0, 1.5],
            [0.0, 0.05],
            [0.0, 0.05],
            [0.0, 0.05],
        ],
        np.float32,
    )
    np.testing.assert_array_equal(ctl._ranges("uninformed"), expected)
    labels = jnp.asarray(np.random.default_rng(0).integers(0, 19, (16, 8, 8)))
    keys = jax.vmap(jax.random.key)(jnp.arange(16))
    theta = np.asarray(ctl.random_class_params(keys, labels, 19, "uninformed")).reshape(-1, 12)
    assert np.all(theta >= expected[:, 0] - 1e-7) and np.all(theta <= expected[:, 1] + 1e-7)
    assert theta[:, 1].min() < 0.8 and theta[:, 1].max() > 1.2  # spread over the range, not pinned
    fn = ctl.make_control("randomize", ranges="uninformed", kernel_size=5)
    x = jnp.asarray(np.random.default_rng(1).uniform(size=(2, 8, 8, 3)), jnp.float32)
    assert fn(x, labels[:2]).shape == x.shape
    with pytest.raises(ValueError, match="uninformed"):
        ctl.make_control("randomize", ranges="unknown_name")
