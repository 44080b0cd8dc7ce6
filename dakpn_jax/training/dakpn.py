"""DA-KPN (docs/METHOD.md §1 steps 1-6) as a method module of the generic trainer: the train step.

Per step, with a global batch of synthetic frames x (B, H, W, 3), their labels y (B, H, W) and
unpaired real frames r (B, H', W', 3) (any size), all float32 in [0, 1]:

1. Features f (B, h, w, C) on the parameter grid (``config.model.param_size``): the one-hot label
   area-resized to h x w (``config.features = "onehot"``) or the class logits of a frozen
   segmenter (``"segmenter"``); `dakpn_jax.training.dakpn_segmenter`.
2. theta_low = KPN(f) (B, h, w, 12) (:class:`dakpn_jax.models.kpn.KPNHead`;
   `dakpn_jax.training.dakpn_networks`).
3. Two views of T(x; theta, n) for the discriminator, a full-resolution ``tile`` and the ``low``
   frame (:func:`make_generate`; the views are described in `dakpn_jax.training.dakpn_losses`).
4. Losses (``config.loss``, `dakpn_jax.training.dakpn_losses`): D's loss on real and fake views,
   optional R1, and for G the adversarial loss plus ``identity * MSE(T(x_tile), x_tile)``.
5. One step: a D update (fakes held constant), then a G update against the *updated* D: the
   alternating form of the paper's gradient-reversal minimax. The translation is evaluated once
   (``jax.vjp``) and its pullback reused for the G gradient. Only the KPN head and D change.

Where things are: `dakpn_config` (the switches, their checks, the sizes; the authors' choices
table), `dakpn_networks` (KPN, D, optimisers), `dakpn_features` (label features, area resampling),
`dakpn_segmenter` (segmenter features, conditioned D), `dakpn_losses` (views, loss forms, R1,
gradient reversal), this module (state, the two update rules, data, inference, evaluation).

Noise: ``config.model.noise = "fixed"`` (paper): one seeded N(0, 1) field at the training frame
size (``translation.noise_field``); the tile uses the crop at the tile's position, the low view a
field of its own size. ``"fresh"``: new per-sample noise every step from the state's key.
Translation at inference (:func:`make_translator`) always uses the fixed field resized to the frame.

``loss.update_rule = "gradient_reversal"`` (the authors' code; needs ``loss.form = "saturating"``,
i.e. BCE with logits, and ``r1 = 0``): one forward pass and one backward pass of

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

from dakpn_jax import translation
from dakpn_jax.training import gan_common as gc

# The pieces of the step live in the dakpn_* modules (module docstring); import a name from
# the module that defines it.
# The trainer's hook for run configs saved before a field existed (trainer.load_config looks it up
# on the method module): re-exported explicitly.
from dakpn_jax.training.dakpn_config import complete_saved_config as complete_saved_config
from dakpn_jax.training.dakpn_config import (
    ablation_of,
    check_config,
    frame_size,
    grid_for,
    low_size,
    needs_segmenter,
    param_size,
)
from dakpn_jax.training.dakpn_features import (
    area_resize,
    onehot_features,
)
from dakpn_jax.training.dakpn_losses import (
    _crop,
    discriminator_loss,
    draw_views,
    fake_weight_maps,
    generator_loss,
    grad_reverse,
    low_res_params,
    translate_tile,
)
from dakpn_jax.training.dakpn_networks import (
    graphdefs,
    make_discriminator,
    make_kpn,
    make_optimizers,
    make_schedule,
    predict_params,
)
from dakpn_jax.training.dakpn_segmenter import (
    load_segmenter,
    make_condition_fn,
    make_feature_fn,
)


# ----------------------------------------------------------------------------- state


def init_state(config, rng) -> dict:
    """Fresh state (see module docstring) from a typed or raw key."""
    check_config(config)
    k_kpn, k_d, rng = gc.split_key(gc.key_data(rng), 3)
    params = {
        "kpn": gc.init_network(functools.partial(make_kpn, config), k_kpn)[1],
        "D": gc.init_network(functools.partial(make_discriminator, config), k_d)[1],
    }
    tx = make_optimizers(config)
    return {
        "params": params,
        "opt": {k: tx[k].init(params[k]) for k in params},
        "step": jnp.zeros((), jnp.int32),
        "rng": rng,
    }


# ----------------------------------------------------------------------------- step


def check_batch(batch: dict) -> None:
    for k in ("synthetic", "label", "real"):
        if k not in batch:
            raise ValueError(f"DA-KPN batch: missing key '{k}' (have {sorted(batch)})")
    x, y, r = batch["synthetic"], batch["label"], batch["real"]
    if (
        x.ndim != 4
        or x.shape[-1] != 3
        or r.ndim != 4
        or r.shape[-1] != 3
        or r.shape[0] != x.shape[0]
    ):
        raise ValueError(
            f"DA-KPN batch: 'synthetic' {x.shape} and 'real' {r.shape} must be (B, H, W, 3) and "
            "(B, H', W', 3) (the real frames may have another size)"
        )
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
    unscaled = m.low_params == "unscaled"

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
        fakes = {
            "tile": translate_tile(x, theta, n_full, pos, tile, K, impl)
        }  # also the identity term's
        if "low" in views:
            theta_l = theta if unscaled else low_res_params(theta, frame, low)
            fakes["low"] = translation.translate(
                area_resize(x, low), theta_l, n_low, kernel_size=K, impl=impl
            )
        return fakes, theta

    return generate


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
        # D's objective on reversed fakes: D descends V = real part + fake part (saturating, no R1:
        # check_config), the KPN ascends the fake part. V is summed part by part, as this rule always
        # did, so its numbers keep their last bits (the first return is the same sum, view by view).
        reversed_fakes = {v: grad_reverse(fakes[v]) for v in views}
        _, out, (v_real, v_fake) = discriminator_loss(
            d,
            dv["reals"],
            reversed_fakes,
            conds,
            form="saturating",
            views=views,
            r1=0.0,
            fakes_first=True,
        )
        idt = jnp.mean(jnp.square(fakes["tile"] - _crop(x, dv["pos"], dv["tile"])))
        out.update(
            loss_D=v_real + v_fake,
            loss_G=-v_fake + w_idt * idt,
            loss_G_adv=-v_fake,
            loss_identity=idt,
        )
        return v_real + v_fake + w_idt * idt, {**out, "theta": theta, "rng": dv["rng"]}

    return loss_fn


def make_train_step(config, *, segmenter=None) -> Callable:
    """Returns the pure ``train_step(state, batch) -> (state, metrics)``.

    ``batch``: ``{"synthetic": (B, H, W, 3) float32, "label": (B, H, W) int, "real": (B, H, W, 3)}``.
    ``segmenter``: optional ``(apply_fn, params)`` overriding ``load_segmenter`` (tests, notebooks).
    ``loss.update_rule`` selects the alternating step (default) or the authors' gradient reversal.
    """
    check_config(config)
    if config.loss.update_rule == "gradient_reversal":
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
    class_w = tuple(l.get("class_weights", ()) or ())
    class_w = jnp.asarray(class_w, jnp.float32) if class_w else None
    grid = param_size(config)
    generate = make_generate(config)

    def d_objective(d_params, reals, fakes, conds, fw):
        loss, out, _ = discriminator_loss(
            gc.merge(gd["D"], d_params),
            reals,
            fakes,
            conds,
            form=form,
            views=views,
            r1=w_r1,
            fake_weights=fw,
        )
        return loss, out

    def g_objective(fakes, d_params, x_tile, conds, fw):
        return generator_loss(
            gc.merge(gd["D"], d_params),
            fakes,
            x_tile,
            conds,
            form=form,
            views=views,
            identity=w_idt,
            fake_weights=fw,
        )

    def train_step(state, batch):
        check_batch(batch)
        x = batch["synthetic"].astype(jnp.float32)
        r = batch["real"].astype(jnp.float32)
        y = batch["label"].astype(jnp.int32)
        dv = draw_views(config, state["rng"], x, r)
        pos, reals, tile = dv["pos"], dv["reals"], dv["tile"]
        feats = feature_fn(x, y, grid)
        conds = (
            condition_fn(x, y, r, dv) if condition_fn is not None else None
        )  # constants for both players
        params = state["params"]

        # The translation once, with its pullback for the G update.
        (fakes, theta), pullback = jax.vjp(
            lambda p: generate(p, x, feats, pos, dv["k_noise"], tile), params["kpn"]
        )
        const_fakes = jax.lax.stop_gradient(fakes)
        fw = None if class_w is None else fake_weight_maps(class_w, y, pos, tile)

        # 1. D update against the current translation.
        (loss_d, d_aux), d_grads = jax.value_and_grad(d_objective, has_aux=True)(
            params["D"], reals, const_fakes, conds, fw
        )
        d_params, opt_d = gc.apply_updates(tx["D"], params["D"], d_grads, state["opt"]["D"])

        # 2. G (KPN head) update against the updated D.
        (loss_g, g_aux), fake_grads = jax.value_and_grad(g_objective, has_aux=True)(
            const_fakes, d_params, _crop(x, pos, tile), conds, fw
        )
        (kpn_grads,) = pullback((fake_grads, jnp.zeros_like(theta)))
        kpn_params, opt_k = gc.apply_updates(
            tx["kpn"], params["kpn"], kpn_grads, state["opt"]["kpn"]
        )

        new_state = {
            "params": {"kpn": kpn_params, "D": d_params},
            "opt": {"kpn": opt_k, "D": opt_d},
            "step": state["step"] + 1,
            "rng": dv["rng"],
        }
        _, _, sigma, noise_scale = translation.split_params(theta)
        metrics = {
            "loss_D": loss_d,
            "loss_G": loss_g,
            **d_aux,
            **g_aux,
            "lr": lr_schedule(state["step"]),
            "sigma_mean": jnp.mean(sigma),
            "noise_scale_mean": jnp.mean(jnp.abs(noise_scale)),
        }
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
            params[k], opt[k] = gc.apply_updates(
                tx[k], state["params"][k], grads[k], state["opt"][k]
            )
        theta = aux.pop("theta")
        new_state = {"params": params, "opt": opt, "step": state["step"] + 1, "rng": aux.pop("rng")}
        _, _, sigma, noise_scale = translation.split_params(theta)
        metrics = {
            **aux,
            "lr": lr_schedule(state["step"]),
            "sigma_mean": jnp.mean(sigma),
            "noise_scale_mean": jnp.mean(jnp.abs(noise_scale)),
        }
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
    return {
        "synthetic": np.asarray(syn["image"], np.float32),
        "label": np.asarray(syn["label"], np.uint8),
        "real": np.asarray(next(iterators["real"])["image"], np.float32),
    }


# ----------------------------------------------------------------------------- inference


def make_translator(config, state, *, segmenter=None) -> Callable:
    """Jitted ``translate_fn(images (B, H, W, 3) in [0, 1], labels (B, H, W) int, rng=None) -> (B, H, W, 3)``
    at any frame size: features on the scaled parameter grid, the full frame in one pass (the
    memory-lean kernel path on CPU), the fixed noise field resized to the frame; with a typed key
    ``rng``, fresh per-sample N(0, 1) noise at the frame size instead (augmentation)."""
    check_config(config)
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
        noise = (
            translation.noise_field(m.noise_seed, H, W, base_size=base)
            if rng is None
            else translation.sample_noise(rng, x.shape[0], H, W)
        )
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
    theta = predict_params(
        gc.merge(graphdefs(config)["kpn"], state["params"]["kpn"]), feats, x, ablation_of(config)
    )
    real = jnp.asarray(batch["real"][:1], jnp.float32)
    return {
        "translation": np.asarray(jnp.concatenate([x[0], fake[0], real[0]], axis=1)),
        "params": np.asarray(_param_maps(theta[0], x.shape[1:3])),
    }


# ----------------------------------------------------------------------------- evaluation


def evaluate(
    config, state, *, translate_fn=None, max_images: int | None = None, batch_size: int = 8
) -> dict:
    """Paired-view scores on the benchmark's ``paired-eval`` split (``config.eval_images`` images),
    for the translation and, as ``<key>_untranslated``, for the untranslated synthetic images:

    - ``psnr``, ``ssim`` and ``swd`` (+ per level) against the real rendering of the same scenes;
    - ``class_color_err``: mean over classes present of the L2 distance between the class's mean
      RGB in the translated (untranslated) images and in the real ones.

    (`dakpn_jax.evaluation.image_quality.evaluate_paired_source` defines them.) Returns ``{}`` for
    real datasets (no paired view) or ``eval_images = 0``.
    """
    limit = int(max_images or config.eval_images)
    if config.data.name != "procedural" or limit <= 0:
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
    if config.eval_diagnostics:
        from dakpn_jax.data.labels import CLASS_NAMES  # pylint: disable=import-outside-toplevel
        from dakpn_jax.evaluation import family  # pylint: disable=import-outside-toplevel

        names = CLASS_NAMES if config.model.num_classes == len(CLASS_NAMES) else None
        out.update(
            family.scalars(diagnostics(config, state, translate_fn=fn, max_images=limit), names)
        )
    return out


_UNTRANSLATED_SCORES: dict[tuple, dict[str, float]] = {}
_PAIRS: dict[tuple, dict] = {}
_CEILINGS: dict[tuple, object] = {}


def class_params_of(config, state, images, labels) -> np.ndarray:
    """(C, 12) the translator's per-class theta: theta_low averaged over the grid cells, weighted by
    each class's area fraction in the cell (`family.class_mean_params`)."""
    from dakpn_jax.evaluation import family  # pylint: disable=import-outside-toplevel

    x = jnp.asarray(images, jnp.float32)
    onehot = onehot_features(
        jnp.asarray(labels), config.model.num_classes, grid_for(config, *x.shape[1:3])
    )
    feats = make_feature_fn(config)(x, jnp.asarray(labels), onehot.shape[1:3])
    theta = predict_params(
        gc.merge(graphdefs(config)["kpn"], state["params"]["kpn"]), feats, x, ablation_of(config)
    )
    return family.class_mean_params(theta, onehot)


