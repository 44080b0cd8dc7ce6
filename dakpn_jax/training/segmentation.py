"""Semantic segmentation as a method module of the generic trainer (docs/ARCHITECTURE.md).

A segmenter (`dakpn_jax.models.segmenter.make_segmenter`) is trained with pixel-wise cross-entropy on
a mix of labelled sources (``config.data.train_sources``, see configs/segmentation.py): the
synthetic labels, a translated export, N labelled real images, ...

Loss over the global batch, logits z resized bilinearly to the label size, ignore label 255::

    L = sum_{p : y_p != 255} -log softmax(z_p)[y_p]  /  max(1, #{p : y_p != 255})

State (plain dict of arrays; the NNX graphdef is rebuilt from ``config.model``)::

    {"params": pure dict of nnx.Param, "model_state": pure dict of the other variables (e.g.
     BatchNorm statistics; empty for unet_small), "opt": optax state, "step": int32, "rng": uint32[2]}
    + "ema_params" when ``config.ema_decay`` > 0

Weight averaging (``config.ema_decay`` = d > 0): after every step, ema <- d ema + (1 - d) params
(``optax.incremental_update``), starting from the initial weights; `evaluate` and `load_segmenter`
(hence every protocol score) then use the averaged weights. Flip test-time augmentation
(``config.eval_flip``): `make_apply_fn`'s logits are the mean of the logits of the image and the
mirrored logits of the mirrored image (sided classes, e.g. l_eye / r_eye, swapped back). Both are
issue 24's downstream-recipe candidates for a smaller seed spread; both are off by default.

RNG streams inside the model (SegFormer's dropout / drop path) are not state: every step rebuilds
them from a key split off ``state["rng"]``, so the step stays pure and resumes exactly. BatchNorm
statistics under data parallelism are those of the global batch (XLA reduces over the sharded
batch axis: synchronised BatchNorm).

On-the-fly translation: a train source ``{"kind": "translated_on_the_fly", "translator_workdir": DIR,
"split": "synthetic-train" (default) | "root": FOLDER, "fresh_noise": False, "weight": ...}`` reads
the *untranslated* frames of the split (or folder dataset) and translates them inside the jitted step
with ``dakpn_jax.load_translator(DIR)`` instead of reading an export from disk. To give exactly the
images an export would (fixed noise), the step translates the whole frame and then applies the
pipeline's crop and flip: the items carry the full frame and its label (as (1, H, W, ...) arrays the
pipeline does not crop) and the crop geometry (row/column index planes the pipeline crops and flips
like the image); `next_batch` turns them into ``otf_*`` batch keys (:func:`on_the_fly_images`).
Labels are never touched: they are the source's, cropped by the pipeline as for any source.
``fresh_noise=True`` draws new per-sample noise every step from a key folded off ``state["rng"]``
(DA-KPN only). Limits: one translator per config (several entries may share it); every source of
such a mix must have one frame size (set ``synthetic_size`` / ``real_size`` for real datasets);
the frames of the other sources' items are zeros and are translated (and discarded) too.

`evaluate` scores ``config.data.eval_split`` (real-val): the confusion matrix is accumulated over the
whole split (batches sharded over all devices, summed in int64 on the host), then mIoU over the
classes present (`dakpn_jax.evaluation.metrics`). `load_segmenter(workdir)` gives a trained model
to other stages (DA-KPN's frozen features, the model score).
"""

from __future__ import annotations

import functools
import json
import logging
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from dakpn_jax.data import labels as label_table
from dakpn_jax.evaluation import metrics as seg_metrics
from dakpn_jax.models.segmenter import make_segmenter

log = logging.getLogger("dakpn_jax.segmentation")
PyTree = Any
IGNORE_INDEX = label_table.IGNORE_INDEX


# ----------------------------------------------------------------------------- model


def _num_classes(config) -> int:
    return int(config.model.get("num_classes", label_table.NUM_CLASSES))


def build_model(config, rngs: nnx.Rngs) -> nnx.Module:
    """The segmenter ``config.model`` describes (``name``, ``num_classes``, ``kwargs``)."""
    kwargs = dict(config.model.get("kwargs", None) or {})
    return make_segmenter(config.model.name, _num_classes(config), rngs=rngs, **kwargs)


def graphdef(config):
    """(static graphdef, abstract RNG-stream state) of the segmenter; shape evaluation only."""
    gd, _, rngs, _ = nnx.split(
        nnx.eval_shape(lambda: build_model(config, nnx.Rngs(0))), nnx.Param, nnx.RngState, ...
    )
    return gd, nnx.to_pure_dict(rngs)


def _rng_streams(template, key: jax.Array):
    """Fresh RNG-stream variables (dropout, drop path) for one call: stream i gets key fold_in(key, i),
    count 0. The state never stores them (typed keys are not checkpointable); the per-step key comes
    from ``state["rng"]``."""
    leaves, treedef = jax.tree.flatten(template)
    fresh = [
        jax.random.fold_in(key, i)
        if jnp.issubdtype(x.dtype, jax.dtypes.prng_key)
        else jnp.zeros(x.shape, x.dtype)
        for i, x in enumerate(leaves)
    ]
    return jax.tree.unflatten(treedef, fresh)


