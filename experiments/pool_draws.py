"""Paired differences pooled over several benchmark draws, from committed protocol records.

Each records directory is one draw (`--config.data.seed`); within a draw the seeds pair the rows
(same segmenter initialisation and data order). Prints, per difference of two rows, the mean over
each draw's seeds, the pooled mean over all paired seeds with a 95% interval that resamples the
seeds within each draw (`dakpn_jax.protocol.stats.stratified_bootstrap_mean`), and the number of
seeds where the difference is positive.

    python3 experiments/pool_draws.py     # issue 23's family runs: data seeds 0, 1, 2
    python3 experiments/pool_draws.py --results=results/a,results/b --pairs=dakpn_n0:source_only_n0
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dakpn_jax.protocol import records, report, stats  # noqa: E402

FAMILY = "results/family,results/family_draw1,results/family_draw2"
PAIRS = (
    "dakpn_600steps_n0:dakpn_n0,randomize_n0:dakpn_n0,randomize_n0:dakpn_600steps_n0,"
    "dakpn_n0:source_only_n0,ceiling_n0:dakpn_n0,ceiling_n0:dakpn_600steps_n0"
)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--results", default=FAMILY, help="comma-separated records dirs, one per draw")
    p.add_argument("--pairs", default=PAIRS, help="comma-separated row_a:row_b (segmenter keys)")
    args = p.parse_args(argv)
    draws = []
    for d in args.results.split(","):
        loaded = records.load(d)
        draws.append((d, loaded["per_seed"], loaded["protocol_config"]["data"]["seed"]))
    print(
        "| difference | "
        + " | ".join(f"data seed {s}" for _, _, s in draws)
        + " | pooled | positive |"
    )
    print("| --- |" + " --- |" * (len(draws) + 2))
    for pair in args.pairs.split(","):
        a, b = pair.split(":")
        groups = []
        for d, per_seed, _ in draws:
            try:
                groups.append(
                    100.0
                    * np.array(
                        [report.seg_miou(r, a) - report.seg_miou(r, b) for r in per_seed],
                        np.float64,
                    )
                )
            except TypeError:
                raise SystemExit(f"{d}: no row {a!r} or {b!r} in every seed") from None
        ci = stats.stratified_bootstrap_mean(groups)
        x = np.concatenate(groups)
        print(
            f"| {a} − {b} | "
            + " | ".join(f"{g.mean():+.1f} ({g.size})" for g in groups)
            + f" | {ci['mean']:+.1f} [{ci['lo']:+.1f}, {ci['hi']:+.1f}] | {int((x > 0).sum())} of {x.size} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
