r"""The evaluation protocol (DESIGN.md §1 step 8, issues #5 and #6), end to end on one config.

    python experiments/protocol.py --config=configs/protocol.py[:default|full|tiny] --workdir=DIR

Per seed, each stage in its own folder under DIR/seed<k>/ (reused when already complete, so an
interrupted run continues where it stopped; a trainer stage also resumes from its checkpoint):

1. ``feature_segmenter``: a segmenter on the synthetic labels, only if a translator uses
   frozen-segmenter features.
2. ``translator_<name>``: DA-KPN (``dakpn``), its ablations and the GAN baselines, each trained
   with `dakpn_jax.training.trainer.train_and_evaluate`.
3. ``export_<name>``: synthetic-train translated to disk (`dakpn_jax.export.export_translated`).
4. ``seg_<source>_n<N>``: downstream segmenters on {source-only, each translation} (+ N labelled
   real images) for N in ``config.n_real``, and ``seg_oracle``: all real-train labels. Score: mIoU
   on real-val.
5. ``scores``: model score (the oracle segmenter labels each translated synthetic set and the
   untranslated one, compared with the synthetic labels: mIoU, per-class IoU, flip matrix) and
   paired-eval PSNR / SSIM / SWD per translator (and untranslated).

Then DIR/results.md (table, mean ± std over seeds), DIR/results.json (rows, per-seed numbers, the
exact stage configs and seeds), DIR/miou_vs_n.png and DIR/grid_seed<k>.png (paired-eval scenes:
synthetic | each translation | real | label). Composes the library; no logic of its own.
"""
from __future__ import annotations

import copy
import importlib.util
import json
import logging
import os
import sys
from typing import Any, Callable

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:  # configs/ and dakpn_jax/ from a plain checkout, nothing installed
    sys.path.insert(0, _ROOT)

import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

log = logging.getLogger("dakpn_jax.protocol")
STAGE_FILE = "stage.json"


# ----------------------------------------------------------------------------- configs

def load_config_file(path: str, arg: str | None = None) -> ml_collections.ConfigDict:
    """``get_config(arg)`` of a config file (path relative to the repo root or absolute)."""
    full = path if os.path.isabs(path) else os.path.join(_ROOT, path)
    if not os.path.exists(full):
        raise ValueError(f"config file {path!r} not found (looked at {full!r})")
    spec = importlib.util.spec_from_file_location(f"_protocol_cfg_{os.path.basename(path)[:-3]}", full)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def override(config: ml_collections.ConfigDict, overrides) -> ml_collections.ConfigDict:
    """A copy of ``config`` with ``overrides`` (nested dicts recurse; other values replace)."""
    out = copy.deepcopy(config)
    with out.unlocked():
        for key, value in dict(overrides or {}).items():
            if hasattr(value, "items") and key in out and isinstance(out[key], ml_collections.ConfigDict):
                out[key] = override(out[key], value)
            else:
                out[key] = value.to_dict() if isinstance(value, ml_collections.ConfigDict) else value
    return out


def _with_data(config, pconfig, **data_fields):
    """The stage config on the protocol's benchmark data (+ extra data fields)."""
    return override(config, {"data": {**pconfig.data.to_dict(), **data_fields}})


def dakpn_config(pconfig, seed: int, extra=None):
    c = load_config_file("configs/default.py", pconfig.dakpn.variant)
    c = override(_with_data(c, pconfig), pconfig.dakpn.overrides)
    return override(c, {"seed": seed, **dict(extra or {})})


def baseline_config(pconfig, spec, seed: int):
    c = load_config_file(spec.config, spec.arg)
    return override(override(_with_data(c, pconfig), spec.overrides), {"seed": seed})


def segmenter_config(pconfig, spec, seed: int, train_sources: list, **data_fields):
    c = load_config_file("configs/segmentation.py", spec.variant)
    c = override(_with_data(c, pconfig, **data_fields), spec.overrides)
    c = override(c, {"seed": seed})
    with c.unlocked():
        c.data.train_sources = train_sources
        c.data.eval_split = "real-val"
    return c


