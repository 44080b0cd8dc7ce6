"""DA-KPN's views and losses (docs/METHOD.md §1 steps 3-4): what D sees and how it is scored.

Views of T(x; theta, n) for the discriminator (the paper's two-scale scheme), for synthetic frames
x (B, H, W, 3) and unpaired real frames r (B, H', W', 3) (any size):

- ``tile``: a full-resolution th x tw tile (default H/8 x W/8) at a random position per image
  (``model.tile_grid = "random"``; ``"aligned"``: a cell of the 8 x 8 grid, the authors' code). Only
  the tile plus a K/2 halo is translated (theta upsampled to H x W, then cropped, frame and theta
  edge-padded by K/2 first), which equals cropping the full-frame translation exactly because T is
  local (:func:`translate_tile`); the real tile is a random crop of r.
- ``low``: the whole frame area-resized to ``config.model.low_size`` and translated there with
  theta_low; sigma and noise_scale are rescaled to low-resolution pixels (sigma * s and
  noise_scale * s, s = sqrt(lh lw / (H W)): blur in pixels shrinks with the image and averaging
  1/s^2 pixels of white noise divides its std by 1/s; :func:`low_res_params`). This approximates
  resize(T(x)) without translating full frames, the paper's low-resolution branch; the real view
  is resize(r) (``loss.real_low``; False: no real low view, the authors' code).

Losses (``config.loss``), l = D logits, averaged over positions and pyramid levels, summed over the
views in ``d_inputs`` (both by default)::

    form            D loss                              G adversarial loss
    saturating      softplus(-l_real) + softplus(l_fake)  -softplus(l_fake)   (paper: minimax)
    non_saturating  same                                softplus(-l_fake)
    lsgan           (l_real - 1)^2 + l_fake^2           (l_fake - 1)^2
    hinge           relu(1 - l_real) + relu(1 + l_fake)  -l_fake

With ``loss.class_weights`` (one weight w_c per class, :func:`fake_weight_maps`), each fake
logit's term is weighted by the mean w_c of the synthetic pixels under it, and the fake terms are
weighted means (sum w l / sum w) instead of means: D then sees the fakes at class frequencies pi_f(c)
w_c, so weights pi_r(c) / pi_f(c) present the fakes at the real frequencies, and a D that only
judges colours can no longer tell the domains apart by class frequencies (docs/METHOD.md §5).

plus ``r1 / 2 * E|grad_r D(r)|^2`` for D (optional), and for G ``identity * MSE(T(x_tile),
x_tile)`` (paper: 1). The paper's D formula has one real term; every view here gets its own real
counterpart (real tile, resized real frame), otherwise the low view alone would separate by
resolution. A view without a real counterpart (``loss.real_low = False``) has a fake-only D term.

:func:`grad_reverse` is the gradient-reversal layer of the authors' update rule
(``loss.update_rule = "gradient_reversal"``, `dakpn_jax.training.dakpn`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dakpn_jax import translation
from dakpn_jax.training import gan_common as gc
from dakpn_jax.training.dakpn_config import GRID_CELLS, LOSS_FORMS, low_size, tile_size
from dakpn_jax.training.dakpn_features import area_resize

# ----------------------------------------------------------------------------- views


def _crop(x: jax.Array, pos: jax.Array, size: tuple[int, int]) -> jax.Array:
    """Per-image crops: x (B, H, W, C), pos (B, 2) top-left -> (B, size[0], size[1], C)."""
    return jax.vmap(
        lambda im, p: jax.lax.dynamic_slice(im, (p[0], p[1], 0), size + (im.shape[-1],))
    )(x, pos)


def random_positions(key, batch: int, frame: tuple[int, int], tile: tuple[int, int]) -> jax.Array:
    """(B, 2) int32 uniform top-left corners of ``tile`` inside ``frame``."""
    ki, kj = jax.random.split(key)
    i = jax.random.randint(ki, (batch,), 0, frame[0] - tile[0] + 1)
    j = jax.random.randint(kj, (batch,), 0, frame[1] - tile[1] + 1)
    return jnp.stack([i, j], axis=-1)


def aligned_positions(key, batch: int, tile: tuple[int, int]) -> jax.Array:
    """(B, 2) int32 top-left corners of a uniformly chosen cell of the aligned GRID_CELLS x
    GRID_CELLS grid of ``tile``-sized tiles: (i th, j tw), i, j ~ U{0..GRID_CELLS-1}."""
    cells = jax.random.randint(key, (batch, 2), 0, GRID_CELLS)
    return cells * jnp.asarray(tile, jnp.int32)


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
    return out[:, r : r + tile[0], r : r + tile[1]]


def low_res_params(theta_low: jax.Array, frame: tuple[int, int], low: tuple[int, int]) -> jax.Array:
    """theta in low-resolution pixel units: sigma and noise_scale times s = sqrt(lh lw / (H W))."""
    s = float(np.sqrt(low[0] * low[1] / (frame[0] * frame[1])))
    factor = jnp.asarray([1.0] * 6 + [s] * 6, jnp.float32)
    return theta_low * factor


def draw_views(config, rng, x: jax.Array, r: jax.Array) -> dict:
    """The step's random draws from the state key ``rng`` (raw): ``{"pos": (B, 2) synthetic tile
    corners, "real_pos": (B, 2) real tile corners, "reals": {"tile": (B, th, tw, 3), "low": resize(r) when the real low view is on},
    "k_noise": typed key, "tile": (th, tw), "rng": the next raw state key}``."""
    views = tuple(config.loss.d_inputs)
    B, frame = x.shape[0], x.shape[1:3]
    tile = tile_size(config, frame)
    if min(r.shape[1] - tile[0], r.shape[2] - tile[1]) < 0:
        raise ValueError(
            f"DA-KPN batch: real frames {r.shape[1:3]} are smaller than the tile {tile}"
        )
    k_pos, k_real, k_noise, rng = gc.split_key(rng, 4)
    wrap = jax.random.wrap_key_data
    if config.model.tile_grid == "aligned":
        if tile[0] * GRID_CELLS > frame[0] or tile[1] * GRID_CELLS > frame[1]:
            raise ValueError(
                f"config.model.tile_grid='aligned': {GRID_CELLS} x {GRID_CELLS} tiles of {tile} "
                f"do not fit the frame {frame}"
            )
        pos = aligned_positions(wrap(k_pos), B, tile)
    else:
        pos = random_positions(wrap(k_pos), B, frame, tile)
    # The real tile: a uniform crop of the same size (the real frame has its own size).
    real_pos = random_positions(wrap(k_real), B, r.shape[1:3], tile)
    reals = {"tile": _crop(r, real_pos, tile)}
    if "low" in views and config.loss.real_low:
        reals["low"] = area_resize(r, low_size(config))
    return {
        "pos": pos,
        "real_pos": real_pos,
        "reals": reals,
        "k_noise": wrap(k_noise),
        "tile": tile,
        "rng": rng,
    }


# ----------------------------------------------------------------------------- what D sees


def with_condition(image: jax.Array, cond: jax.Array | None) -> jax.Array:
    """D's input: the image, or ``concat(image, cond)`` on the channel axis."""
    return image if cond is None else jnp.concatenate([image, cond.astype(image.dtype)], axis=-1)


