"""The protocol's report: summary rows, paired comparisons with bootstrap intervals, per-class IoU,
the mIoU-vs-N plot, results.{json,md,html}.

results.json holds ``summary.rows`` (per segmenter row: ``miou`` = [mean, std] over seeds plus
``miou_ci`` (two-level bootstrap interval of the mean), model score and paired scores),
``comparisons`` (per row and baseline: ``seeds`` and ``seeds_images`` intervals of the mean
paired difference, ``verdict``), ``per_class_iou``, ``noise_floor`` (half-widths achieved),
``ceiling_gap`` (where a family-ceiling row ran: each translator's share of the paired-PSNR gap to
it and its model-score gain over the untranslated images),
``timings`` (per stage wall / CPU seconds), the protocol config and every seed's stage results.
"""

from __future__ import annotations

import base64
import html
import json
import os

import numpy as np

from dakpn_jax.protocol import layout, stats
from dakpn_jax.protocol.console import stage_kind  # noqa: F401  (report.stage_kind, as before)
from dakpn_jax.protocol.plot import plot_miou_vs_n  # noqa: F401  (report.plot_miou_vs_n, as before)
from dakpn_jax.protocol.layout import json_default, load_confusions

MIN_SEEDS_FOR_VERDICT = 3
"""Fewer seeds give no verdict: a bootstrap over 1 or 2 seeds cannot show the seed spread (with one
seed the interval over images is conditional on that training run)."""


def _mean_std(values) -> tuple[float, float]:
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], np.float64)
    if v.size == 0:
        return float("nan"), float("nan")
    # One value has no spread: std None (null in results.json), never a 0 that reads as "no variance".
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else None


def _fmt(mean: float, std: float | None, scale: float = 1.0, digits: int = 1) -> str:
    """``mean ± std``, or the mean alone when there is no std (one seed)."""
    if not np.isfinite(mean):
        return "-"
    if std is None or not np.isfinite(std):
        return f"{mean * scale:.{digits}f}"
    return f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}"


def _dig(tree, path):
    for p in path:
        if not isinstance(tree, dict) or p not in tree:
            return None
        tree = tree[p]
    return tree


def method_and_score_key(key: str) -> tuple[str, str]:
    """A segmenter stage key (``<method>_n<N>`` or ``oracle``) -> (method, its entry in the scores:
    source-only segmenters train on the untranslated images)."""
    method = "oracle" if key == "oracle" else key.rsplit("_n", 1)[0]
    return method, "untranslated" if method == "source_only" else method


def seg_miou(r: dict, key: str):
    """A seed's real-val mIoU of segmenter ``key``: the protocol's per-image scoring, else the
    trainer's final evaluation."""
    v = _dig(r, ("segmenters", key, "val", "miou"))
    return v if v is not None else _dig(r, ("segmenters", key, "final", "eval/miou"))


def _boot(pconfig) -> dict:
    b = pconfig.get("bootstrap", None)
    b = b.to_dict() if hasattr(b, "to_dict") else dict(b or {})
    return {
        "num_resamples": int(b.get("num_resamples", 2000)),
        "level": float(b.get("level", 0.95)),
        "seed": int(b.get("seed", 0)),
    }


def _confusions(workdir, per_seed, key, given=None):
    """(S, I, C, C) of one segmenter row over the seeds, or None if a seed lacks them; from
    ``given`` ({(seed, key): (I, C, C)}, e.g. read from records) when set, else from the workdir."""
    if given is not None:
        cs = [given.get((int(r["seed"]), key)) for r in per_seed]
    elif workdir is None:
        return None
    else:
        cs = [
            load_confusions(os.path.join(workdir, layout.segmenter_key(r["seed"], key)))
            for r in per_seed
        ]
    if any(c is None for c in cs) or len({c.shape for c in cs}) != 1:
        return None
    return np.stack(cs)


# ----------------------------------------------------------------------------- summary


def oracle_n(pconfig, per_seed) -> int:
    """The oracle's real-train image count as the run recorded it (real data: the listed folder),
    else the benchmark's ``num_real_train``."""
    n = per_seed[0].get("oracle_n") if per_seed else None
    return int(n) if n is not None else int(pconfig.data.num_real_train)


def label_space_line(pconfig) -> str:
    from dakpn_jax.data import label_space  # pylint: disable=import-outside-toplevel

    space = label_space.for_data(pconfig.data)
    return (
        f"Label space: {space.name}, {space.num_classes} classes ({', '.join(space.class_names)}), "
        f"ignore index {space.ignore_index}."
    )


