"""CycleGAN (Zhu et al. 2017) as a method module of the generic trainer.

Domains: A = synthetic (``batch["synthetic"]``), B = real (``batch["real"]``), images in [0, 1]
(mapped to [-1, 1] inside). G_A: A -> B, G_B: B -> A; D_A judges B-domain images (real B vs
G_A(A)), D_B judges A-domain images. Published objective (weights ``lambda_cycle`` = 10,
``lambda_identity`` = 0.5)::

    L_G = LSGAN(D_A(G_A(a)), 1) + LSGAN(D_B(G_B(b)), 1)
        + lambda_cycle * (|G_B(G_A(a)) - a|_1 + |G_A(G_B(b)) - b|_1)
        + lambda_cycle * lambda_identity * (|G_A(b) - b|_1 + |G_B(a) - a|_1)
    L_D_A = 0.5 * (LSGAN(D_A(b), 1) + LSGAN(D_A(pool_B(G_A(a))), 0))      (same for D_B)

One step = the published iteration: generators and discriminators both take their gradients at the
step's starting parameters (the published code updates G first, but D's loss does not depend on
G's new weights, only on the fakes made before the update), the discriminators see fakes drawn
through a 50-image pool. The pool lives in the state (``gan_common.pool_query``), so the step is
pure and resume is exact. State::

    {"params": {"G_A", "G_B", "D_A", "D_B"}, "opt": {"G", "D"},
     "pool": {"A": pool, "B": pool}, "step": int32, "rng": uint32[2]}
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from dakpn_jax.models.resnet_generator import to_signed
from dakpn_jax.training import gan_common as gc

# The trainer's seam (docs/ARCHITECTURE.md): iterators are the shared unpaired streams.
make_iterators = gc.make_iterators
next_batch = gc.next_batch


def _builders(config):
    return (
        functools.partial(gc.make_generator, config),
        functools.partial(gc.make_discriminator, config),
    )


def graphdefs(config) -> dict:
    """Static graphdefs {"G", "D"} (both generators share one, both discriminators share one)."""
    g, d = _builders(config)
    return {"G": gc.graphdef_of(g), "D": gc.graphdef_of(d)}


def init_state(config, rng) -> dict:
    """Fresh CycleGAN state (see module docstring) from a (typed or raw) key."""
    rng = gc.key_data(rng)
    k_ga, k_gb, k_da, k_db, rng = gc.split_key(rng, 5)
    g, d = _builders(config)
    params = {
        "G_A": gc.init_network(g, k_ga)[1],
        "G_B": gc.init_network(g, k_gb)[1],
        "D_A": gc.init_network(d, k_da)[1],
        "D_B": gc.init_network(d, k_db)[1],
    }
    tx = gc.make_optimizer(config)
    shape = gc.train_image_shape(config)
    return {
        "params": params,
        "opt": {
            "G": tx.init({"G_A": params["G_A"], "G_B": params["G_B"]}),
            "D": tx.init({"D_A": params["D_A"], "D_B": params["D_B"]}),
        },
        "pool": {
            "A": gc.pool_init(config.loss.pool_size, shape),
            "B": gc.pool_init(config.loss.pool_size, shape),
        },
        "step": jnp.zeros((), jnp.int32),
        "rng": rng,
    }


def make_train_step(config):
    """Returns the pure ``train_step(state, batch) -> (state, metrics)`` (batch: see module docstring)."""
    gd = graphdefs(config)
    tx = gc.make_optimizer(config)
    lam_cyc, lam_idt = float(config.loss.lambda_cycle), float(config.loss.lambda_identity)
    schedule = gc.linear_decay_schedule(
        config.optim.lr, config.optim.constant_steps, config.optim.decay_steps
    )

    def generator_loss(gp, dp, a, b):
        G_A, G_B = gc.merge(gd["G"], gp["G_A"]), gc.merge(gd["G"], gp["G_B"])
        D_A, D_B = gc.merge(gd["D"], dp["D_A"]), gc.merge(gd["D"], dp["D_B"])
        fake_b, fake_a = G_A(a), G_B(b)
        gan = gc.lsgan_loss(D_A(fake_b), True) + gc.lsgan_loss(D_B(fake_a), True)
        cycle = gc.l1(G_B(fake_b), a) + gc.l1(G_A(fake_a), b)
        idt = gc.l1(G_A(b), b) + gc.l1(G_B(a), a) if lam_idt > 0 else jnp.zeros(())
        loss = gan + lam_cyc * cycle + lam_cyc * lam_idt * idt
        return loss, (
            fake_a,
            fake_b,
            {"loss_G_gan": gan, "loss_cycle": cycle, "loss_identity": idt},
        )

    def train_step(state, batch):
        gc.check_batch(batch)
        a, b = to_signed(batch["synthetic"]), to_signed(batch["real"])
        p = state["params"]
        gp = {"G_A": p["G_A"], "G_B": p["G_B"]}
        dp = {"D_A": p["D_A"], "D_B": p["D_B"]}
        k_pa, k_pb, rng = gc.split_key(state["rng"], 3)

        (loss_g, (fake_a, fake_b, m)), g_grads = jax.value_and_grad(generator_loss, has_aux=True)(
            gp, dp, a, b
        )
        pool_b, fake_b = gc.pool_query(state["pool"]["B"], jax.lax.stop_gradient(fake_b), k_pb)
        pool_a, fake_a = gc.pool_query(state["pool"]["A"], jax.lax.stop_gradient(fake_a), k_pa)
        loss_da, g_da = gc.discriminator_grads(gd["D"], dp["D_A"], b, fake_b)
        loss_db, g_db = gc.discriminator_grads(gd["D"], dp["D_B"], a, fake_a)

        gp, opt_g = gc.apply_updates(tx, gp, g_grads, state["opt"]["G"])
        dp, opt_d = gc.apply_updates(tx, dp, {"D_A": g_da, "D_B": g_db}, state["opt"]["D"])
        new_state = {
            "params": {**gp, **dp},
            "opt": {"G": opt_g, "D": opt_d},
            "pool": {"A": pool_a, "B": pool_b},
            "step": state["step"] + 1,
            "rng": rng,
        }
        metrics = {
            "loss_G": loss_g,
            **m,
            "loss_D_A": loss_da,
            "loss_D_B": loss_db,
            "lr": schedule(state["step"]),
        }
        return new_state, {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}

    return train_step


def make_translate_fn(config, state, direction: str = "AtoB"):
    """Jitted ``fn(images (B, H, W, 3) in [0, 1]) -> translated, same shape``, any frame size:
    synthetic -> real with G_A (``"AtoB"``, what export and the protocol use) or real -> synthetic
    with G_B."""
    if direction not in ("AtoB", "BtoA"):
        raise ValueError(
            f"make_translate_fn: direction must be 'AtoB' or 'BtoA', got {direction!r}"
        )
    params = state["params"]["G_A" if direction == "AtoB" else "G_B"]
    translate = gc.make_translator(graphdefs(config)["G"], params, config.model.n_down)
    return lambda x: translate(x)


def make_translator(config, state):
    """Shared contract: jitted ``translate_fn(images (B,H,W,3) [0,1], labels) -> (B,H,W,3)`` with
    G_A (synthetic -> real) at any frame size; the labels are ignored."""
    return gc.make_translator(graphdefs(config)["G"], state["params"]["G_A"], config.model.n_down)


def summaries(config, state, batch) -> dict:
    """synthetic | G_A(synthetic) | real | G_B(real) for the first image, (h, 4w, 3) in [0, 1]."""
    gd = graphdefs(config)["G"]
    a, b = jnp.asarray(batch["synthetic"][:1]), jnp.asarray(batch["real"][:1])
    fb = gc.translate_with(gd, state["params"]["G_A"], a, config.model.n_down)
    fa = gc.translate_with(gd, state["params"]["G_B"], b, config.model.n_down)
    return {"translation": jax.device_get(jnp.concatenate([a[0], fb[0], b[0], fa[0]], axis=1))}


def evaluate(config, state) -> dict:
    """Paired-view PSNR / SSIM / SWD of G_A on the benchmark (``config.eval_images`` images)."""
    return gc.evaluate_paired(
        config, make_translator(config, state), max_images=config.get("eval_images", 64)
    )