def segmenter_sources(pconfig, base: dict, n: int) -> tuple[list, dict]:
    """Train sources ``base`` (+ N real labels as ``real_fraction`` of each batch) and data fields."""
    if n <= 0:
        return [base], {}
    f = float(pconfig.real_fraction)
    if not 0.0 < f < 1.0:
        raise ValueError(f"config.real_fraction={f} must lie in (0, 1)")
    return ([{**base, "weight": 1.0 - f}, {"kind": "split", "split": "real-train-labelled", "weight": f}],
            {"num_real_labelled": int(n)})


# ----------------------------------------------------------------------------- stages

def stage(directory: str, fn: Callable[[str], dict], *, what: str,
          still_valid: Callable[[dict], bool] | None = None) -> dict:
    """Runs ``fn(directory) -> result`` unless ``directory/stage.json`` says it is complete (and
    ``still_valid(result)``, when given: a stage that summarises other stages reruns when the
    config has grown, e.g. the scores once a translator was added)."""
    marker = os.path.join(directory, STAGE_FILE)
    if os.path.exists(marker):
        with open(marker) as f:
            done = json.load(f)
        if still_valid is None or still_valid(done["result"]):
            log.info("reuse %s (%s)", what, directory)
            return done["result"]
        log.info("rerun %s: its stored result does not cover this config (%s)", what, directory)
    os.makedirs(directory, exist_ok=True)
    log.info("run %s (%s)", what, directory)
    text = json.dumps({"stage": what, "result": fn(directory)}, indent=1, default=_json_default)
    tmp = marker + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, marker)  # complete only once the marker exists
    return json.loads(text)["result"]  # what a reusing run reads back, so both report alike


def _json_default(x):
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"not JSON serialisable: {type(x)}")


def train(config) -> Callable[[str], dict]:
    def run(workdir):
        from dakpn_jax.training import trainer  # pylint: disable=import-outside-toplevel
        final = trainer.train_and_evaluate(config, os.path.join(workdir, "run"))
        return {"final": {k: float(v) for k, v in final.items()}, "config": config.to_dict()}
    return run


def export(translator_dir: str, batch_size: int) -> Callable[[str], dict]:
    def run(directory):
        from dakpn_jax import export as exporter  # pylint: disable=import-outside-toplevel
        out = os.path.join(directory, "data")
        m = exporter.export_translated(os.path.join(translator_dir, "run"), out, split="synthetic-train",
                                       batch_size=batch_size, progress=False)
        if not m["complete"]:
            raise RuntimeError(f"export to {out} is incomplete ({m['count']} files)")
        return {"root": out, "count": m["count"]}
    return run


def _supports(pconfig, overrides) -> str | None:
    """Why a DA-KPN ablation cannot run here (None if it can)."""
    ablate = dict(dict(overrides).get("model", {}) or {}).get("ablate")
    if ablate:
        from dakpn_jax.training import dakpn  # pylint: disable=import-outside-toplevel
        known = getattr(dakpn, "ABLATIONS", None)
        if known is None or not set(ablate) <= set(known):
            return (f"training/dakpn.py does not support config.model.ablate={tuple(ablate)} "
                    f"(dakpn.ABLATIONS={known})")
    return None


