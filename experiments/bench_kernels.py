"""Benchmark of the kernel-application paths of the DA-KPN blur and translation (issues #3, #16).

For each path and size (default 8x96x160, 1x263x478, 1x1052x1914; K = 25) it runs ``--op``
(``local_gaussian_blur``, or ``translate`` with a 96 x 160-per-GTA5-frame parameter grid and noise)
in a fresh subprocess (so peak memory is per path and size) and prints:

- ms per call: the median over --repeats calls after one compiling call; each call is followed by one
  dense float32 2048^3 matmul in the same process (interleaved, so both see the same machine load),
- effective GFLOP/s = 2 * K^2 * 3 flops per pixel / time, whatever the algorithm does (the shifted
  path executes about 0.54x of that, the pallas kernel about 0.55x),
- "ratio": effective blur rate / matmul rate, both from wall-clock medians (the issue's CPU target at
  full frame, K = 25: >= 10%, under 1.5 GB); "cpu ratio": the same from process CPU time, which is
  less sensitive to other jobs on a shared machine,
- peak process RSS (``resource.getrusage``; includes the Python/JAX baseline and the inputs, shown
  separately as "before"), and the accelerator allocator's peak ("device peak", 0 on CPU),
- "|d| vs shifted": the largest absolute difference of the forward output from the shifted path on
  this device (0 for shifted / auto and with --grad): a parity check of the kernel where it runs,
- with --bandwidth_gbs (the device's memory bandwidth): "x floor", the time as a multiple of the
  memory-bound floor = bytes that must move (read x, sigma or params + noise, write out, once) /
  bandwidth.

Paths: einsum, shifted, auto (and pallas for --op translate; on CPU it would run in Pallas interpret
mode, so it is skipped there). The einsum path runs in row bands (bounded memory, any size).

    python3 experiments/bench_kernels.py
    python3 experiments/bench_kernels.py --sizes 1x1052x1914 --impls auto --repeats 5
    python3 experiments/bench_kernels.py --op translate --impls pallas,shifted,einsum \\
        --sizes 1x1052x1914 --bandwidth_gbs 3350                   # on an H100 SXM
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


def _floor_bytes(op: str, b: int, h: int, w: int, kernel_size: int) -> int:
    """Bytes one call must move at least: every input read once, the output written once (float32)."""
    frame = b * h * w * 3 * 4
    if op == "blur":
        return 3 * frame  # x, sigma, out
    from dakpn_jax.kernels.pallas_translate import bytes_moved

    return bytes_moved(b, h, w, _param_size(h, w), kernel_size)["floor"]


def _param_size(h: int, w: int) -> tuple[int, int]:
    """The paper's 96 x 160 parameter grid per 1052 x 1914 frame, scaled with the frame."""
    return max(1, round(h * 96 / 1052)), max(1, round(w * 160 / 1914))


