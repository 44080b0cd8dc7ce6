"""DA-KPN (docs/METHOD.md §1 steps 1-6) as a method module of the generic trainer.

Per step, with a global batch of synthetic frames x (B, H, W, 3), their labels y (B, H, W) and
unpaired real frames r (B, H', W', 3) (any size), all float32 in [0, 1]:

1. Features f (B, h, w, C) on the parameter grid (``config.model.param_size``): the one-hot label
   area-resized to h x w (``config.features = "onehot"``, the benchmark default; ignore pixels
   contribute zeros), or the class logits of a frozen segmenter (``"segmenter"``, see below).
2. theta_low = KPN(f) (B, h, w, 12) (:class:`dakpn_jax.models.kpn.KPNHead`).
3. Two views of T(x; theta, n) for the discriminator (the paper's two-scale scheme):
   - ``tile``: a full-resolution th x tw tile (default H/8 x W/8) at a random position per image.
     Only the tile plus a K/2 halo is translated (theta upsampled to H x W, then cropped, frame and
     theta edge-padded by K/2 first), which equals cropping the full-frame translation exactly
     because T is local; the real tile is a random crop of r.
   - ``low``: the whole frame area-resized to ``config.model.low_size`` and translated there with
     theta_low; sigma and noise_scale are rescaled to low-resolution pixels (sigma * s and
     noise_scale * s, s = sqrt(lh lw / (H W)): blur in pixels shrinks with the image and averaging
     1/s^2 pixels of white noise divides its std by 1/s). This approximates resize(T(x)) without
     translating full frames, the paper's low-resolution branch; the real view is resize(r).
4. Losses (``config.loss``), l = D logits, averaged over positions and pyramid levels, summed over
   the views in ``d_inputs`` (both by default)::

       form            D loss                              G adversarial loss
       saturating      softplus(-l_real) + softplus(l_fake)  -softplus(l_fake)   (paper: minimax)
       non_saturating  same                                softplus(-l_fake)
       lsgan           (l_real - 1)^2 + l_fake^2           (l_fake - 1)^2
       hinge           relu(1 - l_real) + relu(1 + l_fake)  -l_fake

   plus ``r1 / 2 * E|grad_r D(r)|^2`` for D (optional), and for G ``identity * MSE(T(x_tile),
   x_tile)`` (paper: 1). The paper's D formula has one real term; every view here gets its own real
   counterpart (real tile, resized real frame), otherwise the low view alone would separate by
   resolution.
5. One step: a D update (fakes held constant), then a G update against the *updated* D: the
   alternating form of the paper's gradient-reversal minimax. The translation is evaluated once
   (``jax.vjp``) and its pullback reused for the G gradient. Only the KPN head and D change.

Frozen segmenter: ``config.features = "segmenter"`` loads ``(apply_fn, params)`` with
:func:`dakpn_jax.training.segmentation.load_segmenter` from ``config.segmenter_workdir`` (or takes
them from ``make_train_step(config, segmenter=...)``). Its params are constants closed over by the
step, outside the state, and its logits pass through ``stop_gradient``: they never change.

Conditioned D (``config.loss.d_condition = "segmenter"``; default ``"none"``: D sees RGB only, the
paper): D sees ``concat(view, s)``, s a (C-channel) semantic map of the same pixels that the KPN
cannot change. Its optimal logit is then log p_r(s) / p_f(s) + log p_r(x | s) / p_f(x | s), and
only the second term depends on x: a D that separates the domains by class frequencies (real scenes
have other class proportions than synthetic ones, which the translation family cannot change) no
longer pulls the KPN into recolouring classes. Fake side (``loss.d_condition_fake``): ``"labels"``,
the synthetic labels one-hot, or ``"segmenter"``, the frozen segmenter on the untranslated synthetic
frame (the same map function on both sides). Real side: the frozen segmenter (the one the features
use, ``segmenter_workdir`` / ``segmenter_weights``) on the real frame. ``loss.d_condition_probs``:
``"soft"`` (softmax) or ``"hard"`` (one-hot argmax) segmenter maps; hard maps make s the same kind of
object on both sides with ``"labels"`` (one-hot), so D cannot tell the domains apart by the maps'
confidence alone. The map of the full frame is cropped at the tile's own position (the synthetic
tile's for the fakes, the real tile's for the real one) and area-resized to ``low_size`` for the low
view; it passes through ``stop_gradient`` and the segmenter's params are constants of the step.
Works with both update rules; R1 is the gradient w.r.t. the image channels only.

Noise: ``config.model.noise = "fixed"`` (paper): one seeded N(0, 1) field at the training frame
size (``translation.noise_field``); the tile uses the crop at the tile's position, the low view a
field of its own size. ``"fresh"``: new per-sample noise every step from the state's key.
Translation at inference (:func:`make_translator`) always uses the fixed field resized to the frame.

The authors' choices (docs/METHOD.md §6, the ``paper`` presets of configs/gta5_cityscapes.py etc.;
docs/PAPER.md lists every difference). Each is a switch whose default keeps the path above:

  ===========================  ===============================  ===================================
  field                        default (path above)             authors' code
  ===========================  ===============================  ===================================
  ``model.disc.arch``          ``"patchgan"`` (46 px, 3x3 head)  ``"nlayer"`` (70 x 70, 4x4 s1 head)
  ``model.disc.init``          ``"normal"`` N(0, 0.02)           ``"torch"`` (PyTorch default init)
  ``model.tile_grid``          ``"random"`` tile position       ``"aligned"``: a cell of the 8 x 8
                                                                grid of th x tw tiles (top-left
                                                                (i th, j tw), i, j ~ U{0..7})
  ``model.low_params``         ``"rescaled"`` (sigma, noise *s)  ``"unscaled"``: theta_low as is
  ``loss.real_low``            True: D sees resize(r)           False: no real low view (one real
                                                                term, two fake terms)
  ``loss.update_rule``         ``"alternating"``                ``"gradient_reversal"``
  ``segmenter_weights``        unset (workdir segmenter)        a torchvision-layout FCN-ResNet50
                                                                .pth / .safetensors, run on the
                                                                frame resized to
                                                                ``segmenter_input_size`` (96 x 160),
                                                                un-normalised
  ===========================  ===============================  ===================================

``loss.update_rule = "gradient_reversal"`` (needs ``loss.form = "saturating"``, i.e. BCE with logits,
and ``r1 = 0``): one forward pass and one backward pass of

    L(theta_D, theta_G) = sum_v [BCE(D(real_v), 1)] + sum_v BCE(D(GRL(fake_v)), 0) + w_idt MSE

where GRL is the identity forward and negates the cotangent backward (scale 1). Hence
grad_D L = grad_D V and grad_G L = -grad_G V + w_idt grad_G MSE for the saturating minimax value
V = sum BCE terms: D descends V, the KPN ascends it, and both Adam steps happen at once from the
same forward pass (the real terms do not depend on theta_G). Its metrics: ``loss_D`` (V),
``loss_G`` (-V_fake + w_idt MSE), ``loss_G_adv``, ``loss_identity``, per view ``loss_D_<v>``,
``D_real_<v>`` (where a real view exists), ``D_fake_<v>``.

Data parallelism: the step sees global arrays; the random tile positions come from the replicated
key and BatchNorm statistics in D span the global batch, so N devices compute what 1 device does.

State::

    {"params": {"kpn", "D"}, "opt": {"kpn", "D"}, "step": int32, "rng": uint32[2]}
"""
from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from dakpn_jax import translation
from dakpn_jax.models.kpn import KPNHead, default_sigma_max
from dakpn_jax.models.patchgan import PatchGANPyramid
from dakpn_jax.training import gan_common as gc
from dakpn_jax.training.dakpn_features import (  # noqa: F401  (dakpn.area_resize etc., as before)
    _area_weights, area_resize, grid_for_frame, onehot_features)

