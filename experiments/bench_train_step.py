"""Throughput of the DA-KPN train step (the trainer's jitted, donated call) on this machine.

For each case it builds the state with the trainer's own `init_state`/`make_call` on a 1-D "data"
mesh over every device, feeds random batches of the configured shape, and prints steps/s,
images/s, compile time and peak device memory (GPU/TPU: the allocator's peak; CPU: process RSS).

    python3 experiments/bench_train_step.py                       # benchmark + paper-shape cases
    python3 experiments/bench_train_step.py --cases=benchmark --steps=50
    python3 experiments/bench_train_step.py --cases=paper --steps_per_call=4

Cases:
- benchmark: configs/default.py (128 x 256 frames, K = 13, batch 8);
- paper: GTA5 frame size 1052 x 1914, parameter grid 96 x 160, K = 25, tile H/8 x W/8, batch 8
  (configs/default.py with the paper's shapes; one-hot features, so no segmenter is needed).
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

from dakpn_jax.training import dakpn, trainer  # noqa: E402


def load_config(arg=None):
    spec = importlib.util.spec_from_file_location("default_config", os.path.join(REPO, "configs", "default.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def case_config(name: str, batch_size: int):
    config = load_config()
    if name == "paper":
        h, w = 1052, 1914
        config.data.height, config.data.width = h, w
        config.model.kernel_size = 25
        config.model.param_size = (96, 160)
        config.model.tile_size = (h // 8, w // 8)
        config.model.low_size = (96 * 2, 160 * 2)
    elif name != "benchmark":
        raise ValueError(f"--cases: unknown case {name!r} (benchmark, paper)")
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
    return {"synthetic": rng.random(lead + (h, w, 3), dtype=np.float32),
            "label": rng.integers(0, 19, lead + (h, w), dtype=np.uint8),
            "real": rng.random(lead + (h, w, 3), dtype=np.float32)}


def bench(name: str, batch_size: int, steps: int, steps_per_call: int) -> None:
    config = case_config(name, batch_size)
    mesh = trainer.make_mesh()
    if batch_size % mesh.size:
        raise ValueError(f"--batch_size={batch_size} must be divisible by the {mesh.size} devices")
    state = trainer.init_state(dakpn, config, mesh)
    call = trainer.make_call(dakpn.make_train_step(config), mesh, steps_per_call)
    batch = trainer.to_global(random_batch(config, np.random.default_rng(0), steps_per_call), mesh,
                              stacked=steps_per_call > 1)
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
    print(f"{name:9s} {config.data.height}x{config.data.width} K={config.model.kernel_size:2d} "
          f"batch={batch_size:3d} steps_per_call={steps_per_call} devices={mesh.size} | "
          f"compile+first {compile_s:6.1f} s | {1e3 / sps:8.2f} ms/step | {sps:8.2f} steps/s | "
          f"{sps * batch_size:8.1f} images/s | peak {peak_memory_mb():8.0f} MB", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", default="benchmark,paper")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--steps_per_call", type=int, default=1)
    a = p.parse_args()
    print(f"jax {jax.__version__}, backend {jax.default_backend()}, devices {jax.devices()}")
    for name in a.cases.split(","):
        bench(name, a.batch_size, a.steps, a.steps_per_call)


if __name__ == "__main__":
    main()
