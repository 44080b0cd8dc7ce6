"""``experiments/protocol.py --dry_run``: every stage, its estimated time, the exports' disk size.

Nothing trains. The data folders and weight files are checked first (`preflight`), so a dry run
also says whether the real run would start.

Time per stage, in order of preference:

1. measured: the stage is already complete in the workdir (its ``stage.json`` timing);
2. a measured rate: seconds per planned cost unit of the completed stages of the same kind
   (translator, export, segmenter, ...) in the workdir, times the stage's cost (`stages.plan`:
   training steps x batch, images exported or scored); so run one short stage on the target
   machine (e.g. ``--config.seeds='(0,)'`` stopped after the first stages) and dry-run again with
   that workdir for estimates of that machine;
3. a DA-KPN translator, when JAX's backend is an accelerator: the train step measured on an H100
   at the paper's shapes (docs/RESULTS.md, `experiments/bench_train_step.py`: 23.35 ms per step,
   batch 8, 1052 x 1914 frames, K = 25), scaled by the frame's pixels and the batch, times the
   steps (input and checkpoint time not included). On a CPU backend that rule would price a
   1200-step DA-KPN at under a second, so rule 4 prices it there;
4. otherwise the 2-core CPU profile the costs were calibrated on (one cost unit = 0.027 CPU s at
   128 x 256 pixels, docs/notes/issue14.md), scaled by the synthetic frame's pixels. That is an
   upper-bound guess for an accelerator, and the output says which rule each line used.

Disk: each export holds every synthetic-train image (RGB PNG) and its label (8-bit PNG). A stage
already exported is measured (``du``); otherwise the uncompressed size (H x W x 4 bytes per image)
bounds it from above (lossless PNG of rendered frames is typically 40 to 70 % of that).
"""

from __future__ import annotations

import os

from dakpn_jax.protocol import layout, methods, preflight, report, stages

CPU_S_PER_UNIT = 0.027
CPU_PROFILE_PIXELS = 128 * 256
H100_DAKPN_S_PER_STEP, H100_DAKPN_PIXELS, H100_DAKPN_BATCH = 0.02335, 1052 * 1914, 8