LOSS_FORMS = ("saturating", "non_saturating", "lsgan", "hinge")
FEATURES = ("onehot", "segmenter")
NOISE = ("fixed", "fresh")
VIEWS = ("tile", "low")
SCHEDULES = ("constant", "cosine", "linear")
UPDATES = ("alternating", "gradient_reversal")
TILE_GRIDS = ("random", "aligned")
LOW_PARAMS = ("rescaled", "unscaled")
D_CONDITIONS = ("none", "segmenter")
"""``loss.d_condition``: what D sees next to the image (module docstring, "Conditioned D")."""
D_CONDITION_FAKE = ("labels", "segmenter")
D_CONDITION_PROBS = ("soft", "hard")
GRID_CELLS = 8
"""The aligned tile grid is GRID_CELLS x GRID_CELLS tiles of (H // 8, W // 8) (the authors' code)."""
ABLATIONS = ("affine", "blur", "noise")
"""Translation components ``config.model.ablate`` can switch off (docs/METHOD.md §1 step 8 ablations)."""


# ----------------------------------------------------------------------------- config

def _get(c, name, default):
    return c.get(name, default) if hasattr(c, "get") else getattr(c, name, default)


def _pair(value, name) -> tuple[int, int]:
    v = tuple(int(a) for a in value)
    if len(v) != 2 or min(v) < 1:
        raise ValueError(f"config.{name}={value!r} must be two positive ints (h, w)")
    return v


def frame_size(config) -> tuple[int, int]:
    """The training frame size (H, W) that ``param_size`` refers to: ``config.model.frame_size``,
    else ``(config.data.height, config.data.width)`` (the procedural benchmark)."""
    fs = _get(config.model, "frame_size", None)
    if fs:
        return _pair(fs, "model.frame_size")
    if _get(config.data, "height", None) and _get(config.data, "width", None):
        return int(config.data.height), int(config.data.width)
    raise ValueError("config.model.frame_size is needed when config.data has no height/width")


def param_size(config) -> tuple[int, int]:
    return _pair(config.model.param_size, "model.param_size")


