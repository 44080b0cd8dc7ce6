"""Worked example (docs/EXAMPLE_JAX_PIPELINE.md): your own segmenter training loop in plain JAX and
optax, with a trained DA-KPN translator applied on the device inside the jitted step.

    python experiments/example_own_pipeline.py --translator=runs/dakpn --data=DIR [--steps=200]

    DIR/images/<stem>.png   synthetic RGB frames, all of one size
    DIR/labels/<stem>.png   their train-id labels (single-channel PNG, 255 = ignore)

Only `dakpn_jax.load_translator` comes from the library: the data source, the grain pipeline, the
model, the loss and the optimiser are the user's own. The step runs under the user's own 1-D mesh:
the batch is sharded over the 'data' axis, parameters replicated; the translator's weights are
constants of the jitted step.
"""

from __future__ import annotations

import argparse
import functools
import os

import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from PIL import Image

import dakpn_jax

IGNORE = 255


# --- the user's data: a grain random-access source over a folder of PNG pairs -----------------------


class PngPairs:
    """``{"image": uint8 (H, W, 3), "label": uint8 (H, W)}`` for DIR/images/*.png + DIR/labels/*.png."""

    def __init__(self, root: str):
        self.root = root
        self.stems = sorted(
            os.path.splitext(f)[0]
            for f in os.listdir(os.path.join(root, "images"))
            if f.endswith(".png")
        )
        if not self.stems:
            raise ValueError(f"no PNG images in {os.path.join(root, 'images')!r}")

    def __len__(self) -> int:
        return len(self.stems)

    def __getitem__(self, i: int) -> dict:
        stem = self.stems[i]
        with Image.open(os.path.join(self.root, "images", stem + ".png")) as im:
            image = np.asarray(im.convert("RGB"), np.uint8)
        with Image.open(os.path.join(self.root, "labels", stem + ".png")) as im:
            label = np.asarray(im, np.uint8)
        return {"image": image, "label": label}


def make_loader(root: str, batch_size: int, seed: int):
    """Shuffled, repeated batches of uint8 numpy arrays."""
    ds = grain.MapDataset.source(PngPairs(root)).shuffle(seed=seed).repeat().batch(batch_size)
    return iter(ds.to_iter_dataset())


# --- the user's model: three convolutions in plain jax ----------------------------------------------


def init_params(key: jax.Array, num_classes: int, width: int = 16) -> dict:
    """He-initialised 3x3 -> 3x3 -> 1x1 conv net, HWIO kernels."""
    shapes = {"c1": (3, 3, 3, width), "c2": (3, 3, width, width), "out": (1, 1, width, num_classes)}
    keys = jax.random.split(key, len(shapes))
    return {
        name: {"w": jax.random.normal(k, s) * np.sqrt(2.0 / np.prod(s[:3])), "b": jnp.zeros(s[-1])}
        for k, (name, s) in zip(keys, shapes.items())
    }


def apply(params: dict, x: jax.Array) -> jax.Array:
    """Logits (B, H, W, C) of images (B, H, W, 3)."""

    def conv(x, p):
        return (
            jax.lax.conv_general_dilated(
                x, p["w"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
            )
            + p["b"]
        )

    x = jax.nn.relu(conv(x, params["c1"]))
    x = jax.nn.relu(conv(x, params["c2"]))
    return conv(x, params["out"])


def loss_fn(params: dict, images: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean cross-entropy over the pixels whose label is not IGNORE."""
    logits = apply(params, images)
    valid = labels != IGNORE
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.where(valid, labels, 0))
    return jnp.sum(jnp.where(valid, ce, 0.0)) / jnp.maximum(jnp.sum(valid), 1)


# --- the training loop ---------------------------------------------------------------------------------


def train(
    translator_dir: str,
    data_dir: str,
    *,
    steps: int = 200,
    batch_size: int = 8,
    lr: float = 1e-3,
    seed: int = 0,
    fresh_noise: bool = True,
    num_classes: int = 19,
    log_every: int = 50,
) -> list[float]:
    """Trains the conv net on translated frames for ``steps`` steps; returns the per-step losses."""
    translate = dakpn_jax.load_translator(
        translator_dir
    )  # read-only restore of the latest checkpoint

    mesh = Mesh(np.asarray(jax.devices()), ("data",))
    if batch_size % mesh.devices.size:
        raise ValueError(
            f"batch_size={batch_size} must be a multiple of the device count {mesh.devices.size}"
        )
    sharded, replicated = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
    tx = optax.adam(lr)
    params = jax.device_put(init_params(jax.random.key(seed), num_classes), replicated)
    opt_state = jax.device_put(tx.init(params), replicated)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params, opt_state, images_u8, labels, key):
        images = images_u8.astype(jnp.float32) / 255.0
        # The translator runs here, on the device, per batch: fresh noise per sample (DA-KPN) as
        # augmentation, or the fixed field (rng=None) for exactly what the export would give.
        images = jnp.clip(translate(images, labels, rng=key if fresh_noise else None), 0.0, 1.0)
        loss, grads = jax.value_and_grad(loss_fn)(params, images, labels)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    loader = make_loader(data_dir, batch_size, seed)
    noise_key = jax.random.key(seed + 1)
    losses = []
    for i in range(steps):
        batch = next(loader)
        images = jax.device_put(batch["image"], sharded)  # uint8 over the wire, float on the device
        labels = jax.device_put(batch["label"].astype(np.int32), sharded)
        params, opt_state, loss = step(
            params, opt_state, images, labels, jax.random.fold_in(noise_key, i)
        )
        losses.append(float(loss))
        if log_every and (i + 1) % log_every == 0:
            print(f"step {i + 1}: loss {np.mean(losses[-log_every:]):.4f}")
    return losses


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--translator", required=True, help="DA-KPN (or CycleGAN/CUT) training run directory"
    )
    p.add_argument("--data", required=True, help="folder with images/*.png and labels/*.png")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument(
        "--fixed_noise", action="store_true", help="the fixed noise field instead of fresh noise"
    )
    a = p.parse_args()
    losses = train(
        a.translator,
        a.data,
        steps=a.steps,
        batch_size=a.batch_size,
        lr=a.lr,
        fresh_noise=not a.fixed_noise,
    )
    print(f"done: {len(losses)} steps, final loss {losses[-1]:.4f}")


if __name__ == "__main__":
    main()
