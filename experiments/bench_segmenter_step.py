"""Seconds per segmenter train step and per input batch, as the protocol's segmenter stages run them.

The main job's wall time is mostly its six segmenter stages (docs/RESULTS.md), so this is the figure
that says how long the main job takes on a machine. Prints the input pipeline's time per batch, the
compile time and the time per jitted train step (fixed batch, after compilation), for
configs/segmentation.py (or ``--config``), on one device.

    python3 experiments/bench_segmenter_step.py                    # synthetic-train, 30 steps
    taskset -c 0 python3 experiments/bench_segmenter_step.py       # confined to one core
    python3 experiments/bench_segmenter_step.py --split=real-train-labelled --steps=50
"""

import argparse
import os
import sys
import time

import jax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dakpn_jax.protocol import methods  # noqa: E402
from dakpn_jax.training import segmentation  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="configs/segmentation.py", help="config file[:variant]")
    p.add_argument(
        "--split", default="synthetic-train", help="the labelled split the batches come from"
    )
    p.add_argument("--steps", type=int, default=30)
    a = p.parse_args()
    path, _, arg = a.config.partition(":")
    config = methods.load_config_file(path, arg or None)
    config.data.train_sources = ({"kind": "split", "split": a.split},)
    iterators = segmentation.make_iterators(config)
    segmentation.next_batch(iterators)  # the first batch opens the source
    t = time.perf_counter()
    for _ in range(a.steps):
        batch = segmentation.next_batch(iterators)
    data_s = (time.perf_counter() - t) / a.steps
    state = segmentation.init_state(config, jax.random.key(0))
    step = jax.jit(segmentation.make_train_step(config))
    t = time.perf_counter()
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(a.steps):
        state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    step_s = (time.perf_counter() - t) / a.steps
    shapes = {k: tuple(v.shape) for k, v in batch.items()}
    print(
        f"segmenter {config.model.name} {dict(config.model.kwargs)}, batch {shapes}, "
        f"CPU affinity {len(os.sched_getaffinity(0))} core(s), {jax.devices()[0].platform}"
    )
    print(
        f"input {1e3 * data_s:.1f} ms/batch | compile + first step {compile_s:.1f} s | "
        f"train step {1e3 * step_s:.1f} ms ({a.steps} steps)"
    )


if __name__ == "__main__":
    main()
