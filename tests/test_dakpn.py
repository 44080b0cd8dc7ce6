"""DA-KPN method: KPN head, PatchGAN, the two-view step, losses, frozen segmenter, paired evaluation.

References are independent float64 NumPy versions of the formulas (module docstrings).
"""

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import default
from dakpn_jax import translation
from dakpn_jax.data import procedural
from dakpn_jax.models import kpn as kpn_lib
from dakpn_jax.models import patchgan
from dakpn_jax.training import (
    dakpn,
    dakpn_config,
    dakpn_features,
    dakpn_losses,
    dakpn_networks,
    dakpn_segmenter,
)


# ----------------------------------------------------------------------------- helpers


def tiny_config(**loss):
    c = default.get_config("tiny")
    c.loss.update(loss)
    return c


def tiny_batch(config, n=None, offset=0):
    n = n or config.batch_size
    syn = procedural.make_source("synthetic-train", config.data)
    real = procedural.make_source("real-train", config.data)
    items = [syn[offset + i] for i in range(n)]
    return {
        "synthetic": np.stack([it["image"] for it in items]).astype(np.float32) / 255.0,
        "label": np.stack([it["label"] for it in items]),
        "real": np.stack([real[offset + i]["image"] for i in range(n)]).astype(np.float32) / 255.0,
    }


def np_gaussian_blur(x, sigma, K):
    """float64 reference: per-pixel normalised K x K Gaussian, edge padding; x (H, W, C), sigma scalar."""
    r = K // 2
    i = np.arange(-r, r + 1)
    w = np.exp(-(i[:, None] ** 2 + i[None, :] ** 2) / (2 * sigma**2 + translation.BLUR_EPS))
    w /= w.sum()
    xp = np.pad(x.astype(np.float64), ((r, r), (r, r), (0, 0)), mode="edge")
    H, W = x.shape[:2]
    return sum(w[a, b] * xp[a : a + H, b : b + W] for a in range(K) for b in range(K))


def leaves_equal(a, b):
    return all(
        np.array_equal(np.asarray(x), np.asarray(y))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
    )


@pytest.fixture(scope="module")
def tiny():
    c = tiny_config()
    state = dakpn.init_state(c, jax.random.key(0))
    step = jax.jit(dakpn.make_train_step(c))
    return c, state, step, tiny_batch(c)


# ----------------------------------------------------------------------------- models


@pytest.mark.smoke
@pytest.mark.parametrize("head", ["linear", "deep"])
@pytest.mark.parametrize("sigma_param", ["sigma", "neighbour_weight"])
def test_kpn_head_starts_identity_like_for_any_features(head, sigma_param):
    m = kpn_lib.KPNHead(5, head=head, sigma_param=sigma_param, sigma0=1.0, rngs=nnx.Rngs(0))
    f = jax.random.uniform(jax.random.key(1), (2, 3, 4, 5))
    img = jax.random.uniform(jax.random.key(2), (2, 3, 4, 3))
    theta = np.asarray(m(f, img))
    want = np.broadcast_to(np.array([1, 1, 1, 0, 0, 0, 1, 1, 1, 0, 0, 0], np.float64), theta.shape)
    np.testing.assert_allclose(theta, want, atol=1e-6)


def test_neighbour_weight_parametrisation_inverse_and_gradient():
    sigma = np.array([0.3, 0.5, 1.0, 2.0, 5.0])
    t = np.exp(-1.0 / (2 * sigma**2))
    got = np.asarray(kpn_lib.sigma_from_neighbour_weight(jnp.asarray(t, jnp.float32), 12.0))
    np.testing.assert_allclose(got, sigma, rtol=1e-5)
    # Clipped value, straight-through gradient: below t(SIGMA_MIN) sigma stays at 0.2 px, grad != 0.
    s, g = jax.value_and_grad(lambda v: kpn_lib.sigma_from_neighbour_weight(v, 12.0))(
        jnp.float32(0.0)
    )
    np.testing.assert_allclose(float(s), kpn_lib.SIGMA_MIN, rtol=1e-5)
    assert float(g) > 0
    # Why: at sigma = 0.25 px the blurred centre pixel is flat in sigma but linear in t.
    x = jnp.zeros((1, 5, 5, 3)).at[0, 2, 3].set(1.0)  # a bright right neighbour of the centre

    def centre(v, param):
        sig = kpn_lib.sigma_from_neighbour_weight(v, 12.0) if param == "t" else v
        return translation.local_gaussian_blur(x, jnp.full((1, 5, 5, 3), sig), kernel_size=5)[
            0, 2, 2, 0
        ]

    g_sigma = jax.grad(centre)(jnp.float32(0.25), "sigma")
    g_t = jax.grad(centre)(jnp.float32(np.exp(-1 / (2 * 0.25**2))), "t")
    # float64 reference: the centre is t / (sum_i t^(i^2))^2 over |i| <= 2 (c = 0, one neighbour 1).
    f = lambda t: t / (1 + 2 * t + 2 * t**4) ** 2
    t0, h = np.exp(-1 / (2 * 0.25**2)), 1e-7
    np.testing.assert_allclose(float(g_t), (f(t0 + h) - f(t0 - h)) / (2 * h), rtol=1e-3)
    assert abs(float(g_sigma)) < 0.05 * abs(float(g_t))


