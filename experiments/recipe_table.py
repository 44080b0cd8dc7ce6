r"""Issue 24's recipe table, from the committed records of experiments/recipe_rescore.py.

    python3 experiments/recipe_table.py                      # results/recipe/*.json
    python3 experiments/recipe_table.py results/recipe/a.json results/recipe/b.json

Records of the same training recipe (the ``recipe`` field each record stores; the oldest record,
made before that field existed, is the full-resolution U-Net of ``configs/protocol.py:recipe``)
are merged seed by seed, so a recipe's seeds may come from several runs. One line per training
recipe and scoring (trained or averaged weights; flip TTA off), with: the mean CPU seconds of a
segmenter stage (training and scoring once), the mean real-val mIoU of source-only, DA-KPN and the
oracle at N = 0, and over the seeds the mean and standard deviation of DA-KPN - source-only and of
oracle - DA-KPN. ``sd^2 x CPU s`` is the cost of a given half-width: the seeds a half-width needs
grow with the variance, each costing a segmenter's CPU seconds; lower is better.
"""

from __future__ import annotations

import glob
import json
import os
import sys

import numpy as np

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The first record (before recipe_rescore stored the recipe): configs/protocol.py:recipe as run then.
_FULL_RES = {
    "model": {"kwargs": {"features": [16, 32, 64]}, "name": "unet_small", "num_classes": 19},
    "crop_size": [64, 128],
    "batch_size": 8,
    "num_train_steps": 150,
    "optim": {"lr": 0.001, "warmup_steps": 15, "schedule": "poly"},
}


def recipe_name(recipe: dict) -> str:
    kw = recipe["model"].get("kwargs", {})
    return (
        f"U-Net {tuple(kw.get('features', ()))} stride {kw.get('input_stride', 1)}, "
        f"crops {tuple(recipe['crop_size'])}, batch {recipe['batch_size']}, "
        f"{recipe['num_train_steps']} steps"
    )


def merged(paths: list[str]) -> dict[str, dict]:
    """{recipe name: {"per_seed": {seed: rows}, "cpu_s": [per record mean, weighted by seeds]}}."""
    out: dict[str, dict] = {}
    for path in paths:
        with open(path) as f:
            rec = json.load(f)
        name = recipe_name(rec.get("recipe") or _FULL_RES)
        entry = out.setdefault(name, {"per_seed": {}, "cpu": [], "files": []})
        for seed, rows in rec["per_seed"].items():
            if seed in entry["per_seed"]:
                raise ValueError(f"{path}: seed {seed} of {name!r} is in another record too")
            entry["per_seed"][seed] = rows
        entry["cpu"] += [rec["segmenter_stage_cpu_s_mean"]] * len(rec["per_seed"])
        entry["files"].append(os.path.relpath(path, _ROOT))
    return out


def main(argv=None) -> int:
    paths = (argv if argv is not None else sys.argv[1:]) or sorted(
        glob.glob(os.path.join(_ROOT, "results", "recipe", "*.json"))
    )
    if not paths:
        print("no records (results/recipe/*.json)")
        return 1
    print(
        "| recipe | scoring | seeds | CPU s / segmenter | source-only | DA-KPN | oracle | "
        "DA-KPN - source-only | sd | sd^2 x CPU s | oracle - DA-KPN sd |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    recipes = merged(paths)
    for name, entry in recipes.items():
        seeds = list(entry["per_seed"].values())
        cpu = float(np.mean(entry["cpu"]))
        for weights in ("trained", "averaged"):
            key = f"{weights}+noflip"
            col = {r: np.array([s[r][key] for s in seeds]) for r in seeds[0]}
            diff = col["dakpn_n0"] - col["source_only_n0"]
            gap = col["oracle"] - col["dakpn_n0"]
            sd = diff.std(ddof=1) if len(diff) > 1 else float("nan")
            print(
                f"| {name} | {weights} weights | {len(seeds)} | {cpu:.0f} | "
                f"{col['source_only_n0'].mean():.1f} | {col['dakpn_n0'].mean():.1f} | "
                f"{col['oracle'].mean():.1f} | {diff.mean():+.1f} | {sd:.1f} | {sd**2 * cpu:.0f} | "
                f"{gap.std(ddof=1) if len(gap) > 1 else float('nan'):.1f} |"
            )
    print("records: " + "; ".join(f for e in recipes.values() for f in e["files"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
