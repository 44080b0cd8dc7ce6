r"""Per-class weights for DA-KPN's fake terms (`dakpn_jax.training.class_weights`) on a config's
data: the synthetic class prior from synthetic-train labels and the target prior from the first N
labelled real-train images of the regime (``--labelled N``; ``--labelled all``: every real-train
label, an ORACLE for diagnosis only, never a method at N = 0). Prints both priors and the
``--set loss.class_weights=...`` override.

    python3 experiments/class_prior.py --config=configs/default.py:fast --labelled 20 [--set data.seed=1]
"""

from __future__ import annotations

import argparse
import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import numpy as np  # noqa: E402

from dakpn_jax.data import sources  # noqa: E402
from dakpn_jax.training import class_weights  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/default.py:fast")
    p.add_argument("--labelled", default="20", help="N labelled real-train images, or 'all'")
    p.add_argument("--synthetic_images", type=int, default=None, help="default: all")
    p.add_argument("--set", action="append", default=[], help="config override key=value")
    a = p.parse_args(argv)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from dakpn_balance import apply_override, load_config  # pylint: disable=import-outside-toplevel

    config = load_config(a.config)
    for item in a.set:
        apply_override(config, item)
    nc = int(config.model.num_classes)
    syn = class_weights.class_frequencies(
        sources.make_source(config.data, "synthetic-train"), nc, a.synthetic_images
    )
    data = config.data.copy_and_resolve_references()
    with data.unlocked():
        if a.labelled != "all":
            data.num_real_labelled = int(a.labelled)
    target = class_weights.class_frequencies(sources.make_source(data, "real-train-labelled"), nc)
    w = class_weights.prior_ratio_weights(target, syn)
    names = sources.class_names(config.data)
    print(f"{'class':14s} {'synthetic':>9s} {'target':>9s} {'weight':>7s}")
    for c in np.flatnonzero((syn > 0) | (target > 0)):
        print(f"{names[c]:14s} {syn[c]:9.4f} {target[c]:9.4f} {w[c]:7.3f}")
    print("--set 'loss.class_weights=(" + ",".join(f"{x:.4f}" for x in w) + ")'")


if __name__ == "__main__":
    main()