def test_kpn_head_rejects_bad_input():
    with pytest.raises(ValueError, match="head="):
        kpn_lib.KPNHead(3, head="wide", rngs=nnx.Rngs(0))
    m = kpn_lib.KPNHead(3, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"features must be \(B, h, w, 3\)"):
        m(jnp.zeros((1, 2, 2, 4)))


@pytest.mark.parametrize("norm", ["batch", "instance", "none"])
def test_patchgan_norm_matches_numpy(norm):
    x = np.random.default_rng(0).normal(size=(3, 4, 5, 6)).astype(np.float32)
    layer = patchgan.Norm(6, norm)
    if norm == "none":
        want = x
    else:
        axes = (0, 1, 2) if norm == "batch" else (1, 2)
        x64 = x.astype(np.float64)
        want = (x64 - x64.mean(axes, keepdims=True)) / np.sqrt(x64.var(axes, keepdims=True) + 1e-5)
    np.testing.assert_allclose(np.asarray(layer(jnp.asarray(x))), want, atol=1e-5)


def test_patchgan_shapes_pyramid_and_downsample():
    d = patchgan.PatchGANPyramid(num_D=2, ndf=4, n_layers=3, rngs=nnx.Rngs(0))
    out = jax.jit(lambda x: d(x))(jnp.zeros((2, 16, 32, 3)))
    assert [o.shape for o in out] == [(2, 2, 4, 1), (2, 1, 2, 1)]
    convs = nnx.to_pure_dict(nnx.state(d))["discs"][0]["convs"]
    assert (
        "bias" in convs[0] and "bias" not in convs[1] and "bias" not in convs[2]
    )  # none before a norm
    x = np.random.default_rng(1).uniform(size=(1, 5, 6, 1))
    # 3x3 average, stride 2, padding 1, padded cells not counted.
    want = np.array(
        [
            [
                x[0, max(0, 2 * i - 1) : 2 * i + 2, max(0, 2 * j - 1) : 2 * j + 2, 0].mean()
                for j in range(3)
            ]
            for i in range(3)
        ]
    )
    np.testing.assert_allclose(
        np.asarray(patchgan.downsample(jnp.asarray(x)))[0, ..., 0], want, atol=1e-6
    )
    with pytest.raises(ValueError, match="too small"):
        d(jnp.zeros((1, 4, 32, 3)))


# ----------------------------------------------------------------------------- translation pieces


def test_init_translation_is_a_one_pixel_blur_and_identity_without_blur(tiny):
    c, state, _, batch = tiny
    x, y = batch["synthetic"][:2], batch["label"][:2]
    got = np.asarray(dakpn.make_translator(c, state)(jnp.asarray(x), jnp.asarray(y)))
    want = np.stack([np_gaussian_blur(im, 1.0, c.model.kernel_size) for im in x])
    np.testing.assert_allclose(got, want, atol=2e-5)
    # The same identity-like parameters with sigma -> 0 (and zero noise) give x back.
    theta = jnp.broadcast_to(jnp.asarray(kpn_lib.identity_params(0.0)), (2, 8, 16, 12))
    out = translation.translate(jnp.asarray(x), theta, jnp.ones((1,) + x.shape[1:]), kernel_size=5)
    np.testing.assert_allclose(np.asarray(out), x, atol=1e-5)


