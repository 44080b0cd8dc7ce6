"""VSAIT (Theiss et al., ECCV 2022) as a method module of the generic trainer (docs/METHOD.md §8).

Networks (``models/vsait.py``): generator G (synthetic -> real, blur-pooled ResNet), mapping
network M, per-cell hypervector discriminator D; frozen: the VGG19 features and the random
projection R behind the hypervector map h(.) (one D-dim vector per 16 x 16 cell).

Reading of §8 (what ``v`` is). ``x`` = synthetic (source) image, ``y`` = real (target) image, both
in [-1, 1]; ``v = h(x)``, the *source image's* hypervector map. M(v) is a learned per-cell
"source -> target" hypervector; binding it to the source, ``v * M(v)``, is the translation done in
hypervector space, and unbinding the translated image with the same key,
``h(G(x)) * M(v)``, must give back the source content v. v has no trainable parameter upstream
(VGG19 and R are frozen), so stop_grad(v) only documents that. The losses (means over batch and
cells; cos over the D hypervector components)::

    L_GM = 10 * mean(1 - cos(h(G(x)) * sg(M(v)), sg(v)))                   ("loss_vsa", unweighted)
           + 0.5 * (-mean D(h(G(x))) - mean D(v * M(v)))                   ("loss_G_adv_img/map")
    L_D  = (mean relu(1 + D(h(G'(x)))) + mean relu(1 + D(v * M'(v))) + mean relu(1 - D(h(y)))) / 3

G gets gradients from the VSA term and the image adversarial term; M only from the mapped
adversarial term (its output is a constant inside the VSA term). cos(a, b) = <a, b> /
max(||a|| ||b||, 1e-8) (PyTorch's ``cosine_similarity`` convention).

Update order (§8): G and M share one optimiser and step first, against D's current weights; then
D steps on fakes *regenerated* with the updated G' and M' (``G'(x)``, ``v * M'(v)``).
Optimisers: Adam(b1 = 0, b2 = 0.9) with coupled L2 weight decay 1e-4 (PyTorch ``Adam(weight_decay)``:
the decay is added to the gradient before the moments), lr 1e-4 for G and M, 4e-4 for D, halved
every 100k steps (``lr * 0.5 ** floor(step / 100000)``).

The projection R (D x 31,232 = 511 MB at the published sizes) is not stored: the state holds the
raw key it is drawn from (``frozen.proj_key``, split off the run's seed at init) and every step
regenerates R = normal(proj_key) inside the jitted step (a few ms on an accelerator next to the
~65 GFLOP per image of the projection itself). A resumed run restores the key and so draws the same
R; R never enters a gradient. Caveat: R depends on jax's threefry implementation, so a checkpoint
must be resumed with the same ``jax_threefry_partitionable`` setting (the default since jax 0.5).

VGG19 weights: ``config.model.vgg_weights`` (a local torchvision ``vgg19-dcbb9e9d.pth`` or
``.safetensors``) is read once by :func:`init_state` and stored in the state (``frozen.vgg``,
15.3 M values, never updated), so checkpoints, resume and export are self-contained. Without a
weights path training is refused unless ``config.model.allow_random_vgg`` (test / CPU smoke runs
only; it logs a warning and every step logs ``vgg_pretrained = 0``). :func:`vsait_available` tells
the protocol whether a config is a real VSAIT.

State::

    {"params": {"G", "M", "D"}, "opt": {"GM", "D"},
     "frozen": {"vgg": VGG19 params, "proj_key": uint32[2]}, "step": int32, "rng": uint32[2]}
"""

from __future__ import annotations

import logging
import os
import warnings

import jax
import jax.numpy as jnp
import optax

from dakpn_jax.models import vgg19
from dakpn_jax.models import vsait as vm
from dakpn_jax.models.resnet_generator import to_signed
from dakpn_jax.training import gan_common as gc

log = logging.getLogger("dakpn_jax.vsait")

make_iterators = gc.make_iterators
next_batch = gc.next_batch

_PUBLISHED_VGG_WIDTH = 64


# ----------------------------------------------------------------------------- availability


def vsait_available(config) -> tuple[bool, str]:
    """(True, "") when ``config`` describes a real VSAIT: ImageNet VGG19 weights configured, the
    file present and the published VGG width; otherwise (False, why) - a protocol should then omit
    the VSAIT row and print ``why`` (a run with random VGG features is not VSAIT)."""
    m = config.get("model")
    if m is None:
        return False, "config.model is missing"
    path = m.get("vgg_weights")
    if not path:
        return False, (
            "no ImageNet VGG19 weights configured (set config.model.vgg_weights to a local "
            "torchvision vgg19-dcbb9e9d.pth or .safetensors); VSAIT with random VGG features "
            "is not VSAIT"
        )
    if not os.path.isfile(path):
        return False, f"config.model.vgg_weights={path!r} does not exist"
    if int(m.get("vgg_width", _PUBLISHED_VGG_WIDTH)) != _PUBLISHED_VGG_WIDTH:
        return (
            False,
            f"config.model.vgg_width={m.vgg_width} is not the published 64 (test-only VGG)",
        )
    return True, ""