def _conds(conds: dict | None, side: str, view: str):
    return None if conds is None else conds[side].get(view)


def grad_reverse(x: jax.Array) -> jax.Array:
    """Gradient-reversal layer (scale 1): the identity forward, the negated cotangent backward."""
    return _grad_reverse(x)


@jax.custom_vjp
def _grad_reverse(x):
    return x


_grad_reverse.defvjp(lambda x: (x, None), lambda _, g: (jax.tree.map(jnp.negative, g),))


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


def d_loss_real(form: str, real: jax.Array) -> jax.Array:
    """The real half of :func:`d_loss`."""
    if form in ("saturating", "non_saturating"):
        return jnp.mean(jax.nn.softplus(-real))
    if form == "lsgan":
        return jnp.mean(jnp.square(real - 1.0))
    if form == "hinge":
        return jnp.mean(jax.nn.relu(1.0 - real))
    raise ValueError(f"loss form={form!r} must be one of {LOSS_FORMS}")


def d_loss_fake(form: str, fake: jax.Array) -> jax.Array:
    """The fake half of :func:`d_loss` (a view with no real counterpart)."""
    return jnp.mean(_d_fake_elements(form, fake))


def g_loss(form: str, fake: jax.Array) -> jax.Array:
    """Generator adversarial loss on D's logits for fakes, mean over elements."""
    return jnp.mean(_g_elements(form, fake))