def scores(pconfig, seg_oracle_dir: str, exports: dict, translator_dirs: dict) -> Callable[[str], dict]:
    """Model score of every translated set (and untranslated) + paired-eval PSNR/SSIM/SWD."""
    def run(directory):
        import jax  # pylint: disable=import-outside-toplevel
        from dakpn_jax import export as exporter  # pylint: disable=import-outside-toplevel
        from dakpn_jax.data import sources  # pylint: disable=import-outside-toplevel
        from dakpn_jax.data.folder import FolderSource  # pylint: disable=import-outside-toplevel
        from dakpn_jax.data.labels import CLASS_NAMES, NUM_CLASSES  # pylint: disable=import-outside-toplevel
        from dakpn_jax.evaluation import image_quality, model_score  # pylint: disable=import-outside-toplevel
        from dakpn_jax.training import segmentation, trainer  # pylint: disable=import-outside-toplevel

        apply_fn, params = segmentation.load_segmenter(os.path.join(seg_oracle_dir, "run"))
        segment = jax.jit(apply_fn)
        segment_fn = lambda images: segment(params, images)
        e = pconfig.eval
        sets = {"untranslated": sources.make_source(pconfig.data, "synthetic-train")}
        for name, exp in exports.items():
            sets[name] = FolderSource(os.path.join(exp["root"], "images"), os.path.join(exp["root"], "labels"))
        out = {"model_score": {}, "paired": {}}
        for name, src in sets.items():
            s = model_score.score_source(segment_fn, src, NUM_CLASSES, batch_size=int(e.batch_size),
                                         max_images=int(e.model_score_images), class_names=CLASS_NAMES)
            out["model_score"][name] = {k: s[k] for k in ("miou", "per_class_iou", "flip", "top_flips", "pixels")}
        paired = sources.make_source(pconfig.data, "paired-eval")
        fns = {"untranslated": lambda x, y: x}
        for name, tdir in translator_dirs.items():
            config, state = trainer.restore_state(os.path.join(tdir, "run"))
            fns[name] = exporter.make_translate_fn(config, state)
        for name, fn in fns.items():
            out["paired"][name] = image_quality.evaluate_paired_source(
                fn, paired, batch_size=int(e.batch_size), max_images=int(e.paired_images), num_classes=NUM_CLASSES)
        grid(pconfig, fns, os.path.join(directory, "grid.png"))
        return out
    return run


def grid(pconfig, fns: dict, path: str) -> None:
    """Paired-eval scenes, one per row: synthetic | each translation | real | colourised label."""
    from dakpn_jax import viz  # pylint: disable=import-outside-toplevel
    from dakpn_jax.data import sources  # pylint: disable=import-outside-toplevel
    src = sources.make_source(pconfig.data, "paired-eval")
    rows = []
    for i in range(min(int(pconfig.eval.grid_rows), len(src))):
        it = src[i]
        x = it["synthetic"][None].astype(np.float32) / 255.0
        y = it["label"][None].astype(np.int32)
        row = [it["synthetic"]] + [np.asarray(fn(x, y))[0] for k, fn in fns.items() if k != "untranslated"]
        rows.append(row + [it["real"], viz.colorize(it["label"])])
    viz.save_grid(path, rows)


# ----------------------------------------------------------------------------- one seed