def test_tile_translation_equals_crop_of_full_frame():
    k = jax.random.split(jax.random.key(3), 4)
    x = jax.random.uniform(k[0], (3, 20, 24, 3))
    theta = jnp.concatenate(
        [
            1 + 0.2 * jax.random.normal(k[1], (3, 5, 6, 3)),
            0.1 * jax.random.normal(k[1], (3, 5, 6, 3)),
            jax.random.uniform(k[2], (3, 5, 6, 3), minval=0.3, maxval=2.0),
            0.05 * jax.random.normal(k[3], (3, 5, 6, 3)),
        ],
        axis=-1,
    )
    noise = translation.noise_field(0, 20, 24)
    full = translation.translate(x, theta, noise, kernel_size=7)
    pos = jnp.array([[0, 0], [13, 14], [6, 3]])  # corners touch both borders
    tile = dakpn_losses.translate_tile(x, theta, noise, pos, (7, 10), 7)
    want = np.stack(
        [np.asarray(full)[b, i : i + 7, j : j + 10] for b, (i, j) in enumerate(np.asarray(pos))]
    )
    np.testing.assert_allclose(np.asarray(tile), want, atol=1e-6)


def test_onehot_features_are_class_fractions():
    y = np.random.default_rng(0).integers(0, 4, size=(2, 8, 12))
    y[0, :2, :3] = 255
    got = np.asarray(dakpn_features.onehot_features(jnp.asarray(y), 5, (2, 3)))
    for b in range(2):
        for i in range(2):
            for j in range(3):
                cell = y[b, 4 * i : 4 * i + 4, 4 * j : 4 * j + 4]
                want = [(cell == k).mean() for k in range(5)]
                np.testing.assert_allclose(got[b, i, j], want, atol=1e-6)


@pytest.mark.parametrize("form", dakpn_config.LOSS_FORMS)
def test_loss_forms_match_numpy(form):
    rng = np.random.default_rng(0)
    r, f = rng.normal(size=(2, 3, 4, 1)) * 3, rng.normal(size=(2, 3, 4, 1)) * 3
    sp = lambda v: np.log1p(np.exp(v))
    want_d = {
        "saturating": sp(-r).mean() + sp(f).mean(),
        "non_saturating": sp(-r).mean() + sp(f).mean(),
        "lsgan": ((r - 1) ** 2).mean() + (f**2).mean(),
        "hinge": np.maximum(0, 1 - r).mean() + np.maximum(0, 1 + f).mean(),
    }[form]
    want_g = {
        "saturating": -sp(f).mean(),
        "non_saturating": sp(-f).mean(),
        "lsgan": ((f - 1) ** 2).mean(),
        "hinge": -f.mean(),
    }[form]
    rj, fj = jnp.asarray(r, jnp.float32), jnp.asarray(f, jnp.float32)
    np.testing.assert_allclose(float(dakpn_losses.d_loss(form, rj, fj)), want_d, rtol=1e-5)
    np.testing.assert_allclose(float(dakpn_losses.g_loss(form, fj)), want_g, rtol=1e-5)


# ----------------------------------------------------------------------------- the step


@pytest.mark.smoke
def test_one_step_trains_only_kpn_and_d_and_is_pure(tiny):
    c, state, step, batch = tiny
    new, metrics = step(state, batch)
    for k, v in metrics.items():
        assert np.isfinite(float(v)), k
    assert set(new) == {"params", "opt", "step", "rng"} and set(new["params"]) == {"kpn", "D"}
    assert int(new["step"]) == 1
    for net in ("kpn", "D"):
        changed = [
            not np.array_equal(a, b)
            for a, b in zip(
                jax.tree.leaves(state["params"][net]), jax.tree.leaves(new["params"][net])
            )
        ]
        assert any(changed), net
    # The KPN's output layer gets a gradient from the first step (zero weights, live bias).
    assert not np.array_equal(
        state["params"]["kpn"]["out"]["bias"], new["params"]["kpn"]["out"]["bias"]
    )
    again, metrics2 = step(state, batch)  # pure: same inputs, same outputs, bit for bit
    assert leaves_equal(new, again) and leaves_equal(metrics, metrics2)