def summarise(
    pconfig, per_seed: list[dict], workdir: str | None = None, confusions: dict | None = None
) -> dict:
    """Rows ``{method, n, key, miou: (mean, std), miou_ci, model_score, psnr, ssim, swd,
    class_color_err}`` over seeds, the paired comparisons and per-class IoU."""
    boot = _boot(pconfig)
    rows, confs = [], {}
    keys = list(per_seed[0]["segmenters"])
    for key in keys:
        method, score_key = method_and_score_key(key)
        n = oracle_n(pconfig, per_seed) if key == "oracle" else int(key.rsplit("_n", 1)[1])
        row = {
            "method": method,
            "n": n,
            "key": key,
            "miou": _mean_std([seg_miou(r, key) for r in per_seed]),
            "miou_per_seed": [seg_miou(r, key) for r in per_seed],
        }
        confs[key] = _confusions(workdir, per_seed, key, confusions)
        if confs[key] is not None:
            row["miou_ci"] = stats.bootstrap_miou(confs[key], **boot)
        elif len(per_seed) > 1:
            row["miou_ci"] = stats.bootstrap_mean(row["miou_per_seed"], **boot)
        if method != "oracle":
            row["model_score"] = _mean_std(
                [_dig(r, ("scores", "model_score", score_key, "miou")) for r in per_seed]
            )
            for m in ("psnr", "ssim", "swd", "class_color_err"):
                row[m] = _mean_std([_dig(r, ("scores", "paired", score_key, m)) for r in per_seed])
        rows.append(row)
    comparisons = compare(pconfig, per_seed, rows, confs, boot)
    per_class = {}
    for key in keys:
        vals = [_dig(r, ("segmenters", key, "val", "per_class_iou")) for r in per_seed]
        if all(v is not None for v in vals):
            per_class[key] = {c: _mean_std([v[c] for v in vals])[0] for c in vals[0]}
    hw = [c["seeds_images"]["half_width"] for c in comparisons if c.get("seeds_images")]
    hws = [c["seeds"]["half_width"] for c in comparisons if c.get("seeds") and c["seeds"]["n"] > 1]
    noise = {
        "seeds": len(per_seed),
        "val_images": int(next((v.shape[1] for v in confs.values() if v is not None), 0)),
        "half_width_seeds_images": {"median": float(np.median(hw)), "max": float(np.max(hw))}
        if hw
        else None,
        "half_width_seeds": {"median": float(np.median(hws)), "max": float(np.max(hws))}
        if hws
        else None,
        "oracle_seed_std": next((r["miou"][1] for r in rows if r["method"] == "oracle"), None),
    }
    # Classes with labelled pixels in the evaluated split (confusion rows are labels): the per-class
    # table shows only these (an absent class has IoU 0 or none, which says nothing about it).
    known = [c for c in confs.values() if c is not None]
    present = None
    if known:
        names = list(next(iter(per_class.values()))) if per_class else None
        counts = known[0].sum(axis=(0, 1, 3))
        if names is not None and len(names) == counts.shape[0]:
            present = [name for name, k in zip(names, counts) if k > 0]
    return {
        "rows": rows,
        "comparisons": comparisons,
        "per_class_iou": per_class,
        "noise_floor": noise,
        "present_classes": present,
        "ceiling_gap": ceiling_gap(per_seed),
    }


def ceiling_gap(per_seed: list[dict]) -> dict:
    """Each translator against the family ceiling (an oracle fitted on the paired views), where
    the run has a ``ceiling`` row: ``{name: {"fraction": (mean, std), "model_score_gain": (mean,
    std), "model_score_above": k, "seeds": n}}`` over the seeds.

    fraction = (PSNR - PSNR_untranslated) / (PSNR_ceiling - PSNR_untranslated), per seed, on the
    paired-eval scenes: the share of the dB gap between the untranslated images and the ceiling
    that a translator closes (issue 23). model_score_gain = model score - the untranslated images'
    model score (the same oracle segmenter), and model_score_above the number of seeds where it is
    positive. Empty without a ceiling row."""
    fractions, gains = {}, {}
    for r in per_seed:
        paired = _dig(r, ("scores", "paired")) or {}
        ms = _dig(r, ("scores", "model_score")) or {}
        ceil, untr = _dig(paired, ("ceiling", "psnr")), _dig(paired, ("untranslated", "psnr"))
        if ceil is None or untr is None or not ceil > untr:
            continue
        for name, p in paired.items():
            if name in ("untranslated", "ceiling") or p.get("psnr") is None:
                continue
            fractions.setdefault(name, []).append((p["psnr"] - untr) / (ceil - untr))
            a, b = _dig(ms, (name, "miou")), _dig(ms, ("untranslated", "miou"))
            if a is not None and b is not None:
                gains.setdefault(name, []).append(a - b)
    return {
        name: {
            "fraction": _mean_std(f),
            "model_score_gain": _mean_std(gains.get(name, [])),
            "model_score_above": int(sum(g > 0 for g in gains.get(name, []))),
            "seeds": len(f),
        }
        for name, f in fractions.items()
    }


