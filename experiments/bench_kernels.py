"""Benchmark of the kernel-application paths of the DA-KPN blur (issue #3).

For each path and size (default 8x96x160, 1x263x478, 1x1052x1914; K = 25) it runs
``local_gaussian_blur`` in a fresh subprocess (so peak memory is per path and size) and prints:

- ms per call (median over --repeats calls after one compiling call),
- effective GFLOP/s = 2 * K^2 * 3 flops per pixel / time, whatever the algorithm does. The shifted
  path pairs symmetric offsets and executes about (r+1)(3r+4) flops per pixel and channel instead of
  2 K^2 (0.42x at K = 25), so its effective rate is above the rate its arithmetic units run at;
- peak process RSS (``resource.getrusage``; includes the Python/JAX baseline and the inputs, shown
  separately as "before"),
- the GFLOP/s of a dense float32 2048^3 matmul measured in the same subprocess right after, and the
  ratio of the two (the issue's target for the lean path at full frame: >= 10%, under 1.5 GB).

The einsum path's patch tensor is B*H*W*3*K^2*4 bytes (15 GB for a full frame); sizes whose patch
tensor exceeds --max_patch_gb are reported as skipped rather than run.

    python3 experiments/bench_kernels.py
    python3 experiments/bench_kernels.py --sizes 1x263x478 --impls shifted --repeats 3
    python3 experiments/bench_kernels.py --grad --sizes 8x128x256 --impls shifted   # training cost
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

DEFAULT_SIZES = "8x96x160,1x263x478,1x1052x1914"


def _parse_size(s: str) -> tuple[int, int, int]:
    try:
        b, h, w = (int(v) for v in s.lower().split("x"))
    except ValueError:
        raise ValueError(f"--sizes: expected BxHxW, got {s!r}") from None
    return b, h, w


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is KiB on Linux


def _child(impl: str, size: str, kernel_size: int, repeats: int, grad: bool) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from dakpn_jax.translation import local_gaussian_blur

    b, h, w = _parse_size(size)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.random((b, h, w, 3), dtype=np.float32))
    sigma = jnp.asarray(rng.uniform(0.0, 6.0, (b, h, w, 3)).astype(np.float32))
    jax.block_until_ready((x, sigma))
    rss_before = _peak_rss_gb()

    blur = lambda x, s: local_gaussian_blur(x, s, kernel_size=kernel_size, impl=impl)
    if grad:  # one forward + backward: gradients w.r.t. x and sigma of <blur(x, sigma), ct>
        ct = jnp.asarray(rng.normal(size=(b, h, w, 3)).astype(np.float32))
        fn = jax.jit(jax.grad(lambda x, s: jnp.vdot(blur(x, s), ct), argnums=(0, 1)))
    else:
        fn = jax.jit(blur)

    def call():
        return jax.block_until_ready(fn(x, sigma))

    t0 = time.perf_counter()
    call()
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    peak = _peak_rss_gb()
    # On GPU/TPU the data lives in device memory: report the allocator's peak (run with
    # XLA_PYTHON_CLIENT_PREALLOCATE=false so other processes are not crowded out; CPU reports 0).
    device_peak = (jax.devices()[0].memory_stats() or {}).get("peak_bytes_in_use", 0) / 2**30

    n = 2048
    a = jnp.asarray(rng.random((n, n), dtype=np.float32))
    matmul = jax.jit(lambda a: a @ a)
    matmul(a).block_until_ready()
    mm_times = []
    for _ in range(5):
        t0 = time.perf_counter()
        matmul(a).block_until_ready()
        mm_times.append(time.perf_counter() - t0)

    sec = statistics.median(times)
    gflops = 2 * kernel_size ** 2 * 3 * b * h * w / sec / 1e9
    mm_gflops = 2 * n ** 3 / statistics.median(mm_times) / 1e9
    return {"impl": impl, "size": size, "ms": sec * 1e3, "ms_min": min(times) * 1e3, "compile_s": compile_s,
            "gflops": gflops, "rss_before_gb": rss_before, "peak_rss_gb": peak, "matmul_gflops": mm_gflops,
            "ratio": gflops / mm_gflops, "backend": jax.default_backend(), "device_peak_gb": device_peak}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default=DEFAULT_SIZES, help="comma-separated BxHxW")
    parser.add_argument("--impls", default="einsum,shifted", help="comma-separated paths")
    parser.add_argument("--kernel_size", type=int, default=25)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max_patch_gb", type=float, default=4.0,
                        help="skip einsum where the patch tensor exceeds this many GB")
    parser.add_argument("--grad", action="store_true",
                        help="time forward + backward (grad w.r.t. x and sigma) instead of the forward")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:  # one measurement, JSON on the last stdout line
        print(json.dumps(_child(args.impls, args.sizes, args.kernel_size, args.repeats, args.grad)))
        return

    k = args.kernel_size
    if k < 1 or k % 2 == 0:
        raise ValueError(f"--kernel_size: expected an odd int >= 1, got {k}")
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    for s in sizes:
        _parse_size(s)
    impls = [i.strip() for i in args.impls.split(",") if i.strip()]
    r = k // 2
    what = "grad of local_gaussian_blur (forward + backward)" if args.grad else "local_gaussian_blur"
    print(f"{what}, K={k}, float32, {os.cpu_count()} CPU threads visible; "
          f"median of {args.repeats} calls after a compiling one")
    header = (f"{'path':8} {'B x H x W':>12} {'ms/call':>9} {'compile s':>9} {'eff GFLOP/s':>11} "
              f"{'RSS before':>10} {'peak RSS':>9} {'matmul GFLOP/s':>14} {'ratio':>6} {'device peak':>11}")
    print(header)
    print("-" * len(header))
    env = dict(os.environ)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = repo + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    for size in sizes:
        b, h, w = _parse_size(size)
        for impl in impls:
            patch_gb = b * h * w * 3 * k * k * 4 / 1e9
            if impl == "einsum" and patch_gb > args.max_patch_gb:
                print(f"{impl:8} {size:>12}   skipped: patch tensor alone is {patch_gb:.1f} GB "
                      f"(> --max_patch_gb {args.max_patch_gb})")
                continue
            cmd = [sys.executable, os.path.abspath(__file__), "--child", "--impls", impl, "--sizes", size,
                   "--kernel_size", str(k), "--repeats", str(args.repeats)]
            cmd += ["--grad"] if args.grad else []
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                print(f"{impl:8} {size:>12}   failed (exit {proc.returncode}): "
                      f"{proc.stderr.strip().splitlines()[-1:]}")
                continue
            m = json.loads(proc.stdout.strip().splitlines()[-1])
            print(f"{impl:8} {size:>12} {m['ms']:9.1f} {m['compile_s']:9.1f} {m['gflops']:11.2f} "
                  f"{m['rss_before_gb']:8.2f}GB {m['peak_rss_gb']:7.2f}GB {m['matmul_gflops']:14.1f} "
                  f"{m['ratio']:6.1%} {m['device_peak_gb']:9.2f}GB")
    if args.grad:
        print("with --grad, eff GFLOP/s still counts one forward's 2*K^2*3 flops per pixel per call.")
    print(f"eff GFLOP/s counts 2*K^2*3 = {2 * k * k * 3} flops per pixel for every path; the shifted path "
          f"executes about {(r + 1) * (3 * r + 4) * 3} ({(r + 1) * (3 * r + 4) / (2 * k * k):.2f}x).")
    print("'auto' resolves to 'shifted' on every backend (dakpn_jax.translation). 'device peak' is the "
          "accelerator allocator's peak (0 on CPU).")


if __name__ == "__main__":
    main()
