"""Class-prior weights of DA-KPN's fake terms (``config.loss.class_weights``): the priors and the
weights against hand computations, the weighted D and G terms against a float64 NumPy
recomputation, and the switch off bit for bit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from dakpn_jax.training import class_weights, dakpn, dakpn_config
from dakpn_jax.training import dakpn_losses as L


def test_class_frequencies_and_prior_ratio_weights_by_hand():
    labels = [
        {"label": np.array([[0, 0, 1], [2, 255, 1]])},
        {"label": np.array([[1, 1, 1], [0, 7, 255]])},  # 7: outside C = 4, excluded like 255
    ]
    f = class_weights.class_frequencies(labels, 4)
    np.testing.assert_array_equal(f, np.array([3, 5, 1, 0]) / 9)  # 9 labelled pixels
    np.testing.assert_array_equal(
        class_weights.class_frequencies(labels, 4, max_images=1), [0.4, 0.4, 0.2, 0]
    )
    syn = np.array([0.5, 0.3, 0.2, 0.0])
    target = np.array([0.25, 0.25, 0.5, 0.0])
    w = class_weights.prior_ratio_weights(target, syn)
    raw = np.array([0.5, 0.25 / 0.3, 2.5, 1.0])  # ratios; class 3 absent from synthetic: 1
    np.testing.assert_allclose(w, raw / (0.5 * 0.5 + 0.3 * 0.25 / 0.3 + 0.2 * 2.5), rtol=1e-15)
    np.testing.assert_allclose(np.sum(syn * w), 1.0, rtol=1e-15)
    # Clipping: a class the target sample lacks keeps 0.1 of its ratio floor, none beyond 10.
    w = class_weights.prior_ratio_weights(
        np.array([0.0, 0.99, 0.01, 0]), np.array([0.5, 0.01, 0.49, 0])
    )
    raw = np.array([0.1, 10.0, 0.1, 1.0])
    np.testing.assert_allclose(w, raw / (0.05 + 0.1 + 0.049), rtol=1e-15)
    with pytest.raises(ValueError, match="empty"):
        class_weights.class_frequencies([], 4)
    with pytest.raises(ValueError, match="no labelled pixel"):
        class_weights.class_frequencies([{"label": np.full((2, 2), 255)}], 4)


def _np_softplus(x):
    return np.logaddexp(0.0, x)


@pytest.mark.parametrize("form", ["saturating", "non_saturating", "lsgan", "hinge"])
def test_weighted_fake_terms_equal_the_float64_reference(form):
    """A stand-in D with per-pixel logits (so each logit's weight is its pixel's w_c): D's fake term
    is sum w d_fake(l) / sum w and G's sum w g(l) / sum w, per view, with w_c of the synthetic
    pixel's class (1 for ignored pixels, the tile's weights cropped at its position)."""
    rng = np.random.default_rng(0)
    b, h, w_, c = 3, 8, 12, 5
    labels = rng.integers(0, c, (b, h, w_))
    labels[0, :2, :3] = 255
    cw = rng.uniform(0.2, 3.0, c)
    pos = np.array([[0, 0], [4, 6], [2, 3]])
    tile = (4, 6)
    fw = L.fake_weight_maps(
        jnp.asarray(cw, jnp.float32), jnp.asarray(labels), jnp.asarray(pos), tile
    )
    wpix = np.where(labels == 255, 1.0, cw[np.clip(labels, 0, c - 1)])
    np.testing.assert_allclose(np.asarray(fw["low"]), wpix, rtol=1e-6)
    want_tile = np.stack([wpix[i, p : p + 4, q : q + 6] for i, (p, q) in enumerate(pos)])
    np.testing.assert_allclose(np.asarray(fw["tile"]), want_tile, rtol=1e-6)

    fakes = {"tile": rng.normal(size=(b, 4, 6, 3)), "low": rng.normal(size=(b, h, w_, 3))}
    reals = {"tile": rng.normal(size=(b, 4, 6, 3)), "low": rng.normal(size=(b, h, w_, 3))}
    d = lambda x: [2.0 * x[..., :1] - 0.3]  # one level, one logit per pixel
    as32 = lambda t: {k: jnp.asarray(v, jnp.float32) for k, v in t.items()}
    views = ("tile", "low")
    loss, out, _ = L.discriminator_loss(
        d, as32(reals), as32(fakes), None, form=form, views=views, r1=0.0, fake_weights=fw
    )
    g, _ = L.generator_loss(
        d,
        as32(fakes),
        jnp.asarray(fakes["tile"], jnp.float32),
        None,
        form=form,
        views=views,
        identity=0.0,
        fake_weights=fw,
    )
    d_fake = {
        "saturating": _np_softplus,
        "non_saturating": _np_softplus,
        "lsgan": np.square,
        "hinge": lambda l: np.maximum(0.0, 1.0 + l),
    }[form]
    d_real = {
        "saturating": lambda l: _np_softplus(-l),
        "non_saturating": lambda l: _np_softplus(-l),
        "lsgan": lambda l: np.square(l - 1.0),
        "hinge": lambda l: np.maximum(0.0, 1.0 - l),
    }[form]
    g_el = {
        "saturating": lambda l: -_np_softplus(l),
        "non_saturating": lambda l: _np_softplus(-l),
        "lsgan": lambda l: np.square(l - 1.0),
        "hinge": lambda l: -l,
    }[form]
    logit = lambda x: 2.0 * np.asarray(np.float32(x), np.float64)[..., 0] - 0.3
    wmaps = {"tile": want_tile, "low": wpix}
    # float32 sums of n terms: within 2 n u of the weighted sum of |terms| (u = 2^-24; the factor 2
    # covers the weights' and the logits' own roundings), whatever order the processor sums in.
    bound = lambda terms, wm: 2 * terms.size * 2.0**-24 * np.sum(wm * np.abs(terms)) / np.sum(wm)
    want_d, want_g, tol_d, tol_g = 0.0, 0.0, 0.0, 0.0
    for v in views:
        lf, lr, wm = logit(fakes[v]), logit(reals[v]), wmaps[v]
        want_v = np.mean(d_real(lr)) + np.sum(wm * d_fake(lf)) / np.sum(wm)
        tol_v = bound(d_real(lr), np.ones_like(lr)) + bound(d_fake(lf), wm)
        np.testing.assert_allclose(float(out[f"loss_D_{v}"]), want_v, rtol=0, atol=tol_v)
        want_d, tol_d = want_d + want_v, tol_d + tol_v
        want_g += np.sum(wm * g_el(lf)) / np.sum(wm)
        tol_g += bound(g_el(lf), wm)
    np.testing.assert_allclose(float(loss), want_d, rtol=0, atol=tol_d)
    np.testing.assert_allclose(float(g), want_g, rtol=0, atol=tol_g)
    # The unweighted mean differs: the check is not vacuous.
    plain, _, _ = L.discriminator_loss(
        d, as32(reals), as32(fakes), None, form=form, views=views, r1=0.0
    )
    assert abs(float(plain) - want_d) > 1e-3


def test_unit_weights_are_the_unweighted_step_and_bad_weights_are_refused():
    """All w_c = 1: the same step as no weights (to float32 rounding of a mean written as a
    weighted sum); the step with weights moves D's loss; wrong lengths and rules name the field."""
    from tests.test_dakpn import tiny_batch

    c = default.get_config("tiny")
    state = dakpn.init_state(c, jax.random.key(0))
    batch = {k: jnp.asarray(v) for k, v in tiny_batch(c, n=4).items()}
    _, m0 = jax.jit(dakpn.make_train_step(c))(state, batch)
    c1 = default.get_config("tiny")
    c1.loss.class_weights = (1.0,) * c1.model.num_classes
    _, m1 = jax.jit(dakpn.make_train_step(c1))(state, batch)
    for k in ("loss_D", "loss_G"):
        np.testing.assert_allclose(float(m1[k]), float(m0[k]), rtol=1e-5)
    c2 = default.get_config("tiny")
    c2.loss.class_weights = tuple(0.2 + 0.3 * i for i in range(c2.model.num_classes))
    _, m2 = jax.jit(dakpn.make_train_step(c2))(state, batch)
    assert abs(float(m2["loss_D"]) - float(m0["loss_D"])) > 1e-4
    bad = default.get_config("tiny")
    bad.loss.class_weights = (1.0, 2.0)
    with pytest.raises(ValueError, match="class_weights.*num_classes"):
        dakpn_config.check_config(bad)
    bad.loss.class_weights = (1.0,) * bad.model.num_classes
    bad.loss.update_rule = "gradient_reversal"
    with pytest.raises(ValueError, match="class_weights.*alternating"):
        dakpn_config.check_config(bad)