def compare(pconfig, per_seed, rows, confs, boot) -> list[dict]:
    """Every row against each ``config.compare_to`` baseline at the same N (the oracle against
    the baselines at N = 0): mean paired difference, intervals over seeds and over seeds + images."""
    by_key = {r["key"]: r for r in rows}
    out = []
    for base in tuple(pconfig.get("compare_to", ("source_only", "dakpn"))):
        for r in rows:
            if r["method"] == base:
                continue
            bkey = f"{base}_n{0 if r['method'] == 'oracle' else r['n']}"
            if bkey not in by_key:
                continue
            a, b = r["miou_per_seed"], by_key[bkey]["miou_per_seed"]
            pairs = [(x, y) for x, y in zip(a, b) if x is not None and y is not None]
            entry = {
                "method": r["method"],
                "n": r["n"],
                "key": r["key"],
                "baseline": base,
                "baseline_key": bkey,
                "seeds": stats.paired_bootstrap(
                    [x for x, _ in pairs], [y for _, y in pairs], **boot
                ),
                "per_seed": [x - y for x, y in pairs],
            }
            if confs.get(r["key"]) is not None and confs.get(bkey) is not None:
                entry["seeds_images"] = stats.paired_bootstrap_confusions(
                    confs[r["key"]], confs[bkey], **boot
                )
            primary = entry.get("seeds_images") or entry["seeds"]
            entry["verdict"] = (
                stats.verdict(primary)
                if len(pairs) >= MIN_SEEDS_FOR_VERDICT
                else f"n/a ({len(pairs)} seed(s) < {MIN_SEEDS_FOR_VERDICT})"
            )
            out.append(entry)
    return out


# ----------------------------------------------------------------------------- markdown


def _ci(c, scale=100.0, digits=1) -> str:
    if not c or not np.isfinite(c.get("lo", np.nan)):
        return "-"
    return f"{c['mean'] * scale:+.{digits}f} [{c['lo'] * scale:+.{digits}f}, {c['hi'] * scale:+.{digits}f}]"


def _sd(per_seed_differences, scale=100.0) -> str:
    """Standard deviation of the per-seed paired differences (points), the spread a recipe must
    shrink; "-" with fewer than 2 seeds."""
    d = [x for x in per_seed_differences if x is not None and np.isfinite(x)]
    return f"{scale * float(np.std(d, ddof=1)):.1f}" if len(d) >= 2 else "-"


def _row_label(pconfig, method: str) -> str:
    spec = pconfig.translators.get(method) if method in pconfig.translators else None
    return (spec.get("label", None) if spec is not None else None) or method