def tile_size(config, frame: tuple[int, int] | None = None) -> tuple[int, int]:
    """``config.model.tile_size``, default (H // 8, W // 8) of the (training) frame."""
    H, W = frame or frame_size(config)
    ts = _get(config.model, "tile_size", None)
    th, tw = _pair(ts, "model.tile_size") if ts else (H // 8, W // 8)
    if th > H or tw > W:
        raise ValueError(f"config.model.tile_size=({th}, {tw}) exceeds the frame ({H}, {W})")
    return th, tw


def low_size(config) -> tuple[int, int]:
    return _pair(config.model.low_size, "model.low_size")


def _check_config(config) -> None:
    m, l = config.model, config.loss
    checks = [("features", _get(config, "features", "onehot"), FEATURES),
              ("loss.form", l.form, LOSS_FORMS), ("model.noise", m.noise, NOISE),
              ("optim.schedule", _get(config.optim, "schedule", "constant"), SCHEDULES),
              ("loss.update_rule", _get(l, "update_rule", "alternating"), UPDATES),
              ("model.tile_grid", _get(m, "tile_grid", "random"), TILE_GRIDS),
              ("model.low_params", _get(m, "low_params", "rescaled"), LOW_PARAMS),
              ("loss.d_condition", l.d_condition, D_CONDITIONS),
              ("loss.d_condition_fake", l.d_condition_fake, D_CONDITION_FAKE),
              ("loss.d_condition_probs", l.d_condition_probs, D_CONDITION_PROBS)]
    for name, value, allowed in checks:
        if value not in allowed:
            raise ValueError(f"config.{name}={value!r} must be one of {allowed}")
    views = tuple(l.d_inputs)
    if not views or set(views) - set(VIEWS):
        raise ValueError(f"config.loss.d_inputs={views!r} must be a non-empty subset of {VIEWS}")
    if m.kernel_size < 1 or m.kernel_size % 2 == 0:
        raise ValueError(f"config.model.kernel_size={m.kernel_size} must be a positive odd int")
    ablation_of(config)
    for name, used in (("features", _get(config, "features", "onehot") == "segmenter"),
                       ("loss.d_condition", l.d_condition == "segmenter")):
        if used and not _get(config, "segmenter_workdir", None) and not _get(config, "segmenter_weights", None):
            raise ValueError(f"config.{name}='segmenter' needs config.segmenter_workdir (a segmentation run) or "
                             "config.segmenter_weights (a torchvision-layout FCN-ResNet50 .pth / .safetensors)")
    if _get(l, "update_rule", "alternating") == "gradient_reversal":
        if l.form != "saturating" or float(l.r1) > 0:
            raise ValueError(f"config.loss.update_rule='gradient_reversal' is the saturating minimax objective: it "
                             f"needs loss.form='saturating' (got {l.form!r}) and loss.r1=0 (got {l.r1})")
    if not _get(l, "real_low", True) and "tile" not in views:
        raise ValueError("config.loss.real_low=False needs 'tile' in loss.d_inputs (D needs a real view)")


# ----------------------------------------------------------------------------- networks

def make_kpn(config, rngs: nnx.Rngs) -> KPNHead:
    m = config.model
    return KPNHead(m.num_classes, head=m.head, hidden=m.hidden, sigma0=m.sigma0, sigma_param=m.sigma_param,
                   sigma_max=default_sigma_max(m.kernel_size), rngs=rngs)


def d_in_channels(config) -> int:
    """D's input channels: RGB, plus the C-channel semantic map when ``loss.d_condition`` is on."""
    return 3 + (int(config.model.num_classes) if config.loss.d_condition != "none" else 0)


def make_discriminator(config, rngs: nnx.Rngs) -> PatchGANPyramid:
    d = config.model.disc
    return PatchGANPyramid(d_in_channels(config), num_D=d.num_D, ndf=d.ndf, n_layers=d.n_layers, norm=d.norm,
                           arch=_get(d, "arch", "patchgan"), init=_get(d, "init", "normal"), rngs=rngs)


def graphdefs(config) -> dict:
    return {"kpn": gc.graphdef_of(functools.partial(make_kpn, config)),
            "D": gc.graphdef_of(functools.partial(make_discriminator, config))}


# ----------------------------------------------------------------------------- optimisers

def make_schedule(config, lr: float) -> optax.Schedule:
    """``constant``, ``cosine`` (to 0 at num_train_steps) or ``linear`` (to 0), after a linear
    warm-up of ``optim.warmup_steps`` from 0."""
    o = config.optim
    kind, warmup = _get(o, "schedule", "constant"), int(_get(o, "warmup_steps", 0))
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
    s = _get(config.optim, "kpn_lr_scale", None)
    if not s:
        return None
    s = tuple(float(v) for v in s)
    if len(s) != 3 or min(s) < 0:
        raise ValueError(f"config.optim.kpn_lr_scale={s!r} must be three multipliers >= 0 (affine, blur, noise)")
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
    (``optim.lr_D``, default the same)."""
    o = config.optim
    lr_d = _get(o, "lr_D", None) or o.lr
    adam = lambda lr: optax.adam(make_schedule(config, lr), b1=o.b1, b2=o.b2, eps=_get(o, "eps", 1e-8))
    scale = component_lr_scale(config)
    kpn = adam(o.lr) if scale is None else optax.chain(adam(o.lr), _scale_output_channels(scale))
    return {"kpn": kpn, "D": adam(lr_d)}


# ----------------------------------------------------------------------------- state

def init_state(config, rng) -> dict:
    """Fresh state (see module docstring) from a typed or raw key."""
    _check_config(config)
    k_kpn, k_d, rng = gc.split_key(gc.key_data(rng), 3)
    params = {"kpn": gc.init_network(functools.partial(make_kpn, config), k_kpn)[1],
              "D": gc.init_network(functools.partial(make_discriminator, config), k_d)[1]}
    tx = make_optimizers(config)
    return {"params": params, "opt": {k: tx[k].init(params[k]) for k in params},
            "step": jnp.zeros((), jnp.int32), "rng": rng}


# ----------------------------------------------------------------------------- features

# _area_weights, area_resize, onehot_features and grid_for_frame live in dakpn_features.py (imported
# above), so the family ceiling (evaluation/family.py) can use them without importing this module.


def load_segmenter(config):
    """``(apply_fn, params)`` of the frozen segmenter: ``config.segmenter_weights`` (a
    torchvision-layout FCN-ResNet50 file, :func:`dakpn_jax.models.fcn_resnet50.load_frozen`) when
    set, else the segmentation run in ``config.segmenter_workdir``."""
    weights = _get(config, "segmenter_weights", None)
    if weights:
        from dakpn_jax.models import fcn_resnet50  # pylint: disable=import-outside-toplevel
        return fcn_resnet50.load_frozen(weights, config.model.num_classes,
                                        normalize=bool(_get(config, "segmenter_normalize", True)))
    from dakpn_jax.training import segmentation  # only needed for segmenter features
    return segmentation.load_segmenter(config.segmenter_workdir)


def make_feature_fn(config, segmenter=None) -> Callable:
    """``features(images (B,H,W,3), labels (B,H,W), size) -> (B, h, w, C)`` for ``config.features``.

    Segmenter features are ``stop_gradient(apply_fn(params, images))`` resized by area; the params
    are constants of the returned closure, never part of the trained state."""
    kind = _get(config, "features", "onehot")
    C = config.model.num_classes
    if kind == "onehot":
        return lambda images, labels, size: onehot_features(labels, C, size)
    apply_fn, seg_params = segmenter if segmenter is not None else load_segmenter(config)
    in_size = _get(config, "segmenter_input_size", None)

    def features(images, labels, size):
        del labels
        if in_size:  # the authors' export script: the frame resized to 96 x 160 first
            images = jax.image.resize(images, (images.shape[0], *_pair(in_size, "segmenter_input_size"), 3),
                                      method="linear", antialias=True)
        logits = jax.lax.stop_gradient(apply_fn(seg_params, images).astype(jnp.float32))
        if logits.shape[-1] != C:
            raise ValueError(f"segmenter logits have {logits.shape[-1]} classes, config.model.num_classes={C}")
        return area_resize(logits, size)

    return features


def needs_segmenter(config) -> bool:
    """True when the step uses the frozen segmenter: segmenter features or the conditioned D."""
    return _get(config, "features", "onehot") == "segmenter" or config.loss.d_condition == "segmenter"


def make_segmenter_probs(config, segmenter) -> Callable:
    """``probs(images (B, H, W, 3)) -> (B, H, W, C)``: the frozen segmenter's class probabilities
    at the frame size, ``stop_gradient(softmax(logits))`` (``loss.d_condition_probs = "soft"``) or
    the one-hot of its argmax (``"hard"``). With ``segmenter_input_size`` the segmenter sees the
    frame resized to it (as for the features) and its logits are resized back (linear) first."""
    apply_fn, seg_params = segmenter
    C = config.model.num_classes
    in_size = _get(config, "segmenter_input_size", None)
    hard = config.loss.d_condition_probs == "hard"

    def probs(images):
        B, H, W, _ = images.shape
        x = images
        if in_size:
            x = jax.image.resize(x, (B, *_pair(in_size, "segmenter_input_size"), 3), method="linear", antialias=True)
        logits = apply_fn(seg_params, x).astype(jnp.float32)
        if logits.shape[-1] != C:
            raise ValueError(f"segmenter logits have {logits.shape[-1]} classes, config.model.num_classes={C}")
        if logits.shape[1:3] != (H, W):
            logits = jax.image.resize(logits, (B, H, W, C), method="linear")
        p = jax.nn.one_hot(jnp.argmax(logits, axis=-1), C, dtype=jnp.float32) if hard else jax.nn.softmax(logits)
        return jax.lax.stop_gradient(p)

    return probs


def make_condition_fn(config, segmenter=None) -> Callable | None:
    """None for ``loss.d_condition = "none"``; else ``conditions(x, y, r, dv) -> {"fake": {view: s},
    "real": {view: s}}``, the semantic maps D sees next to each view (module docstring,
    "Conditioned D"): per frame a (B, H, W, C) map, cropped at the view's tile position (``dv["pos"]``
    for the fakes, ``dv["real_pos"]`` for the real tile) or area-resized to ``low_size``. Fake side:
    the synthetic labels one-hot (``loss.d_condition_fake = "labels"``, ignore pixels all zero) or
    the segmenter on the *untranslated* synthetic frame (``"segmenter"``); real side: the segmenter
    on the real frame. Nothing here depends on the KPN: the maps are constants for both players."""
    if config.loss.d_condition == "none":
        return None
    l = config.loss
    C = config.model.num_classes
    probs = make_segmenter_probs(config, segmenter if segmenter is not None else load_segmenter(config))
    low = low_size(config)
    views = tuple(l.d_inputs)

    def conditions(x, y, r, dv):
        tile = dv["tile"]
        if l.d_condition_fake == "labels":
            s_fake = jax.nn.one_hot(y.astype(jnp.int32), C, dtype=jnp.float32)  # 255 -> zeros
        else:
            s_fake = probs(x)
        s_real = probs(r)
        out = {"fake": {"tile": _crop(s_fake, dv["pos"], tile)}, "real": {"tile": _crop(s_real, dv["real_pos"], tile)}}
        if "low" in views:
            out["fake"]["low"] = area_resize(s_fake, low)
            if "low" in dv["reals"]:
                out["real"]["low"] = area_resize(s_real, low)
        return out

    return conditions


def with_condition(image: jax.Array, cond: jax.Array | None) -> jax.Array:
    """D's input: the image, or ``concat(image, cond)`` on the channel axis."""
    return image if cond is None else jnp.concatenate([image, cond.astype(image.dtype)], axis=-1)