def apply_model(
    gd, variables: dict, images: jax.Array, *, train: bool = False, size=None, rng=None
):
    """Logits (B, H', W', C) of ``images`` (B, H, W, 3) in [0, 1], resized bilinearly to ``size``
    = (H', W') (default: the input's H, W). ``gd`` is `graphdef`'s pair; ``rng`` (typed key) drives
    dropout-like layers when ``train``. Returns (logits, updated non-parameter variables)."""
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"segmenter: images must be (B, H, W, 3), got shape {images.shape}")
    graph, rng_template = gd
    rngs = _rng_streams(rng_template, jax.random.key(0) if rng is None else rng)
    model = nnx.merge(graph, variables["params"], rngs, variables["model_state"])
    # At least float32 (a bfloat16 model's logits are upcast for the loss); float64 stays float64, so a
    # float64 run (the tests' device-count equivalence) is float64 throughout.
    wide = jnp.promote_types(images.dtype, jnp.float32)
    logits = model(images.astype(wide), train=train)
    logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
    h, w = size if size is not None else images.shape[1:3]
    if logits.shape[1:3] != (h, w):
        logits = jax.image.resize(logits, (logits.shape[0], h, w, logits.shape[-1]), "bilinear")
    _, _, _, rest = nnx.split(model, nnx.Param, nnx.RngState, ...)
    return logits, nnx.to_pure_dict(rest)


