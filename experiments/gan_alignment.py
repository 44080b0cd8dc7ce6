"""Pixel shift of the GAN baselines' generator before / after issue #12 (prints a small table).

1. Pass-through generator (weights of the published CycleGAN layer list that pass images made of
   aligned 4x4 cells through, see tests/test_gan_reference.py): displacement of its output against
   its input, with PyTorch's ConvTranspose2d padding (this code) and with the padding of the code
   before #12 (Flax ``ConvTranspose(padding="SAME")`` = dilated input padded (2, 1); checked here
   to equal that layer exactly).
2. Briefly trained CycleGAN (configs/cyclegan.py:benchmark, ``--steps`` steps, both paddings, same
   seed): displacement of G_A(x)'s edges against the label boundaries of the benchmark's
   paired-eval frames (and of x's own edges, which must be 0).

    python experiments/gan_alignment.py --steps=300

Displacement = the integer shift (|s| <= 4 px, per axis) that maximises the correlation of the
two edge-strength maps over the frame interior (positive: content moved down / right).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dakpn_jax.models import resnet_generator as rg

OLD_PADDING = ((2, 1), (2, 1))


def displacement(ref: np.ndarray, out: np.ndarray, axis: int, max_shift: int = 4) -> int:
    """Shift s with out[.., i + s, ..] best correlated with ref[.., i, ..] over the interior."""
    n = ref.shape[axis]
    inner = np.arange(max_shift, n - max_shift)
    corr = lambda s: np.corrcoef(
        np.take(ref, inner, axis=axis).ravel(), np.take(out, inner + s, axis=axis).ravel()
    )[0, 1]
    return max(range(-max_shift, max_shift + 1), key=corr)


def edge_strength(x: np.ndarray) -> np.ndarray:
    """|horizontal| + |vertical| central differences, summed over channels: (B, H, W)."""
    x = x.astype(np.float64)
    if x.ndim == 3:
        x = x[..., None]
    gy = np.zeros(x.shape[:3])
    gx = np.zeros(x.shape[:3])
    gy[:, 1:-1] = np.abs(x[:, 2:] - x[:, :-2]).sum(-1)
    gx[:, :, 1:-1] = np.abs(x[:, :, 2:] - x[:, :, :-2]).sum(-1)
    return gy + gx


def pass_through_generator(ngf=6, n_blocks=2) -> rg.ResnetGenerator:
    g = rg.ResnetGenerator(ngf=ngf, n_blocks=n_blocks, rngs=nnx.Rngs(0))
    nnx.update(g, jax.tree.map(jnp.zeros_like, nnx.state(g, nnx.Param)))
    stem, head = (
        np.zeros(g.stem.kernel.shape, np.float32),
        np.zeros(g.head.kernel.shape, np.float32),
    )
    for c in range(3):
        stem[3, 3, c, c], stem[3, 3, c, 3 + c] = 1, -1  # HWIO
        head[3, 3, c, c], head[3, 3, 3 + c, c] = 1, -1
    g.stem.kernel[...], g.head.kernel[...] = jnp.asarray(stem), jnp.asarray(head)
    for conv in g.down:
        k = np.zeros(conv.kernel.shape, np.float32)
        for c in range(3):
            k[1, 1, c, c], k[1, 1, 3 + c, c], k[1, 1, c, 3 + c], k[1, 1, 3 + c, 3 + c] = (
                1,
                -1,
                -1,
                1,
            )
        conv.kernel[...] = jnp.asarray(k)
    for up in g.up:  # PyTorch orientation: taps 1, 2 copy pixel i to 2i and 2i + 1
        k = np.zeros(up.kernel.shape, np.float32)
        for c in range(3):
            for sign, (i, o) in (
                (1, (c, c)),
                (-1, (3 + c, c)),
                (-1, (c, 3 + c)),
                (1, (3 + c, 3 + c)),
            ):
                k[1:, 1:, i, o] = sign
        up.kernel[...] = jnp.asarray(k)
    return g


def part1():
    r = np.random.default_rng(0)
    x = np.repeat(
        np.repeat(r.uniform(-0.9, 0.9, (2, 16, 32, 3)).astype(np.float32), 4, 1), 4, 2
    )  # 64 x 128
    g = pass_through_generator()
    new = np.asarray(g(x))
    # The pre-#12 layer itself, with the same (PyTorch-oriented) weights flipped into its convention.
    old_layer = nnx.ConvTranspose(24, 12, (3, 3), strides=(2, 2), padding="SAME", rngs=nnx.Rngs(0))
    old_layer.kernel[...] = g.up[0].kernel[...][::-1, ::-1]
    old_layer.bias[...] = g.up[0].bias[...]
    h = r.standard_normal((1, 8, 8, 24)).astype(np.float32)
    g.up[0].padding = OLD_PADDING
    same = float(jnp.max(jnp.abs(old_layer(h) - g.up[0](h))))
    g.up[1].padding = OLD_PADDING
    old = np.asarray(g(x))
    print(f"pre-#12 layer (Flax SAME) vs padding (2,1): max |diff| = {same:.1e}")
    print("| generator | displacement of output vs input (rows, cols) px |")
    print("|---|---|")
    print(
        f"| pass-through, before #12 (padding (2,1)) | ({displacement(new, old, 1)}, {displacement(new, old, 2)}) |"
    )
    print(
        f"| pass-through, after #12 (PyTorch (1,2)) | ({displacement(x, new, 1)}, {displacement(x, new, 2)}) |"
    )


def train_and_measure(steps: int, padding, seed: int = 0):
    from configs import cyclegan as cfgs
    from dakpn_jax.data import sources
    from dakpn_jax.training import cyclegan, gan_common as gc

    rg.ConvTranspose2d.padding = padding
    config = cfgs.get_config("benchmark")
    config.seed = seed
    config.optim.update(constant_steps=steps, decay_steps=1)
    its = cyclegan.make_iterators(config)
    step = jax.jit(cyclegan.make_train_step(config))
    state = cyclegan.init_state(config, jax.random.key(seed))
    t0 = time.time()
    for _ in range(steps):
        state, m = step(state, gc.next_batch(its))
    jax.block_until_ready(state)
    src = sources.make_source(config.data, "paired-eval")
    items = [src[i] for i in range(16)]
    x = np.stack([it["synthetic"] for it in items]).astype(np.float32) / 255.0
    labels = np.stack([it["label"] for it in items])
    y = np.asarray(cyclegan.make_translator(config, state)(x, None))
    lb = (edge_strength(labels.astype(np.float64)) > 0).astype(np.float64)  # label boundaries
    e_y, e_x = edge_strength(y), edge_strength(x)
    rg.ConvTranspose2d.padding = ((1, 2), (1, 2))
    return dict(
        steps=steps,
        secs=time.time() - t0,
        loss_cycle=float(m["loss_cycle"]),
        out=(displacement(lb, e_y, 1), displacement(lb, e_y, 2)),
        inp=(displacement(lb, e_x, 1), displacement(lb, e_x, 2)),
    )


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--steps", type=int, default=300, help="CycleGAN benchmark steps per run (0: skip part 2)"
    )
    a = p.parse_args()
    print(f"jax {jax.__version__}, devices {jax.devices()}")
    part1()
    if a.steps:
        print(
            "\n| CycleGAN benchmark, steps | transposed conv | G_A(x) edges vs labels (rows, cols) px "
            "| x edges vs labels | final loss_cycle | train s |"
        )
        print("|---|---|---|---|---|---|")
        for name, pad in (("before #12 (2,1)", OLD_PADDING), ("after #12 (1,2)", ((1, 2), (1, 2)))):
            r = train_and_measure(a.steps, pad)
            print(
                f"| {r['steps']} | {name} | {r['out']} | {r['inp']} | {r['loss_cycle']:.3f} | {r['secs']:.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