def _conds(conds: dict | None, side: str, view: str):
    return None if conds is None else conds[side].get(view)


def grid_for(config, height: int, width: int) -> tuple[int, int]:
    """Parameter grid for a (height, width) frame: ``param_size`` scaled with the frame size."""
    return grid_for_frame(frame_size(config), param_size(config), height, width)


def ablation_of(config) -> tuple[str, ...]:
    """``config.model.ablate`` validated against ``ABLATIONS`` (empty: the full method)."""
    ablate = tuple(_get(config.model, "ablate", ()) or ())
    if set(ablate) - set(ABLATIONS):
        raise ValueError(f"config.model.ablate={ablate!r}: each entry must be one of {ABLATIONS}")
    return ablate


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


def predict_params(kpn: KPNHead, features: jax.Array, images: jax.Array,
                   ablate: tuple[str, ...] = ()) -> jax.Array:
    """theta_low (B, h, w, 12); the deep head also sees the frame area-resized to the grid;
    ``ablate`` pins components to the identity (``ablate_params``)."""
    image_low = area_resize(images, features.shape[1:3]) if kpn.head == "deep" else None
    return ablate_params(kpn(features, image_low), ablate)


# ----------------------------------------------------------------------------- views

def _crop(x: jax.Array, pos: jax.Array, size: tuple[int, int]) -> jax.Array:
    """Per-image crops: x (B, H, W, C), pos (B, 2) top-left -> (B, size[0], size[1], C)."""
    return jax.vmap(lambda im, p: jax.lax.dynamic_slice(im, (p[0], p[1], 0), size + (im.shape[-1],)))(x, pos)


def random_positions(key, batch: int, frame: tuple[int, int], tile: tuple[int, int]) -> jax.Array:
    """(B, 2) int32 uniform top-left corners of ``tile`` inside ``frame``."""
    ki, kj = jax.random.split(key)
    i = jax.random.randint(ki, (batch,), 0, frame[0] - tile[0] + 1)
    j = jax.random.randint(kj, (batch,), 0, frame[1] - tile[1] + 1)
    return jnp.stack([i, j], axis=-1)


def translate_tile(x, theta_low, noise, pos, tile, kernel_size: int, impl: str = "auto"):
    """The full-resolution translation T(x; theta, n) cropped at ``pos``, computed on the tile only.

    x (B, H, W, 3), theta_low (B, h, w, 12), noise (1 or B, H, W, 3), pos (B, 2) -> (B, th, tw, 3).
    Frame and upsampled theta are edge-padded by r = K // 2 (what ``translate`` does at the border)
    and the tile is translated with its r halo, so every tile pixel sees its whole window."""
    B, H, W, _ = x.shape
    r = kernel_size // 2
    theta = translation.upsample_params(theta_low, H, W)
    pad = lambda a: jnp.pad(a, ((0, 0), (r, r), (r, r), (0, 0)), mode="edge")
    size = (tile[0] + 2 * r, tile[1] + 2 * r)
    noise = jnp.broadcast_to(noise, (B,) + noise.shape[1:])
    xs, ts, ns = (_crop(pad(a), pos, size) for a in (x, theta, noise))
    out = translation.translate(xs, ts, ns, kernel_size=kernel_size, impl=impl)
    return out[:, r:r + tile[0], r:r + tile[1]]


def aligned_positions(key, batch: int, tile: tuple[int, int]) -> jax.Array:
    """(B, 2) int32 top-left corners of a uniformly chosen cell of the aligned GRID_CELLS x
    GRID_CELLS grid of ``tile``-sized tiles: (i th, j tw), i, j ~ U{0..GRID_CELLS-1}."""
    cells = jax.random.randint(key, (batch, 2), 0, GRID_CELLS)
    return cells * jnp.asarray(tile, jnp.int32)


def grad_reverse(x: jax.Array) -> jax.Array:
    """Gradient-reversal layer (scale 1): the identity forward, the negated cotangent backward."""
    return _grad_reverse(x)


@jax.custom_vjp
def _grad_reverse(x):
    return x


_grad_reverse.defvjp(lambda x: (x, None), lambda _, g: (jax.tree.map(jnp.negative, g),))


