"""The family ceiling (an oracle fitted on paired views) and the paired-view diagnostics (issue 23)."""

import colorsys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dakpn_jax import translation
from dakpn_jax.evaluation import family

EPS32 = float(np.finfo(np.float32).eps)


def _known_pairs(seed=0):
    """3 classes in vertical bands (mirrored in image 2); every pixel a random HSV colour inside its
    class's range (a spread of hue, saturation and value makes each affine scale identifiable and the
    texture makes the blur identifiable); the real image is `dakpn_jax.translate` with a known
    per-class theta (noise 0)."""
    rng = np.random.default_rng(seed)
    B, H, W = 2, 24, 48
    lab = np.zeros((B, H, W), np.int32)
    lab[:, :, 16:32], lab[:, :, 32:] = 1, 2
    lab[1] = lab[1][:, ::-1]
    u = lambda: rng.random((B, H, W))
    hsv = np.stack(
        [np.array([0.2, 0.35, 0.5])[lab] + 0.3 * u(), 0.1 + 0.8 * u(), 0.1 + 0.8 * u()], -1
    )
    x = np.asarray(translation.hsv_to_rgb(jnp.asarray(hsv, jnp.float32)))
    # Chosen so no hue wraps and no saturation / value clips: the map is smooth at the optimum.
    true = np.array(
        [
            [1.1, 0.7, 0.9, -0.05, 0.05, 0.05, 0.7, 0.8, 0.9, 0, 0, 0],
            [0.9, 0.8, 1.0, 0.03, 0.0, -0.05, 1.2, 1.1, 1.0, 0, 0, 0],
            [1.0, 0.6, 0.8, 0.0, 0.1, 0.1, 0.5, 0.6, 1.4, 0, 0, 0],
        ],
        np.float32,
    )
    real = translation.translate(
        jnp.asarray(x), jnp.asarray(true[lab]), jnp.zeros((1, H, W, 3)), kernel_size=5
    )
    return {"synthetic": x, "real": np.asarray(real), "label": lab}, true


def test_ceiling_fit_recovers_a_known_theta(tmp_path):
    pairs, true = _known_pairs()
    H, W = pairs["label"].shape[1:]
    # grid = the frame: the one-hot features are exact per pixel, so T(x; true) is in the fitted class.
    ceiling = family.fit_ceiling(pairs, num_classes=3, grid=(H, W), kernel_size=5, steps=300)
    # The loss reaches its float32 floor: residuals of a few float32 roundings of values <= 1, so a
    # mean square below (10 eps32)^2 ...
    assert ceiling.loss < (10 * EPS32) ** 2
    # ... and theta is then pinned to that residual over the smallest sensitivity of the images to a
    # parameter (about 0.05: hue scale times the class's hue spread about its centre), i.e. to about
    # 10 eps32 / 0.05 = 2.4e-5; allowed: 4x that.
    np.testing.assert_allclose(ceiling.class_theta[:, :9], true[:, :9], rtol=0, atol=1e-4)
    np.testing.assert_array_equal(ceiling.class_theta[:, 9:], 0.0)  # noise pinned to 0 by the fit

    # As a translator: in memory, and saved then served by load_translator (the export route).
    fn = family.make_ceiling_translator(ceiling)
    out = np.asarray(fn(pairs["synthetic"], pairs["label"]))
    assert np.max(np.abs(out - pairs["real"])) < 1e-3
    from dakpn_jax import inference

    family.save_ceiling_run(tmp_path / "ceiling", ceiling, {"name": "procedural"})
    t = inference.load_translator(str(tmp_path / "ceiling"))
    assert t.method == "ceiling" and t.config.ceiling.label == family.CEILING_LABEL
    np.testing.assert_allclose(
        np.asarray(t(pairs["synthetic"], pairs["label"])), out, rtol=0, atol=1e-6
    )
    with pytest.raises(ValueError, match="labels"):
        t(pairs["synthetic"])
    noisy = family.make_ceiling_translator(ceiling, noise="residual")  # residual std ~ 0 here
    assert (
        np.max(
            np.abs(np.asarray(noisy(pairs["synthetic"], pairs["label"], jax.random.key(0))) - out)
        )
        < 1e-3
    )


def test_fit_ceiling_rejects_bad_input():
    pairs, _ = _known_pairs()
    with pytest.raises(ValueError, match="mode"):
        family.fit_ceiling(pairs, mode="per_image", num_classes=3)
    with pytest.raises(ValueError, match="label"):
        family.fit_ceiling({**pairs, "label": pairs["label"][:, :-1]}, num_classes=3, grid=(4, 8))
    with pytest.raises(ValueError, match="grid"):
        family.fit_ceiling(pairs, num_classes=3, grid=(48, 8))
    with pytest.raises(ValueError, match="ceiling"):
        family.gap_fraction(20.0, 15.0, 15.0)
    # The per-pixel ceiling belongs to its own pairs: a score, never a translator.
    per_pixel = family.fit_ceiling(
        pairs, mode="per_pixel", num_classes=3, grid=(6, 12), kernel_size=5, steps=2
    )
    assert per_pixel.params["raw"].shape == (2, 6, 12, 12) and per_pixel.class_theta.shape == (
        3,
        12,
    )
    with pytest.raises(ValueError, match="per_class"):
        family.make_ceiling_translator(per_pixel)


