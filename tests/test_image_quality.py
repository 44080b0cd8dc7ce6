"""Paired-view image quality (dakpn_jax/evaluation/image_quality.py) against float64 NumPy references."""

import jax
import numpy as np
import pytest

from dakpn_jax.evaluation import image_quality as iq


def _images(seed, shape=(2, 18, 23, 3)):
    return np.random.default_rng(seed).uniform(size=shape).astype(np.float32)


def _ssim_reference(x, y, size=11, sigma=1.5, k1=0.01, k2=0.03):
    """SSIM by its definition: an explicit loop over every 'valid' window position, float64."""
    i = np.arange(size) - (size - 1) / 2
    g = np.exp(-(i**2) / (2 * sigma**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = k1**2, k2**2
    x, y = x.astype(np.float64), y.astype(np.float64)
    b, h, wd, c = x.shape
    out = np.zeros(b)
    for n in range(b):
        vals = []
        for r in range(h - size + 1):
            for s in range(wd - size + 1):
                for ch in range(c):
                    px, py = (
                        x[n, r : r + size, s : s + size, ch],
                        y[n, r : r + size, s : s + size, ch],
                    )
                    mx, my = (w * px).sum(), (w * py).sum()
                    vx, vy = (w * px * px).sum() - mx**2, (w * py * py).sum() - my**2
                    cxy = (w * px * py).sum() - mx * my
                    vals.append(
                        (2 * mx * my + c1)
                        * (2 * cxy + c2)
                        / ((mx**2 + my**2 + c1) * (vx + vy + c2))
                    )
        out[n] = np.mean(vals)
    return out


def test_psnr_and_ssim_match_definitions():
    x = _images(0)
    y = np.clip(x + np.random.default_rng(1).normal(0, 0.1, x.shape), 0, 1).astype(np.float32)
    mse = ((x.astype(np.float64) - y) ** 2).mean(axis=(1, 2, 3))
    np.testing.assert_allclose(iq.psnr(x, y), 10 * np.log10(1 / mse), rtol=1e-5)
    np.testing.assert_allclose(iq.ssim(x, y), _ssim_reference(x, y), atol=1e-5)
    np.testing.assert_allclose(iq.ssim(x, x), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="smaller than the 11x11 window"):
        iq.ssim(x[:, :8], y[:, :8])
    with pytest.raises(ValueError, match="must be equal"):
        iq.psnr(x, y[:1])


def test_laplacian_pyramid_collapses_back_to_the_image():
    x = _images(2, (1, 32, 40, 3))
    levels = iq.laplacian_pyramid(x, 3)
    assert [lv.shape[1:3] for lv in levels] == [(32, 40), (16, 20), (8, 10)]
    g = np.asarray(levels[-1], np.float64)
    for lv in reversed(levels[:-1]):  # G_i = L_i + up(G_{i+1}), up = zero insertion then 4 x blur
        up = np.zeros((1, 2 * g.shape[1], 2 * g.shape[2], 3))
        up[:, ::2, ::2] = g
        up = np.asarray(iq._blur(up.astype(np.float32), 2 * iq._BINOMIAL))[
            :, : lv.shape[1], : lv.shape[2]
        ]
        g = np.asarray(lv, np.float64) + up
    np.testing.assert_allclose(g, x, atol=1e-5)
    # The low-pass level is the blurred, decimated image: its mean equals the image's up to borders.
    assert abs(float(levels[-1].mean()) - float(x.mean())) < 0.02


def test_sliced_wasserstein_1d_matches_sorted_projections():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(50, 6)), rng.normal(1.0, 2.0, size=(50, 6))
    d = rng.normal(size=(6, 9))
    d /= np.linalg.norm(d, axis=0)
    want = np.mean(np.abs(np.sort(a @ d, axis=0) - np.sort(b @ d, axis=0)))
    got = iq.sliced_wasserstein_1d(a.astype(np.float32), b.astype(np.float32), d.astype(np.float32))
    assert float(got) == pytest.approx(want, rel=1e-5)


def test_swd_sees_a_colour_shift_and_is_deterministic():
    x, x2 = (
        _images(4, (8, 64, 64, 3)),
        _images(5, (8, 64, 64, 3)),
    )  # two samples of one distribution
    shifted = np.clip(x2 * np.array([1.0, 0.6, 0.6], np.float32) + 0.2, 0, 1)
    key = jax.random.key(0)
    same = iq.sliced_wasserstein(x, x2, key)
    diff = iq.sliced_wasserstein(x, shifted, key)
    assert set(same) == {"swd", "swd_level0", "swd_level1", "swd_level2"}
    assert float(diff["swd"]) > 3 * float(same["swd"])
    assert float(iq.sliced_wasserstein(x, shifted, key)["swd"]) == float(diff["swd"])


def test_evaluate_paired_source_psnr_and_class_colour_error():
    rng = np.random.default_rng(6)
    source = [
        {
            "synthetic": rng.integers(0, 256, (16, 20, 3), dtype=np.uint8),
            "real": rng.integers(0, 256, (16, 20, 3), dtype=np.uint8),
            "label": rng.integers(0, 3, (16, 20)).astype(np.uint8),
        }
        for _ in range(5)
    ]
    source[0]["label"][:4] = 255  # ignore pixels stay out of the colour means
    darker = lambda x, y: x * 0.5
    out = iq.evaluate_paired_source(darker, source, batch_size=2, num_classes=4)
    syn = np.stack([s["synthetic"] for s in source]) / 255.0 * 0.5
    real = np.stack([s["real"] for s in source]) / 255.0
    label = np.stack([s["label"] for s in source])
    assert out["psnr"] == pytest.approx(
        np.mean(10 * np.log10(1 / ((syn - real) ** 2).mean(axis=(1, 2, 3)))), abs=1e-4
    )
    errs = [
        np.linalg.norm(syn[label == k].mean(0) - real[label == k].mean(0))
        for k in range(4)
        if (label == k).any()
    ]
    assert len(errs) == 3
    assert out["class_color_err"] == pytest.approx(np.mean(errs), abs=1e-6)
    assert "class_color_err" not in iq.evaluate_paired_source(darker, source, batch_size=2)
    with pytest.raises(ValueError, match="returned"):
        iq.evaluate_paired_source(lambda x, y: x[:, :8], source)
    with pytest.raises(ValueError, match="'label'"):
        iq.evaluate_paired_source(
            darker, [{"synthetic": source[0]["synthetic"], "real": source[0]["real"]}]
        )


def test_class_color_stats_match_loops():
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(2, 4, 5, 3))
    y = rng.integers(0, 3, size=(2, 4, 5)).astype(np.uint8)
    y[0, 0] = 255
    mean, count = iq.class_color_stats(x, y, 4)
    for k in range(4):
        sel = y == k
        assert count[k] == sel.sum()
        if sel.any():
            np.testing.assert_allclose(mean[k], x[sel].mean(0), atol=1e-12)