def run_seed(pconfig, seed: int, root: str) -> dict:
    """All stages for one seed under ``root``; returns the per-seed results."""
    res: dict[str, Any] = {"seed": seed, "translators": {}, "segmenters": {}, "skipped": {}}
    bs = int(pconfig.eval.batch_size)
    translators = {"dakpn": dakpn_config(pconfig, seed)}
    for name, over in pconfig.ablations.items():
        why = _supports(pconfig, over)
        if why:
            res["skipped"][name] = why
            log.warning("ablation %s skipped: %s", name, why)
            continue
        translators[name] = dakpn_config(pconfig, seed, over)
    for name, spec in pconfig.baselines.items():
        translators[name] = baseline_config(pconfig, spec, seed)

    if any(c.get("features", "onehot") == "segmenter" for c in translators.values()):
        src, _ = segmenter_sources(pconfig, {"kind": "split", "split": "synthetic-train"}, 0)
        fcfg = segmenter_config(pconfig, pconfig.feature_segmenter, seed, src)
        fdir = os.path.join(root, "feature_segmenter")
        res["feature_segmenter"] = stage(fdir, train(fcfg), what="feature segmenter")
        for name, c in translators.items():
            if c.get("features", "onehot") == "segmenter":
                translators[name] = override(c, {"segmenter_workdir": os.path.join(fdir, "run")})

    tdirs, exports = {}, {}
    for name, c in translators.items():
        tdirs[name] = os.path.join(root, f"translator_{name}")
        res["translators"][name] = stage(tdirs[name], train(c), what=f"translator {name}")
        exports[name] = stage(os.path.join(root, f"export_{name}"), export(tdirs[name], bs), what=f"export {name}")

    seg = pconfig.segmentation
    bases = {"source_only": {"kind": "split", "split": "synthetic-train"}}
    bases.update({name: {"kind": "folder", "root": e["root"]} for name, e in exports.items()})
    for name, base in bases.items():
        # The N sweep is for the headline comparison; ablations and baselines may use a shorter one.
        ns = pconfig.n_real if name in ("source_only", "dakpn") else pconfig.get("side_n_real", pconfig.n_real)
        for n in ns:
            src, fields = segmenter_sources(pconfig, base, int(n))
            cfg = segmenter_config(pconfig, seg, seed, src, **fields)
            key = f"{name}_n{int(n)}"
            res["segmenters"][key] = stage(os.path.join(root, f"seg_{key}"), train(cfg), what=f"segmenter {key}")
    oracle_n = int(pconfig.data.num_real_train)
    cfg = segmenter_config(pconfig, seg, seed, [{"kind": "split", "split": "real-train-labelled"}],
                           num_real_labelled=oracle_n)
    odir = os.path.join(root, "seg_oracle")
    res["segmenters"]["oracle"] = stage(odir, train(cfg), what="segmenter oracle")
    wanted = {"untranslated", *exports}
    res["scores"] = stage(os.path.join(root, "scores"), scores(pconfig, odir, exports, tdirs), what="scores",
                          still_valid=lambda r: wanted <= set(r["model_score"]) and wanted <= set(r["paired"]))
    return res


# ----------------------------------------------------------------------------- report

def _mean_std(values) -> tuple[float, float]:
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], np.float64)
    if v.size == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def _fmt(mean: float, std: float, scale: float = 1.0, digits: int = 1) -> str:
    if not np.isfinite(mean):
        return "-"
    return f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}"


def _method_and_score_key(key: str) -> tuple[str, str]:
    """A segmenter stage key (``<method>_n<N>`` or ``oracle``) -> (method, its entry in the scores:
    source-only segmenters train on the untranslated images)."""
    method = "oracle" if key == "oracle" else key.rsplit("_n", 1)[0]
    return method, "untranslated" if method == "source_only" else method


def summarise(pconfig, per_seed: list[dict]) -> dict:
    """Rows ``{method, n, miou: (mean, std), model_score, psnr, ssim, swd, class_color_err}`` over seeds."""
    rows = []
    names = list(per_seed[0]["segmenters"])
    for key in names:
        method, score_key = _method_and_score_key(key)
        n = int(pconfig.data.num_real_train) if key == "oracle" else int(key.rsplit("_n", 1)[1])
        get = lambda r, *path: _dig(r, path)
        row = {"method": method, "n": n,
               "miou": _mean_std([get(r, "segmenters", key, "final", "eval/miou") for r in per_seed])}
        if method != "oracle":
            row["model_score"] = _mean_std([get(r, "scores", "model_score", score_key, "miou") for r in per_seed])
            for m in ("psnr", "ssim", "swd", "class_color_err"):
                row[m] = _mean_std([get(r, "scores", "paired", score_key, m) for r in per_seed])
        rows.append(row)
    return {"rows": rows}


def _dig(tree, path):
    for p in path:
        if not isinstance(tree, dict) or p not in tree:
            return None
        tree = tree[p]
    return tree