def test_diagnostics_match_a_hand_computation():
    # A hand-made pair: one 2 x 4 image, class 0 on the left half, class 1 on the right, 255 in one pixel.
    syn = np.array(
        [
            [
                [[0.9, 0.1, 0.1], [0.8, 0.2, 0.1], [0.1, 0.1, 0.9], [0.2, 0.1, 0.8]],
                [[0.7, 0.1, 0.2], [0.9, 0.2, 0.2], [0.1, 0.2, 0.9], [0.5, 0.5, 0.5]],
            ]
        ],
        np.float32,
    )
    lab = np.array([[[0, 0, 1, 1], [0, 0, 1, 255]]], np.int32)
    real = np.clip(syn * 0.5 + 0.2, 0, 1).astype(np.float32)
    fake = np.clip(syn * 0.6 + 0.15, 0, 1).astype(np.float32)
    ceil = np.clip(syn * 0.5 + 0.21, 0, 1).astype(np.float32)
    pairs = {"synthetic": syn, "real": real, "label": lab}
    params = np.zeros((2, 12))
    params[:, 6:9], params[:, 9:12] = (
        [[1.0, 2.0, 3.0], [0.5, 0.5, 0.5]],
        [[0.01, -0.02, 0.03], [0, 0, 0.03]],
    )
    quiet = np.clip(syn * 0.55 + 0.18, 0, 1).astype(np.float32)
    d = family.diagnose(
        lambda x, y: fake,
        pairs,
        2,
        ceiling_fn=lambda x, y: ceil,
        class_params=params,
        noise_free_fn=lambda x, y: quiet,
    )

    # Float64 reference, written out by hand.
    f64 = lambda a: a.astype(np.float64)
    psnr = lambda a, b: 10 * np.log10(1 / np.mean((f64(a) - f64(b)) ** 2))
    p, p0, pc = psnr(fake, real), psnr(syn, real), psnr(ceil, real)
    # The statistics are float64 over float32 inputs: only the inputs' rounding remains (exact here up
    # to a few float64 ulps).
    tol = dict(rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(
        [d["psnr"], d["psnr_untranslated"], d["psnr_ceiling"]], [p, p0, pc], **tol
    )
    np.testing.assert_allclose(d["gap_fraction"], (p - p0) / (pc - p0), **tol)
    pq = psnr(quiet, real)
    np.testing.assert_allclose(
        [d["psnr_noise_free"], d["gap_fraction_noise_free"]], [pq, (pq - p0) / (pc - p0)], **tol
    )
    assert sorted(d["classes"]) == [0, 1]
    for c, idx in ((0, [(0, 0), (0, 1), (1, 0), (1, 1)]), (1, [(0, 2), (0, 3), (1, 2)])):
        e = d["classes"][c]
        assert e["count"] == len(idx)
        for name, img in (
            ("translated", fake),
            ("real", real),
            ("ceiling", ceil),
            ("untranslated", syn),
        ):
            mean = np.mean([f64(img[0, i, j]) for i, j in idx], axis=0)
            np.testing.assert_allclose(e["rgb"][name], mean, **tol)
            np.testing.assert_allclose(e["hsv"][name], colorsys.rgb_to_hsv(*mean), **tol)
            if name != "real":
                real_mean = np.mean([f64(real[0, i, j]) for i, j in idx], axis=0)
                np.testing.assert_allclose(
                    e["dist"][name], np.sqrt(np.sum((mean - real_mean) ** 2)), **tol
                )
        np.testing.assert_allclose(e["sigma"]["translated"], params[c, 6:9].mean(), **tol)
        np.testing.assert_allclose(e["noise"]["translated"], np.abs(params[c, 9:12]).mean(), **tol)
    # fake = 0.6 syn + 0.15 lies further from 0.5 syn + 0.2 than ... compare by hand: class distances.
    regress = [
        c
        for c in (0, 1)
        if d["classes"][c]["dist"]["translated"] > d["classes"][c]["dist"]["untranslated"]
    ]
    assert family.colour_regressions(d) == regress
    s = family.scalars(d, ("a", "b"))
    assert (
        s["gap_fraction"] == d["gap_fraction"]
        and s["colour_dist/b"] == d["classes"][1]["dist"]["translated"]
    )


def test_class_mean_params_is_area_weighted():
    theta = np.arange(2 * 12, dtype=np.float64).reshape(1, 1, 2, 12)
    feats = np.array([[[[1.0, 0.0], [0.25, 0.75]]]])
    out = family.class_mean_params(theta, feats)
    np.testing.assert_allclose(out[0], (theta[0, 0, 0] + 0.25 * theta[0, 0, 1]) / 1.25, rtol=1e-15)
    np.testing.assert_allclose(out[1], theta[0, 0, 1], rtol=1e-15)


def test_no_dakpn_training_source_reads_the_paired_view(monkeypatch):
    """The issue's rule: training never sees pairs. Every split a DA-KPN training source asks for
    (iterators, batches, train steps) is recorded; paired-eval must not be among them."""
    from configs.default import get_config
    from dakpn_jax.data import sources
    from dakpn_jax.training import dakpn

    asked = []
    real_make_source = sources.make_source

    def spy(data_config, split):
        asked.append(split)
        return real_make_source(data_config, split)

    monkeypatch.setattr(sources, "make_source", spy)
    config = get_config("tiny")
    iterators = dakpn.make_iterators(config)
    state = dakpn.init_state(config, jax.random.key(0))
    step = jax.jit(dakpn.make_train_step(config))
    for _ in range(2):
        state, metrics = step(state, dakpn.next_batch(iterators))
    assert np.isfinite(float(metrics["loss_D"]))
    assert asked and set(asked) <= {"synthetic-train", "real-train"}, asked
    # The evaluation hook does read it (it is evaluation-only data): the spy sees that too.
    dakpn.evaluate(config, state)
    assert "paired-eval" in asked