def low_res_params(theta_low: jax.Array, frame: tuple[int, int], low: tuple[int, int]) -> jax.Array:
    """theta in low-resolution pixel units: sigma and noise_scale times s = sqrt(lh lw / (H W))."""
    s = float(np.sqrt(low[0] * low[1] / (frame[0] * frame[1])))
    factor = jnp.asarray([1.0] * 6 + [s] * 6, jnp.float32)
    return theta_low * factor


# ----------------------------------------------------------------------------- losses

def d_loss(form: str, real: jax.Array, fake: jax.Array) -> jax.Array:
    """Discriminator loss on logits (see module docstring), mean over elements."""
    if form in ("saturating", "non_saturating"):
        return jnp.mean(jax.nn.softplus(-real)) + jnp.mean(jax.nn.softplus(fake))
    if form == "lsgan":
        return jnp.mean(jnp.square(real - 1.0)) + jnp.mean(jnp.square(fake))
    if form == "hinge":
        return jnp.mean(jax.nn.relu(1.0 - real)) + jnp.mean(jax.nn.relu(1.0 + fake))
    raise ValueError(f"loss form={form!r} must be one of {LOSS_FORMS}")


def d_loss_fake(form: str, fake: jax.Array) -> jax.Array:
    """The fake half of :func:`d_loss` (a view with no real counterpart)."""
    if form in ("saturating", "non_saturating"):
        return jnp.mean(jax.nn.softplus(fake))
    if form == "lsgan":
        return jnp.mean(jnp.square(fake))
    if form == "hinge":
        return jnp.mean(jax.nn.relu(1.0 + fake))
    raise ValueError(f"loss form={form!r} must be one of {LOSS_FORMS}")


def g_loss(form: str, fake: jax.Array) -> jax.Array:
    """Generator adversarial loss on D's logits for fakes, mean over elements."""
    if form == "saturating":
        return -jnp.mean(jax.nn.softplus(fake))
    if form == "non_saturating":
        return jnp.mean(jax.nn.softplus(-fake))
    if form == "lsgan":
        return jnp.mean(jnp.square(fake - 1.0))
    if form == "hinge":
        return -jnp.mean(fake)
    raise ValueError(f"loss form={form!r} must be one of {LOSS_FORMS}")


def _levels_mean(fn, *logits: list) -> jax.Array:
    """Mean over pyramid levels of ``fn(level logits, ...)``."""
    return sum(fn(*(a.astype(jnp.float32) for a in ls)) for ls in zip(*logits)) / len(logits[0])


def r1_penalty(d: nnx.Module, real: jax.Array, cond: jax.Array | None = None) -> jax.Array:
    """``E_batch |grad_x sum D(x)|^2`` at real images (the sum runs over positions and levels); with
    a condition ``cond``, D sees ``concat(x, cond)`` and the gradient is taken w.r.t. the image only."""
    grads = jax.grad(lambda x: sum(jnp.sum(l) for l in d(with_condition(x, cond))))(real)
    return jnp.mean(jnp.sum(jnp.square(grads), axis=(1, 2, 3)))


# ----------------------------------------------------------------------------- step

def check_batch(batch: dict) -> None:
    for k in ("synthetic", "label", "real"):
        if k not in batch:
            raise ValueError(f"DA-KPN batch: missing key '{k}' (have {sorted(batch)})")
    x, y, r = batch["synthetic"], batch["label"], batch["real"]
    if x.ndim != 4 or x.shape[-1] != 3 or r.ndim != 4 or r.shape[-1] != 3 or r.shape[0] != x.shape[0]:
        raise ValueError(f"DA-KPN batch: 'synthetic' {x.shape} and 'real' {r.shape} must be (B, H, W, 3) and "
                         "(B, H', W', 3) (the real frames may have another size)")
    if y.shape != x.shape[:3]:
        raise ValueError(f"DA-KPN batch: 'label' {y.shape} must be (B, H, W) = {x.shape[:3]}")


def make_generate(config) -> Callable:
    """``generate(kpn_params, x, feats, pos, k_noise, tile) -> (fakes, theta_low)``: the views of
    T(x; theta, n) D judges, as functions of the KPN params (module docstring, step 3).

    ``fakes["tile"]`` (B, th, tw, 3) at ``pos``; ``fakes["low"]`` (B, lh, lw, 3) when "low" is in
    ``loss.d_inputs``: the frame area-resized to ``low_size`` and translated with theta_low, its
    sigma and noise scale rescaled (``model.low_params = "rescaled"``) or as they are
    (``"unscaled"``, the authors')."""
    m, l = config.model, config.loss
    kpn_gd = graphdefs(config)["kpn"]
    views = tuple(l.d_inputs)
    K, impl = int(m.kernel_size), m.impl
    low = low_size(config)
    fixed = m.noise == "fixed"
    ablate = ablation_of(config)
    unscaled = _get(m, "low_params", "rescaled") == "unscaled"

    def generate(kpn_params, x, feats, pos, k_noise, tile):
        kpn = gc.merge(kpn_gd, kpn_params)
        theta = predict_params(kpn, feats, x, ablate)
        frame = x.shape[1:3]
        if fixed:  # constants of the step (computed at trace time), never part of the state
            n_full = translation.noise_field(m.noise_seed, *frame)
            n_low = translation.noise_field(m.noise_seed + 1, *low)
        else:
            k1, k2 = jax.random.split(k_noise)
            n_full = translation.sample_noise(k1, x.shape[0], *frame)
            n_low = translation.sample_noise(k2, x.shape[0], *low)
        fakes = {"tile": translate_tile(x, theta, n_full, pos, tile, K, impl)}  # also the identity term's
        if "low" in views:
            theta_l = theta if unscaled else low_res_params(theta, frame, low)
            fakes["low"] = translation.translate(area_resize(x, low), theta_l, n_low, kernel_size=K, impl=impl)
        return fakes, theta

    return generate


