"""Pieces shared by the GAN baselines (CycleGAN, CUT, FastCUT): networks as (graphdef, params)
pairs, LSGAN loss, the constant-then-linear-decay Adam, an image pool that lives in the jitted
state, the discriminator update, the unpaired data streams, translation for export and the
paired-view evaluation.

State convention (docs/ARCHITECTURE.md): a method state is a plain nested dict of jax arrays;
network parameters are stored as pure dicts (``nnx.to_pure_dict``) and merged back into NNX
modules inside the jitted step with the static graphdef rebuilt from the config. Keys are stored
as raw ``uint32[2]`` key data (checkpointable by orbax) and wrapped where used.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from dakpn_jax.models.gan_discriminator import NLayerDiscriminator
from dakpn_jax.models.resnet_generator import ResnetGenerator, to_signed, to_unit

PyTree = Any


# ----------------------------------------------------------------------------- keys


def key_data(rng: jax.Array) -> jax.Array:
    """Raw uint32 key data of a typed or raw key (what the state stores)."""
    if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
        return jax.random.key_data(rng)
    return jnp.asarray(rng, jnp.uint32)


def split_key(raw: jax.Array, n: int) -> list[jax.Array]:
    """Split a raw key into ``n`` raw keys."""
    keys = jax.random.split(jax.random.wrap_key_data(raw), n)
    return [jax.random.key_data(k) for k in keys]


# ----------------------------------------------------------------------------- networks


def init_args(m) -> dict:
    """``init`` / ``init_gain`` of ``config.model`` (default: CycleGAN's N(0, 0.02))."""
    return dict(init=m.get("init", "normal"), init_gain=float(m.get("init_gain", 0.02)))


def make_generator(config, rngs: nnx.Rngs) -> ResnetGenerator:
    """ResNet generator from ``config.model`` (ngf, n_blocks, n_down; optional antialias,
    antialias_up, init, init_gain: CycleGAN's network when absent)."""
    m = config.model
    return ResnetGenerator(
        3,
        3,
        ngf=m.ngf,
        n_blocks=m.n_blocks,
        n_down=m.n_down,
        antialias=m.get("antialias", False),
        antialias_up=m.get("antialias_up", False),
        rngs=rngs,
        **init_args(m),
    )


def make_discriminator(config, rngs: nnx.Rngs) -> NLayerDiscriminator:
    """70x70 PatchGAN from ``config.model`` (ndf, n_layers_d; optional antialias_d, init, init_gain)."""
    m = config.model
    return NLayerDiscriminator(
        3,
        ndf=m.ndf,
        n_layers=m.n_layers_d,
        antialias=m.get("antialias_d", False),
        rngs=rngs,
        **init_args(m),
    )


def init_network(build: Callable[[nnx.Rngs], nnx.Module], rng: jax.Array):
    """Build a module with a raw key; returns (graphdef, params as a pure dict)."""
    graphdef, state = nnx.split(build(nnx.Rngs(params=jax.random.wrap_key_data(rng))))
    return graphdef, nnx.to_pure_dict(state)


def graphdef_of(build: Callable[[nnx.Rngs], nnx.Module]):
    """Static graphdef of a module without initialising any weights (shape evaluation only)."""
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: build(nnx.Rngs(0))))
    return graphdef


def merge(graphdef, params: PyTree) -> nnx.Module:
    """NNX module from its graphdef and a pure-dict parameter tree (jit-safe)."""
    return nnx.merge(graphdef, params)


# ----------------------------------------------------------------------------- losses


def lsgan_loss(pred: jax.Array, target_is_real: bool) -> jax.Array:
    """Least-squares GAN loss (Mao et al. 2017): ``mean((D(x) - t)^2)``, t = 1 for real, 0 for fake."""
    t = 1.0 if target_is_real else 0.0
    return jnp.mean(jnp.square(pred.astype(jnp.float32) - t))


def l1(a: jax.Array, b: jax.Array) -> jax.Array:
    """``mean(|a - b|)`` over all elements."""
    return jnp.mean(jnp.abs(a - b))