def _d_fake_elements(form: str, fake: jax.Array) -> jax.Array:
    """The elementwise fake term of :func:`d_loss` (``d_loss_fake`` is its mean)."""
    if form in ("saturating", "non_saturating"):
        return jax.nn.softplus(fake)
    if form == "lsgan":
        return jnp.square(fake)
    if form == "hinge":
        return jax.nn.relu(1.0 + fake)
    raise ValueError(f"loss form={form!r} must be one of {LOSS_FORMS}")


def _g_elements(form: str, fake: jax.Array) -> jax.Array:
    """The elementwise term of the generator's adversarial loss (``g_loss`` is its mean)."""
    if form == "saturating":
        return -jax.nn.softplus(fake)
    if form == "non_saturating":
        return jax.nn.softplus(-fake)
    if form == "lsgan":
        return jnp.square(fake - 1.0)
    if form == "hinge":
        return -fake
    raise ValueError(f"loss form={form!r} must be one of {LOSS_FORMS}")


def fake_weight_maps(
    class_weights: jax.Array, labels: jax.Array, pos: jax.Array, tile: tuple[int, int]
) -> dict:
    """Per-pixel weights of the fake views: ``{"tile": (B, th, tw), "low": (B, H, W)}``, w_c of each
    synthetic pixel's class (1 for ignored pixels), the tile's cropped at its position.
    ``class_weights`` (C,), ``labels`` (B, H, W) int."""
    c = class_weights.shape[0]
    valid = (labels >= 0) & (labels < c)
    w = jnp.where(valid, class_weights[jnp.clip(labels, 0, c - 1)], 1.0).astype(jnp.float32)
    return {"tile": _crop(w[..., None], pos, tile)[..., 0], "low": w}


def _weighted_mean(values: jax.Array, wmap: jax.Array) -> jax.Array:
    """sum w l / sum w over a level's logits ``values`` (B, h, w, 1): ``wmap`` (B, H, W) pixel weights
    averaged over each logit's share of the view (an antialiased resize to h x w)."""
    b, h, w_ = values.shape[:3]
    wl = jax.image.resize(wmap, (b, h, w_), "linear", antialias=True)
    wl = jnp.maximum(wl, 0.0)[..., None]
    return jnp.sum(wl * values) / jnp.maximum(jnp.sum(wl), 1e-12)


def _fake_term(elements, logits: list, wmap) -> jax.Array:
    """Mean over pyramid levels of the (weighted, with ``wmap``) mean of ``elements(level)``."""
    if wmap is None:
        return _levels_mean(lambda a: jnp.mean(elements(a)), logits)
    return sum(_weighted_mean(elements(a.astype(jnp.float32)), wmap) for a in logits) / len(logits)


def _levels_mean(fn, *logits: list) -> jax.Array:
    """Mean over pyramid levels of ``fn(level logits, ...)``."""
    return sum(fn(*(a.astype(jnp.float32) for a in ls)) for ls in zip(*logits)) / len(logits[0])


def r1_penalty(d: nnx.Module, real: jax.Array, cond: jax.Array | None = None) -> jax.Array:
    """``E_batch |grad_x sum D(x)|^2`` at real images (the sum runs over positions and levels); with
    a condition ``cond``, D sees ``concat(x, cond)`` and the gradient is taken w.r.t. the image only."""
    grads = jax.grad(lambda x: sum(jnp.sum(l) for l in d(with_condition(x, cond))))(real)
    return jnp.mean(jnp.sum(jnp.square(grads), axis=(1, 2, 3)))


