"""Speed of the embedded procedural benchmark: examples/s per split on one core, and the grain pipeline.

    python3 experiments/bench_procedural.py                      # 128 x 256, every split
    python3 experiments/bench_procedural.py --height=256 --width=512 --examples=50
    python3 experiments/bench_procedural.py --preview=runs/procedural_preview.png

Per split it renders `--examples` consecutive examples in this one thread and prints
- cpu ex/s: examples per second of this process's CPU time, i.e. the throughput of one core
  (independent of other load on the machine);
- wall ex/s: examples per wall-clock second (lower when the machine is shared).
Then it streams `--batches` batches of synthetic-train through `make_pipeline` (random crop + flip,
its default read threads) and prints batches/s and examples/s (wall clock).
"""

import argparse
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from dakpn_jax import viz  # noqa: E402
from dakpn_jax.data import pipeline, procedural  # noqa: E402


def _rate(fn, n):
    cpu, wall = time.process_time(), time.perf_counter()
    for i in range(n):
        fn(i)
    return n / max(time.process_time() - cpu, 1e-9), n / max(time.perf_counter() - wall, 1e-9)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--examples", type=int, default=200, help="examples rendered per split")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--batches", type=int, default=25, help="pipeline batches timed (0: skip)")
    parser.add_argument(
        "--preview", default="", help="also write a synthetic | real | label PNG here"
    )
    args = parser.parse_args(argv)

    n = args.examples
    config = procedural.ProceduralConfig(
        height=args.height,
        width=args.width,
        num_synthetic_train=max(n, args.batch_size * args.batches),
        num_real_train=n,
        num_real_labelled=n,
        num_real_val=n,
        num_paired_eval=max(n, 4),
    )
    print(f"procedural benchmark, {config.height} x {config.width}, {n} examples per split")
    for split in procedural.SPLITS:
        source = procedural.make_source(split, config)
        source[0]  # warm caches (radius map, blur weights)
        cpu, wall = _rate(lambda i: source[i], n)  # pylint: disable=cell-var-from-loop
        print(f"  {split:20s} {cpu:8.1f} cpu ex/s  {wall:8.1f} wall ex/s")

    if args.batches > 0:
        source = procedural.make_source("synthetic-train", config)
        crop = (config.height // 2, config.width // 2)
        it = pipeline.make_pipeline(
            source, batch_size=args.batch_size, seed=0, crop_size=crop, random_flip=True
        )
        next(it)
        start = time.perf_counter()
        for _ in range(args.batches):
            next(it)
        dt = time.perf_counter() - start
        print(
            f"  pipeline synthetic-train, batch {args.batch_size}, crop {crop}: "
            f"{args.batches / dt:.1f} batches/s, {args.batches * args.batch_size / dt:.1f} wall ex/s"
        )

    if args.preview:
        viz.save_procedural_preview(args.preview, config, num_rows=4)
        print(f"wrote {args.preview}")


if __name__ == "__main__":
    main()
