"""CUT and FastCUT (Park et al. 2020, contrastive unpaired translation) as one method module.

Shares the generator, discriminator, LSGAN loss, optimiser, data streams and export path with
CycleGAN (``gan_common``); only the PatchNCE part is new. One generator G: synthetic (A) -> real (B),
one 70x70 PatchGAN D, and the patch projection head F (per tapped layer an MLP C_l -> 256 -> 256,
ReLU between, output normalised as ``v / (||v|| + 1e-7)``). With the published defaults
(configs/cut.py) G and D use CUT's anti-aliased down/up-sampling and G, D, F Xavier-normal init
with gain 0.02 (``models/resnet_generator``, ``models/gan_discriminator``).

PatchNCE (per tapped layer l of G's encoder, CUT layer numbering, default 0, 4, 8, 12, 16; layer 0
is the reflection-padded input, see ``models/resnet_generator``): pick P = min(256, h_l * w_l)
positions (one random set per layer, shared by all images of the batch and by query and key),
``q = F_l(E_l(G(a)))[p]``, ``k = stop_grad(F_l(E_l(a))[p])`` (both (B, P, 256), unit norm), and
per image and position::

    logits = [q_i . k_i, q_i . k_j (j != i, same image)] / tau      (tau = 0.07; the j = i slot of
                                                                   the negatives is masked to -10 / tau)
    NCE_l  = mean over (b, i) of cross-entropy(logits, class 0);    NCE = mean over layers.

Objectives (lambda_GAN = 1)::

    L_D     = 0.5 * (LSGAN(D(b), 1) + LSGAN(D(G(a)), 0))                       (no image pool)
    CUT     : L_G = LSGAN(D'(G(a)), 1) + 1  * (NCE(a, G(a)) + NCE(b, G(b))) / 2   (identity NCE)
    FastCUT : L_G = LSGAN(D'(G(a)), 1) + 10 * NCE(a, G(a)), and with probability 1/2 per step the
              inputs are flipped left-right before G and the query features flipped back, so
              NCE ties G(flip(a)) to a: flip equivariance.

Order (the published iteration): one forward G(a) (and G(b)); D takes its Adam step on L_D with
those fakes; then G and F take theirs on L_G evaluated against the *updated* discriminator D'.
Adam 2e-4 (0.5, 0.999), linear decay. Randomness per step: ``state["rng"]`` is split into
(flip, patches of NCE(a, G(a)), patches of NCE(b, G(b)), next rng). ``config.nce`` holds layers,
num_patches, tau, lambda_nce, nce_idt, flip_equivariance, mlp_dim. State::

    {"params": {"G", "D", "F"}, "opt": {"G", "D", "F"}, "step": int32, "rng": uint32[2]}

Metrics: loss_G (= lambda_GAN loss_G_gan + lambda_NCE * NCE term), loss_G_gan, loss_nce,
loss_nce_idt (unweighted), loss_D, loss_D_real, loss_D_fake (D's at its pre-update parameters), lr.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from dakpn_jax.models.resnet_generator import make_init, to_signed
from dakpn_jax.training import gan_common as gc

make_iterators = gc.make_iterators
next_batch = gc.next_batch

_MASK = -10.0  # the value published CUT puts on the positive's slot among the negatives
NORM_EPS = 1e-7  # published feature normalisation v / (||v|| + eps)


def _safe_norm(h: jax.Array) -> jax.Array:
    """``||h||`` over the last axis, (..., 1), with gradient 0 instead of NaN at h = 0 (with ReLU
    and zero biases an all-zero h happens; sqrt'(0) = inf would poison every parameter)."""
    ss = jnp.sum(h * h, axis=-1, keepdims=True)
    pos = ss > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, ss, 1.0)), 0.0)


class PatchSampleMLP(nnx.Module):
    """F: one 2-layer MLP per tapped layer, ``h / (||h|| + 1e-7)`` with ``h = W2 relu(W1 v + b1) + b2``;
    in_channels[l] -> dim. ``init``/``init_gain``: ``resnet_generator.make_init`` (CUT: xavier, 0.02)."""

    def __init__(
        self,
        in_channels,
        dim: int = 256,
        *,
        init: str = "normal",
        init_gain: float = 0.02,
        rngs: nnx.Rngs,
    ):
        init = make_init(init, init_gain)
        lin = lambda i, o: nnx.Linear(
            i, o, kernel_init=init, bias_init=nnx.initializers.zeros, rngs=rngs
        )
        self.mlps = nnx.List([nnx.List([lin(c, dim), lin(dim, dim)]) for c in in_channels])

    def __call__(self, feats):
        out = []
        for (l1, l2), f in zip(self.mlps, feats):
            h = l2(jax.nn.relu(l1(f)))
            out.append(h / (_safe_norm(h) + NORM_EPS))
        return out


