"""DA-KPN's discriminator conditioned on semantic maps (``loss.d_condition``, dakpn.py "Conditioned D").

The maps D sees are recomputed here in float64 NumPy from the batch and the state key alone: the
tile positions by the step's key split (4 keys: synthetic tile, real tile, noise, next state), the
one-hot labels and a stand-in segmenter's softmax / argmax, cropped and block-averaged. Then D's
logits on ``concat(view, map)`` (the merged PatchGAN called on the NumPy inputs) must equal the
step's logged ``D_real_<v>`` / ``D_fake_<v>``; with ``d_condition = "none"`` the same check runs on
the RGB views and D keeps 3 input channels.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from conftest import crop, np_box, procedural_batch, reference_tile_positions
from dakpn_jax.training import (
    dakpn,
    dakpn_config,
    dakpn_features,
    dakpn_losses,
    dakpn_networks,
    dakpn_segmenter,
)
from dakpn_jax.training import gan_common as gc

B = 4


def _config(condition="segmenter", fake="labels", probs="hard", **loss):
    c = default.get_config("tiny")
    c.loss.update(d_condition=condition, d_condition_fake=fake, d_condition_probs=probs, **loss)
    if condition != "none":
        c.segmenter_workdir = "/nonexistent"  # never read: the stand-in segmenter is given
    return c


def _batch(c):
    return procedural_batch(c.data, B, real_offset=3)


def _segmenter(C):
    """Stand-in frozen segmenter: logits = 4 * (images - 0.5) @ w, (B, H, W, 3) -> (B, H, W, C)."""
    w = np.asarray(jax.random.normal(jax.random.key(7), (3, C)), np.float32)
    return (lambda p, x: jnp.einsum("bhwc,ck->bhwk", 4.0 * (x - 0.5), p["w"])), {
        "w": jnp.asarray(w)
    }


# ----------------------------------------------------------------------------- float64 references


def np_probs(images, w, probs):
    logits = np.einsum(
        "bhwc,ck->bhwk", 4.0 * (np.asarray(images, np.float64) - 0.5), np.asarray(w, np.float64)
    )
    if probs == "hard":
        return (logits.argmax(-1)[..., None] == np.arange(w.shape[1])).astype(np.float64)
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def tile_positions(key, frame, tile):
    return reference_tile_positions(key, B, frame, tile)


def reference_maps(c, rng, batch, w):
    """{"fake": {view: map}, "real": {view: map}} and the real RGB views, float64."""
    x, y, r = batch["synthetic"], batch["label"], batch["real"]
    tile, low = tuple(c.model.tile_size), tuple(c.model.low_size)
    keys = jax.random.split(jax.random.wrap_key_data(rng), 4)
    pos, pos_real = (
        tile_positions(keys[0], x.shape[1:3], tile),
        tile_positions(keys[1], r.shape[1:3], tile),
    )
    C, l = c.model.num_classes, c.loss
    s_fake = (
        (np.asarray(y)[..., None] == np.arange(C)).astype(np.float64)
        if l.d_condition_fake == "labels"
        else np_probs(x, w, l.d_condition_probs)
    )
    s_real = np_probs(r, w, l.d_condition_probs)
    maps = {
        "fake": {"tile": crop(s_fake, pos, tile), "low": np_box(s_fake, low)},
        "real": {"tile": crop(s_real, pos_real, tile), "low": np_box(s_real, low)},
    }
    reals = {"tile": crop(r, pos_real, tile), "low": np_box(r, low)}
    return maps, reals, pos


# ----------------------------------------------------------------------------- tests


@pytest.mark.parametrize(
    "fake,probs", [("labels", "hard"), ("labels", "soft"), ("segmenter", "soft")]
)
def test_condition_maps_against_numpy(fake, probs):
    c = _config(fake=fake, probs=probs)
    seg = _segmenter(c.model.num_classes)
    batch = {k: jnp.asarray(v) for k, v in _batch(c).items()}
    rng = jax.random.key_data(jax.random.key(3))
    dv = dakpn_losses.draw_views(c, rng, batch["synthetic"], batch["real"])
    got = dakpn_segmenter.make_condition_fn(c, seg)(
        batch["synthetic"], batch["label"], batch["real"], dv
    )
    want, reals, pos = reference_maps(c, rng, jax.device_get(batch), np.asarray(seg[1]["w"]))
    np.testing.assert_array_equal(np.asarray(dv["pos"]), pos)
    np.testing.assert_allclose(np.asarray(dv["reals"]["tile"]), reals["tile"], atol=0)
    for side in ("fake", "real"):
        assert set(got[side]) == {"tile", "low"}
        for v in ("tile", "low"):
            np.testing.assert_allclose(
                np.asarray(got[side][v]), want[side][v], atol=2e-6, err_msg=f"{side} {v}"
            )
    # The maps differ between the sides and are not trivial (the check is not vacuous).
    assert np.abs(want["fake"]["tile"] - want["real"]["tile"]).max() > 0.1


@pytest.mark.parametrize(
    "condition,rule",
    [("none", "alternating"), ("segmenter", "alternating"), ("segmenter", "gradient_reversal")],
)
def test_step_feeds_d_the_conditioned_views(condition, rule):
    """D's logged mean logits on the real and fake views equal D (the merged PatchGAN at the step's
    starting params) applied to concat(view, map) built in NumPy, or to the RGB view for "none"."""
    c = _config(condition=condition, update_rule=rule)
    C = c.model.num_classes
    seg = _segmenter(C)
    batch = _batch(c)
    state = dakpn.init_state(c, jax.random.key(0))
    kernel = state["params"]["D"]["discs"][0]["convs"][0]["kernel"]
    assert kernel.shape[2] == (3 if condition == "none" else 3 + C)
    _, metrics = jax.jit(dakpn.make_train_step(c, segmenter=seg if condition != "none" else None))(
        state, batch
    )

    maps, reals, pos = reference_maps(_config(), state["rng"], batch, np.asarray(seg[1]["w"]))
    x = jnp.asarray(batch["synthetic"])
    feats = dakpn_features.onehot_features(
        jnp.asarray(batch["label"]), C, dakpn_config.param_size(c)
    )
    dv = dakpn_losses.draw_views(c, state["rng"], x, jnp.asarray(batch["real"]))
    fakes, _ = dakpn.make_generate(c)(
        state["params"]["kpn"], x, feats, jnp.asarray(pos), dv["k_noise"], dv["tile"]
    )
    d = gc.merge(dakpn_networks.graphdefs(c)["D"], state["params"]["D"])
    cat = (
        (lambda im, s: np.concatenate([np.asarray(im, np.float64), s], -1))
        if condition != "none"
        else (lambda im, s: np.asarray(im, np.float64))
    )
    mean_logit = lambda inp: np.mean(
        [np.asarray(o, np.float64).mean() for o in d(jnp.asarray(inp, jnp.float32))]
    )
    for v in ("tile", "low"):
        np.testing.assert_allclose(
            float(metrics[f"D_real_{v}"]),
            mean_logit(cat(reals[v], maps["real"][v])),
            rtol=1e-4,
            atol=1e-5,
            err_msg=f"real {v}",
        )
        np.testing.assert_allclose(
            float(metrics[f"D_fake_{v}"]),
            mean_logit(cat(fakes[v], maps["fake"][v])),
            rtol=1e-4,
            atol=1e-5,
            err_msg=f"fake {v}",
        )
    if condition != "none":  # the map matters: the same D on RGB + zeros gives other logits
        zeros = np.zeros_like(maps["real"]["tile"])
        assert abs(float(metrics["D_real_tile"]) - mean_logit(cat(reals["tile"], zeros))) > 1e-4
    assert all(np.isfinite(float(v)) for v in metrics.values())


def test_condition_is_frozen_and_outside_the_state():
    """Two steps: the segmenter's params do not change and are not in the state; no gradient
    reaches them through the maps (stop_gradient); R1 works on the image channels."""
    c = _config(r1=1.0, probs="soft")
    seg_fn, seg_params = _segmenter(c.model.num_classes)
    kept = np.asarray(seg_params["w"]).copy()
    state = dakpn.init_state(c, jax.random.key(1))
    step = jax.jit(dakpn.make_train_step(c, segmenter=(seg_fn, seg_params)))
    batch = _batch(c)
    s1, m1 = step(state, batch)
    s2, m2 = step(s1, batch)
    assert jax.tree.structure(s2) == jax.tree.structure(state) and set(s2["params"]) == {"kpn", "D"}
    assert "r1" in m1 and all(np.isfinite(float(v)) for v in list(m1.values()) + list(m2.values()))
    np.testing.assert_array_equal(np.asarray(seg_params["w"]), kept)
    dv = dakpn_losses.draw_views(
        c, state["rng"], jnp.asarray(batch["synthetic"]), jnp.asarray(batch["real"])
    )
    g = jax.grad(
        lambda p: sum(
            jnp.sum(m)
            for side in dakpn_segmenter.make_condition_fn(c, (seg_fn, p))(
                jnp.asarray(batch["synthetic"]),
                jnp.asarray(batch["label"]),
                jnp.asarray(batch["real"]),
                dv,
            ).values()
            for m in side.values()
        )
    )(seg_params)
    assert float(jnp.abs(g["w"]).max()) == 0.0


def test_condition_config_checks():
    c = _config()
    c.segmenter_workdir = ""
    with pytest.raises(ValueError, match="d_condition='segmenter' needs config.segmenter_workdir"):
        dakpn.make_train_step(c)
    c = _config(fake="synthetic")
    with pytest.raises(ValueError, match="d_condition_fake"):
        dakpn.init_state(c, jax.random.key(0))
    assert default.get_config().loss.d_condition == "none"