def test_ablations_pin_components_to_identity_and_freeze_their_outputs():
    """model.ablate: the switched-off channels equal the identity parameters whatever the head says,
    and one step leaves the head's output columns for them untouched (no gradient reaches them)."""
    theta = np.random.default_rng(0).normal(size=(2, 3, 4, 12)).astype(np.float32)
    ref = theta.copy()
    ref[..., 0:3], ref[..., 3:6], ref[..., 9:12] = 1.0, 0.0, 0.0  # affine -> identity, noise -> 0
    np.testing.assert_array_equal(
        np.asarray(dakpn_networks.ablate_params(jnp.asarray(theta), ("affine", "noise"))), ref
    )
    np.testing.assert_array_equal(
        np.asarray(dakpn_networks.ablate_params(jnp.asarray(theta), ())), theta
    )
    c = tiny_config()
    c.model.ablate = ("affine", "noise")
    state = dakpn.init_state(c, jax.random.key(0))
    new, metrics = jax.jit(dakpn.make_train_step(c))(state, tiny_batch(c, 4))
    assert all(np.isfinite(float(v)) for v in metrics.values())
    before, after = state["params"]["kpn"]["out"], new["params"]["kpn"]["out"]
    for cols, moved in ((slice(0, 6), False), (slice(6, 9), True), (slice(9, 12), False)):
        same = np.array_equal(np.asarray(before["bias"])[cols], np.asarray(after["bias"])[cols])
        assert same != moved, cols
    with pytest.raises(ValueError, match="model.ablate"):
        c.model.ablate = ("colour",)
        dakpn.make_train_step(c)


def stand_in_segmenter(C, sign=1.0):
    """A frozen 'segmenter': logits = images @ w, (B, H, W, 3) -> (B, H, W, C)."""
    params = {"w": sign * jax.random.normal(jax.random.key(5), (3, C))}
    return (lambda p, x: jnp.einsum("bhwc,ck->bhwk", x, p["w"])), params


def test_step_options_and_frozen_segmenter():
    """One compiled step with the non-default options: frozen-segmenter features, hinge + R1,
    tile view only, deep head, direct sigma, fresh noise, a 2-level instance-norm pyramid, warm-up."""
    c = tiny_config(form="hinge", r1=1.0, d_inputs=("tile",))
    c.features, c.segmenter_workdir = (
        "segmenter",
        "/nonexistent",
    )  # never read: the stand-in is given
    c.model.update(head="deep", hidden=4, noise="fresh", sigma_param="sigma")
    c.model.disc.update(num_D=2, n_layers=1, norm="instance")
    c.optim.update(schedule="cosine", warmup_steps=1)
    apply_fn, seg_params = stand_in_segmenter(c.model.num_classes)
    kept = copy.deepcopy(jax.device_get(seg_params))
    state = dakpn.init_state(c, jax.random.key(1))
    step = jax.jit(dakpn.make_train_step(c, segmenter=(apply_fn, seg_params)))
    batch = tiny_batch(c, 4)
    s1, m1 = step(state, batch)
    s2, m2 = step(s1, batch)
    assert {"r1", "loss_D_tile"} <= set(m1) and "loss_D_low" not in m1
    assert all(np.isfinite(float(v)) for v in list(m1.values()) + list(m2.values()))
    assert float(m1["lr"]) == 0.0 and float(m2["lr"]) > 0  # warm-up from 0: nothing moves in step 1
    assert leaves_equal(state["params"], s1["params"])
    for net in ("kpn", "D"):
        assert not leaves_equal(s1["params"][net], s2["params"][net]), net
    # The segmenter is outside the trained state and unchanged; the state keeps its structure.
    assert jax.tree.structure(s2) == jax.tree.structure(state)
    assert leaves_equal(seg_params, kept)


def test_segmenter_features_are_frozen_cell_averaged_logits():
    c = tiny_config()
    c.features, c.segmenter_workdir = "segmenter", "/nonexistent"
    C = c.model.num_classes
    apply_fn, seg_params = stand_in_segmenter(C)
    x = jnp.asarray(tiny_batch(c, 2)["synthetic"])
    feats = dakpn_segmenter.make_feature_fn(c, (apply_fn, seg_params))(x, None, (8, 16))
    logits = np.einsum("bhwc,ck->bhwk", np.asarray(x, np.float64), np.asarray(seg_params["w"]))
    np.testing.assert_allclose(
        np.asarray(feats), logits.reshape(2, 8, 4, 16, 4, C).mean(axis=(2, 4)), atol=1e-5
    )
    g = jax.grad(
        lambda p: jnp.sum(dakpn_segmenter.make_feature_fn(c, (apply_fn, p))(x, None, (8, 16)))
    )(seg_params)
    assert float(jnp.abs(g["w"]).max()) == 0.0  # stop_gradient: nothing flows into the segmenter