def draw_views(config, rng, x: jax.Array, r: jax.Array) -> dict:
    """The step's random draws from the state key ``rng`` (raw): ``{"pos": (B, 2) synthetic tile
    corners, "real_pos": (B, 2) real tile corners, "reals": {"tile": (B, th, tw, 3), "low": resize(r) when the real low view is on},
    "k_noise": typed key, "tile": (th, tw), "rng": the next raw state key}``."""
    views = tuple(config.loss.d_inputs)
    B, frame = x.shape[0], x.shape[1:3]
    tile = tile_size(config, frame)
    if min(r.shape[1] - tile[0], r.shape[2] - tile[1]) < 0:
        raise ValueError(f"DA-KPN batch: real frames {r.shape[1:3]} are smaller than the tile {tile}")
    k_pos, k_real, k_noise, rng = gc.split_key(rng, 4)
    wrap = jax.random.wrap_key_data
    if _get(config.model, "tile_grid", "random") == "aligned":
        if tile[0] * GRID_CELLS > frame[0] or tile[1] * GRID_CELLS > frame[1]:
            raise ValueError(f"config.model.tile_grid='aligned': {GRID_CELLS} x {GRID_CELLS} tiles of {tile} "
                             f"do not fit the frame {frame}")
        pos = aligned_positions(wrap(k_pos), B, tile)
    else:
        pos = random_positions(wrap(k_pos), B, frame, tile)
    # The real tile: a uniform crop of the same size (the real frame has its own size).
    real_pos = random_positions(wrap(k_real), B, r.shape[1:3], tile)
    reals = {"tile": _crop(r, real_pos, tile)}
    if "low" in views and _get(config.loss, "real_low", True):
        reals["low"] = area_resize(r, low_size(config))
    return {"pos": pos, "real_pos": real_pos, "reals": reals, "k_noise": wrap(k_noise), "tile": tile, "rng": rng}


def make_gradient_reversal_loss(config, *, segmenter=None) -> Callable:
    """``loss_fn(params {"kpn", "D"}, batch, rng) -> (L, aux)``: the gradient-reversal objective of
    the module docstring on one forward pass; ``jax.grad`` of it gives both players' gradients in
    one backward pass. ``aux``: the metrics plus ``"theta"`` and ``"rng"`` (the next state key)."""
    gd = graphdefs(config)
    l = config.loss
    views, w_idt = tuple(l.d_inputs), float(l.identity)
    if segmenter is None and needs_segmenter(config):
        segmenter = load_segmenter(config)
    feature_fn = make_feature_fn(config, segmenter)
    condition_fn = make_condition_fn(config, segmenter)
    generate = make_generate(config)
    grid = param_size(config)

    def loss_fn(params, batch, rng):
        x = batch["synthetic"].astype(jnp.float32)
        r = batch["real"].astype(jnp.float32)
        y = batch["label"].astype(jnp.int32)
        dv = draw_views(config, rng, x, r)
        feats = feature_fn(x, y, grid)
        fakes, theta = generate(params["kpn"], x, feats, dv["pos"], dv["k_noise"], dv["tile"])
        conds = condition_fn(x, y, r, dv) if condition_fn is not None else None
        d = gc.merge(gd["D"], params["D"])
        out, v_real, v_fake = {}, 0.0, 0.0
        for v in views:
            lf = d(with_condition(grad_reverse(fakes[v]), _conds(conds, "fake", v)))
            fake_term = _levels_mean(lambda b: d_loss_fake("saturating", b), lf)
            term = fake_term
            if v in dv["reals"]:
                lr_ = d(with_condition(dv["reals"][v], _conds(conds, "real", v)))
                real_term = _levels_mean(lambda a: jnp.mean(jax.nn.softplus(-a)), lr_)
                out[f"D_real_{v}"] = _levels_mean(jnp.mean, lr_)
                v_real, term = v_real + real_term, term + real_term
            out[f"loss_D_{v}"] = term
            out[f"D_fake_{v}"] = _levels_mean(jnp.mean, lf)
            v_fake = v_fake + fake_term
        idt = jnp.mean(jnp.square(fakes["tile"] - _crop(x, dv["pos"], dv["tile"])))
        out.update(loss_D=v_real + v_fake, loss_G=-v_fake + w_idt * idt, loss_G_adv=-v_fake, loss_identity=idt)
        return v_real + v_fake + w_idt * idt, {**out, "theta": theta, "rng": dv["rng"]}

    return loss_fn


def make_train_step(config, *, segmenter=None) -> Callable:
    """Returns the pure ``train_step(state, batch) -> (state, metrics)``.

    ``batch``: ``{"synthetic": (B, H, W, 3) float32, "label": (B, H, W) int, "real": (B, H, W, 3)}``.
    ``segmenter``: optional ``(apply_fn, params)`` overriding ``load_segmenter`` (tests, notebooks).
    ``loss.update_rule`` selects the alternating step (default) or the authors' gradient reversal.
    """
    _check_config(config)
    if _get(config.loss, "update_rule", "alternating") == "gradient_reversal":
        return _make_gradient_reversal_step(config, segmenter)
    gd = graphdefs(config)
    tx = make_optimizers(config)
    lr_schedule = make_schedule(config, config.optim.lr)
    l = config.loss
    if segmenter is None and needs_segmenter(config):
        segmenter = load_segmenter(config)
    feature_fn = make_feature_fn(config, segmenter)
    condition_fn = make_condition_fn(config, segmenter)
    form, views = l.form, tuple(l.d_inputs)
    w_idt, w_r1 = float(l.identity), float(l.r1)
    grid = param_size(config)
    generate = make_generate(config)

    def d_objective(d_params, reals, fakes, conds=None):
        d = gc.merge(gd["D"], d_params)
        out = {}
        for v in views:
            # real first: the default path's op order
            lr_ = d(with_condition(reals[v], _conds(conds, "real", v))) if v in reals else None
            lf = d(with_condition(fakes[v], _conds(conds, "fake", v)))
            if lr_ is not None:
                out[f"loss_D_{v}"] = _levels_mean(lambda a, b: d_loss(form, a, b), lr_, lf)
                out[f"D_real_{v}"] = _levels_mean(jnp.mean, lr_)
            else:  # loss.real_low=False: a fake-only term (the authors' low view)
                out[f"loss_D_{v}"] = _levels_mean(lambda b: d_loss_fake(form, b), lf)
            out[f"D_fake_{v}"] = _levels_mean(jnp.mean, lf)
        loss = sum(out[f"loss_D_{v}"] for v in views)
        if w_r1 > 0:
            out["r1"] = sum(r1_penalty(d, reals[v], _conds(conds, "real", v)) for v in views if v in reals)
            loss = loss + 0.5 * w_r1 * out["r1"]
        return loss, out

    def g_objective(fakes, d_params, x_tile, conds=None):
        d = gc.merge(gd["D"], d_params)
        adv = sum(_levels_mean(lambda a: g_loss(form, a), d(with_condition(fakes[v], _conds(conds, "fake", v))))
                  for v in views)
        idt = jnp.mean(jnp.square(fakes["tile"] - x_tile))
        return adv + w_idt * idt, {"loss_G_adv": adv, "loss_identity": idt}

    def train_step(state, batch):
        check_batch(batch)
        x = batch["synthetic"].astype(jnp.float32)
        r = batch["real"].astype(jnp.float32)
        y = batch["label"].astype(jnp.int32)
        dv = draw_views(config, state["rng"], x, r)
        pos, reals, tile = dv["pos"], dv["reals"], dv["tile"]
        feats = feature_fn(x, y, grid)
        conds = condition_fn(x, y, r, dv) if condition_fn is not None else None  # constants for both players
        params = state["params"]

        # The translation once, with its pullback for the G update.
        (fakes, theta), pullback = jax.vjp(lambda p: generate(p, x, feats, pos, dv["k_noise"], tile), params["kpn"])
        const_fakes = jax.lax.stop_gradient(fakes)

        # 1. D update against the current translation.
        (loss_d, d_aux), d_grads = jax.value_and_grad(d_objective, has_aux=True)(params["D"], reals, const_fakes, conds)
        d_params, opt_d = gc.apply_updates(tx["D"], params["D"], d_grads, state["opt"]["D"])

        # 2. G (KPN head) update against the updated D.
        (loss_g, g_aux), fake_grads = jax.value_and_grad(g_objective, has_aux=True)(
            const_fakes, d_params, _crop(x, pos, tile), conds)
        (kpn_grads,) = pullback((fake_grads, jnp.zeros_like(theta)))
        kpn_params, opt_k = gc.apply_updates(tx["kpn"], params["kpn"], kpn_grads, state["opt"]["kpn"])

        new_state = {"params": {"kpn": kpn_params, "D": d_params}, "opt": {"kpn": opt_k, "D": opt_d},
                     "step": state["step"] + 1, "rng": dv["rng"]}
        _, _, sigma, noise_scale = translation.split_params(theta)
        metrics = {"loss_D": loss_d, "loss_G": loss_g, **d_aux, **g_aux, "lr": lr_schedule(state["step"]),
                   "sigma_mean": jnp.mean(sigma), "noise_scale_mean": jnp.mean(jnp.abs(noise_scale))}
        return new_state, {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}

    return train_step