def markdown(pconfig, summary: dict, per_seed: list[dict], timings: dict | None = None) -> str:
    seeds = list(pconfig.seeds)
    level = int(round(100 * _boot(pconfig)["level"]))
    spread = "mean ± std over seeds" if len(per_seed) > 1 else "one seed, so no spread over seeds"
    lines = [
        f"# Protocol results ({len(seeds)} seed(s): {seeds})",
        "",
        f"real-val mIoU: {spread}, and [{level}% bootstrap interval of the mean over seeds "
        "and real-val images].",
        "",
        label_space_line(pconfig),
        "",
        "| method | N real labels | real-val mIoU (%) | interval | model score mIoU (%) | PSNR (dB) | SSIM | SWD "
        "| class colour err |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in summary["rows"]:
        g = lambda k, s=1.0, d=1: _fmt(*r[k], scale=s, digits=d) if k in r else "-"
        n = "all" if r["method"] == "oracle" else str(r["n"])
        ci = r.get("miou_ci")
        ci_s = (
            f"[{100 * ci['lo']:.1f}, {100 * ci['hi']:.1f}]" if ci and np.isfinite(ci["lo"]) else "-"
        )
        lines.append(
            f"| {_row_label(pconfig, r['method'])} | {n} | {g('miou', 100)} | {ci_s} | {g('model_score', 100)} "
            f"| {g('psnr', 1, 2)} | {g('ssim', 1, 3)} | {g('swd', 1, 3)} | {g('class_color_err', 1, 3)} |"
        )
    lines += [
        "",
        "Model score: the oracle segmenter (all real-train labels) labels each (translated) synthetic "
        "set; mIoU against the synthetic labels. PSNR / SSIM against the real rendering of the same "
        "scene (paired-eval); SWD: Laplacian-pyramid sliced Wasserstein distance to the real images "
        "(lower is closer); class colour err: mean over classes of the distance between a class's "
        "mean RGB in the translated and in the real images (paired-eval).",
        "",
    ]
    comps = summary.get("comparisons", [])
    if comps:
        lines += [
            f"## Paired differences (mIoU points, method - baseline; mean [{level}% bootstrap interval])",
            "",
            "Same seed = same segmenter initialisation and data order; same real-val images. Verdict from the "
            "interval over seeds and images; a difference is claimed only where it excludes 0, and only "
            f"with at least {MIN_SEEDS_FOR_VERDICT} seeds.",
            "",
            "| method | N | baseline | over seeds | over seeds + val images | sd over seeds | verdict |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for c in comps:
            n = "all" if c["method"] == "oracle" else str(c["n"])
            seeds_ci = (
                _ci(c["seeds"])
                if c["seeds"]["n"] > 1
                else (
                    f"{100 * c['seeds']['mean']:+.1f} (1 seed)"
                    if np.isfinite(c["seeds"]["mean"])
                    else "-"
                )
            )
            lines.append(
                f"| {_row_label(pconfig, c['method'])} | {n} | {c['baseline']} (N={c['baseline_key'].rsplit('_n', 1)[1]}) "
                f"| {seeds_ci} | {_ci(c.get('seeds_images'))} | {_sd(c['per_seed'])} | {c['verdict']} |"
            )
        nf = summary.get("noise_floor", {})
        if nf.get("half_width_seeds_images"):
            h = nf["half_width_seeds_images"]
            lines += [
                "",
                f"Interval half-width achieved ({nf['seeds']} seed(s), {nf['val_images']} real-val images, "
                f"seeds + images): median {100 * h['median']:.1f}, max {100 * h['max']:.1f} mIoU points"
                + (
                    f"; over seeds only: median {100 * nf['half_width_seeds']['median']:.1f}, max "
                    f"{100 * nf['half_width_seeds']['max']:.1f}"
                    if nf.get("half_width_seeds")
                    else ""
                )
                + ".",
            ]
        lines.append("")
    gap = summary.get("ceiling_gap") or {}
    if gap:
        lines += [
            "## Against the family ceiling (an oracle fitted on the paired views)",
            "",
            "Fraction of the paired-PSNR gap between the untranslated images and the family ceiling "
            "that each translator closes, and its model score minus the untranslated images' (the "
            "same oracle segmenter), mean ± std over seeds.",
            "",
            "| translator | gap closed (%) | model score − untranslated (mIoU points) | seeds above untranslated |",
            "| --- | --- | --- | --- |",
        ]
        for name, v in gap.items():
            lines.append(
                f"| {_row_label(pconfig, name)} | {_fmt(*v['fraction'], scale=100)} "
                f"| {_fmt(*v['model_score_gain'], scale=100)} | {v['model_score_above']} of {v['seeds']} |"
            )
        lines.append("")
    pc = summary.get("per_class_iou", {})
    if pc:
        present = summary.get("present_classes")
        if present is not None:
            classes = [c for c in next(iter(pc.values())) if c in present]
            absent = [c for c in next(iter(pc.values())) if c not in present]
        else:  # no per-image confusions: the classes some row has an IoU for
            classes = [
                c
                for c in next(iter(pc.values()))
                if any(np.isfinite(v[c]) for v in pc.values() if v[c] is not None)
            ]
            absent = []
        lines += ["## Per-class IoU (%), mean over seeds", ""]
        if absent:
            lines += [
                f"Classes with no labelled pixel in the evaluated split are left out: {', '.join(absent)}.",
                "",
            ]
        lines += [
            "| segmenter | " + " | ".join(classes) + " |",
            "| --- |" + " --- |" * len(classes),
        ]
        for key, v in pc.items():
            lines.append(
                f"| {key} | "
                + " | ".join(
                    "-" if v[c] is None or not np.isfinite(v[c]) else f"{100 * v[c]:.0f}"
                    for c in classes
                )
                + " |"
            )
        lines.append("")
    if len(per_seed) > 1:  # the spread behind every mean ± std above
        lines += [
            "Per seed: real-val mIoU (%) / model score mIoU (%):",
            "",
            "| segmenter | " + " | ".join(f"seed {r['seed']}" for r in per_seed) + " |",
            "| --- |" + " --- |" * len(per_seed),
        ]
        for key in per_seed[0]["segmenters"]:
            _, score_key = method_and_score_key(key)
            cells = []
            for r in per_seed:
                miou = seg_miou(r, key)
                ms = _dig(r, ("scores", "model_score", score_key, "miou"))
                cells.append(
                    ("-" if miou is None else f"{100 * miou:.1f}")
                    + ("" if ms is None else f" / {100 * ms:.1f}")
                )
            lines.append(f"| {key} | " + " | ".join(cells) + " |")
        lines.append("")
    names = list(_dig(per_seed[0], ("scores", "model_score")) or {})
    if names:
        lines.append(
            "Largest label flips (label -> oracle prediction, fraction of the label's pixels), per seed:"
        )
        lines.append("")
        for name in names:
            per = []
            for r in per_seed:
                s = _dig(r, ("scores", "model_score", name))
                if s:
                    per.append(
                        f"seed {r['seed']}: "
                        + ", ".join(f"{a}->{b} {f:.2f}" for a, b, f in s["top_flips"][:3])
                    )
            lines.append(f"- {name}: " + "; ".join(per))
        lines.append("")
    if timings:
        lines += profile_lines(timings)
    for name, why in per_seed[0].get("skipped", {}).items():
        lines.append(f"- skipped {name}: {why}")
    return "\n".join(lines) + "\n"


def profile(timings: dict) -> dict:
    """{kind: {count, wall_s, cpu_s}} summed over the stages that ran (not reused)."""
    out = {}
    for key, t in timings.items():
        k = out.setdefault(stage_kind(key), {"count": 0, "wall_s": 0.0, "cpu_s": 0.0})
        k["count"] += 1
        k["wall_s"] += float(t.get("wall_s", 0.0))
        k["cpu_s"] += float(t.get("cpu_s", 0.0))
    return out


def profile_lines(timings: dict) -> list[str]:
    prof = profile(timings)
    wall = sum(v["wall_s"] for v in prof.values()) or 1.0
    lines = [
        "## Stage times (as measured when each stage ran; process CPU seconds count both cores)",
        "",
        "| stage kind | stages | wall (s) | share | CPU (s) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for kind, v in sorted(prof.items(), key=lambda kv: -kv[1]["wall_s"]):
        lines.append(
            f"| {kind} | {v['count']} | {v['wall_s']:.0f} | {100 * v['wall_s'] / wall:.0f}% | {v['cpu_s']:.0f} |"
        )
    return lines + [""]


# ----------------------------------------------------------------------------- html


def _md_to_html(md: str) -> str:
    """The subset of markdown the report writes: headings, pipe tables, bullet lists, paragraphs."""
    out, table, items = [], None, None
    flush_items = lambda: (
        out.append("<ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in items) + "</ul>")
        if items
        else None
    )
    for line in md.splitlines() + [""]:
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if set("".join(cells)) <= set("- "):
                continue
            if table is None:
                table = [
                    "<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in cells) + "</tr>"
                ]
            else:
                table.append(
                    "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>"
                )
            continue
        if table is not None:
            out.append("".join(table) + "</table>")
            table = None
        if line.startswith("- "):
            items = (items or []) + [line[2:]]
            continue
        if items is not None:
            flush_items()
            items = None
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            out.append(f"<h{level}>{html.escape(line.lstrip('#').strip())}</h{level}>")
        elif line.strip():
            out.append(f"<p>{html.escape(line)}</p>")
    return "\n".join(out)


def _img_tag(path: str, alt: str) -> str:
    with open(path, "rb") as f:
        data = base64.b64encode(f.read()).decode("ascii")
    return f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"><figcaption>{html.escape(alt)}</figcaption></figure>'


def write_html(path: str, text: str, images: list[tuple[str, str]], configs: dict) -> None:
    """A self-contained page (no external files, scripts or fonts): the report's tables, the
    images embedded as base64 PNG, and the configs as JSON."""
    style = (
        "body{font-family:sans-serif;max-width:1200px;margin:1em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;margin:.5em 0;font-size:13px}td,th{border:1px solid #bbb;padding:2px 6px}"
        "th{background:#eee}tr:nth-child(even) td{background:#fafafa}img{max-width:100%;image-rendering:pixelated}"
        "pre{background:#f4f4f4;padding:.5em;overflow:auto;font-size:12px}figure{margin:1em 0}"
    )
    body = _md_to_html(text)
    figs = [_img_tag(p, alt) for p, alt in images if os.path.exists(p)]
    head, sep, rest = body.partition("</table>")  # the figures right under the main table
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>dakpn-jax protocol results</title>",
        f"<style>{style}</style></head><body>",
        head + sep,
        *figs,
        rest,
    ]
    for name, cfg in configs.items():
        parts.append(
            f"<details><summary>{html.escape(name)}</summary><pre>"
            f"{html.escape(json.dumps(cfg, indent=1, sort_keys=True, default=json_default))}</pre></details>"
        )
    parts.append("</body></html>")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write("\n".join(parts))
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- all of it


def write_report(
    pconfig,
    workdir: str,
    per_seed: list[dict],
    timings: dict | None = None,
    confusions: dict | None = None,
    missing: dict | None = None,
    write: bool = True,
    absent: list | None = None,
) -> dict:
    """Writes results.{json,md,html}, the plot and the grids into ``workdir``. ``confusions``:
    per-image confusions by (seed, row key) instead of the workdir's stages (a report rebuilt from
    records); ``missing``: {seed: [row keys]} of seeds left out for lack of rows (listed);
    ``absent``: translator rows of the config that no seed has a record of yet (listed);
    ``write=False``: only the returned report (the hosts of a multi-host run other than process 0)."""
    summary = summarise(pconfig, per_seed, workdir, confusions)
    from dakpn_jax.data import label_space  # pylint: disable=import-outside-toplevel

    report = {
        "protocol_config": pconfig.to_dict(),
        "seeds": list(pconfig.seeds),
        "summary": summary,
        "label_space": label_space.for_data(pconfig.data).to_dict(),
        "timings": timings or {},
        "profile": profile(timings or {}),
        "per_seed": per_seed,
        "missing": {str(k): v for k, v in (missing or {}).items()},
        "absent_rows": list(absent or []),
    }
    text = markdown(pconfig, summary, per_seed, timings)
    if missing or absent:
        text += "\n## Missing\n\n" + "".join(
            f"- seed {s}: no record of {', '.join(keys)}; the seed is left out of every table\n"
            for s, keys in sorted(missing.items())
        )
        if absent:
            text += (
                f"- rows of the config with no record in any seed yet: {', '.join(absent)}; "
                "every table leaves them out\n"
            )
    out = {"summary": summary, "markdown": text, "report": report}
    if not write:
        return out
    tmp = os.path.join(workdir, layout.RESULTS_JSON + ".tmp")
    with open(tmp, "w") as f:
        json.dump(report, f, indent=1, sort_keys=True, default=json_default)
    os.replace(tmp, os.path.join(workdir, layout.RESULTS_JSON))
    with open(os.path.join(workdir, layout.RESULTS_MD), "w") as f:
        f.write(text)
    plot_miou_vs_n(summary, os.path.join(workdir, layout.PLOT))
    images = [(os.path.join(workdir, layout.PLOT), "real-val mIoU against N (95% intervals)")]
    for r in per_seed:
        src = os.path.join(workdir, layout.scores_key(r["seed"]), layout.GRID)
        if os.path.exists(src):
            dst = os.path.join(workdir, layout.grid_file(r["seed"]))
            with open(src, "rb") as a, open(dst, "wb") as b:
                b.write(a.read())
            cols = _dig(r, ("scores", "grid_columns")) or []
            images.append((dst, f"paired-eval scenes, seed {r['seed']}: " + " | ".join(cols)))
    configs = {"protocol config": pconfig.to_dict()}
    r0 = per_seed[0]
    for name, t in r0.get("translators", {}).items():
        configs[f"seed {r0['seed']}: translator {name}"] = t.get("config", t)
    for key in ("source_only_n0", "oracle"):
        if key in r0.get("segmenters", {}):
            configs[f"seed {r0['seed']}: segmenter {key}"] = r0["segmenters"][key].get("config")
    write_html(os.path.join(workdir, layout.RESULTS_HTML), text, images, configs)
    return out