def markdown(pconfig, summary: dict, per_seed: list[dict]) -> str:
    seeds = list(pconfig.seeds)
    lines = [f"# Protocol results ({len(seeds)} seed(s): {seeds}; mean ± std)", "",
             "| method | N real labels | real-val mIoU (%) | model score mIoU (%) | PSNR (dB) | SSIM | SWD "
             "| class colour err |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in summary["rows"]:
        g = lambda k, s=1.0, d=1: _fmt(*r[k], scale=s, digits=d) if k in r else "-"
        n = "all" if r["method"] == "oracle" else str(r["n"])
        lines.append(f"| {r['method']} | {n} | {g('miou', 100)} | {g('model_score', 100)} | {g('psnr', 1, 2)} "
                     f"| {g('ssim', 1, 3)} | {g('swd', 1, 3)} | {g('class_color_err', 1, 3)} |")
    lines += ["", "Model score: the oracle segmenter (all real-train labels) labels each (translated) synthetic "
              "set; mIoU against the synthetic labels. PSNR / SSIM against the real rendering of the same "
              "scene (paired-eval); SWD: Laplacian-pyramid sliced Wasserstein distance to the real images "
              "(lower is closer); class colour err: mean over classes of the distance between a class's "
              "mean RGB in the translated and in the real images (paired-eval).", ""]
    if len(per_seed) > 1:  # the spread behind every mean ± std above
        lines += ["Per seed: real-val mIoU (%) / model score mIoU (%):", "",
                  "| segmenter | " + " | ".join(f"seed {r['seed']}" for r in per_seed) + " |",
                  "| --- |" + " --- |" * len(per_seed)]
        for key in per_seed[0]["segmenters"]:
            _, score_key = _method_and_score_key(key)
            cells = []
            for r in per_seed:
                miou = _dig(r, ("segmenters", key, "final", "eval/miou"))
                ms = _dig(r, ("scores", "model_score", score_key, "miou"))
                cells.append(("-" if miou is None else f"{100 * miou:.1f}") + ("" if ms is None else f" / {100 * ms:.1f}"))
            lines.append(f"| {key} | " + " | ".join(cells) + " |")
        lines.append("")
    names = list(_dig(per_seed[0], ("scores", "model_score")) or {})
    if names:
        lines.append("Largest label flips (label -> oracle prediction, fraction of the label's pixels), per seed:")
        lines.append("")
        for name in names:
            per = []
            for r in per_seed:
                s = _dig(r, ("scores", "model_score", name))
                if s:
                    per.append(f"seed {r['seed']}: " + ", ".join(f"{a}->{b} {f:.2f}" for a, b, f in s["top_flips"][:3]))
            lines.append(f"- {name}: " + "; ".join(per))
        lines.append("")
    skipped = per_seed[0].get("skipped", {})
    for name, why in skipped.items():
        lines.append(f"- skipped {name}: {why}")
    return "\n".join(lines) + "\n"


def plot_miou_vs_n(summary: dict, path: str, size=(480, 320)) -> None:
    """mIoU (%) against N, one coloured polyline per method (PIL; the oracle as a dashed level)."""
    from PIL import Image, ImageDraw  # pylint: disable=import-outside-toplevel
    rows = [r for r in summary["rows"] if np.isfinite(r["miou"][0])]
    W, H, m = size[0], size[1], 40
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    curves = {}
    for r in rows:
        if r["method"] != "oracle":
            curves.setdefault(r["method"], []).append((r["n"], 100 * r["miou"][0]))
    oracle = [100 * r["miou"][0] for r in rows if r["method"] == "oracle"]
    ns = sorted({n for c in curves.values() for n, _ in c}) or [0]
    ys = [y for c in curves.values() for _, y in c] + oracle or [0.0]
    y0, y1 = min(ys) - 2, max(ys) + 2
    px = lambda n: m + (W - 2 * m) * (ns.index(n) / max(len(ns) - 1, 1))
    py = lambda y: H - m - (H - 2 * m) * (y - y0) / max(y1 - y0, 1e-6)
    d.line([(m, H - m), (W - m, H - m)], fill="black")
    d.line([(m, m), (m, H - m)], fill="black")
    for n in ns:
        d.text((px(n) - 4, H - m + 4), str(n), fill="black")
    d.text((W // 2 - 40, H - 14), "N real labels", fill="black")
    d.text((4, 4), f"real-val mIoU (%)  [{y0:.0f}, {y1:.0f}]", fill="black")
    palette = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
               (140, 86, 75), (227, 119, 194), (127, 127, 127)]
    for i, (name, pts) in enumerate(sorted(curves.items())):
        col = palette[i % len(palette)]
        pts = sorted(pts)
        xy = [(px(n), py(y)) for n, y in pts]
        if len(xy) > 1:
            d.line(xy, fill=col, width=2)
        for x, y in xy:
            d.ellipse([x - 3, y - 3, x + 3, y + 3], fill=col)
        d.text((W - m - 110, m + 12 * i), name, fill=col)
    for y in oracle:
        for x in range(m, W - m, 8):
            d.line([(x, py(y)), (x + 4, py(y))], fill="black")
        d.text((W - m - 110, py(y) - 12), "oracle", fill="black")
    img.save(path, format="PNG")


# ----------------------------------------------------------------------------- driver

def run_protocol(pconfig, workdir: str) -> dict:
    """Runs (or reuses) every stage for every seed, writes the report; returns the summary."""
    if not pconfig.seeds:
        raise ValueError("config.seeds is empty; give at least one training seed")
    os.makedirs(workdir, exist_ok=True)
    per_seed = [run_seed(pconfig, int(s), os.path.join(workdir, f"seed{int(s)}")) for s in pconfig.seeds]
    summary = summarise(pconfig, per_seed)
    report = {"protocol_config": pconfig.to_dict(), "seeds": list(pconfig.seeds), "summary": summary,
              "per_seed": per_seed}
    with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump(report, f, indent=1, sort_keys=True, default=_json_default)
    text = markdown(pconfig, summary, per_seed)
    with open(os.path.join(workdir, "results.md"), "w") as f:
        f.write(text)
    plot_miou_vs_n(summary, os.path.join(workdir, "miou_vs_n.png"))
    for r in per_seed:
        src = os.path.join(workdir, f"seed{r['seed']}", "scores", "grid.png")
        if os.path.exists(src):
            with open(src, "rb") as a, open(os.path.join(workdir, f"grid_seed{r['seed']}.png"), "wb") as b:
                b.write(a.read())
    return {"summary": summary, "markdown": text}


def main(argv):
    from absl import app  # pylint: disable=import-outside-toplevel
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from absl import flags  # pylint: disable=import-outside-toplevel
    import jax  # pylint: disable=import-outside-toplevel
    # Every segmenter (and every DA-KPN ablation) compiles the same step for the same shapes: a
    # persistent compilation cache under the workdir compiles each once (and reruns reuse it).
    jax.config.update("jax_compilation_cache_dir", os.path.join(os.path.abspath(flags.FLAGS.workdir), "jax_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    from dakpn_jax.training import preemption  # pylint: disable=import-outside-toplevel
    try:
        out = run_protocol(flags.FLAGS.config, flags.FLAGS.workdir)
    except preemption.Preempted as e:  # the stage in progress was checkpointed; finished ones are kept
        log.warning("%s", e)
        sys.exit(143)
    print(out["markdown"])


if __name__ == "__main__":
    from absl import app, flags
    from ml_collections import config_flags

    flags.DEFINE_string("workdir", None, "Protocol directory: one folder per stage, results.{md,json}, plots.")
    config_flags.DEFINE_config_file("config", os.path.join(_ROOT, "configs", "protocol.py"),
                                    "Protocol config, `path.py[:variant]`.", lock_config=True)
    flags.mark_flags_as_required(["workdir"])
    logging.basicConfig(level=logging.INFO)
    app.run(main)
