"""What a conditioned DA-KPN discriminator sees as semantic maps (``loss.d_condition``, issue 23).

Prints, per class, the pixel fraction of the synthetic labels (synthetic-train), of the frozen
segmenter's argmax on synthetic-train and on real-train frames, and the segmenter's mean max-softmax
(its confidence) on both: the class-frequency gap the conditioning takes out of D's RGB input, and
how different the maps on the two sides look (a map-only cue D could use). Training data only; no
real labels, no paired views.

    python3 experiments/dakpn_condition_stats.py --segmenter_workdir=/tmp/seg --data_seed=1 --images=64
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import default  # noqa: E402
from dakpn_jax.data import procedural  # noqa: E402
from dakpn_jax.data.labels import CLASS_NAMES  # noqa: E402
from dakpn_jax.training import segmentation  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--segmenter_workdir", required=True)
    p.add_argument("--data_seed", type=int, default=0)
    p.add_argument("--images", type=int, default=64)
    args = p.parse_args(argv)
    data = default.get_config().data
    data.seed = args.data_seed
    apply_fn, params = segmentation.load_segmenter(args.segmenter_workdir)
    run = jax.jit(lambda x: jax.nn.softmax(apply_fn(params, x).astype(jnp.float32)))
    C = len(CLASS_NAMES)

    def frames(split):
        src = procedural.make_source(split, data)
        items = [src[i] for i in range(args.images)]
        return (
            np.stack([it["image"] for it in items]).astype(np.float32) / 255.0,
            np.stack([it["label"] for it in items]) if "label" in items[0] else None,
        )

    x_syn, y_syn = frames("synthetic-train")
    x_real, _ = frames("real-train")
    stats = {}
    for name, x in (("syn", x_syn), ("real", x_real)):
        prob = np.concatenate(
            [np.asarray(run(jnp.asarray(x[i : i + 8]))) for i in range(0, len(x), 8)]
        )
        arg = prob.argmax(-1)
        stats[name] = (np.bincount(arg.ravel(), minlength=C) / arg.size, prob.max(-1).mean())
    label_freq = np.bincount(y_syn[y_syn < C].ravel(), minlength=C) / y_syn.size
    agree = float(
        np.mean(
            np.concatenate(
                [
                    np.asarray(run(jnp.asarray(x_syn[i : i + 8]))).argmax(-1)
                    for i in range(0, len(x_syn), 8)
                ]
            )
            == y_syn
        )
    )
    print(
        f"data seed {args.data_seed}, {args.images} frames per split; segmenter {args.segmenter_workdir}"
    )
    print(
        f"segmenter pixel accuracy on synthetic-train {agree:.3f}; mean max-softmax: synthetic "
        f"{stats['syn'][1]:.3f}, real {stats['real'][1]:.3f}"
    )
    print(f"{'class':<14} {'syn labels':>10} {'seg on syn':>10} {'seg on real':>11}")
    for c in range(C):
        if max(label_freq[c], stats["syn"][0][c], stats["real"][0][c]) > 0:
            print(
                f"{CLASS_NAMES[c]:<14} {label_freq[c]:10.3f} {stats['syn'][0][c]:10.3f} {stats['real'][0][c]:11.3f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