def _child(impl: str, size: str, kernel_size: int, repeats: int, grad: bool, op: str) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from dakpn_jax.translation import local_gaussian_blur, translate

    b, h, w = _parse_size(size)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.random((b, h, w, 3), dtype=np.float32))
    if op == "blur":
        second = jnp.asarray(rng.uniform(0.0, 6.0, (b, h, w, 3)).astype(np.float32))
        base = lambda x, s: local_gaussian_blur(x, s, kernel_size=kernel_size, impl=impl)
        extra = ()
    else:
        ph, pw = _param_size(h, w)
        p = np.empty((b, ph, pw, 12), np.float32)
        p[..., 0:3] = rng.uniform(0.6, 1.4, (b, ph, pw, 3))
        p[..., 3:6] = rng.uniform(-0.3, 0.3, (b, ph, pw, 3))
        p[..., 6:9] = rng.uniform(0, 6, (b, ph, pw, 3))
        p[..., 9:12] = rng.uniform(0, 0.1, (b, ph, pw, 3))
        second = jnp.asarray(p)
        extra = (jnp.asarray(rng.normal(size=(1, h, w, 3)).astype(np.float32)),)
        base = lambda x, p, n: translate(x, p, n, kernel_size=kernel_size, impl=impl)
    jax.block_until_ready((x, second, extra))
    rss_before = _peak_rss_gb()

    if grad:  # one forward + backward: gradients w.r.t. x and sigma (or params) of <f(x, .), ct>
        ct = jnp.asarray(rng.normal(size=(b, h, w, 3)).astype(np.float32))
        fn = jax.jit(jax.grad(lambda x, s, *e: jnp.vdot(base(x, s, *e), ct), argnums=(0, 1)))
    else:
        fn = jax.jit(base)

    n = 2048
    a = jnp.asarray(rng.random((n, n), dtype=np.float32))
    matmul = jax.jit(lambda a: a @ a)
    matmul(a).block_until_ready()

    def timed(f):
        c0, t0 = time.process_time(), time.perf_counter()
        jax.block_until_ready(f())
        return time.perf_counter() - t0, time.process_time() - c0

    t0 = time.perf_counter()
    jax.block_until_ready(fn(x, second, *extra))
    compile_s = time.perf_counter() - t0
    times, cpu, mm_times, mm_cpu = [], [], [], []
    for _ in range(repeats):  # interleaved: blur, matmul, blur, matmul, ...
        wall_s, cpu_s = timed(lambda: fn(x, second, *extra))
        times.append(wall_s)
        cpu.append(cpu_s)
        wall_s, cpu_s = timed(lambda: matmul(a))
        mm_times.append(wall_s)
        mm_cpu.append(cpu_s)
    peak = _peak_rss_gb()
    # On GPU/TPU the data lives in device memory: report the allocator's peak (run with
    # XLA_PYTHON_CLIENT_PREALLOCATE=false so other processes are not crowded out; CPU reports 0).
    device_peak = (jax.devices()[0].memory_stats() or {}).get("peak_bytes_in_use", 0) / 2**30

    # Parity on this device: the largest difference from the shifted path (forward only).
    maxdiff = 0.0
    if impl not in ("shifted", "auto") and not grad:
        ref_fn = jax.jit(
            lambda *a: (
                local_gaussian_blur(*a, kernel_size=kernel_size, impl="shifted")
                if op == "blur"
                else translate(*a, kernel_size=kernel_size, impl="shifted")
            )
        )
        out = fn(x, second, *extra)
        maxdiff = float(jnp.max(jnp.abs(out - ref_fn(x, second, *extra))))

    med = statistics.median
    flops = 2 * kernel_size**2 * 3 * b * h * w
    gflops = flops / med(times) / 1e9
    mm_gflops = 2 * n**3 / med(mm_times) / 1e9
    cpu_ratio = (flops / med(cpu)) / (2 * n**3 / med(mm_cpu))
    return {
        "impl": impl,
        "size": size,
        "ms": med(times) * 1e3,
        "ms_min": min(times) * 1e3,
        "compile_s": compile_s,
        "gflops": gflops,
        "rss_before_gb": rss_before,
        "peak_rss_gb": peak,
        "matmul_gflops": mm_gflops,
        "ratio": gflops / mm_gflops,
        "cpu_ratio": cpu_ratio,
        "backend": jax.default_backend(),
        "device_peak_gb": device_peak,
        "floor_bytes": _floor_bytes(op, b, h, w, kernel_size),
        "maxdiff": maxdiff,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default=DEFAULT_SIZES, help="comma-separated BxHxW")
    parser.add_argument("--impls", default="einsum,shifted", help="comma-separated paths")
    parser.add_argument("--kernel_size", type=int, default=25)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--op",
        default="blur",
        choices=("blur", "translate"),
        help="local_gaussian_blur, or the full translate (needed for impl=pallas)",
    )
    parser.add_argument(
        "--bandwidth_gbs",
        type=float,
        default=0.0,
        help="device memory bandwidth in GB/s: print the time as a multiple of the "
        "memory-bound floor (bytes moved / bandwidth)",
    )
    parser.add_argument(
        "--grad",
        action="store_true",
        help="time forward + backward (grad w.r.t. x and sigma) instead of the forward",
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:  # one measurement, JSON on the last stdout line
        print(
            json.dumps(
                _child(args.impls, args.sizes, args.kernel_size, args.repeats, args.grad, args.op)
            )
        )
        return

    k = args.kernel_size
    if k < 1 or k % 2 == 0:
        raise ValueError(f"--kernel_size: expected an odd int >= 1, got {k}")
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    for s in sizes:
        _parse_size(s)
    impls = [i.strip() for i in args.impls.split(",") if i.strip()]
    r = k // 2
    name = "local_gaussian_blur" if args.op == "blur" else "translate"
    what = f"grad of {name} (forward + backward)" if args.grad else name
    print(
        f"{what}, K={k}, float32, {os.cpu_count()} CPU threads visible; median of {args.repeats} calls "
        f"after a compiling one, each followed by a 2048^3 matmul; load average "
        f"{' '.join(f'{v:.1f}' for v in os.getloadavg())}"
    )
    header = (
        f"{'path':8} {'B x H x W':>12} {'ms/call':>9} {'compile s':>9} {'eff GFLOP/s':>11} "
        f"{'RSS before':>10} {'peak RSS':>9} {'matmul GFLOP/s':>14} {'ratio':>6} {'cpu ratio':>9} "
        f"{'device peak':>11} {'|d| vs shifted':>14}"
        + (f" {'x floor':>8}" if args.bandwidth_gbs else "")
    )
    print(header)
    print("-" * len(header))
    env = dict(os.environ)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = repo + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    for size in sizes:
        for impl in impls:
            if impl == "pallas" and args.op != "translate":
                print(
                    f"{impl:8} {size:>12}   skipped: the pallas kernel is translate-only (--op translate)"
                )
                continue
            cmd = [
                sys.executable,
                os.path.abspath(__file__),
                "--child",
                "--impls",
                impl,
                "--sizes",
                size,
                "--kernel_size",
                str(k),
                "--repeats",
                str(args.repeats),
                "--op",
                args.op,
            ]
            cmd += ["--grad"] if args.grad else []
            if (
                impl == "pallas"
            ):  # never time the interpret mode: ask the child which backend it has
                probe = subprocess.run(
                    [sys.executable, "-c", "import jax; print(jax.default_backend())"],
                    capture_output=True,
                    text=True,
                    env=env,
                )
                if probe.stdout.strip() != "gpu":
                    print(
                        f"{impl:8} {size:>12}   skipped: backend {probe.stdout.strip()!r} would run the "
                        f"kernel in Pallas interpret mode (GPU only)"
                    )
                    continue
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                print(
                    f"{impl:8} {size:>12}   failed (exit {proc.returncode}): "
                    f"{proc.stderr.strip().splitlines()[-1:]}"
                )
                continue
            m = json.loads(proc.stdout.strip().splitlines()[-1])
            line = (
                f"{impl:8} {size:>12} {m['ms']:9.1f} {m['compile_s']:9.1f} {m['gflops']:11.2f} "
                f"{m['rss_before_gb']:8.2f}GB {m['peak_rss_gb']:7.2f}GB {m['matmul_gflops']:14.1f} "
                f"{m['ratio']:6.1%} {m['cpu_ratio']:9.1%} {m['device_peak_gb']:9.2f}GB {m['maxdiff']:14.1e}"
            )
            if args.bandwidth_gbs:
                floor_ms = m["floor_bytes"] / (args.bandwidth_gbs * 1e9) * 1e3
                line += f" {m['ms'] / floor_ms:8.1f}"
            print(line, flush=True)
    if args.grad:
        print(
            "with --grad, eff GFLOP/s still counts one forward's 2*K^2*3 flops per pixel per call."
        )
    print(
        f"eff GFLOP/s counts 2*K^2*3 = {2 * k * k * 3} flops per pixel for every path; the shifted path "
        f"executes about {(r + 1) * (5 * r + 4) * 3} ({(r + 1) * (5 * r + 4) / (2 * k * k):.2f}x)."
    )
    print(
        "'auto' resolves to 'shifted' on every backend for the blur; for translate it picks 'pallas' on "
        "the backends in dakpn_jax.translation.PALLAS_AUTO_BACKENDS."
    )
    if args.bandwidth_gbs:
        print(
            f"'x floor': ms / (bytes that must move / {args.bandwidth_gbs:g} GB/s); bytes = x, sigma (or "
            "params and noise) read once and the output written once, float32."
        )


if __name__ == "__main__":
    main()