def test_bad_config_and_batch_raise():
    c = tiny_config(form="wgan")
    with pytest.raises(ValueError, match="loss.form='wgan'"):
        dakpn.init_state(c, jax.random.key(0))
    c = tiny_config()
    c.features = "segmenter"
    with pytest.raises(ValueError, match="segmenter_workdir"):
        dakpn.make_train_step(c)
    step = dakpn.make_train_step(tiny_config())
    batch = tiny_batch(tiny_config(), 2)
    with pytest.raises(ValueError, match="'label'"):
        step(
            dakpn.init_state(tiny_config(), jax.random.key(0)),
            {**batch, "label": batch["label"][:, :4]},
        )


# ----------------------------------------------------------------------------- evaluation


def test_evaluate_identity_translator_equals_baseline(tiny):
    c, state, _, _ = tiny
    out = dakpn.evaluate(c, state, translate_fn=lambda x, y: x, max_images=3)
    assert out["psnr"] == pytest.approx(out["psnr_untranslated"], abs=1e-6)
    for k in ("ssim", "swd", "class_color_err"):
        assert out[k] == pytest.approx(out[f"{k}_untranslated"], abs=1e-6), k
    src = procedural.make_source("paired-eval", c.data)
    syn = np.stack([src[i]["synthetic"] for i in range(3)]).astype(np.float64) / 255
    real = np.stack([src[i]["real"] for i in range(3)]).astype(np.float64) / 255
    want = np.mean(10 * np.log10(1 / ((syn - real) ** 2).mean(axis=(1, 2, 3))))
    assert out["psnr_untranslated"] == pytest.approx(want, abs=1e-3)


# ----------------------------------------------------------------------------- the authors' choices (issue 15)


def _torch_nlayer(ndf=64):
    """pix2pix NLayer PatchGAN written from its layer list (docs/METHOD.md §6), PyTorch."""
    import torch.nn as tnn

    return tnn.Sequential(
        tnn.Conv2d(3, ndf, 4, 2, 1),
        tnn.LeakyReLU(0.2),
        tnn.Conv2d(ndf, 2 * ndf, 4, 2, 1, bias=False),
        tnn.BatchNorm2d(2 * ndf),
        tnn.LeakyReLU(0.2),
        tnn.Conv2d(2 * ndf, 4 * ndf, 4, 2, 1, bias=False),
        tnn.BatchNorm2d(4 * ndf),
        tnn.LeakyReLU(0.2),
        tnn.Conv2d(4 * ndf, 8 * ndf, 4, 1, 1, bias=False),
        tnn.BatchNorm2d(8 * ndf),
        tnn.LeakyReLU(0.2),
        tnn.Conv2d(8 * ndf, 1, 4, 1, 1),
    )


def test_nlayer_patchgan_receptive_field_is_70():
    """Support of d(one interior output unit)/d(input): exactly 70 x 70 (norm off: BatchNorm's batch
    statistics would couple every position; the conv geometry is the same)."""
    d = patchgan.NLayerPatchGAN(3, ndf=4, norm="none", init="torch", rngs=nnx.Rngs(0))
    x = jax.random.uniform(jax.random.key(1), (1, 96, 96, 3))
    out = d(x)
    assert out.shape == (1, 10, 10, 1)  # H/8 - 2
    g = jax.jit(jax.grad(lambda v: d(v)[0, 5, 5, 0]))(x)
    rows, cols = np.nonzero(np.abs(np.asarray(g[0])).sum(-1))
    assert rows.max() - rows.min() + 1 == 70 and cols.max() - cols.min() + 1 == 70
    # Top-left of the window: 8 i minus the zero padding seen through the strides (1 + 2 + 4 + 8 + 8).
    assert rows.min() == cols.min() == 5 * 8 - 23


