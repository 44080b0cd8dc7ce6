"""Segmenter training throughput: on-the-fly translation in the jitted step vs reading an export.

    python experiments/bench_on_the_fly.py [--translator_workdir=RUN] [--steps=30] [--num_images=64]

Without ``--translator_workdir`` a DA-KPN on the procedural benchmark (configs/default.py, 128 x 256
frames) is trained for one step into a temporary directory (the throughput does not depend on how
well it is trained). The synthetic-train frames are written to disk twice, as a user would have them:
untranslated (``raw/``, the dataset) and translated by the export (``export/``). The segmenter
(configs/segmentation.py default: unet_small, batch 8, 64 x 128 crops + flips) then trains on

    export        {"kind": "folder", "root": export/}                   PNG decode of translated frames
    on_the_fly    {"kind": "translated_on_the_fly", "root": raw/}       PNG decode + translation in the step
    fresh_noise   the same with "fresh_noise": True
    raw           {"kind": "folder", "root": raw/}                      no translation at all (floor)

each through the trainer's own pieces (its mesh over all devices, ``make_call``, ``to_global``).
The script first prints the export's frames/s (``dakpn_jax.export.export_translated``: read,
translate, PNG-encode, atomic write; compilation included), then images/s per source, data
loading included, in one run: after 3 warm-up steps (compilation) each, ``--steps`` timed steps per
variant in ``--rounds`` interleaved rounds (so a drifting load on a shared machine hits every
variant alike), the median over rounds.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # configs/

from configs import default as dakpn_configs
from configs import segmentation as seg_configs
import dakpn_jax
from dakpn_jax import export
from dakpn_jax.data import sources
from dakpn_jax.training import segmentation as seg
from dakpn_jax.training import trainer


def train_translator(workdir: str, num_images: int) -> None:
    c = dakpn_configs.get_config()
    c.data.num_synthetic_train = num_images
    c.num_train_steps, c.checkpoint_every_steps, c.eval_every_steps, c.log_every_steps = 1, 1, 0, 1
    trainer.train_and_evaluate(c, workdir)


def write_raw(config, root: str) -> None:
    """The untranslated synthetic-train frames and labels as PNGs (the dataset on disk)."""
    src = sources.make_source(config.data, "synthetic-train")
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    os.makedirs(os.path.join(root, "labels"), exist_ok=True)
    for i in range(len(src)):
        item = src[i]
        Image.fromarray(item["image"]).save(os.path.join(root, "images", f"{i:06d}.png"))
        Image.fromarray(item["label"]).save(os.path.join(root, "labels", f"{i:06d}.png"))


class Run:
    """One segmenter training set-up: state, jitted call and iterators, warmed up (compiled)."""

    def __init__(self, config, warmup: int = 3):
        self.mesh = trainer.make_mesh()
        self.state = trainer.init_state(seg, config, self.mesh)
        self.call = trainer.make_call(seg.make_train_step(config), self.mesh, 1)
        self.iterators = seg.make_iterators(config)
        self.batch_size = int(config.batch_size)
        self.steps(warmup)

    def steps(self, n: int) -> float:
        """Seconds for ``n`` train steps, data loading included."""
        t0 = time.perf_counter()
        for _ in range(n):
            batch = trainer.to_global(seg.next_batch(self.iterators), self.mesh, stacked=False)
            self.state, metrics = self.call(self.state, batch)
        jax.block_until_ready(metrics)
        return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--translator_workdir", default=None, help="a DA-KPN run (default: train one for 1 step)"
    )
    p.add_argument(
        "--steps", type=int, default=30, help="timed steps per variant, split over --rounds"
    )
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument(
        "--num_images", type=int, default=64, help="synthetic-train frames (new translator only)"
    )
    p.add_argument("--batch_size", type=int, default=8)
    a = p.parse_args()
    tmp = tempfile.mkdtemp(prefix="bench_on_the_fly_")
    workdir = a.translator_workdir
    if workdir is None:
        workdir = os.path.join(tmp, "dakpn")
        train_translator(workdir, a.num_images)
    tconfig = trainer.load_config(workdir)
    raw, exported = os.path.join(tmp, "raw"), os.path.join(tmp, "export")
    write_raw(tconfig, raw)
    t0 = time.perf_counter()
    export.export_translated(
        workdir, exported, split="synthetic-train", batch_size=8, progress=False
    )
    export_s = time.perf_counter() - t0
    h, w = tconfig.data.height, tconfig.data.width
    n = len(os.listdir(os.path.join(raw, "images")))
    print(
        f"devices: {jax.device_count()} x {jax.devices()[0].platform}; frames {h} x {w}; "
        f"{n} images; translator {workdir} ({tconfig.method})"
    )
    # The export CLI's own path: read + translate + PNG-encode + atomic write, compilation included.
    print(
        f"export: {n} frames in {export_s:.1f} s = {n / export_s:.1f} frames/s (batch 8, compile included)"
    )
    variants = {
        "export": {"kind": "folder", "root": exported},
        "on_the_fly": {"kind": seg.ON_THE_FLY, "translator_workdir": workdir, "root": raw},
        "fresh_noise": {
            "kind": seg.ON_THE_FLY,
            "translator_workdir": workdir,
            "root": raw,
            "fresh_noise": True,
        },
        "raw": {"kind": "folder", "root": raw},
    }
    runs = {}
    for name, source in variants.items():
        c = seg_configs.get_config()
        c.data = tconfig.data
        c.data.train_sources = (source,)
        c.batch_size = a.batch_size
        runs[name] = Run(c)
    # Interleaved rounds: on a shared machine the load drifts; every round times every variant.
    per_round = max(1, a.steps // a.rounds)
    rates = {name: [] for name in runs}
    for _ in range(a.rounds):
        for name, run in runs.items():
            rates[name].append(per_round * run.batch_size / run.steps(per_round))
    for name, r in rates.items():
        print(
            f"{name:12s} {np.median(r):8.1f} images/s  (median of {a.rounds} rounds of {per_round} steps; "
            f"min {min(r):.1f}, max {max(r):.1f})"
        )
    for name in ("on_the_fly", "fresh_noise", "raw"):
        ratio = np.median([x / y for x, y in zip(rates[name], rates["export"])])
        print(f"{name} / export = {ratio:.2f} (median over rounds)")
    # The translation alone (whole frames, fixed noise), for scale.
    translate = dakpn_jax.load_translator(workdir)
    frames = jnp.asarray(
        np.random.default_rng(0).uniform(size=(a.batch_size, h, w, 3)), jnp.float32
    )
    labels = jnp.zeros((a.batch_size, h, w), jnp.int32)
    fn = jax.jit(lambda x, y: translate(x, y))
    jax.block_until_ready(fn(frames, labels))
    t0 = time.perf_counter()
    for _ in range(10):
        out = fn(frames, labels)
    jax.block_until_ready(out)
    print(
        f"translate alone: {(time.perf_counter() - t0) / 10 * 1e3:.1f} ms per batch of {a.batch_size} "
        f"{h} x {w} frames"
    )
    print(
        f"(batch {a.batch_size}, crops {tuple(seg_configs.get_config().crop_size)}; files under {tmp})"
    )


if __name__ == "__main__":
    main()
