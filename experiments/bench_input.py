"""Can the input pipeline keep a train step busy? Frames/s of each input path beside the step's demand.

For the benchmark shape (128 x 256) and the paper shape (1052 x 1914) it prints frames/s of:

- ``render``: the procedural renderers (synthetic-train and the slower real-train), live, in this
  process (one core; what an uncached run gets per grain worker);
- ``cached``: the same splits read back from the render-once cache
  (`dakpn_jax.data.procedural_cache`, filled first with --fill_workers processes), through the
  grain pipeline with ``worker_count`` = each of --workers;
- ``png``: PNG frames (image + label, written by this script from procedural renders: the paper
  shape is GTA5's 1914 x 1052) decoded by `FolderSource` through the grain pipeline with each
  worker count, and that rate per worker;

then the demand: frames/s = train steps/s x 2 x batch (DA-KPN, CycleGAN and CUT each read one
synthetic and one real frame per image), from --demand CASE=IMAGES_PER_S (e.g. the images/s that
experiments/bench_train_step.py printed on the device) or, with --measure_demand, measured here
with bench_train_step for each shape (benchmark: batch 8, 5 timed steps; paper: the 1052 x 1914,
K = 25 step at batch 1, 2 timed steps) and each of --demand_methods; the demand is the fastest
method's (the most demanding reader). "headroom" = pipeline frames/s / demand (>= 1: the step, not
the input, is the bottleneck).

    python3 experiments/bench_input.py                                  # both shapes, CPU defaults
    python3 experiments/bench_input.py --shapes benchmark --measure_demand
    python3 experiments/bench_input.py --measure_demand --demand_methods dakpn,cyclegan   # on the device
    python3 experiments/bench_input.py --demand benchmark=4000,paper=60 --workers 0,4,8   # GPU figures
"""

import argparse
import os
import shutil
import sys
import tempfile
import time

from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from dakpn_jax.data import folder, pipeline, procedural, procedural_cache  # noqa: E402

SHAPES = {"benchmark": (128, 256), "paper": (1052, 1914)}


class _Repeat:
    """``source`` of m items seen as n items (item i = item i mod m): timing without rendering n frames.
    A module-level class, so grain worker processes can unpickle it."""

    def __init__(self, source, n: int):
        self.source, self.n, self.m = source, n, len(source)

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return self.source[int(i) % self.m]


def _rate(fn, n: int) -> float:
    t0 = time.perf_counter()
    for i in range(n):
        fn(i)
    return n / (time.perf_counter() - t0)


def _pipeline_rate(source, batch_size: int, batches: int, workers: int) -> float:
    it = pipeline.make_pipeline(source, batch_size=batch_size, seed=0, worker_count=workers)
    # Start-up (worker processes, first reads) is not throughput. Workers hand out batches in turn,
    # so each must have produced one before the clock starts: with a single warm-up batch, 8 and 16
    # workers on an H200 host timed their own start-up (0.03x to 0.15x of 4 workers, 2026-12-04).
    for _ in range(max(1, workers)):
        next(it)
    t0 = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * batch_size / (time.perf_counter() - t0)