def _fmt(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024.0
    return f"{n:.1f} TiB"


def _du(path: str) -> int:
    total = 0
    for root, _, files in os.walk(path):
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    return total


def frame_size(pconfig) -> tuple[int, int]:
    """(H, W) of the synthetic-train frames the exports hold (the first frame, after resizing)."""
    from dakpn_jax.data import sources  # pylint: disable=import-outside-toplevel

    d = pconfig.data
    if d.get("name", "procedural") == "procedural":
        return int(d.height), int(d.width)
    size = d.get("synthetic_size", None)
    if size:
        return int(size[0]), int(size[1])
    h, w = sources.make_source(d, "synthetic-train")[0]["image"].shape[:2]
    return int(h), int(w)


def estimate(pconfig, workdir: str | None = None, backend: str | None = None) -> dict:
    """{"stages": [{key, what, cost, seconds, rule}], "total_s", "exports": {...}, "counts"}.
    ``backend``: the device the run will use ("cpu", "gpu", "tpu"; default JAX's default backend),
    which decides whether DA-KPN translators are priced by the H100 rule (3) or the CPU profile."""
    if backend is None:
        import jax

        backend = jax.default_backend()
    counts = preflight.check(pconfig)
    plan = stages.plan(pconfig)
    h, w = frame_size(pconfig)
    timed = {}
    if workdir:
        for key, _, _ in plan:
            t = layout.stage_timing(os.path.join(workdir, key))
            if t is not None:
                timed[key] = float(t["wall_s"])
    cost = {key: c for key, _, c in plan}
    rate = {}  # kind -> seconds per cost unit, from the completed stages of that kind
    for key, wall in timed.items():
        r = rate.setdefault(report.stage_kind(key), [0.0, 0.0])
        r[0] += wall
        r[1] += cost[key]
    default = CPU_S_PER_UNIT * h * w / CPU_PROFILE_PIXELS
    dakpn_steps = {}  # translator stage key -> (steps, batch) of the DA-KPN rows
    for s in pconfig.seeds:
        for name, t in methods.build_translators(pconfig, int(s)).items():
            if backend != "cpu" and t.trained and t.config.get("method") == "dakpn":
                dakpn_steps[f"seed{int(s)}/translator_{name}"] = (
                    int(t.config.num_train_steps),
                    int(t.config.batch_size),
                )
    rows = []
    for key, what, c in plan:
        kind = report.stage_kind(key)
        if key in timed:
            rows.append(dict(key=key, what=what, cost=c, seconds=timed[key], rule="measured"))
        elif kind in rate and rate[kind][1] > 0:
            rows.append(
                dict(
                    key=key,
                    what=what,
                    cost=c,
                    seconds=c * rate[kind][0] / rate[kind][1],
                    rule=f"measured {kind} rate",
                )
            )
        elif key in dakpn_steps:
            steps, batch = dakpn_steps[key]
            per = H100_DAKPN_S_PER_STEP * (h * w / H100_DAKPN_PIXELS) * (batch / H100_DAKPN_BATCH)
            rows.append(
                dict(key=key, what=what, cost=c, seconds=steps * per, rule="H100 DA-KPN step")
            )
        else:
            rows.append(dict(key=key, what=what, cost=c, seconds=c * default, rule="CPU profile"))
    n_export = counts["synthetic-train"]
    per_export = n_export * h * w * 4
    exports = {}
    for key, _, _ in plan:
        if report.stage_kind(key) == "export":
            path = os.path.join(workdir, key, "data") if workdir else None
            done = path is not None and os.path.isdir(path) and key in timed
            exports[key] = {
                "bytes": _du(path) if done else per_export,
                "rule": "measured" if done else "upper bound",
            }
    return {
        "stages": rows,
        "total_s": sum(r["seconds"] for r in rows),
        "exports": exports,
        "counts": counts,
        "frame": (h, w),
        "images_per_export": n_export,
    }


def lines(pconfig, workdir: str | None = None, backend: str | None = None) -> list[str]:
    """The dry run as printed lines (``backend``: as in :func:`estimate`)."""
    e = estimate(pconfig, workdir, backend)
    space = methods.label_space(pconfig)
    c = e["counts"]
    out = [
        f"dry run: {len(e['stages'])} stages over {len(pconfig.seeds)} seed(s); label space {space.name} "
        f"({space.num_classes} classes); images: synthetic-train {c['synthetic-train']}, real-train "
        f"{c['real-train']}, real-val {c['real-val']}; frames {e['frame'][0]} x {e['frame'][1]}"
    ]
    width = len(str(len(e["stages"])))
    for i, r in enumerate(e["stages"], 1):
        out.append(
            f"[{i:>{width}}/{len(e['stages'])}] {r['what']}: ~{_fmt(r['seconds'])} ({r['rule']})"
        )
    out.append(
        f"estimated time: ~{_fmt(e['total_s'])} (rules: measured = this stage's stage.json in the workdir; "
        "measured <kind> rate = seconds per cost unit of completed stages of that kind in the workdir; "
        "H100 DA-KPN step = 23.35 ms at 1052 x 1914, batch 8 (docs/RESULTS.md) scaled by pixels and batch; "
        "CPU profile = the 2-core CPU calibration scaled by frame pixels, an upper-bound guess for an "
        "accelerator)"
    )
    total = sum(x["bytes"] for x in e["exports"].values())
    out.append(
        f"exports: {len(e['exports'])} folders (one per translator row and seed, shared by every N), "
        f"{e['images_per_export']} images each: {_bytes(total)} in all "
        f"({'measured where exported, else ' if any(x['rule'] == 'measured' for x in e['exports'].values()) else ''}"
        "uncompressed upper bound: H x W x (3 + 1) bytes per image)"
    )
    return out
