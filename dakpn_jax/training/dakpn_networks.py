"""DA-KPN's two networks and their optimisers: the KPN head that predicts theta, the PatchGAN
discriminator D, Adam for each with its schedule, and theta with ablated components pinned."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from dakpn_jax import translation
from dakpn_jax.models.kpn import KPNHead, default_sigma_max
from dakpn_jax.models.patchgan import PatchGANPyramid
from dakpn_jax.training import gan_common as gc
from dakpn_jax.training.dakpn_features import area_resize

# ----------------------------------------------------------------------------- networks


def make_kpn(config, rngs: nnx.Rngs) -> KPNHead:
    m = config.model
    return KPNHead(
        m.num_classes,
        head=m.head,
        hidden=m.hidden,
        sigma0=m.sigma0,
        sigma_param=m.sigma_param,
        sigma_max=default_sigma_max(m.kernel_size),
        rngs=rngs,
    )


def d_in_channels(config) -> int:
    """D's input channels: RGB, plus the C-channel semantic map when ``loss.d_condition`` is on."""
    return 3 + (int(config.model.num_classes) if config.loss.d_condition != "none" else 0)


def make_discriminator(config, rngs: nnx.Rngs) -> PatchGANPyramid:
    d = config.model.disc
    return PatchGANPyramid(
        d_in_channels(config),
        num_D=d.num_D,
        ndf=d.ndf,
        n_layers=d.n_layers,
        norm=d.norm,
        arch=d.arch,
        init=d.init,
        rngs=rngs,
    )


def graphdefs(config) -> dict:
    return {
        "kpn": gc.graphdef_of(functools.partial(make_kpn, config)),
        "D": gc.graphdef_of(functools.partial(make_discriminator, config)),
    }


def ablate_params(theta: jax.Array, ablate: tuple[str, ...]) -> jax.Array:
    """Pins the switched-off components of theta (..., 12) to the identity: "affine" -> hsv scale 1
    and bias 0, "blur" -> sigma 0 (a delta kernel), "noise" -> noise scale 0. The head's outputs for
    those channels then get no gradient, so the ablated run trains only what is left."""
    if not ablate:
        return theta
    keep = np.ones(12, np.float32)
    identity = np.asarray(translation.IDENTITY_PARAMS, np.float32)
    for name, channels in (("affine", slice(0, 6)), ("blur", slice(6, 9)), ("noise", slice(9, 12))):
        if name in ablate:
            keep[channels] = 0.0
    return theta * keep + identity * (1.0 - keep)


def predict_params(
    kpn: KPNHead, features: jax.Array, images: jax.Array, ablate: tuple[str, ...] = ()
) -> jax.Array:
    """theta_low (B, h, w, 12); the deep head also sees the frame area-resized to the grid;
    ``ablate`` pins components to the identity (``ablate_params``)."""
    image_low = area_resize(images, features.shape[1:3]) if kpn.head == "deep" else None
    return ablate_params(kpn(features, image_low), ablate)


# ----------------------------------------------------------------------------- optimisers


def make_schedule(config, lr: float) -> optax.Schedule:
    """``constant``, ``cosine`` (to 0 at num_train_steps) or ``linear`` (to 0), after a linear
    warm-up of ``optim.warmup_steps`` from 0."""
    o = config.optim
    kind, warmup = o.schedule, int(o.warmup_steps)
    total = max(int(config.num_train_steps), warmup + 1)
    if kind == "constant":
        main = optax.constant_schedule(lr)
    elif kind == "cosine":
        main = optax.cosine_decay_schedule(lr, total - warmup)
    else:
        main = optax.linear_schedule(lr, 0.0, total - warmup)
    if warmup <= 0:
        return main
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])


def component_lr_scale(config) -> np.ndarray | None:
    """``optim.kpn_lr_scale = (affine, blur, noise)``: multipliers of the KPN rate for the head's output
    channels of each translation component (None / unset / all 1: one rate). Adam moves every raw
    parameter by about the rate per step whatever its gradient's size, so the rate is the step in
    parameter units: a colour scale needs moves of tenths, a noise scale (real sensor noise: a few
    hundredths) far smaller ones, and one rate for both makes the noise jitter or the colour crawl."""
    s = config.optim.kpn_lr_scale
    if not s:
        return None
    s = tuple(float(v) for v in s)
    if len(s) != 3 or min(s) < 0:
        raise ValueError(
            f"config.optim.kpn_lr_scale={s!r} must be three multipliers >= 0 (affine, blur, noise)"
        )
    return None if s == (1.0, 1.0, 1.0) else np.repeat(np.asarray(s, np.float32), [6, 3, 3])


def _scale_output_channels(vec: np.ndarray) -> optax.GradientTransformation:
    """Multiplies the updates of the head's output layer (``out``) by ``vec`` (12,) on its last axis."""
    v = jnp.asarray(vec)

    def update(updates, state, params=None):
        del params
        f = lambda path, u: u * v if any(getattr(k, "key", None) == "out" for k in path) else u
        return jax.tree_util.tree_map_with_path(f, updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def make_optimizers(config) -> dict:
    """Adam for the KPN head (``optim.lr``, paper 1e-4; per component ``optim.kpn_lr_scale``) and D
    (``optim.lr_D``; configs/default.py sets 1e-4 against the head's 3e-4)."""
    o = config.optim
    lr_d = o.lr_D
    adam = lambda lr: optax.adam(make_schedule(config, lr), b1=o.b1, b2=o.b2, eps=o.eps)
    scale = component_lr_scale(config)
    kpn = adam(o.lr) if scale is None else optax.chain(adam(o.lr), _scale_output_channels(scale))
    return {"kpn": kpn, "D": adam(lr_d)}