def cross_entropy(logits: jax.Array, label: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(mean CE over non-ignored pixels, pixel accuracy over them); logits (B,H,W,C), label (B,H,W)."""
    label = label.astype(jnp.int32)
    valid = (label != IGNORE_INDEX) & (label >= 0) & (label < logits.shape[-1])
    safe = jnp.where(valid, label, 0)
    logp = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(logp, safe[..., None], axis=-1)[..., 0]
    n = jnp.maximum(valid.sum(), 1).astype(jnp.float32)
    correct = (jnp.argmax(logits, -1) == safe) & valid
    return jnp.where(valid, nll, 0.0).sum() / n, correct.sum() / n


# ----------------------------------------------------------------------------- optimiser


def make_schedule(config) -> optax.Schedule:
    """Linear warmup 0 -> lr over ``warmup_steps``, then over T = num_train_steps - warmup_steps:

    constant: lr
    poly:     lr_end + (lr - lr_end) * (1 - t / T) ** poly_power
    poly_per_epoch: the same with t and T in whole epochs, t = floor(step / steps_per_epoch)
              (``optim.steps_per_epoch``; the authors' per-epoch scheduler step)
    cosine:   lr_end + (lr - lr_end) * (1 + cos(pi t / T)) / 2,     lr_end = end_lr_ratio * lr
    """
    o = config.optim
    lr, warmup = float(o.lr), int(o.get("warmup_steps", 0))
    kind = o.get("schedule", "constant")
    decay_steps = max(1, int(config.num_train_steps) - warmup)
    end = float(o.get("end_lr_ratio", 0.0)) * lr
    if kind == "constant":
        main = optax.constant_schedule(lr)
    elif kind == "poly":
        main = optax.polynomial_schedule(lr, end, float(o.get("poly_power", 0.9)), decay_steps)
    elif kind == "poly_per_epoch":
        spe = int(o.get("steps_per_epoch", 0) or 0)
        if spe < 1:
            raise ValueError(
                f"config.optim.schedule='poly_per_epoch' needs optim.steps_per_epoch >= 1, got {spe}"
            )
        epochs, power = max(1, -(-decay_steps // spe)), float(o.get("poly_power", 1.0))

        def main(step):
            t = jnp.floor(jnp.asarray(step, jnp.float32) / spe)
            return end + (lr - end) * jnp.clip(1.0 - t / epochs, 0.0, 1.0) ** power
    elif kind == "cosine":
        main = optax.cosine_decay_schedule(lr, decay_steps, alpha=end / lr if lr else 0.0)
    else:
        raise ValueError(
            f"config.optim.schedule={kind!r} is unknown; expected constant, poly, poly_per_epoch "
            "or cosine"
        )
    if warmup <= 0:
        return main
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])


def scale_by_top_level(multipliers: dict[str, float]) -> optax.GradientTransformation:
    """Multiplies the updates of each top-level parameter subtree ``params[name]`` by
    ``multipliers[name]`` (1 elsewhere). After an Adam(W) transform the update is
    ``-lr (m_hat / (sqrt(v_hat) + eps) + wd p)``, so a multiplier m is a learning rate of m lr for
    that subtree, decay included: mmsegmentation's ``lr_mult`` (SegFormer: 10 on ``decode_head``).
    ``init`` raises ValueError for a name that is not a top-level key of the parameters."""
    multipliers = {str(k): float(v) for k, v in dict(multipliers).items()}

    def init(params):
        missing = sorted(set(multipliers) - set(params))
        if missing:
            raise ValueError(
                f"config.optim.lr_mult names {missing}, which are not top-level parameter "
                f"groups of the model ({sorted(params)})"
            )
        return optax.EmptyState()

    def update(updates, state, params=None):  # pylint: disable=unused-argument
        return {
            k: jax.tree.map(lambda u, m=multipliers.get(k, 1.0): u * m, v)
            for k, v in updates.items()
        }, state

    return optax.GradientTransformation(init, update)


def make_optimizer(config) -> optax.GradientTransformation:
    """Adam or AdamW (decoupled weight decay on weights with ndim >= 2 only: not on biases and
    normalisation scales), optional global-norm clipping first and per-group learning-rate
    multipliers last (``optim.lr_mult``: :func:`scale_by_top_level`)."""
    o = config.optim
    name = o.get("name", "adamw")
    kw = dict(
        b1=float(o.get("b1", 0.9)), b2=float(o.get("b2", 0.999)), eps=float(o.get("eps", 1e-8))
    )
    if name == "adam":
        tx = optax.adam(make_schedule(config), **kw)
    elif name == "adamw":
        # ``weight_decay_on``: "matrices" (default: weights with ndim >= 2) or "all" (the authors'
        # torch AdamW over model.parameters(): biases and norm scales decay too).
        on = o.get("weight_decay_on", "matrices")
        if on not in ("matrices", "all"):
            raise ValueError(f"config.optim.weight_decay_on={on!r} must be 'matrices' or 'all'")
        mask = None if on == "all" else (lambda p: jax.tree.map(lambda x: x.ndim >= 2, p))
        tx = optax.adamw(
            make_schedule(config), weight_decay=float(o.get("weight_decay", 0.0)), mask=mask, **kw
        )
    else:
        raise ValueError(f"config.optim.name={name!r} is unknown; expected 'adam' or 'adamw'")
    clip = float(o.get("grad_clip", 0.0) or 0.0)
    if clip > 0:
        tx = optax.chain(optax.clip_by_global_norm(clip), tx)
    lr_mult = o.get("lr_mult", None)
    return optax.chain(tx, scale_by_top_level(lr_mult)) if lr_mult else tx


# ----------------------------------------------------------------------------- method contract


def _key_data(rng: jax.Array) -> jax.Array:
    return (
        jax.random.key_data(rng)
        if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key)
        else jnp.asarray(rng, jnp.uint32)
    )


def init_state(config, rng) -> dict:
    """Fresh state (module docstring) from a typed or raw key."""
    raw = _key_data(rng)
    k_init, k_next = jax.random.split(jax.random.wrap_key_data(raw))
    model = build_model(config, nnx.Rngs(k_init))
    _, params, _, rest = nnx.split(model, nnx.Param, nnx.RngState, ...)
    params = nnx.to_pure_dict(params)
    state = {
        "params": params,
        "model_state": nnx.to_pure_dict(rest),
        "opt": make_optimizer(config).init(params),
        "step": jnp.zeros((), jnp.int32),
        "rng": jax.random.key_data(k_next),
    }
    if _ema_decay(config) > 0:
        state["ema_params"] = jax.tree.map(jnp.copy, params)
    return state


def _ema_decay(config) -> float:
    d = float(config.get("ema_decay", 0.0))  # runs saved before the field existed: no averaging
    if not 0.0 <= d < 1.0:
        raise ValueError(f"config.ema_decay={d} must be in [0, 1) (0: no weight averaging)")
    return d


def make_train_step(config) -> Callable:
    """Pure ``train_step(state, {"image": (B,h,w,3) float32, "label": (B,h,w) int}) -> (state, metrics)``."""
    gd, tx, schedule = graphdef(config), make_optimizer(config), make_schedule(config)
    ema_decay = _ema_decay(config)
    images_seen = make_on_the_fly_fn(config)  # None without a translated_on_the_fly source

    def loss_fn(params, model_state, images, label, rng):
        logits, model_state = apply_model(
            gd,
            {"params": params, "model_state": model_state},
            images,
            train=True,
            size=label.shape[1:3],
            rng=rng,
        )
        loss, acc = cross_entropy(logits, label)
        return loss, (model_state, acc)

    def train_step(state, batch):
        for key in ("image", "label"):
            if key not in batch:
                raise ValueError(f"segmentation batch: missing key '{key}' (have {sorted(batch)})")
        images, label = batch["image"], batch["label"]
        if label.ndim != 3 or label.shape[0] != images.shape[0]:
            # Labels may be smaller than the images (the authors' 180 x 180 labels for 720 x 720
            # inputs): the logits are resized to the label size, a no-op at the model's stride.
            raise ValueError(
                f"segmentation batch: label {label.shape} must be (B, h, w) with B = images "
                f"{images.shape}[0]"
            )
        if (
            images_seen is not None and "otf_translate" in batch
        ):  # (absent if that source was empty)
            # Own key (folded off the step key), so runs without this source keep their key sequence.
            images = images_seen(
                batch, jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), _NOISE_STREAM)
            )
        k_model, k_next = jax.random.split(jax.random.wrap_key_data(state["rng"]))
        (loss, (model_state, acc)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state["params"], state["model_state"], images, label, k_model
        )
        updates, opt = tx.update(grads, state["opt"], state["params"])
        new = {
            "params": optax.apply_updates(state["params"], updates),
            "model_state": model_state,
            "opt": opt,
            "step": state["step"] + 1,
            "rng": jax.random.key_data(k_next),
        }
        if ema_decay > 0:
            new["ema_params"] = optax.incremental_update(
                new["params"], state["ema_params"], 1.0 - ema_decay
            )
        metrics = {
            "loss": loss,
            "pixel_accuracy": acc,
            "grad_norm": optax.tree.norm(grads),
            "lr": schedule(state["step"]),
        }
        return new, {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}

    return train_step


class MixedSource:
    """Random-access mix of labelled sources, items ``{"image", "label"}`` (other keys dropped).

    With probabilities p_k (normalised weights), one epoch has L = max_k ceil(len_k / p_k) items, so
    every item of every source occurs at least once; source k fills n_k of them (largest-remainder
    rounding of L p_k, sum L), at positions fixed by a permutation seeded with `seed`. The j-th
    position given to source k reads its item j mod len_k, so a small source (N real labels) repeats.
    """

    def __init__(self, sources, weights, seed: int = 0):
        if len(sources) != len(weights) or not sources:
            raise ValueError(
                f"MixedSource: need one weight per source, got {len(sources)} and {len(weights)}"
            )
        w = np.asarray(weights, np.float64)
        if not np.all(np.isfinite(w)) or np.any(w <= 0):
            raise ValueError(f"MixedSource: weights must be positive, got {list(weights)}")
        p = w / w.sum()
        lengths = np.array([len(s) for s in sources])
        total = int(max(np.ceil(n / q - 1e-9) for n, q in zip(lengths, p)))
        raw = total * p
        counts = np.floor(raw).astype(np.int64)
        counts[np.argsort(-(raw - counts), kind="stable")[: total - counts.sum()]] += 1
        owner = np.repeat(np.arange(len(sources)), counts)
        owner = owner[np.random.default_rng(seed).permutation(total)]
        rank = np.zeros(total, np.int64)
        for k in range(len(sources)):
            rank[owner == k] = np.arange(counts[k]) % lengths[k]
        self.sources, self.owner, self.rank, self.probabilities = list(sources), owner, rank, p

    def __len__(self) -> int:
        return len(self.owner)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        index = int(index)
        item = self.sources[self.owner[index]][int(self.rank[index])]
        if "label" not in item:
            raise ValueError(
                f"MixedSource: {self.sources[self.owner[index]]!r} item has no 'label' "
                "(segmentation needs labelled sources)"
            )
        return {"image": item["image"], "label": item["label"]}


def make_train_source(config):
    """The MixedSource of ``config.data.train_sources`` (see configs/segmentation.py)."""
    from dakpn_jax.data import sources as data_sources  # pylint: disable=import-outside-toplevel
    from dakpn_jax.data.folder import FolderSource  # pylint: disable=import-outside-toplevel

    specs = list(
        config.data.get("train_sources", None) or [{"kind": "split", "split": "synthetic-train"}]
    )
    built, weights, translated = [], [], []
    for i, spec in enumerate(specs):
        spec = dict(spec)
        kind = spec.get("kind", "split")
        if kind == "split":
            if "split" not in spec:
                raise ValueError(
                    f"config.data.train_sources[{i}]={spec}: kind 'split' needs a 'split' name"
                )
            src = data_sources.make_source(config.data, spec["split"])
        elif kind == "folder":
            root = spec.get("root")
            if not root:
                raise ValueError(
                    f"config.data.train_sources[{i}]: kind 'folder' needs a 'root' directory"
                )
            src = FolderSource(os.path.join(root, "images"), os.path.join(root, "labels"))
        elif kind == ON_THE_FLY:
            src = _on_the_fly_base(config, spec, i)
        else:
            raise ValueError(
                f"config.data.train_sources[{i}].kind={kind!r} is unknown; expected 'split', "
                f"'folder' or {ON_THE_FLY!r}"
            )
        if len(src) == 0:
            log.info("train source %d (%s) is empty; dropped from the mix", i, spec)
            continue
        if "label" not in src[0]:  # fail here, not inside a grain reader thread
            raise ValueError(
                f"config.data.train_sources[{i}]={spec}: items have no 'label' "
                f"(keys {sorted(src[0])}); segmentation needs labelled sources"
            )
        built.append(src)
        weights.append(spec.get("weight"))
        translated.append(kind == ON_THE_FLY)
    if not built:
        raise ValueError(f"config.data.train_sources={specs}: every source is empty")
    given = [w is not None for w in weights]
    if any(given) and not all(given):
        raise ValueError(
            f"config.data.train_sources={specs}: give a 'weight' for every source or for none"
        )
    weights = weights if all(given) else [len(s) for s in built]  # no weights: plain concatenation
    mixed = MixedSource(built, weights, seed=int(config.seed))
    if not any(translated):
        return mixed
    crop, flip = config.get("crop_size", None), bool(config.get("random_flip", True))
    return OnTheFlyMix(mixed, translated, with_geometry=bool(crop) or flip)


# ----------------------------------------------------------------------------- on-the-fly translation

ON_THE_FLY = "translated_on_the_fly"
_NOISE_STREAM = 0x6E6F  # fold_in constant of the fresh-noise key ("no")


def _on_the_fly_spec(config) -> dict | None:
    """``{"translator_workdir", "fresh_noise"}`` of the config's translated_on_the_fly sources, or None."""
    specs = [dict(s) for s in (config.data.get("train_sources", None) or ())]
    found = [(i, s) for i, s in enumerate(specs) if s.get("kind", "split") == ON_THE_FLY]
    if not found:
        return None
    for i, s in found:
        if not s.get("translator_workdir"):
            raise ValueError(
                f"config.data.train_sources[{i}]: kind {ON_THE_FLY!r} needs a 'translator_workdir'"
            )
        if not isinstance(s.get("fresh_noise", False), bool):
            raise ValueError(
                f"config.data.train_sources[{i}].fresh_noise must be a bool, got {s['fresh_noise']!r}"
            )
    workdirs = sorted({os.path.abspath(s["translator_workdir"]) for _, s in found})
    noise = sorted({bool(s.get("fresh_noise", False)) for _, s in found})
    if len(workdirs) > 1 or len(noise) > 1:
        raise ValueError(
            f"config.data.train_sources: the {ON_THE_FLY!r} sources must share one translator_workdir "
            f"and one fresh_noise setting, got {workdirs} / {noise}"
        )
    return {"translator_workdir": workdirs[0], "fresh_noise": noise[0]}


def _on_the_fly_base(config, spec: dict, i: int):
    """The untranslated labelled source of a translated_on_the_fly entry (its 'split' or 'root')."""
    from dakpn_jax.data import sources as data_sources  # pylint: disable=import-outside-toplevel
    from dakpn_jax.data.folder import FolderSource  # pylint: disable=import-outside-toplevel

    workdir = spec.get("translator_workdir")
    if not workdir or not os.path.isdir(workdir):
        raise ValueError(
            f"config.data.train_sources[{i}]: kind {ON_THE_FLY!r} needs 'translator_workdir', an "
            f"existing translator run directory, got {workdir!r}"
        )
    if spec.get("root"):
        return FolderSource(
            os.path.join(spec["root"], "images"), os.path.join(spec["root"], "labels")
        )
    return data_sources.make_source(config.data, spec.get("split", "synthetic-train"))


class OnTheFlyMix:
    """A MixedSource whose items also carry what the step needs to translate on the device.

    Items (dict order matters: the pipeline crops the keys shaped like the first array, "image")::

        image, label      (H, W, 3), (H, W) uint8 as in the mix (untranslated image), cropped/flipped
        otf_rows/cols     (H, W) int16/int32 row and column index planes (``with_geometry``): cropped
                          and flipped with the image, so their corners give the crop and flip
        otf_frame         (1, H, W, 3) uint8 whole untranslated frame (zeros for other sources' items)
        otf_frame_label   (1, H, W) uint8 its label (the translator's one-hot features)
        otf_translate     bool scalar: the item comes from a translated_on_the_fly source

    The (1, H, W, ...) arrays do not share the image's leading (H, W), so the pipeline leaves them
    whole. Every item must have the first item's frame size (ValueError naming the item otherwise).
    """

    def __init__(self, mixed: MixedSource, translated, *, with_geometry: bool):
        self.mixed, self.translated, self.with_geometry = (
            mixed,
            [bool(t) for t in translated],
            with_geometry,
        )
        self.frame_hw = tuple(mixed[0]["label"].shape)
        self.index_dtype = np.int16 if max(self.frame_hw) < 2**15 else np.int32

    def __len__(self) -> int:
        return len(self.mixed)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        index = int(index)
        item = self.mixed[index]
        k = int(self.mixed.owner[index])
        H, W = item["label"].shape
        if (H, W) != self.frame_hw:
            raise ValueError(
                f"{ON_THE_FLY}: item {index} of train source {self.mixed.sources[k]!r} is {H}x{W}, "
                f"the first item {self.frame_hw[0]}x{self.frame_hw[1]} (H x W); every source of a mix "
                "with on-the-fly translation must have one frame size"
            )
        out = {"image": item["image"], "label": item["label"]}
        if self.with_geometry:  # broadcast views: no memory until the pipeline crops them
            out["otf_rows"] = np.broadcast_to(np.arange(H, dtype=self.index_dtype)[:, None], (H, W))
            out["otf_cols"] = np.broadcast_to(np.arange(W, dtype=self.index_dtype)[None, :], (H, W))
        if self.translated[k]:
            out["otf_frame"], out["otf_frame_label"] = item["image"][None], item["label"][None]
        else:
            out["otf_frame"] = np.broadcast_to(np.zeros((), np.uint8), (1, H, W, 3))
            out["otf_frame_label"] = np.broadcast_to(np.zeros((), np.uint8), (1, H, W))
        out["otf_translate"] = np.asarray(self.translated[k])
        return out


def _geometry_keys(b: dict) -> dict:
    """Pipeline batch of OnTheFlyMix items -> the step's ``otf_*`` keys: ``otf_frame`` (B,H,W,3) uint8,
    ``otf_frame_label`` (B,H,W) uint8, ``otf_top``/``otf_left`` (B,) int32, ``otf_flip``/``otf_translate`` (B,) bool."""
    n = len(b["label"])
    out = {
        "otf_frame": np.asarray(b["otf_frame"][:, 0], np.uint8),
        "otf_frame_label": np.asarray(b["otf_frame_label"][:, 0], np.uint8),
        "otf_translate": np.asarray(b["otf_translate"], bool).reshape(n),
    }
    if "otf_rows" in b:
        c0, c1 = b["otf_cols"][:, 0, 0].astype(np.int32), b["otf_cols"][:, 0, -1].astype(np.int32)
        out["otf_top"] = b["otf_rows"][:, 0, 0].astype(np.int32)
        out["otf_left"], out["otf_flip"] = np.minimum(c0, c1), c0 > c1  # a flipped crop counts down
    else:
        out["otf_top"], out["otf_left"] = np.zeros(n, np.int32), np.zeros(n, np.int32)
        out["otf_flip"] = np.zeros(n, bool)
    return out


def on_the_fly_images(translate: Callable, batch: dict, rng=None) -> jax.Array:
    """The images (B, h, w, 3) the segmenter trains on, inside the jitted step.

    Rows with ``otf_translate``: ``flip?(crop(clip(translate(frame / 255, frame_label), 0, 1)))`` at
    (otf_top, otf_left) with the batch image's h x w, i.e. what an export (which clips, then rounds
    to 8 bits) gives after the same crop and flip, without the 8-bit rounding. Other rows: ``batch["image"]``.
    """
    frames = batch["otf_frame"].astype(jnp.float32) / 255.0
    out = jnp.clip(translate(frames, batch["otf_frame_label"], rng=rng), 0.0, 1.0)
    h, w = batch["image"].shape[1:3]
    crop = jax.vmap(lambda im, t, l: jax.lax.dynamic_slice(im, (t, l, 0), (h, w, 3)))(
        out, batch["otf_top"], batch["otf_left"]
    )
    crop = jnp.where(batch["otf_flip"][:, None, None, None], crop[:, :, ::-1], crop)
    return jnp.where(batch["otf_translate"][:, None, None, None], crop, batch["image"])


def make_on_the_fly_fn(config) -> Callable | None:
    """``images_seen(batch, key) -> (B, h, w, 3)`` (:func:`on_the_fly_images` with the config's
    translator, fresh noise from ``key`` if asked), or None without a translated_on_the_fly source."""
    spec = _on_the_fly_spec(config)
    if spec is None:
        return None
    from dakpn_jax.inference import load_translator  # pylint: disable=import-outside-toplevel

    translator = load_translator(spec["translator_workdir"])
    if spec["fresh_noise"] and not translator.accepts_rng:
        raise ValueError(
            f"config.data.train_sources: fresh_noise=True but the {translator.method!r} translator "
            f"of {translator.workdir} has no noise input"
        )
    fresh = spec["fresh_noise"]
    return lambda batch, key: on_the_fly_images(translator, batch, key if fresh else None)


def make_iterators(config, *, shard_index: int = 0, shard_count: int = 1) -> dict:
    """``{"train": ...}``: per-process batches of ``config.batch_size // shard_count`` (random crops
    of ``config.crop_size`` and flips) from the mixed training source."""
    from dakpn_jax.data import pipeline  # pylint: disable=import-outside-toplevel

    if config.batch_size % shard_count:
        raise ValueError(
            f"config.batch_size={config.batch_size} not divisible by the process count {shard_count}"
        )
    crop = config.get("crop_size", None)
    image_size, label_size = _size(config.data, "image_size"), _size(config.data, "label_size")
    if (
        label_size is not None
        and label_size != image_size
        and (crop or config.get("random_flip", True))
    ):
        raise ValueError(
            f"config.data.label_size={label_size} differs from image_size={image_size}: crops "
            "and flips act on the image's size only; set crop_size=None and random_flip=False"
        )
    return {
        "train": pipeline.make_pipeline(
            resized_source(config, make_train_source(config)),
            batch_size=config.batch_size // shard_count,
            seed=int(config.seed),
            shard_index=shard_index,
            shard_count=shard_count,
            shuffle=True,
            crop_size=tuple(crop) if crop else None,
            random_flip=bool(config.get("random_flip", True)),
            flip_label_map=_flip_label_map(config),
        )
    }


def _flip_label_map(config):
    """The l_/r_ swap table of the config's label space (None for street scenes and the procedural
    benchmark: their classes have no side), so flips of any mixed source (exports included) swap."""
    from dakpn_jax.data import pipeline, sources as data_sources  # pylint: disable=import-outside-toplevel

    if config.data.get("name", "procedural") != "real":
        return None
    lut = pipeline.flip_label_map(data_sources.class_names(config.data))
    return None if np.array_equal(lut, np.arange(256)) else lut


def next_batch(iterators: dict) -> dict:
    b = next(iterators["train"])
    out = {"image": np.asarray(b["image"], np.float32), "label": np.asarray(b["label"], np.uint8)}
    if "otf_translate" in b:
        out.update(_geometry_keys(b))
    return out


def summaries(config, state, batch) -> dict:
    """image | label | prediction of the batch's first image, (h, 3w, 3) in [0, 1] (the image as the
    step sees it: translated for a translated_on_the_fly source, with the fixed noise)."""
    images = np.asarray(batch["image"][:1], np.float32)
    if "otf_translate" in batch:
        images = np.asarray(make_on_the_fly_fn(config)({k: v[:1] for k, v in batch.items()}, None))
    variables = {"params": state["params"], "model_state": state["model_state"]}
    pred = np.asarray(_predict(make_apply_fn(config), variables, images))[0].astype(np.uint8)
    colour = lambda y: label_table.colorize(y).astype(np.float32) / 255.0
    return {
        "segmentation": np.concatenate(
            [images[0], colour(np.asarray(batch["label"][0])), colour(pred)], axis=1
        )
    }


# ----------------------------------------------------------------------------- evaluation


@functools.partial(jax.jit, static_argnums=0)
def _predict(apply_fn, params, images):
    return jnp.argmax(apply_fn(params, images), axis=-1)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _confusion(apply_fn, num_classes, params, images, label):
    return seg_metrics.confusion_matrix(_predict(apply_fn, params, images), label, num_classes)


def evaluate_segmenter(
    apply_fn: Callable,
    params: PyTree,
    source,
    num_classes: int,
    *,
    batch_size: int = 16,
    max_images: int | None = None,
    devices=None,
) -> dict:
    """Confusion matrix and IoU of a segmenter over a labelled source, whole frames.

    ``apply_fn(params, images (B,H,W,3) float32 [0,1]) -> logits (B,H,W,C)`` (`load_segmenter`'s;
    a static jit argument, so reusing one apply_fn reuses the compiled evaluation).
    The global batch (``batch_size`` rounded up to a multiple of the device count) is sharded over a
    'data' mesh; each process loads its own slice; the last batch is padded with ignore labels.
    Returns ``{"miou", "per_class_iou" (C,) float64 (NaN: class absent), "confusion" (C, C) int64}``.
    """
    devices = list(jax.devices() if devices is None else devices)
    mesh = Mesh(np.asarray(devices), ("data",))
    n = len(source) if max_images is None else min(len(source), int(max_images))
    if n <= 0:
        raise ValueError(
            f"evaluate_segmenter: source {source!r} has no images to score (max_images={max_images})"
        )
    n_proc, proc = jax.process_count(), jax.process_index()
    gb = -(-int(batch_size) // len(devices)) * len(devices)
    lb = gb // n_proc
    shard = NamedSharding(mesh, P("data"))
    # Replicated beside the sharded batch, via this process's host copy (multi-host safe: the input
    # may be a single-device view or a global replicated array).
    host = jax.tree.map(
        lambda x: np.asarray(x.addressable_data(0) if isinstance(x, jax.Array) else x), params
    )
    params = jax.device_put(host, NamedSharding(mesh, P()))
    total = np.zeros((num_classes, num_classes), np.int64)
    h, w = source[0]["label"].shape
    ih, iw = source[0]["image"].shape[
        :2
    ]  # = (h, w) unless the labels are kept smaller (data.label_size)
    for start in range(0, n, gb):
        images = np.zeros((lb, ih, iw, 3), np.float32)
        label = np.full((lb, h, w), IGNORE_INDEX, np.uint8)
        for j in range(lb):
            i = start + proc * lb + j
            if i < n:
                item = source[i]
                if item["label"].shape != (h, w) or item["image"].shape[:2] != (ih, iw):
                    raise ValueError(
                        f"evaluate_segmenter: item {i} label {item['label'].shape} differs from "
                        f"item 0 {(h, w)}; the eval source must have one frame size"
                    )
                images[j], label[j] = item["image"].astype(np.float32) / 255.0, item["label"]
        g_images = jax.make_array_from_process_local_data(shard, images)
        g_label = jax.make_array_from_process_local_data(shard, label)
        conf = _confusion(apply_fn, int(num_classes), params, g_images, g_label)
        total += np.asarray(jax.device_get(conf), np.int64)
    miou, per = seg_metrics.mean_iou(total)
    return {"miou": float(miou), "per_class_iou": np.asarray(per, np.float64), "confusion": total}


_APPLY_FNS: dict[str, Callable] = {}


def make_apply_fn(config, label_size=None) -> Callable:
    """Pure ``apply_fn(params, images (B,H,W,3)) -> logits (B,H,W,C)`` resized to the input size
    (or to ``label_size`` = (h, w): the authors' 180 x 180 evaluation against stride-4 logits),
    where ``params = {"params": ..., "model_state": ...}`` (see `load_segmenter`). With
    ``config.eval_flip``: (z(x) + S mirror(z(mirror(x)))) / 2, S the sided-class swap of the label
    space (identity without sided classes). One function object per model config, so jitted
    callers compile once."""
    model = config.model.to_dict() if hasattr(config.model, "to_dict") else dict(config.model)
    flip = bool(config.get("eval_flip", False))
    swap = _flip_label_map(config) if flip else None
    key = json.dumps(
        [model, label_size, flip, None if swap is None else swap.tolist()],
        sort_keys=True,
        default=str,
    )
    if key not in _APPLY_FNS:
        gd = graphdef(config)

        def logits(params, images):
            return apply_model(gd, params, jnp.asarray(images), size=label_size)[0]

        if not flip:
            _APPLY_FNS[key] = logits
        else:

            def flip_averaged(params, images):
                z = logits(params, images)
                zf = logits(params, jnp.asarray(images)[:, :, ::-1])[:, :, ::-1]
                if swap is not None:  # channel c of the mirrored prediction is class swap[c] here
                    zf = zf[..., np.argsort(swap[: z.shape[-1]])]
                return 0.5 * (z + zf)

            _APPLY_FNS[key] = flip_averaged
    return _APPLY_FNS[key]


def scoring_params(state) -> dict:
    """``{"params", "model_state"}`` a segmentation state is scored with: the averaged weights when
    the run kept them (``config.ema_decay`` > 0), else the trained ones."""
    return {"params": state.get("ema_params", state["params"]), "model_state": state["model_state"]}


def _size(data_config, name):
    v = data_config.get(name, None)
    return None if not v else (int(v[0]), int(v[1]))


class ResizedSource:
    """``{"image", "label"}`` items with the image resized (squashed, PIL bilinear) to
    ``image_size`` and the label (nearest) to ``label_size`` (either None: kept)."""

    def __init__(self, source, image_size=None, label_size=None):
        self.source, self.image_size, self.label_size = source, image_size, label_size
        self.flip_label_map = getattr(source, "flip_label_map", None)

    def __len__(self):
        return len(self.source)

    def __getitem__(self, index):
        from PIL import Image  # pylint: disable=import-outside-toplevel

        item = self.source[index]
        out = {"image": item["image"], "label": item["label"]}
        for key, size, method in (
            ("image", self.image_size, Image.BILINEAR),
            ("label", self.label_size, Image.NEAREST),
        ):
            if size is not None and out[key].shape[:2] != size:
                out[key] = np.asarray(Image.fromarray(out[key]).resize(size[::-1], method))
        return out


def resized_source(config, source):
    """``source`` wrapped in :class:`ResizedSource` when ``config.data.image_size`` / ``label_size``
    are set (the authors' downstream recipe: 720 x 720 images, 180 x 180 labels)."""
    image_size, label_size = _size(config.data, "image_size"), _size(config.data, "label_size")
    if image_size is None and label_size is None:
        return source
    return ResizedSource(source, image_size, label_size)


def evaluate(config, state) -> dict[str, float]:
    """mIoU over ``config.data.eval_split`` (default real-val) and per-class IoU (present classes)."""
    from dakpn_jax.data import sources as data_sources  # pylint: disable=import-outside-toplevel

    split = config.data.get("eval_split", "real-val")
    source = resized_source(config, data_sources.make_source(config.data, split))
    params = scoring_params(state)
    res = evaluate_segmenter(
        make_apply_fn(config, label_size=_size(config.data, "label_size")),
        params,
        source,
        _num_classes(config),
        batch_size=int(config.get("eval_batch_size", 16)),
        max_images=config.get("eval_images", None),
    )
    out = {"miou": res["miou"]}
    # The authors' convention beside it, clearly named: an empty class counts as IoU 1 (inflated).
    out["miou_paper_empty_as_1"] = float(seg_metrics.mean_iou_paper(res["confusion"])[0])
    from dakpn_jax.data import label_space  # pylint: disable=import-outside-toplevel

    names = label_space.for_data(
        config.data
    ).class_names  # the data's classes (16 for SYNTHIA, faces, ...)
    for c, iou in enumerate(res["per_class_iou"]):
        if np.isfinite(iou):
            out[f"iou/{names[c] if c < len(names) else c}"] = float(iou)
    return out


def load_segmenter(workdir: str) -> tuple[Callable, PyTree]:
    """``(apply_fn, params)`` of the latest checkpoint of a segmentation run in ``workdir``.

    ``apply_fn(params, images float32 (B, H, W, 3) in [0, 1]) -> logits (B, H, W, num_classes)``
    (bilinearly resized to the input size) is pure and jittable.
    """
    from dakpn_jax.training import trainer  # pylint: disable=import-outside-toplevel

    config, state = trainer.restore_state(workdir)
    if config.get("method") != "segmentation":
        raise ValueError(
            f"load_segmenter: workdir={workdir!r} holds a {config.get('method')!r} run, "
            "not a 'segmentation' run"
        )
    return make_apply_fn(config), scoring_params(state)