# ----------------------------------------------------------------------------- networks


def _feat_dim(config) -> int:
    return vm.feature_dim(int(config.model.get("vgg_width", _PUBLISHED_VGG_WIDTH)))


def _builders(config) -> dict:
    m = config.model
    gain = float(m.get("gain", 0.2))
    return {
        "G": lambda rngs: vm.VSAITGenerator(
            ngf=m.ngf, n_blocks=m.n_blocks, n_down=m.n_down, gain=gain, rngs=rngs
        ),
        "M": lambda rngs: vm.MappingNetwork(m.hv_dim, gain=gain, rngs=rngs),
        "D": lambda rngs: vm.HypervectorDiscriminator(m.hv_dim, m.d_hidden, gain=gain, rngs=rngs),
        "vgg": lambda rngs: vgg19.VGG19Features(
            width=int(m.get("vgg_width", _PUBLISHED_VGG_WIDTH)), rngs=rngs
        ),
    }


def graphdefs(config) -> dict:
    """Static graphdefs {"G", "M", "D", "vgg"}."""
    return {k: gc.graphdef_of(b) for k, b in _builders(config).items()}


def _vgg_params(config):
    m = config.model
    width = int(m.get("vgg_width", _PUBLISHED_VGG_WIDTH))
    if m.get("vgg_weights"):
        if width != _PUBLISHED_VGG_WIDTH:
            raise ValueError(
                f"config.model.vgg_width={width}: pretrained VGG19 weights need the published 64"
            )
        return vgg19.load_torchvision_state_dict(m.vgg_weights, width=width)
    if not m.get("allow_random_vgg", False):
        raise ValueError(
            "VSAIT needs ImageNet-pretrained VGG19 features: set --config.model.vgg_weights=/path/to/"
            "vgg19-dcbb9e9d.pth (torchvision's file, or a .safetensors with the same tensor names). "
            "Nothing is downloaded. (config.model.allow_random_vgg=True runs with random VGG weights "
            "for tests only; that is not VSAIT.)"
        )
    msg = (
        "VSAIT is running with RANDOM VGG19 weights (config.model.allow_random_vgg=True): for tests "
        "and CPU smoke runs only - its results are not VSAIT's and must not be reported as such"
    )
    log.warning("!" * 20 + " " + msg)
    warnings.warn(msg, stacklevel=3)
    # Drawn with NumPy from config.seed (a static int: the same values under eval_shape and eagerly,
    # and no per-shape jax compilations).
    return vgg19.random_params(int(config.seed) + 7919, width=width)


def make_optimizers(config) -> dict:
    """{"GM", "D"}: L2 decay -> Adam(b1, b2, eps) -> lr halved every ``halve_every`` steps."""
    o = config.optim

    def tx(lr):
        return optax.chain(
            optax.add_decayed_weights(o.weight_decay),
            optax.scale_by_adam(b1=o.b1, b2=o.b2, eps=o.eps),
            optax.scale_by_learning_rate(schedule(config, lr)),
        )

    return {"GM": tx(o.lr_G), "D": tx(o.lr_D)}


def schedule(config, lr: float) -> optax.Schedule:
    """``lr * 0.5 ** floor(step / config.optim.halve_every)``."""
    return optax.exponential_decay(
        lr, transition_steps=int(config.optim.halve_every), decay_rate=0.5, staircase=True
    )


def init_state(config, rng) -> dict:
    """Fresh VSAIT state (module docstring) from a (typed or raw) key; reads the VGG19 weights."""
    rng = gc.key_data(rng)
    k_g, k_m, k_d, k_proj, rng = gc.split_key(rng, 5)
    vgg = _vgg_params(config)  # first: a missing weights file fails before any other work
    b = _builders(config)
    params = {
        "G": gc.init_network(b["G"], k_g)[1],
        "M": gc.init_network(b["M"], k_m)[1],
        "D": gc.init_network(b["D"], k_d)[1],
    }
    tx = make_optimizers(config)
    return {
        "params": params,
        "opt": {
            "GM": tx["GM"].init({"G": params["G"], "M": params["M"]}),
            "D": tx["D"].init(params["D"]),
        },
        "frozen": {"vgg": vgg, "proj_key": k_proj},
        "step": jnp.zeros((), jnp.int32),
        "rng": rng,
    }


# ----------------------------------------------------------------------------- losses


def cosine(a: jax.Array, b: jax.Array) -> jax.Array:
    """cos over the last axis: <a, b> / max(||a|| ||b||, 1e-8)."""
    num = jnp.sum(a * b, axis=-1)
    den = jnp.sqrt(jnp.sum(a * a, axis=-1) * jnp.sum(b * b, axis=-1))
    return num / jnp.maximum(den, 1e-8)


def hinge_fake(score: jax.Array) -> jax.Array:
    return jnp.mean(jax.nn.relu(1.0 + score))


def hinge_real(score: jax.Array) -> jax.Array:
    return jnp.mean(jax.nn.relu(1.0 - score))