def discriminator_terms(
    d: nnx.Module, real: jax.Array, fake: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """``(LSGAN(D(real), 1), LSGAN(D(fake), 0))``, fake treated as a constant."""
    return lsgan_loss(d(real), True), lsgan_loss(d(jax.lax.stop_gradient(fake)), False)


def discriminator_loss(d: nnx.Module, real: jax.Array, fake: jax.Array) -> jax.Array:
    """Published D objective: ``0.5 * (LSGAN(D(real), 1) + LSGAN(D(fake), 0))`` (fake is a constant)."""
    l_real, l_fake = discriminator_terms(d, real, fake)
    return 0.5 * (l_real + l_fake)


def discriminator_grads(
    graphdef, params: PyTree, real: jax.Array, fake: jax.Array, *, has_aux: bool = False
):
    """(loss, grads) of :func:`discriminator_loss` w.r.t. the discriminator's params; with
    ``has_aux`` ((loss, (loss_real, loss_fake)), grads)."""

    def f(p):
        l_real, l_fake = discriminator_terms(merge(graphdef, p), real, fake)
        return 0.5 * (l_real + l_fake), (l_real, l_fake)

    (loss, aux), grads = jax.value_and_grad(f, has_aux=True)(params)
    return ((loss, aux), grads) if has_aux else (loss, grads)


# ----------------------------------------------------------------------------- optimiser


def linear_decay_schedule(lr: float, constant_steps: int, decay_steps: int) -> optax.Schedule:
    """``lr`` for ``constant_steps``, then linear to 0 over ``decay_steps``:

        lr(s) = lr * clip(1 - max(0, s - constant_steps) / decay_steps, 0, 1)

    The published schedule does the same per epoch (100 + 100 epochs for CycleGAN); here it is per
    step, so it is smooth and independent of the dataset size.
    """
    if constant_steps < 0 or decay_steps < 0:
        raise ValueError(
            f"linear_decay_schedule: constant_steps={constant_steps}, decay_steps={decay_steps} must be >= 0"
        )

    def schedule(step):
        s = jnp.asarray(step, jnp.float32)
        frac = jnp.maximum(0.0, s - constant_steps) / max(decay_steps, 1)
        return lr * jnp.clip(1.0 - frac, 0.0, 1.0)

    return schedule


def make_optimizer(config) -> optax.GradientTransformation:
    """Adam(lr, b1, b2, eps) on the linear-decay schedule (published: 2e-4, (0.5, 0.999), 1e-8)."""
    o = config.optim
    return optax.adam(
        linear_decay_schedule(o.lr, o.constant_steps, o.decay_steps),
        b1=o.b1,
        b2=o.b2,
        eps=o.get("eps", 1e-8),
    )


def apply_updates(tx, params, grads, opt_state):
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state


# ----------------------------------------------------------------------------- image pool


def pool_init(pool_size: int, image_shape: tuple[int, int, int]) -> dict:
    """An empty image pool: ``{"images": (pool_size, H, W, C) float32, "count": int32}``."""
    if pool_size < 0 or len(image_shape) != 3:
        raise ValueError(
            f"pool_init: pool_size={pool_size} must be >= 0 and image_shape={image_shape} (H, W, C)"
        )
    return {
        "images": jnp.zeros((pool_size,) + tuple(image_shape), jnp.float32),
        "count": jnp.zeros((), jnp.int32),
    }


def pool_query(pool: dict, images: jax.Array, rng: jax.Array) -> tuple[dict, jax.Array]:
    """History of generated images (Shrivastava et al. 2017), as used by CycleGAN, kept pure.

    For each image of the batch in order: while the pool holds fewer than N images, store it and
    return it; once full, with probability 1/2 return a uniformly chosen stored image and put the
    new one in its place, otherwise return the new image. The published version keeps a Python list
    on the host; here the pool is a fixed (N, H, W, C) array plus a fill count inside the jitted
    state and the coin flips come from ``rng`` (raw key), so the step stays pure and a resumed run
    reproduces an uninterrupted one exactly. The result depends only on the global batch, so it is
    the same for any device count. ``images``: (B, H, W, C); returns (new pool, (B, H, W, C)).
    """
    buf, count = pool["images"], pool["count"]
    n = buf.shape[0]
    if n == 0:
        return pool, images
    if images.shape[1:] != buf.shape[1:]:
        raise ValueError(f"pool_query: images {images.shape} do not match pool images {buf.shape}")
    keys = jax.random.split(jax.random.wrap_key_data(rng), images.shape[0])

    def one(carry, xs):
        buf, count = carry
        img, key = xs
        k_coin, k_idx = jax.random.split(key)
        swap = jax.random.uniform(k_coin) > 0.5
        idx = jax.random.randint(k_idx, (), 0, n)
        filling = count < n
        slot = jnp.where(filling, count, idx)
        old = buf[slot]
        out = jnp.where(filling | ~swap, img, old)
        buf = jax.lax.cond(filling | swap, lambda b: b.at[slot].set(img), lambda b: b, buf)
        return (buf, count + filling.astype(jnp.int32)), out

    (buf, count), out = jax.lax.scan(one, (buf, count), (images.astype(jnp.float32), keys))
    return {"images": buf, "count": count}, out.astype(images.dtype)


# ----------------------------------------------------------------------------- data


def check_batch(batch: dict, keys=("synthetic", "real")) -> None:
    for k in keys:
        if k not in batch:
            raise ValueError(f"GAN baseline batch: missing key '{k}' (have {sorted(batch)})")
        x = batch[k]
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(
                f"GAN baseline batch['{k}']: expected (B, H, W, 3) images, got {x.shape}"
            )
    if batch[keys[0]].shape != batch[keys[1]].shape:
        raise ValueError(
            f"GAN baseline batch: '{keys[0]}' {batch[keys[0]].shape} and '{keys[1]}' "
            f"{batch[keys[1]].shape} must have the same shape (crop both domains alike)"
        )


def train_image_shape(config) -> tuple[int, int, int]:
    """(h, w, 3) of the training crops (``config.crop_size``, else the full data size)."""
    if config.get("crop_size"):
        h, w = config.crop_size
    else:
        h, w = config.data.height, config.data.width
    return int(h), int(w), 3


def make_iterators(config, *, shard_index: int = 0, shard_count: int = 1) -> dict:
    """Unpaired streams: ``{"synthetic": synthetic-train, "real": real-train}`` grain iterators,
    each yielding per-process batches of ``config.batch_size // shard_count`` random crops/flips."""
    from dakpn_jax.data import pipeline, sources  # data side only; the step never needs it

    if config.batch_size % shard_count:
        raise ValueError(
            f"config.batch_size={config.batch_size} not divisible by process count {shard_count}"
        )
    out = {}
    for name, split, offset in (("synthetic", "synthetic-train", 0), ("real", "real-train", 1)):
        out[name] = pipeline.make_pipeline(
            sources.make_source(config.data, split),
            batch_size=config.batch_size // shard_count,
            seed=config.seed + offset,
            shard_index=shard_index,
            shard_count=shard_count,
            shuffle=True,
            crop_size=tuple(config.crop_size) if config.get("crop_size") else None,
            random_flip=config.get("random_flip", True),
        )
    return out


def next_batch(iterators: dict) -> dict:
    """One per-process batch: ``{"synthetic": (b, h, w, 3), "real": (b, h, w, 3)}`` float32 in [0, 1]."""
    return {
        "synthetic": np.asarray(next(iterators["synthetic"])["image"], np.float32),
        "real": np.asarray(next(iterators["real"])["image"], np.float32),
    }


# ----------------------------------------------------------------------------- inference


def translate_with(graphdef, params, images: jax.Array, n_down: int) -> jax.Array:
    """Generator as a [0,1] -> [0,1] translator: ``(G(2x - 1) + 1) / 2``; images (B, H, W, 3).

    Any frame size: the frame is edge-padded at the bottom/right to the generator's stride
    ``2^n_down`` (and its minimum size) and the output cropped back, so whole frames translate
    in one pass."""
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"translate: images must be (B, H, W, 3), got {images.shape}")
    h, w = images.shape[1:3]
    f = 2**n_down
    size = lambda n: max(-(-n // f) * f, 4 * f)  # a multiple of f, > 3 f (the reflection pads)
    x = to_signed(images.astype(jnp.float32))
    x = jnp.pad(x, ((0, 0), (0, size(h) - h), (0, size(w) - w), (0, 0)), mode="edge")
    return to_unit(merge(graphdef, params)(x))[:, :h, :w]


def make_translator(graphdef, params, n_down: int):
    """The shared contract's ``translate_fn(images (B,H,W,3) [0,1], labels) -> (B,H,W,3)``, jitted;
    GAN translators ignore the labels."""
    # Weights as a jit argument, not closed-over constants (see dakpn.make_translator for why).
    run = jax.jit(lambda p, images: translate_with(graphdef, p, images, n_down))
    return lambda images, labels=None: run(params, images)


def evaluate_paired(
    config,
    translate_fn: Callable[[np.ndarray, np.ndarray], np.ndarray],
    *,
    max_images: int | None = None,
    batch_size: int = 8,
    num_classes: int | None = None,
) -> dict[str, float]:
    """Paired-view PSNR / SSIM / SWD (+ ``class_color_err`` with ``num_classes``) of
    ``translate_fn(images, labels)`` on the benchmark's paired-eval split."""
    from dakpn_jax.data import sources
    from dakpn_jax.evaluation import image_quality

    source = sources.make_source(config.data, "paired-eval")
    return image_quality.evaluate_paired_source(
        translate_fn, source, batch_size=batch_size, max_images=max_images, num_classes=num_classes
    )