def measured_demand(shape: str, method: str) -> float:
    """Images/s of ``method``'s train step at ``shape`` on this process's devices (bench_train_step)."""
    if os.path.join(REPO, "experiments") not in sys.path:  # called once per shape and method
        sys.path.insert(0, os.path.join(REPO, "experiments"))
    import bench_train_step  # pylint: disable=import-outside-toplevel

    batch, steps = (8, 5) if shape == "benchmark" else (1, 2)
    return bench_train_step.bench(shape, batch, steps, 1, method)["images_per_s"]


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--shapes", default="benchmark,paper")
    p.add_argument(
        "--frames",
        default="benchmark=32,paper=4",
        help="distinct frames rendered / cached / written per shape (the pipelines repeat them)",
    )
    p.add_argument("--batch_size", type=int, default=4)
    p.add_argument("--batches", type=int, default=40, help="timed batches per pipeline measurement")
    p.add_argument("--workers", default="0,2", help="grain worker_count values to time")
    p.add_argument("--fill_workers", type=int, default=2)
    p.add_argument(
        "--cache_dir", default="", help="cache root (default: a temporary directory, removed)"
    )
    p.add_argument(
        "--demand", default="", help="CASE=IMAGES_PER_S,... train-step images/s per shape"
    )
    p.add_argument(
        "--measure_demand",
        action="store_true",
        help="measure the train step's images/s here for each shape (bench_train_step)",
    )
    p.add_argument(
        "--demand_methods",
        default="dakpn",
        help="methods whose steps --measure_demand times (dakpn, cyclegan, cut)",
    )
    a = p.parse_args(argv)

    frames = dict((k, int(v)) for k, v in (kv.split("=") for kv in a.frames.split(",")))
    demand = dict((k, float(v)) for k, v in (kv.split("=") for kv in a.demand.split(",") if kv))
    workers = [int(w) for w in a.workers.split(",")]
    print(
        f"{os.cpu_count()} CPUs visible, load average {' '.join(f'{v:.1f}' for v in os.getloadavg())}; "
        f"batch {a.batch_size}, {a.batches} timed batches per pipeline figure"
    )
    tmp = tempfile.mkdtemp(prefix="bench_input_")
    try:
        for shape in a.shapes.split(","):
            h, w = SHAPES[shape]
            m = frames.get(shape, 8)  # frames actually rendered / cached / written
            n = (
                a.batch_size * (a.batches + 1) * max(1, max(workers))
            )  # pipeline length (repeats them)
            config = procedural.ProceduralConfig(
                height=h,
                width=w,
                num_synthetic_train=m,
                num_real_train=m,
                num_real_labelled=1,
                num_real_val=1,
                num_paired_eval=1,
            )
            rates, render = {}, {}
            cache_dir = a.cache_dir or os.path.join(tmp, "cache")
            for split in ("synthetic-train", "real-train"):  # the real renderer is the slow one
                live = procedural.make_source(split, config)
                render[split] = _rate(lambda i: live[i], m)  # pylint: disable=cell-var-from-loop
                print(
                    f"{shape:9s} {h}x{w}  {split:15s} render (1 core)     {render[split]:9.1f} frames/s",
                    flush=True,
                )
                t0 = time.perf_counter()
                procedural_cache.fill(split, config, cache_dir, num_workers=a.fill_workers)
                print(
                    f"{shape:9s} {h}x{w}  {split:15s} cache fill ({a.fill_workers} procs) "
                    f"{m / (time.perf_counter() - t0):9.1f} frames/s ({m} frames, once, process start-up "
                    f"included)",
                    flush=True,
                )
                cached = procedural_cache.CachedProceduralSource(split, config, cache_dir)
                for wk in workers:
                    rates[(f"cached {split}", wk)] = r = _pipeline_rate(
                        _Repeat(cached, n), a.batch_size, a.batches, wk
                    )
                    print(
                        f"{shape:9s} {h}x{w}  {split:15s} cached, workers={wk}   {r:9.1f} frames/s",
                        flush=True,
                    )
            cached = procedural_cache.CachedProceduralSource("synthetic-train", config, cache_dir)

            png = os.path.join(tmp, f"png_{shape}")
            os.makedirs(os.path.join(png, "images"))
            os.makedirs(os.path.join(png, "labels"))
            for i in range(m):
                ex = cached[i]
                Image.fromarray(ex["image"]).save(os.path.join(png, "images", f"{i:05d}.png"))
                Image.fromarray(ex["label"]).save(os.path.join(png, "labels", f"{i:05d}.png"))
            pngs = _Repeat(
                folder.FolderSource(os.path.join(png, "images"), os.path.join(png, "labels")), n
            )
            for wk in workers:
                r = _pipeline_rate(pngs, a.batch_size, a.batches, wk)
                rates[("png decode", wk)] = r
                per = f", {r / wk:.1f} per worker" if wk else ""
                print(
                    f"{shape:9s} {h}x{w}  png decode, workers={wk}    {r:9.1f} frames/s{per}",
                    flush=True,
                )

            need = demand.get(shape)
            if need is None and a.measure_demand:
                need = max(measured_demand(shape, m) for m in a.demand_methods.split(","))
            if need is None:
                print(
                    f"{shape:9s} demand: not given (--demand {shape}=IMAGES_PER_S or --measure_demand)"
                )
                continue
            frames_needed = 2 * need
            print(
                f"{shape:9s} demand: {need:.1f} images/s = {frames_needed:.1f} frames/s (synthetic + real)"
            )
            for (kind, wk), r in sorted(rates.items()):
                print(f"{shape:9s}   headroom {kind:22s} workers={wk}: {r / frames_needed:7.2f}x")
            for split, r in render.items():
                print(
                    f"{shape:9s}   headroom {split + ' render (1 core)':32s}: {r / frames_needed:7.2f}x"
                )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