def diagnostics(
    config, state, *, translate_fn=None, max_images: int | None = None, ceiling=None
) -> dict:
    """`dakpn_jax.evaluation.family.diagnose` of this run on the first ``max_images`` (default
    ``config.eval_images``) paired-eval scenes, against the per-class family ceiling (an oracle
    fitted on those pairs with ``config.eval_ceiling_steps`` L-BFGS steps, default 40; fitted once
    per process and data; or ``ceiling``, a `family.Ceiling` fitted before, e.g. loaded with
    ``family.load_ceiling``). Evaluation only: the pairs never reach a training step."""
    from dakpn_jax.evaluation import family  # pylint: disable=import-outside-toplevel

    n = int(max_images or config.eval_images)
    m = config.model
    data_key = (config.data.to_json(sort_keys=True), n)
    if data_key not in _PAIRS:
        _PAIRS[data_key] = family.load_pairs(config.data, n)
    pairs = _PAIRS[data_key]
    steps = int(config.eval_ceiling_steps)
    fit_key = data_key + (int(m.kernel_size), param_size(config), int(m.num_classes), steps)
    if ceiling is not None:
        _CEILINGS[fit_key] = ceiling
    if fit_key not in _CEILINGS:
        _CEILINGS[fit_key] = family.fit_ceiling(
            pairs,
            num_classes=m.num_classes,
            grid=param_size(config),
            kernel_size=m.kernel_size,
            steps=steps,
        )
    wrap = lambda f: lambda x, y: f(jnp.asarray(x), jnp.asarray(y))
    noise_free = None
    if translate_fn is None:  # the run's own translator, and the same with the noise component off
        quiet = config.copy_and_resolve_references()
        with quiet.unlocked():
            quiet.model.ablate = tuple(sorted(set(ablation_of(config)) | {"noise"}))
        noise_free = wrap(make_translator(quiet, state))
    fn = translate_fn or make_translator(config, state)
    params = class_params_of(config, state, pairs["synthetic"], pairs["label"])
    return family.diagnose(
        wrap(fn),
        pairs,
        m.num_classes,
        ceiling=_CEILINGS[fit_key],
        class_params=params,
        noise_free_fn=noise_free,
    )