def _make_gradient_reversal_step(config, segmenter) -> Callable:
    """The authors' update: one forward, one backward (``make_gradient_reversal_loss``), then both
    Adam steps at once from those gradients."""
    tx = make_optimizers(config)
    lr_schedule = make_schedule(config, config.optim.lr)
    grad_fn = jax.grad(make_gradient_reversal_loss(config, segmenter=segmenter), has_aux=True)

    def train_step(state, batch):
        check_batch(batch)
        grads, aux = grad_fn(state["params"], batch, state["rng"])
        params, opt = {}, {}
        for k in ("kpn", "D"):
            params[k], opt[k] = gc.apply_updates(tx[k], state["params"][k], grads[k], state["opt"][k])
        theta = aux.pop("theta")
        new_state = {"params": params, "opt": opt, "step": state["step"] + 1, "rng": aux.pop("rng")}
        _, _, sigma, noise_scale = translation.split_params(theta)
        metrics = {**aux, "lr": lr_schedule(state["step"]), "sigma_mean": jnp.mean(sigma),
                   "noise_scale_mean": jnp.mean(jnp.abs(noise_scale))}
        return new_state, {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}

    return train_step


# ----------------------------------------------------------------------------- data

def make_iterators(config, *, shard_index: int = 0, shard_count: int = 1) -> dict:
    """Unpaired full-frame streams ``{"synthetic": synthetic-train (image, label), "real": real-train}``
    of per-process batches ``config.batch_size // shard_count`` (random horizontal flips): the GAN
    baselines' streams (``gan_common.make_iterators``), uncropped since DA-KPN configs set no
    ``crop_size``."""
    return gc.make_iterators(config, shard_index=shard_index, shard_count=shard_count)


def next_batch(iterators: dict) -> dict:
    """``{"synthetic": (b, H, W, 3) float32, "label": (b, H, W) uint8, "real": (b, H, W, 3) float32}``."""
    syn = next(iterators["synthetic"])
    return {"synthetic": np.asarray(syn["image"], np.float32), "label": np.asarray(syn["label"], np.uint8),
            "real": np.asarray(next(iterators["real"])["image"], np.float32)}


# ----------------------------------------------------------------------------- inference

def make_translator(config, state, *, segmenter=None) -> Callable:
    """Jitted ``translate_fn(images (B, H, W, 3) in [0, 1], labels (B, H, W) int, rng=None) -> (B, H, W, 3)``
    at any frame size: features on the scaled parameter grid, the full frame in one pass (the
    memory-lean kernel path on CPU), the fixed noise field resized to the frame; with a typed key
    ``rng``, fresh per-sample N(0, 1) noise at the frame size instead (augmentation)."""
    _check_config(config)
    m = config.model
    kpn_gd = graphdefs(config)["kpn"]
    kpn_params = state["params"]["kpn"]
    feature_fn = make_feature_fn(config, segmenter)
    base = frame_size(config)

    # The weights enter the jitted function as an argument, not as closed-over constants: jaxlib
    # 0.10's XLA:CPU can miscompile a convolution whose kernel is an all-zero constant (the KPN's
    # zero-initialised output layer, i.e. any untrained translator) into reads of uninitialised
    # memory (garbage or NaN, differing between compilations); see docs/notes/xla_cpu_constants.md.
    @jax.jit
    def translate_with_params(params, images, labels, rng):
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"translate_fn: images must be (B, H, W, 3), got {images.shape}")
        H, W = images.shape[1:3]
        x = images.astype(jnp.float32)
        feats = feature_fn(x, labels, grid_for(config, H, W))
        theta = predict_params(gc.merge(kpn_gd, params), feats, x, ablation_of(config))
        noise = (translation.noise_field(m.noise_seed, H, W, base_size=base) if rng is None
                 else translation.sample_noise(rng, x.shape[0], H, W))
        return translation.translate(x, theta, noise, kernel_size=m.kernel_size, impl=m.impl)

    def translate_fn(images, labels, rng=None):
        return translate_with_params(kpn_params, images, labels, rng)

    return translate_fn