def discriminator_loss(
    d: nnx.Module,
    reals: dict,
    fakes: dict,
    conds: dict | None,
    *,
    form: str,
    views: tuple[str, ...],
    r1: float,
    fakes_first: bool = False,
    fake_weights: dict | None = None,
):
    """D's objective, the one both update rules use: ``(loss, metrics, (real_part, fake_part))``.

    ``loss = sum_v loss_D_<v> (+ r1 / 2 * sum_v R1 at the real view)``, ``loss_D_<v>`` the
    ``form``'s D loss on the logits of the real and the fake view ``v`` (averaged over positions
    and pyramid levels; a fake-only term where the view has no real counterpart, ``loss.real_low =
    False``). D sees each view next to its semantic map when ``conds`` is given (conditioned D).
    ``metrics``: ``loss_D_<v>``, ``D_real_<v>``, ``D_fake_<v>`` (mean logits) and ``r1`` when on.
    ``real_part``, ``fake_part``: the real and the fake terms, each summed over the views (the
    minimax value V = real_part + fake_part, without R1).

    The alternating step differentiates ``loss`` w.r.t. D's params with the fakes held constant;
    the gradient-reversal objective passes ``grad_reverse(fakes)``, so that V gives D its gradient
    and the KPN the negated one.

    ``fakes_first``: D judges each view's fake before its real. It changes no value, only the order
    in which D's gradient contributions are summed, and so the last bits of every later number:
    each rule keeps the order it had when it had its own copy of this function (alternating: real
    first; gradient reversal: fake first).

    ``fake_weights``: per-pixel weights of each fake view (:func:`fake_weight_maps`); the fake
    terms are then weighted means. None: plain means (the default, bit for bit)."""
    out, real_part, fake_part = {}, 0.0, 0.0
    for v in views:
        judge = lambda side, images, v=v: d(with_condition(images, _conds(conds, side, v)))
        if fakes_first:
            lf = judge("fake", fakes[v])
            lr_ = judge("real", reals[v]) if v in reals else None
        else:
            lr_ = judge("real", reals[v]) if v in reals else None
            lf = judge("fake", fakes[v])
        wmap = None if fake_weights is None else fake_weights[v]
        if wmap is None:
            fake_term = _levels_mean(lambda b: d_loss_fake(form, b), lf)
        else:
            fake_term = _fake_term(lambda b: _d_fake_elements(form, b), lf, wmap)
        if lr_ is not None and wmap is None:
            out[f"loss_D_{v}"] = _levels_mean(lambda a, b: d_loss(form, a, b), lr_, lf)
        elif lr_ is not None:
            out[f"loss_D_{v}"] = _levels_mean(lambda a: d_loss_real(form, a), lr_) + fake_term
        if lr_ is not None:
            out[f"D_real_{v}"] = _levels_mean(jnp.mean, lr_)
            real_part = real_part + _levels_mean(lambda a: d_loss_real(form, a), lr_)
        else:  # loss.real_low=False: a fake-only term (the authors' low view)
            out[f"loss_D_{v}"] = fake_term
        out[f"D_fake_{v}"] = _levels_mean(jnp.mean, lf)
        fake_part = fake_part + fake_term
    loss = sum(out[f"loss_D_{v}"] for v in views)
    if r1 > 0:
        out["r1"] = sum(
            r1_penalty(d, reals[v], _conds(conds, "real", v)) for v in views if v in reals
        )
        loss = loss + 0.5 * r1 * out["r1"]
    return loss, out, (real_part, fake_part)


def generator_loss(
    d: nnx.Module,
    fakes: dict,
    x_tile: jax.Array,
    conds: dict | None,
    *,
    form: str,
    views: tuple[str, ...],
    identity: float,
    fake_weights: dict | None = None,
) -> tuple[jax.Array, dict]:
    """G's objective in the alternating step: the ``form``'s adversarial loss on D's logits for each
    fake view plus ``identity * MSE(fake tile, synthetic tile)``; ``(loss, {"loss_G_adv",
    "loss_identity"})``. ``fake_weights``: as in :func:`discriminator_loss`."""

    def adv_of(v):
        logits = d(with_condition(fakes[v], _conds(conds, "fake", v)))
        if fake_weights is None:
            return _levels_mean(lambda a: g_loss(form, a), logits)
        return _fake_term(lambda a: _g_elements(form, a), logits, fake_weights[v])

    adv = sum(adv_of(v) for v in views)
    idt = jnp.mean(jnp.square(fakes["tile"] - x_tile))
    return adv + identity * idt, {"loss_G_adv": adv, "loss_identity": idt}