def make_hypervector_fn(config, frozen: dict, graphdef=None):
    """``h(images in [-1, 1]) -> (B, H/16, W/16, hv_dim)`` with the state's VGG and projection."""
    gd = graphdefs(config)["vgg"] if graphdef is None else graphdef
    vgg = gc.merge(gd, jax.lax.stop_gradient(frozen["vgg"]))
    r = vm.projection(frozen["proj_key"], int(config.model.hv_dim), _feat_dim(config))
    return lambda images: vm.hypervectors(vgg, images, r)


def make_train_step(config):
    """Returns the pure ``train_step(state, batch) -> (state, metrics)``; batch {"synthetic", "real"}."""
    gd = graphdefs(config)
    tx = make_optimizers(config)
    lam_vsa, lam_adv = float(config.loss.lambda_vsa), float(config.loss.lambda_adv)
    lr_g, lr_d = schedule(config, config.optim.lr_G), schedule(config, config.optim.lr_D)
    pretrained = 1.0 if config.model.get("vgg_weights") else 0.0
    sg = jax.lax.stop_gradient

    def gm_loss(gm, dp, x, v, hyp):
        G, M, D = gc.merge(gd["G"], gm["G"]), gc.merge(gd["M"], gm["M"]), gc.merge(gd["D"], dp)
        hf = hyp(G(x))
        m = M(v)
        vsa = jnp.mean(1.0 - cosine(hf * sg(m), sg(v)))
        adv_img, adv_map = -jnp.mean(D(hf)), -jnp.mean(D(v * m))
        loss = lam_vsa * vsa + lam_adv * (adv_img + adv_map)
        return loss, {"loss_vsa": vsa, "loss_G_adv_img": adv_img, "loss_G_adv_map": adv_map}

    def d_loss(dp, hf, vm_, hy):
        D = gc.merge(gd["D"], dp)
        t_img, t_map, t_real = hinge_fake(D(hf)), hinge_fake(D(vm_)), hinge_real(D(hy))
        return (t_img + t_map + t_real) / 3.0, {
            "loss_D_fake_img": t_img,
            "loss_D_fake_map": t_map,
            "loss_D_real": t_real,
        }

    def train_step(state, batch):
        gc.check_batch(batch)
        x, y = to_signed(batch["synthetic"]), to_signed(batch["real"])
        p = state["params"]
        hyp = make_hypervector_fn(config, state["frozen"], gd["vgg"])
        # One VGG pass over both domains (per-image network, per-cell map: the same values).
        v, hy = jnp.split(sg(hyp(jnp.concatenate([x, y]))), 2)

        gm = {"G": p["G"], "M": p["M"]}
        (loss_g, m_g), grads = jax.value_and_grad(gm_loss, has_aux=True)(gm, p["D"], x, v, hyp)
        gm, opt_gm = gc.apply_updates(tx["GM"], gm, grads, state["opt"]["GM"])

        # D on fakes regenerated with the updated G and M.
        G1, M1 = gc.merge(gd["G"], gm["G"]), gc.merge(gd["M"], gm["M"])
        hf1, vm1 = sg(hyp(G1(x))), sg(v * M1(v))
        (loss_d, m_d), d_grads = jax.value_and_grad(d_loss, has_aux=True)(p["D"], hf1, vm1, hy)
        dp, opt_d = gc.apply_updates(tx["D"], p["D"], d_grads, state["opt"]["D"])

        new_state = {
            "params": {"G": gm["G"], "M": gm["M"], "D": dp},
            "opt": {"GM": opt_gm, "D": opt_d},
            "frozen": state["frozen"],
            "step": state["step"] + 1,
            "rng": state["rng"],
        }
        metrics = {
            "loss_G": loss_g,
            **m_g,
            "loss_D": loss_d,
            **m_d,
            "lr_G": lr_g(state["step"]),
            "lr_D": lr_d(state["step"]),
            "vgg_pretrained": pretrained,
        }
        return new_state, {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}

    return train_step


# ----------------------------------------------------------------------------- inference


def make_translator(config, state):
    """Shared contract: jitted ``translate_fn(images (B,H,W,3) [0,1], labels) -> (B,H,W,3)`` with G at
    any frame size (edge-padded to a multiple of 2^n_down, cropped back); the labels are ignored."""
    return gc.make_translator(graphdefs(config)["G"], state["params"]["G"], config.model.n_down)


def summaries(config, state, batch) -> dict:
    """synthetic | G(synthetic) | real for the first image, (h, 3w, 3) in [0, 1]."""
    a, b = jnp.asarray(batch["synthetic"][:1]), jnp.asarray(batch["real"][:1])
    fb = gc.translate_with(graphdefs(config)["G"], state["params"]["G"], a, config.model.n_down)
    return {"translation": jax.device_get(jnp.concatenate([a[0], fb[0], b[0]], axis=1))}


def evaluate(config, state) -> dict:
    """Paired-view PSNR / SSIM / SWD of G on the benchmark (``config.eval_images`` images)."""
    return gc.evaluate_paired(
        config, make_translator(config, state), max_images=config.get("eval_images", 64)
    )