def _param_maps(theta: jax.Array, size: tuple[int, int]) -> jax.Array:
    """theta (h, w, 12) -> (H, 4W, 3) panels: hsv_scale / 2, hsv_bias + 0.5, sigma / 4 px, |noise| * 10."""
    scale, bias, sigma, noise = translation.split_params(theta[None])
    panels = [scale / 2, bias + 0.5, sigma / 4.0, jnp.abs(noise) * 10.0]
    panels = [jax.image.resize(p, (1,) + size + (3,), method="nearest")[0] for p in panels]
    return jnp.clip(jnp.concatenate(panels, axis=1), 0.0, 1.0)


def summaries(config, state, batch) -> dict:
    """``translation``: synthetic | translated | real (H, 3W, 3); ``params``: the parameter maps."""
    fn = make_translator(config, state)
    x, y = jnp.asarray(batch["synthetic"][:1], jnp.float32), jnp.asarray(batch["label"][:1])
    fake = fn(x, y)
    feats = make_feature_fn(config)(x, y, grid_for(config, *x.shape[1:3]))
    theta = predict_params(gc.merge(graphdefs(config)["kpn"], state["params"]["kpn"]), feats, x,
                           ablation_of(config))
    real = jnp.asarray(batch["real"][:1], jnp.float32)
    return {"translation": np.asarray(jnp.concatenate([x[0], fake[0], real[0]], axis=1)),
            "params": np.asarray(_param_maps(theta[0], x.shape[1:3]))}


# ----------------------------------------------------------------------------- evaluation

def evaluate(config, state, *, translate_fn=None, max_images: int | None = None, batch_size: int = 8) -> dict:
    """Paired-view scores on the benchmark's ``paired-eval`` split (``config.eval_images`` images),
    for the translation and, as ``<key>_untranslated``, for the untranslated synthetic images:

    - ``psnr``, ``ssim`` and ``swd`` (+ per level) against the real rendering of the same scenes;
    - ``class_color_err``: mean over classes present of the L2 distance between the class's mean
      RGB in the translated (untranslated) images and in the real ones.

    (`dakpn_jax.evaluation.image_quality.evaluate_paired_source` defines them.) Returns ``{}`` for
    real datasets (no paired view) or ``eval_images = 0``.
    """
    limit = int(max_images or _get(config, "eval_images", 32))
    if _get(config.data, "name", "procedural") != "procedural" or limit <= 0:
        return {}  # the paired view exists only on the procedural benchmark
    fn = translate_fn or make_translator(config, state)
    kw = dict(max_images=limit, batch_size=batch_size, num_classes=config.model.num_classes)
    out = gc.evaluate_paired(config, lambda x, y: fn(jnp.asarray(x), jnp.asarray(y)), **kw)
    # The untranslated scores depend only on the data and these settings: computed once per run,
    # not at every evaluation.
    key = (config.data.to_json(sort_keys=True), tuple(sorted(kw.items())))
    if key not in _UNTRANSLATED_SCORES:
        _UNTRANSLATED_SCORES[key] = gc.evaluate_paired(config, lambda x, y: x, **kw)
    out = {**out, **{f"{k}_untranslated": v for k, v in _UNTRANSLATED_SCORES[key].items()}}
    if _get(config, "eval_diagnostics", False):
        from dakpn_jax.data.labels import CLASS_NAMES  # pylint: disable=import-outside-toplevel
        from dakpn_jax.evaluation import family  # pylint: disable=import-outside-toplevel
        names = CLASS_NAMES if config.model.num_classes == len(CLASS_NAMES) else None
        out.update(family.scalars(diagnostics(config, state, translate_fn=fn, max_images=limit), names))
    return out


_UNTRANSLATED_SCORES: dict[tuple, dict[str, float]] = {}
_PAIRS: dict[tuple, dict] = {}
_CEILINGS: dict[tuple, object] = {}


def class_params_of(config, state, images, labels) -> np.ndarray:
    """(C, 12) the translator's per-class theta: theta_low averaged over the grid cells, weighted by
    each class's area fraction in the cell (`family.class_mean_params`)."""
    from dakpn_jax.evaluation import family  # pylint: disable=import-outside-toplevel
    x = jnp.asarray(images, jnp.float32)
    onehot = onehot_features(jnp.asarray(labels), config.model.num_classes, grid_for(config, *x.shape[1:3]))
    feats = make_feature_fn(config)(x, jnp.asarray(labels), onehot.shape[1:3])
    theta = predict_params(gc.merge(graphdefs(config)["kpn"], state["params"]["kpn"]), feats, x, ablation_of(config))
    return family.class_mean_params(theta, onehot)


def diagnostics(config, state, *, translate_fn=None, max_images: int | None = None, ceiling=None) -> dict:
    """`dakpn_jax.evaluation.family.diagnose` of this run on the first ``max_images`` (default
    ``config.eval_images``) paired-eval scenes, against the per-class family ceiling (an oracle
    fitted on those pairs with ``config.eval_ceiling_steps`` L-BFGS steps, default 40; fitted once
    per process and data; or ``ceiling``, a `family.Ceiling` fitted before, e.g. loaded with
    ``family.load_ceiling``). Evaluation only: the pairs never reach a training step."""
    from dakpn_jax.evaluation import family  # pylint: disable=import-outside-toplevel
    n = int(max_images or _get(config, "eval_images", 32))
    m = config.model
    data_key = (config.data.to_json(sort_keys=True), n)
    if data_key not in _PAIRS:
        _PAIRS[data_key] = family.load_pairs(config.data, n)
    pairs = _PAIRS[data_key]
    steps = int(_get(config, "eval_ceiling_steps", 40))
    fit_key = data_key + (int(m.kernel_size), param_size(config), int(m.num_classes), steps)
    if ceiling is not None:
        _CEILINGS[fit_key] = ceiling
    if fit_key not in _CEILINGS:
        _CEILINGS[fit_key] = family.fit_ceiling(pairs, num_classes=m.num_classes, grid=param_size(config),
                                                kernel_size=m.kernel_size, steps=steps)
    wrap = lambda f: (lambda x, y: f(jnp.asarray(x), jnp.asarray(y)))
    noise_free = None
    if translate_fn is None:  # the run's own translator, and the same with the noise component off
        quiet = config.copy_and_resolve_references()
        with quiet.unlocked():
            quiet.model.ablate = tuple(sorted(set(ablation_of(config)) | {"noise"}))
        noise_free = wrap(make_translator(quiet, state))
    fn = translate_fn or make_translator(config, state)
    params = class_params_of(config, state, pairs["synthetic"], pairs["label"])
    return family.diagnose(wrap(fn), pairs, m.num_classes, ceiling=_CEILINGS[fit_key], class_params=params,
                           noise_free_fn=noise_free)