def sample_patches(feats, num_patches: int, rng):
    """Gather the same ``min(num_patches, h*w)`` random positions (per layer) from every image.
    feats: list of (B, h, w, C) -> list of (B, P, C). rng: raw key."""
    keys = gc.split_key(rng, len(feats))
    out = []
    for f, k in zip(feats, keys):
        b, h, w, c = f.shape
        p = min(num_patches, h * w)
        ids = jax.random.permutation(jax.random.wrap_key_data(k), h * w)[:p]
        out.append(f.reshape(b, h * w, c)[:, ids])
    return out


def patch_nce_loss(q: jax.Array, k: jax.Array, tau: float) -> jax.Array:
    """PatchNCE for one layer: q, k (B, P, D); negatives are the other positions of the same image.
    Returns the mean cross-entropy (scalar); k is treated as a constant."""
    if q.shape != k.shape or q.ndim != 3:
        raise ValueError(f"patch_nce_loss: q {q.shape} and k {k.shape} must both be (B, P, D)")
    k = jax.lax.stop_gradient(k)
    pos = jnp.sum(q * k, axis=-1, keepdims=True)  # (B, P, 1)
    neg = jnp.einsum("bpd,bqd->bpq", q, k)  # (B, P, P)
    eye = jnp.eye(q.shape[1], dtype=bool)
    neg = jnp.where(eye, _MASK, neg)
    logits = jnp.concatenate([pos, neg], axis=-1) / tau
    return jnp.mean(
        optax.softmax_cross_entropy_with_integer_labels(
            logits, jnp.zeros(logits.shape[:-1], jnp.int32)
        )
    )


def _feature_channels(config):
    # Shape evaluation only: no weights are materialised.
    h, w, _ = gc.train_image_shape(config)
    shapes = jax.eval_shape(
        lambda x: gc.make_generator(config, nnx.Rngs(0)).encode(x, config.nce.layers),
        jax.ShapeDtypeStruct((1, h, w, 3), jnp.float32),
    )
    return [s.shape[-1] for s in shapes]


def _builders(config):
    chans = _feature_channels(config)
    return {
        "G": functools.partial(gc.make_generator, config),
        "D": functools.partial(gc.make_discriminator, config),
        "F": lambda rngs: PatchSampleMLP(
            chans, config.nce.mlp_dim, rngs=rngs, **gc.init_args(config.model)
        ),
    }


def graphdefs(config) -> dict:
    return {k: gc.graphdef_of(b) for k, b in _builders(config).items()}


def init_state(config, rng) -> dict:
    """Fresh CUT/FastCUT state (see module docstring) from a (typed or raw) key."""
    rng = gc.key_data(rng)
    *keys, rng = gc.split_key(rng, 4)
    params = {
        name: gc.init_network(build, k)[1]
        for (name, build), k in zip(_builders(config).items(), keys)
    }
    tx = gc.make_optimizer(config)
    return {
        "params": params,
        "opt": {k: tx.init(v) for k, v in params.items()},
        "step": jnp.zeros((), jnp.int32),
        "rng": rng,
    }


