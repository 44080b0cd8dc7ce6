r"""Issue 24's downstream-recipe study, scoring side: every segmenter of a protocol run scored four
ways, and the spread of the paired differences each way.

    python3 experiments/protocol.py --config=configs/protocol.py:recipe --workdir=runs/recipe
    python3 experiments/recipe_rescore.py --config=configs/protocol.py:recipe --workdir=runs/recipe \
        --out=results/recipe/rescore.json

The ``recipe`` variant trains its segmenters with weight averaging kept (``ema_decay``), which
changes no training step; so one checkpoint gives four recipes at no extra training cost:
trained or averaged weights, each with or without flip test-time augmentation (``eval_flip``,
which doubles the scoring forward passes, not the training). For each recipe it prints the mean
real-val mIoU of source-only and the oracle (the regimes must stay far apart) and, over the seeds,
the mean and the standard deviation of the paired difference DA-KPN - source-only at N = 0: the
spread a downstream recipe is to shrink. ``--out`` writes the same figures as JSON (commit it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:  # configs/ and dakpn_jax/ from a plain checkout, nothing installed
    sys.path.insert(0, _ROOT)

import numpy as np  # noqa: E402

RECIPES = (("trained", False), ("trained", True), ("averaged", False), ("averaged", True))


def score_run(pconfig, run_dir: str) -> dict[str, float]:
    """{"<weights>+<flip|noflip>": real-val mIoU} of one segmentation run directory."""
    from dakpn_jax.data import sources  # pylint: disable=import-outside-toplevel
    from dakpn_jax.protocol import methods, stages, stats  # pylint: disable=import-outside-toplevel
    from dakpn_jax.training import segmentation, trainer  # pylint: disable=import-outside-toplevel

    config, state = trainer.restore_state(run_dir)
    if "ema_params" not in state:
        raise ValueError(
            f"{run_dir}: the run kept no averaged weights (config.ema_decay = 0); "
            "run the protocol's `recipe` variant"
        )
    val = segmentation.resized_source(config, sources.make_source(pconfig.data, "real-val"))
    out = {}
    for weights, flip in RECIPES:
        cfg = config.copy_and_resolve_references()
        with cfg.unlocked():
            cfg.eval_flip = flip
        params = {
            "params": state["ema_params" if weights == "averaged" else "params"],
            "model_state": state["model_state"],
        }
        conf = stages.per_image_confusions(
            segmentation.make_apply_fn(cfg),
            params,
            val,
            methods.label_space(pconfig).num_classes,
            batch_size=int(pconfig.eval.batch_size),
        )
        out[f"{weights}+{'flip' if flip else 'noflip'}"] = 100.0 * float(
            stats.miou_from_confusion(conf.sum(0))
        )
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="configs/protocol.py:recipe")
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--out", default="")
    ap.add_argument("--seeds", default="", help="e.g. 0,1,2 (default: the config's seeds)")
    args = ap.parse_args(argv)
    from dakpn_jax.protocol import layout, methods  # pylint: disable=import-outside-toplevel

    path, _, variant = args.config.partition(":")
    pconfig = methods.load_config_file(path, variant or None)
    if args.seeds:
        pconfig.seeds = tuple(int(s) for s in args.seeds.split(","))
    rows = ("source_only_n0", "dakpn_n0", "oracle")
    per_seed, cpu_s = {}, []
    for seed in pconfig.seeds:
        dirs = {r: os.path.join(args.workdir, layout.segmenter_key(seed, r)) for r in rows}
        if not all(layout.read_stage(d) for d in dirs.values()):
            print(f"seed {seed}: not every segmenter stage is complete in {args.workdir}; skipped")
            continue
        per_seed[seed] = {r: score_run(pconfig, os.path.join(d, "run")) for r, d in dirs.items()}
        cpu_s += [layout.stage_timing(d)["cpu_s"] for d in dirs.values()]
    if not per_seed:
        print("no complete seed")
        return 1
    # The training recipe, from the first segmenter's saved config (every segmenter shares it).
    first = os.path.join(args.workdir, layout.segmenter_key(next(iter(per_seed)), rows[0]), "run")
    from dakpn_jax.training import trainer  # pylint: disable=import-outside-toplevel

    seg = trainer.load_config(first)
    recipe = {
        "model": seg.model.to_dict(),
        "crop_size": seg.crop_size,
        "batch_size": seg.batch_size,
        "num_train_steps": seg.num_train_steps,
        "optim": {k: seg.optim[k] for k in ("lr", "warmup_steps", "schedule")},
    }
    print(f"recipe: {recipe}")
    table = {}
    for weights, flip in RECIPES:
        key = f"{weights}+{'flip' if flip else 'noflip'}"
        diff = np.array([s["dakpn_n0"][key] - s["source_only_n0"][key] for s in per_seed.values()])
        table[key] = {
            "source_only": float(np.mean([s["source_only_n0"][key] for s in per_seed.values()])),
            "dakpn": float(np.mean([s["dakpn_n0"][key] for s in per_seed.values()])),
            "oracle": float(np.mean([s["oracle"][key] for s in per_seed.values()])),
            "diff_mean": float(diff.mean()),
            "diff_sd": float(diff.std(ddof=1)) if len(diff) > 1 else None,
        }
    n = len(per_seed)
    print(
        f"{n} seeds ({', '.join(map(str, per_seed))}); segmenter stage CPU seconds: mean {np.mean(cpu_s):.0f} "
        f"(training + scoring once; flip TTA adds one forward pass per scored image)"
    )
    print("| recipe | source-only | DA-KPN | oracle | DA-KPN - source-only: mean | sd over seeds |")
    print("| --- | --- | --- | --- | --- | --- |")
    for key, t in table.items():
        sd = "-" if t["diff_sd"] is None else f"{t['diff_sd']:.1f}"
        print(
            f"| {key} | {t['source_only']:.1f} | {t['dakpn']:.1f} | {t['oracle']:.1f} | "
            f"{t['diff_mean']:+.1f} | {sd} |"
        )
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(
                {
                    "config": args.config,
                    "recipe": recipe,
                    "seeds": list(per_seed),
                    "per_seed": per_seed,
                    "table": table,
                    "segmenter_stage_cpu_s_mean": float(np.mean(cpu_s)),
                },
                f,
                indent=1,
            )
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
