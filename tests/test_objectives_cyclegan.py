"""CycleGAN's training objective, term by term (issue #19), against the published objective
(Zhu et al. 2017; cyclegan.py's docstring), recomputed here with the merged networks and float64
NumPy losses:

    L_G = LSGAN(D_A(G_A(a)), 1) + LSGAN(D_B(G_B(b)), 1)
        + 10 (|G_B(G_A(a)) - a|_1 + |G_A(G_B(b)) - b|_1) + 10 * 0.5 (|G_A(b) - b|_1 + |G_B(a) - a|_1)
    L_D_A = 0.5 (LSGAN(D_A(b), 1) + LSGAN(D_A(G_A(a)), 0)),  L_D_B = 0.5 (LSGAN(D_B(a), 1) + LSGAN(D_B(G_B(b)), 0))

A = synthetic, B = real, images in [-1, 1]. The batch (4) equals the pool size (configs tiny), so on
a fresh state the pool is filling and hands the batch's own fakes to D.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import cyclegan as cyclegan_configs
from dakpn_jax.training import cyclegan
from dakpn_jax.training import gan_common as gc

B = 4


def _batch():
    r = np.random.default_rng(0)
    syn = r.random((B, 32, 32, 3), dtype=np.float32) * 0.6 + 0.2
    real = np.clip(
        0.7 * syn[::-1] + 0.15 * r.standard_normal((B, 32, 32, 3)).astype(np.float32), 0, 1
    )
    return {"synthetic": syn, "real": real}


def lsgan(pred, target):
    return float(np.mean(np.square(np.asarray(pred, np.float64) - target)))


def l1(a, b):
    return float(np.mean(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def reference(c, params, batch):
    gd = cyclegan.graphdefs(c)
    G = lambda name: gc.merge(gd["G"], params[name])
    D = lambda name: gc.merge(gd["D"], params[name])
    a = jnp.asarray(2.0 * batch["synthetic"] - 1.0)
    b = jnp.asarray(2.0 * batch["real"] - 1.0)
    fake_b, fake_a = G("G_A")(a), G("G_B")(b)  # A -> B and B -> A
    lam_c, lam_i = c.loss.lambda_cycle, c.loss.lambda_identity
    out = {
        "loss_G_gan": lsgan(D("D_A")(fake_b), 1.0) + lsgan(D("D_B")(fake_a), 1.0),
        "loss_cycle": l1(G("G_B")(fake_b), a) + l1(G("G_A")(fake_a), b),
        "loss_identity": l1(G("G_A")(b), b) + l1(G("G_B")(a), a),
        "loss_D_A": 0.5 * (lsgan(D("D_A")(b), 1.0) + lsgan(D("D_A")(fake_b), 0.0)),
        "loss_D_B": 0.5 * (lsgan(D("D_B")(a), 1.0) + lsgan(D("D_B")(fake_a), 0.0)),
    }
    out["loss_G"] = (
        out["loss_G_gan"] + lam_c * out["loss_cycle"] + lam_c * lam_i * out["loss_identity"]
    )
    return out, {"a": a, "b": b, "fake_a": fake_a, "fake_b": fake_b}


@pytest.fixture(scope="module")
def run():
    c = cyclegan_configs.get_config("tiny")
    assert c.loss.pool_size == B and c.loss.lambda_cycle == 10.0 and c.loss.lambda_identity == 0.5
    state = jax.jit(lambda k: cyclegan.init_state(c, k))(
        jax.random.key(3)
    )  # one compile, not one per initialiser
    batch = _batch()
    new_state, metrics = jax.jit(cyclegan.make_train_step(c))(state, batch)
    ref, views = reference(c, state["params"], batch)
    return c, state, new_state, batch, metrics, ref, views


def test_step_logs_the_published_objective(run):
    _, _, _, _, metrics, ref, _ = run
    for k, want in ref.items():
        np.testing.assert_allclose(float(metrics[k]), want, rtol=2e-4, atol=1e-6, err_msg=k)
    # Non-degenerate: the terms differ, so a swapped pairing or weight shows in loss_G.
    assert ref["loss_cycle"] > 0.05 and ref["loss_identity"] > 0.05 and ref["loss_G_gan"] > 0.05


def test_d_step_moves_each_lsgan_term_towards_its_target(run):
    """After the update each discriminator's LSGAN objective on this batch falls (reals towards 1,
    the pre-update fakes towards 0), its real term falls and the real-minus-fake gap grows. (The fake
    term alone need not fall: one Adam step lowers the sum, and with the published generator the
    fake term of D_B rose by 5e-5 on this batch while its real term fell by much more.)"""
    c, state, new_state, _, _, _, v = run
    gd = cyclegan.graphdefs(c)["D"]
    for name, real, fake in (("D_A", v["b"], v["fake_b"]), ("D_B", v["a"], v["fake_a"])):
        score = lambda p, x: np.asarray(gc.merge(gd, p[name])(x), np.float64)
        old, new = state["params"], new_state["params"]
        assert lsgan(score(new, real), 1.0) < lsgan(score(old, real), 1.0), name
        total = lambda p: lsgan(score(p, real), 1.0) + lsgan(score(p, fake), 0.0)
        assert total(new) < total(old), name
        gap = lambda p: score(p, real).mean() - score(p, fake).mean()
        assert gap(new) > gap(old), name


def test_g_step_lowers_the_generator_objective(run):
    """The new generators against the step's starting discriminators (the ones their gradient saw):
    the adversarial term and the whole generator objective fall."""
    c, state, new_state, batch, _, ref, _ = run
    moved = {
        **state["params"],
        "G_A": new_state["params"]["G_A"],
        "G_B": new_state["params"]["G_B"],
    }
    after, _ = reference(c, moved, batch)
    assert after["loss_G"] < ref["loss_G"]
    assert after["loss_G_gan"] < ref["loss_G_gan"], (ref["loss_G_gan"], after["loss_G_gan"])