def make_train_step(config):
    """Returns the pure ``train_step(state, batch) -> (state, metrics)``."""
    gd = graphdefs(config)
    tx = gc.make_optimizer(config)
    n = config.nce
    layers, lam_nce, tau = list(n.layers), float(n.lambda_nce), float(n.tau)
    lam_gan = float(config.loss.get("lambda_gan", 1.0))
    schedule = gc.linear_decay_schedule(
        config.optim.lr, config.optim.constant_steps, config.optim.decay_steps
    )

    def nce(G, F, src, tgt, flipped, key):
        feat_q = G.encode(tgt, layers)
        # Flip equivariance: tgt was made from flip(src); flip its features back to align with src.
        feat_q = [jnp.where(flipped, f[:, :, ::-1], f) for f in feat_q]
        feat_k = G.encode(src, layers)
        k_ids = key
        q = F(sample_patches(feat_q, n.num_patches, k_ids))
        k = F(sample_patches(feat_k, n.num_patches, k_ids))
        return sum(patch_nce_loss(qi, ki, tau) for qi, ki in zip(q, k)) / len(layers)

    def generator_input(a, b, flipped):
        inp = jnp.concatenate([a, b]) if n.nce_idt else a
        return jnp.where(flipped, inp[:, :, ::-1], inp)

    def generator_loss(gf, dp, a, b, flipped, k_a, k_b):
        G, F, D = gc.merge(gd["G"], gf["G"]), gc.merge(gd["F"], gf["F"]), gc.merge(gd["D"], dp)
        out = G(generator_input(a, b, flipped))
        fake_b = out[: a.shape[0]]
        gan = gc.lsgan_loss(D(fake_b), True)
        loss_nce = nce(G, F, a, fake_b, flipped, k_a) if lam_nce > 0 else jnp.zeros(())
        loss_idt = (
            nce(G, F, b, out[a.shape[0] :], flipped, k_b)
            if (lam_nce > 0 and n.nce_idt)
            else jnp.zeros(())
        )
        both = (loss_nce + loss_idt) / 2 if n.nce_idt else loss_nce
        loss = lam_gan * gan + lam_nce * both
        return loss, {"loss_G_gan": gan, "loss_nce": loss_nce, "loss_nce_idt": loss_idt}

    def train_step(state, batch):
        gc.check_batch(batch)
        a, b = to_signed(batch["synthetic"]), to_signed(batch["real"])
        p = state["params"]
        k_flip, k_a, k_b, rng = gc.split_key(state["rng"], 4)
        flipped = (
            (jax.random.uniform(jax.random.wrap_key_data(k_flip)) < 0.5)
            if n.flip_equivariance
            else jnp.bool_(False)
        )
        # 1. D steps on the fakes of the current G (published order: D first).
        fake_b = gc.merge(gd["G"], p["G"])(generator_input(a, b, flipped))[: a.shape[0]]
        (loss_d, (d_real, d_fake)), d_grads = gc.discriminator_grads(
            gd["D"], p["D"], b, fake_b, has_aux=True
        )
        new_p, new_opt = {}, {}
        new_p["D"], new_opt["D"] = gc.apply_updates(tx, p["D"], d_grads, state["opt"]["D"])
        # 2. G and F step against the updated D (the loss recomputes the same fakes, with gradients).
        gf = {"G": p["G"], "F": p["F"]}
        (loss_g, m), grads = jax.value_and_grad(generator_loss, has_aux=True)(
            gf, new_p["D"], a, b, flipped, k_a, k_b
        )
        for name in ("G", "F"):
            new_p[name], new_opt[name] = gc.apply_updates(
                tx, p[name], grads[name], state["opt"][name]
            )
        metrics = {
            "loss_G": loss_g,
            **m,
            "loss_D": loss_d,
            "loss_D_real": d_real,
            "loss_D_fake": d_fake,
            "lr": schedule(state["step"]),
        }
        new_state = {"params": new_p, "opt": new_opt, "step": state["step"] + 1, "rng": rng}
        return new_state, {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}

    return train_step


def make_translator(config, state):
    """Shared contract: jitted ``translate_fn(images (B,H,W,3) [0,1], labels) -> (B,H,W,3)`` with G
    at any frame size; the labels are ignored."""
    gd = gc.graphdef_of(functools.partial(gc.make_generator, config))
    return gc.make_translator(gd, state["params"]["G"], config.model.n_down)


def summaries(config, state, batch) -> dict:
    """synthetic | G(synthetic) | real for the first image, (h, 3w, 3) in [0, 1]."""
    gd = gc.graphdef_of(functools.partial(gc.make_generator, config))
    a, b = jnp.asarray(batch["synthetic"][:1]), jnp.asarray(batch["real"][:1])
    fb = gc.translate_with(gd, state["params"]["G"], a, config.model.n_down)
    return {"translation": jax.device_get(jnp.concatenate([a[0], fb[0], b[0]], axis=1))}


def evaluate(config, state) -> dict:
    """Paired-view PSNR / SSIM / SWD of G on the benchmark (``config.eval_images`` images)."""
    return gc.evaluate_paired(
        config, make_translator(config, state), max_images=config.get("eval_images", 64)
    )
