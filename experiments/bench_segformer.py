"""SegFormer forward throughput: images/s of the jitted inference forward at 512 x 1024.

    python3 experiments/bench_segformer.py                       # B0 and B5, batch 1, 512 x 1024
    python3 experiments/bench_segformer.py --variants b0 --calls 10 --batch 2

Prints one line per variant: backend, input shape, compile time and images/s (batch / median wall
time of ``--calls`` timed calls after one warm-up call, output blocked on). The weights are random
values drawn with NumPy into the model's abstract structure: they do not change the speed, and it
spares compiling ~700 random initialisers for B5. ImageNet normalisation and the all-MLP decoder are
included; the stride-4 logits are not resized.

Measured 2026-11-25 on the development box (2 CPU cores shared with other jobs, load average ~11,
so an idle machine is faster), jax 0.10.2, batch 1, 512 x 1024:
    segformer_b0: compile 6.3 s, 3383 ms/call (3 calls), 0.30 images/s
    segformer_b5: compile 15.7 s, 32952 ms/call (2 calls), 0.03 images/s
"""

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:  # dakpn_jax/ from a plain checkout, nothing installed
    sys.path.insert(0, _ROOT)
from dakpn_jax.models import segformer  # noqa: E402  (after the sys.path line above)


def random_model(name: str, num_classes: int, seed: int = 0) -> segformer.SegFormer:
    """The SegFormer ``name`` with N(0, 0.02) weights (positive BatchNorm variances)."""
    graph, state = nnx.split(
        nnx.eval_shape(lambda: segformer.SegFormer(name, num_classes, rngs=nnx.Rngs(0)))
    )
    rng = np.random.default_rng(seed)

    def fill(s):
        if jax.dtypes.issubdtype(s.dtype, jax.dtypes.prng_key):
            return jax.random.key(seed)
        if not jnp.issubdtype(s.dtype, jnp.floating):
            return jnp.zeros(s.shape, s.dtype)
        return jnp.asarray(0.02 * rng.standard_normal(s.shape, np.float32))

    model = nnx.merge(graph, jax.tree.map(fill, state))
    model.decode_head.batch_norm.var[...] = jnp.ones_like(model.decode_head.batch_norm.var[...])
    return model


def bench(name: str, height: int, width: int, batch: int, calls: int, num_classes: int) -> dict:
    model = random_model(name, num_classes)
    forward = jax.jit(lambda m, x: m(x))
    x = jnp.asarray(
        np.random.default_rng(1).uniform(0, 1, (batch, height, width, 3)).astype(np.float32)
    )
    t0 = time.perf_counter()
    compiled = forward.lower(model, x).compile()
    compile_s = time.perf_counter() - t0
    compiled(model, x).block_until_ready()  # warm-up
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        compiled(model, x).block_until_ready()
        times.append(time.perf_counter() - t0)
    median = float(np.median(times))
    return dict(name=name, compile_s=compile_s, median_s=median, images_per_s=batch / median)


def main():
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--variants", default="b0,b5", help="comma-separated, from b0..b5")
    p.add_argument("--height", type=int, default=512)
    p.add_argument("--width", type=int, default=1024)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument(
        "--calls", type=int, default=3, help="timed calls per variant (after one warm-up)"
    )
    p.add_argument("--num_classes", type=int, default=19)
    a = p.parse_args()
    device = jax.devices()[0]
    for v in a.variants.split(","):
        r = bench(f"segformer_{v.strip()}", a.height, a.width, a.batch, a.calls, a.num_classes)
        print(
            f"{r['name']}: {a.batch}x{a.height}x{a.width}x3 on {device.platform} ({device.device_kind}), "
            f"compile {r['compile_s']:.1f} s, median {r['median_s'] * 1e3:.0f} ms/call over {a.calls} calls, "
            f"{r['images_per_s']:.2f} images/s",
            flush=True,
        )


if __name__ == "__main__":
    main()
