"""Throughput of the train steps of DA-KPN, CycleGAN and CUT (the trainer's jitted, donated call).

For each case and method it builds the state with the trainer's own `init_state`/`make_call` on a 1-D
"data" mesh over every device, feeds random batches of the case's shape, and prints steps/s,
images/s (synthetic images per second = steps/s x batch), compile time and peak memory (GPU/TPU: the
allocator's peak; CPU: process RSS, which only grows, so later methods inherit earlier peaks), then
the DA-KPN : CycleGAN and DA-KPN : CUT images/s ratios.

    python3 experiments/bench_train_step.py                       # benchmark + paper-shape cases
    python3 experiments/bench_train_step.py --cases=benchmark --steps=50
    python3 experiments/bench_train_step.py --cases=benchmark --size=64x128 --batch_size=2 --steps=3
    python3 experiments/bench_train_step.py --cases=paper --methods=dakpn --steps_per_call=4

Cases (every method at the same resolution and batch):
- benchmark: configs/default.py (128 x 256 frames, K = 9, batch 8); CycleGAN and CUT with their
  "benchmark" configs (16 filters, 6 blocks) on full 128 x 256 frames instead of 64 x 64 crops;
- paper: GTA5 frame size 1052 x 1914, parameter grid 96 x 160, K = 25, tile H/8 x W/8 (one-hot
  features, so no segmenter is needed); CycleGAN and CUT with the published configs (64 filters,
  9 blocks) on 1052 x 1912 frames (their ResNet generator needs sides divisible by 4: two columns
  fewer than the GTA5 frame).
``--size HxW`` replaces the case's frame size (for a small CPU run); ``--impl`` DA-KPN's
``model.impl`` (auto, shifted, pallas, einsum: the translation path, `dakpn_jax.translation`).
"""

import argparse
import importlib.util
import os
import resource
import sys
import time

import jax
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from dakpn_jax import training  # noqa: E402
from dakpn_jax.training import dakpn, trainer  # noqa: E402

METHODS = ("dakpn", "cyclegan", "cut")