def test_nlayer_patchgan_equals_pytorch_build():
    torch = pytest.importorskip("torch")
    d = patchgan.NLayerPatchGAN(3, ndf=64, norm="batch", init="torch", rngs=nnx.Rngs(3))
    ref = _torch_nlayer(64).train()  # BatchNorm in train mode: per-call batch statistics
    convs = [m for m in ref if isinstance(m, torch.nn.Conv2d)]
    bns = [m for m in ref if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(convs) == len(d.convs) == 5 and len(bns) == len(d.norms) == 3
    rng = np.random.default_rng(0)
    with torch.no_grad():
        for tc, jc in zip(convs, d.convs):
            tc.weight.copy_(
                torch.from_numpy(np.asarray(jc.kernel[...]).transpose(3, 2, 0, 1).copy())
            )
            assert (tc.bias is None) == (jc.bias is None)
            if tc.bias is not None:
                tc.bias.copy_(torch.from_numpy(np.array(jc.bias[...])))
        for tb, jb in zip(bns, d.norms):  # non-trivial affine parameters, copied both ways
            scale, bias = (
                rng.uniform(0.5, 1.5, tb.num_features),
                rng.normal(0, 0.1, tb.num_features),
            )
            jb.scale[...] = jnp.asarray(scale, jnp.float32)
            jb.bias[...] = jnp.asarray(bias, jnp.float32)
            tb.weight.copy_(torch.from_numpy(scale.astype(np.float32)))
            tb.bias.copy_(torch.from_numpy(bias.astype(np.float32)))
    x = rng.uniform(0, 1, (2, 64, 96, 3)).astype(np.float32)
    want = ref(torch.from_numpy(x.transpose(0, 3, 1, 2))).detach().numpy().transpose(0, 2, 3, 1)
    got = np.asarray(d(jnp.asarray(x)))
    assert got.shape == want.shape == (2, 6, 10, 1)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    # PyTorch's default init bounds: |w| <= 1 / sqrt(fan_in), fan_in = c_in * 16.
    for jc in d.convs:
        bound = 1.0 / np.sqrt(jc.kernel.shape[2] * 16)
        w = np.asarray(jc.kernel[...])
        assert np.abs(w).max() <= bound and np.abs(w).max() > 0.9 * bound


def gr_config():
    c = tiny_config()
    c.loss.update(update_rule="gradient_reversal", real_low=False)
    c.model.update(low_params="unscaled")
    c.optim.update(lr=1e-4, lr_D=1e-4, b1=0.9, schedule="constant")
    return c


# The fakes are float32 by design (the translation casts its inputs), so two graphs that compute
# the same fakes (the GRL loss and the reference's separate gradients) may round each output pixel
# differently: by at most the roundings along the HSV affine, blur (K^2 <= 25 products and sums) and
# noise chain, about 64 units of 2^-24 of values in [0, 1]. The value and its gradients are Lipschitz
# in the pixels with constants of order one of each network's scale, so they agree to this relative
# tolerance. A wrong sign, a missing term or a wrong weight moves them by tens of per cent.
FAKES_F32_REL = 64 * 2.0**-24


def test_gradient_reversal_grads_equal_the_minimax_objective():
    """One backward pass of the GRL objective gives grad_D V and -grad_G V + w grad_G MSE of the
    saturating minimax value V (BCE with logits: 1 real term, 2 fake terms), written here with
    optax's BCE on one shared forward pass; the step then takes one Adam step from exactly those
    gradients for both players. An equivalence of two computations of the same value, so it runs in
    float64 (tests/float64_method.py): round-off is then ~1e-16 of each network's scale on any
    processor, and Adam's g / (sqrt(v) + eps) cannot amplify it into a visible weight change."""
    import optax

    from tests.conftest import METRIC_REL, assert_float64_equivalent
    from tests.float64_method import to_float64

    c = gr_config()
    with jax.enable_x64(True):
        state = to_float64(dakpn.init_state(c, jax.random.key(0)))
        # Non-zero KPN weights so the KPN gradient flows through the features.
        state["params"]["kpn"] = jax.tree.map(
            lambda p: p + 0.01 * jax.random.normal(jax.random.key(5), p.shape, p.dtype),
            state["params"]["kpn"],
        )
        # The images stay float32: the step casts them so (the translation's image arithmetic is
        # float32 by design), and the reference must see the same pixels.
        batch = {k: jnp.asarray(v) for k, v in tiny_batch(c, n=4).items()}
        grads, aux = jax.jit(jax.grad(dakpn.make_gradient_reversal_loss(c), has_aux=True))(
            state["params"], batch, state["rng"]
        )

        x, r = batch["synthetic"], batch["real"]
        dv = dakpn_losses.draw_views(c, state["rng"], x, r)
        assert set(dv["reals"]) == {"tile"}  # no real low view
        feats = dakpn_features.onehot_features(
            batch["label"], c.model.num_classes, dakpn_config.param_size(c)
        )
        generate = dakpn.make_generate(c)
        gd_d = dakpn_networks.graphdefs(c)["D"]
        th, tw = dv["tile"]
        x_tile = jnp.stack(
            [x[b, i : i + th, j : j + tw] for b, (i, j) in enumerate(np.asarray(dv["pos"]))]
        )

        def value(p_d, p_g):
            fakes, _ = generate(p_g, x, feats, dv["pos"], dv["k_noise"], dv["tile"])
            d = nnx.merge(gd_d, p_d)
            bce = lambda logits, t: jnp.mean(
                optax.sigmoid_binary_cross_entropy(logits, jnp.full_like(logits, t))
            )
            v = (
                bce(d(dv["reals"]["tile"])[0], 1.0)
                + bce(d(fakes["tile"])[0], 0.0)
                + bce(d(fakes["low"])[0], 0.0)
            )
            return v, jnp.mean(jnp.square(fakes["tile"] - x_tile))

        p_d, p_g = state["params"]["D"], state["params"]["kpn"]

        @jax.jit
        def reference(p_d, p_g):
            ref_d = jax.grad(lambda p: value(p, p_g)[0])(p_d)
            ref_g = jax.grad(lambda p: -value(p_d, p)[0] + c.loss.identity * value(p_d, p)[1])(p_g)
            return ref_d, ref_g, value(p_d, p_g)

        ref_d, ref_g, (v, idt) = reference(p_d, p_g)
        np.testing.assert_allclose(aux["loss_D"], v, rtol=METRIC_REL)
        np.testing.assert_allclose(aux["loss_identity"], idt, rtol=METRIC_REL)
        assert_float64_equivalent(
            {"D": grads["D"], "kpn": grads["kpn"]}, {"D": ref_d, "kpn": ref_g}, rel=FAKES_F32_REL
        )
        assert (
            max(float(jnp.abs(g).max()) for g in jax.tree.leaves(ref_g)) > 0
        )  # the check is not vacuous

        # The step: both players take one Adam step from exactly these gradients, simultaneously.
        new, metrics = jax.jit(dakpn.make_train_step(c))(state, batch)
        assert "D_real_low" not in metrics and "D_real_tile" in metrics
        lr, eps = 1e-4, 1e-8
        tx = optax.adam(lr, eps=eps)
        for k in ("kpn", "D"):
            upd, _ = tx.update(grads[k], tx.init(state["params"][k]), state["params"][k])
            want = optax.apply_updates(state["params"][k], upd)
            # Adam's first step moves each weight by lr * g / (|g| + eps), whose derivative in g is
            # at most eps / (|g| + eps)^2: a gradient known to dg moves it by at most
            # lr * min(2, 2 * dg / (|g| + eps)) (the step computes its own gradients, in another
            # graph, so they carry the same float32 rounding of the fakes as above).
            g_leaves = jax.tree.leaves(grads[k])
            dg = FAKES_F32_REL * max(float(jnp.abs(g).max()) for g in g_leaves)
            for a, b, g in zip(jax.tree.leaves(new["params"][k]), jax.tree.leaves(want), g_leaves):
                g = np.abs(np.asarray(g, np.float64))
                bound = lr * np.minimum(2.0, 2.0 * dg / (g + eps)) + 1e-12
                assert np.all(np.abs(np.asarray(a) - np.asarray(b)) <= bound), k


def test_gradient_reversal_rejects_other_loss_forms():
    c = gr_config()
    c.loss.form = "lsgan"
    with pytest.raises(ValueError, match="gradient_reversal"):
        dakpn.make_train_step(c)


def test_segmenter_features_on_the_resized_unnormalised_frame():
    """``segmenter_input_size``: the frozen segmenter sees the frame resized to it (the authors'
    96 x 160), its logits are then area-resized to the parameter grid."""
    c = tiny_config()
    c.features, c.segmenter_weights = "segmenter", "unused.pth"
    c.segmenter_input_size = (16, 32)
    seen = []

    def apply_fn(params, images):
        seen.append(images.shape)
        return jnp.broadcast_to(images[..., :1] * params, images.shape[:3] + (c.model.num_classes,))

    feats = dakpn_segmenter.make_feature_fn(c, segmenter=(apply_fn, jnp.float32(2.0)))
    x = jnp.ones((2, 32, 64, 3)) * 0.25
    out = feats(x, None, (8, 16))
    assert seen == [(2, 16, 32, 3)] and out.shape == (2, 8, 16, c.model.num_classes)
    np.testing.assert_allclose(np.asarray(out), 0.5, rtol=1e-6)
