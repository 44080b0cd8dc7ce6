"""Paired-view diagnostics of a DA-KPN run against the family ceiling (an oracle fitted on paired views).

Prints the paired PSNR, the fraction of the dB gap untranslated -> per-class ceiling that the run
closes, each class's translated / real / ceiling / untranslated mean colour (RGB and HSV), and the
learned blur sigma and noise scale per class next to the ceiling's (dakpn_jax/evaluation/family.py
computes everything; this script only composes).

    python3 experiments/dakpn_diagnostics.py --workdir=runs/dakpn            # a trained run, 64 scenes
    python3 experiments/dakpn_diagnostics.py --workdir=runs/dakpn --images=128 --ceiling_steps=60
    python3 experiments/dakpn_diagnostics.py --config=configs/default.py     # the untrained init
"""

from __future__ import annotations

import argparse
import os
import sys

import jax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dakpn_jax.data.labels import CLASS_NAMES  # noqa: E402
from dakpn_jax.evaluation import family  # noqa: E402
from dakpn_jax.training import dakpn  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--workdir", help="a DA-KPN training run (config.json + checkpoints)")
    src.add_argument("--config", help="path.py[:variant]: diagnose the untrained initialisation")
    p.add_argument("--images", type=int, default=64, help="paired-eval scenes (the run's data)")
    p.add_argument("--ceiling_steps", type=int, default=40, help="L-BFGS steps of the ceiling fit")
    p.add_argument(
        "--ceiling",
        default="",
        help="a ceiling run directory: loaded if it exists, else fitted and saved there",
    )
    args = p.parse_args(argv)

    if args.workdir:
        from dakpn_jax import inference  # pylint: disable=import-outside-toplevel

        t = inference.load_translator(args.workdir)
        if t.method != "dakpn":
            raise SystemExit(f"--workdir={args.workdir}: a {t.method!r} run, not DA-KPN")
        config, state = t.config, t.state
    else:
        from experiments.dakpn_balance import load_config  # pylint: disable=import-outside-toplevel

        config = load_config(args.config)
        state = dakpn.init_state(config, jax.random.key(config.seed))
    with config.unlocked():
        config.eval_ceiling_steps = args.ceiling_steps
        config.data.num_paired_eval = max(int(config.data.num_paired_eval), args.images)
    ceiling = family.cached_ceiling(args.ceiling, config, args.images)
    diag = dakpn.diagnostics(config, state, max_images=args.images, ceiling=ceiling)
    names = CLASS_NAMES if config.model.num_classes == len(CLASS_NAMES) else None
    print(
        f"{args.workdir or args.config}: {args.images} paired-eval scenes (data seed {config.data.seed})"
    )
    print(family.format_report(diag, names))
    return 0


if __name__ == "__main__":
    sys.exit(main())