def load_config(name="default", arg=None):
    spec = importlib.util.spec_from_file_location(
        f"{name}_config", os.path.join(REPO, "configs", f"{name}.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def case_config(
    name: str, batch_size: int, method: str = "dakpn", size: str | None = None, impl: str = ""
):
    if name not in ("benchmark", "paper"):
        raise ValueError(f"--cases: unknown case {name!r} (benchmark, paper)")
    if method == "dakpn":
        config = load_config()
        if name == "paper":
            h, w = 1052, 1914
            config.model.kernel_size = 25
            config.model.param_size = (96, 160)
            config.model.tile_size = (h // 8, w // 8)
            config.model.low_size = (96 * 2, 160 * 2)
        else:
            h, w = config.data.height, config.data.width
    elif method in ("cyclegan", "cut"):
        variant = {
            "cyclegan": {"benchmark": "benchmark", "paper": "default"},
            "cut": {"benchmark": "cut-benchmark", "paper": "cut"},
        }[method][name]
        config = load_config(method, variant)
        h, w = (1052, 1912) if name == "paper" else (128, 256)
    else:
        raise ValueError(f"--methods: unknown method {method!r} {METHODS}")
    if size:
        try:
            h, w = (int(v) for v in size.lower().split("x"))
        except ValueError:
            raise ValueError(f"--size: expected HxW, got {size!r}") from None
        if method == "dakpn":  # keep the tile and the low-resolution view inside the frame
            m = config.model
            m.tile_size = (
                (min(m.tile_size[0], h), min(m.tile_size[1], w)) if m.get("tile_size") else None
            )
            m.low_size = (
                (min(m.low_size[0], h), min(m.low_size[1], w)) if m.get("low_size") else m.low_size
            )
    config.data.height, config.data.width = h, w
    if method == "dakpn" and impl:
        config.model.impl = impl
    if method != "dakpn":
        config.crop_size = (h, w)  # the same resolution as DA-KPN's frames, not the configs' crops
    config.batch_size = batch_size
    return config


def peak_memory_mb() -> float:
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return stats["peak_bytes_in_use"] / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def random_batch(config, rng: np.random.Generator, steps_per_call: int) -> dict:
    b, h, w = config.batch_size, config.data.height, config.data.width
    lead = (steps_per_call, b) if steps_per_call > 1 else (b,)
    return {
        "synthetic": rng.random(lead + (h, w, 3), dtype=np.float32),
        "label": rng.integers(0, 19, lead + (h, w), dtype=np.uint8),
        "real": rng.random(lead + (h, w, 3), dtype=np.float32),
    }


def bench(
    name: str,
    batch_size: int,
    steps: int,
    steps_per_call: int,
    method: str = "dakpn",
    size: str | None = None,
    impl: str = "",
) -> dict:
    """Times ``steps`` train steps of ``method`` in case ``name``; prints and returns the figures."""
    config = case_config(name, batch_size, method, size, impl)
    module = dakpn if method == "dakpn" else training.get_method(method)
    mesh = trainer.make_mesh()
    if batch_size % mesh.size:
        raise ValueError(f"--batch_size={batch_size} must be divisible by the {mesh.size} devices")
    state = trainer.init_state(module, config, mesh)
    call = trainer.make_call(module.make_train_step(config), mesh, steps_per_call)
    batch = trainer.to_global(
        random_batch(config, np.random.default_rng(0), steps_per_call),
        mesh,
        stacked=steps_per_call > 1,
    )
    t0 = time.perf_counter()
    state, metrics = call(state, batch)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - t0
    calls = max(1, steps // steps_per_call)
    t0 = time.perf_counter()
    for _ in range(calls):
        state, metrics = call(state, batch)
    jax.block_until_ready(metrics)
    dt = time.perf_counter() - t0
    sps = calls * steps_per_call / dt
    k = (
        f"K={config.model.kernel_size:2d} {config.model.impl}"
        if method == "dakpn"
        else f"ngf={config.model.ngf}"
    )
    print(
        f"{name:9s} {method:8s} {config.data.height}x{config.data.width} {k:6s} "
        f"batch={batch_size:3d} steps_per_call={steps_per_call} devices={mesh.size} | "
        f"compile+first {compile_s:6.1f} s | {1e3 / sps:9.2f} ms/step | {sps:8.3f} steps/s | "
        f"{sps * batch_size:8.2f} images/s | peak {peak_memory_mb():8.0f} MB",
        flush=True,
    )
    return {
        "case": name,
        "method": method,
        "steps_per_s": sps,
        "images_per_s": sps * batch_size,
        "height": config.data.height,
        "width": config.data.width,
        "batch_size": batch_size,
    }


def main():
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--cases", default="benchmark,paper")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument(
        "--size", default="", help="HxW frame size replacing the case's (small CPU runs)"
    )
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--steps_per_call", type=int, default=1)
    p.add_argument("--impl", default="", help="DA-KPN's model.impl (default: the config's)")
    a = p.parse_args()
    print(
        f"jax {jax.__version__}, backend {jax.default_backend()}, devices {jax.devices()}, "
        f"load average {' '.join(f'{v:.1f}' for v in os.getloadavg())}"
    )
    methods = [m.strip() for m in a.methods.split(",") if m.strip()]
    for name in a.cases.split(","):
        res = {
            m: bench(name, a.batch_size, a.steps, a.steps_per_call, m, a.size or None, a.impl)
            for m in methods
        }
        for other in ("cyclegan", "cut"):
            if "dakpn" in res and other in res:
                print(
                    f"{name:9s} DA-KPN : {other} images/s = "
                    f"{res['dakpn']['images_per_s'] / res[other]['images_per_s']:.2f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
