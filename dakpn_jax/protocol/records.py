"""Results as data: small, self-describing records of a protocol run, that a report can be rebuilt from.

A run with ``--results_dir=DIR`` (e.g. ``results/cpu``, committed to the repository) writes, after each
seed::

    DIR/configs/<hash>.json         the protocol config the records were made with (seeds left out)
    DIR/seed<k>/<row>_n<N>.json     one per segmenter stage: real-val mIoU, per-class IoU and the
                                    per-image confusion matrices (sparse), the stage's config hash,
                                    the code's commit, wall and CPU seconds
    DIR/seed<k>/scores.json         the seed's model score and paired scores (no images); a run
                                    of some rows (``--rows``) adds its translators' entries to
                                    the ones already there
    DIR/seed<k>/translator_<row>.json  wall and CPU seconds of a row's training and export stages
                                    (the run's CPU hours: :func:`cpu_hours`) and its trainer's
                                    final metrics

Every record names its protocol config by hash (``protocol``), so records of several runs, from
several machines, merge into one report as long as they were made with the same protocol config;
:func:`load` refuses records of different configs and names the fields that differ. The protocol
config names config files (configs/default.py, configs/segmentation.py, ...) whose contents its hash
cannot cover, so segmenter and translator records also carry ``resolved``: the hash of the stage
config those files resolved to (`methods.resolved_configs`, seeds aside; stored as
``DIR/configs/resolved_<hash>.json``). A run whose files resolve otherwise than the records' is
refused before it trains, and records of one row that resolved differently are refused by
:func:`load`, each naming the fields that differ. The report
uses the seeds whose rows are all there and lists what is missing for the others.
``experiments/protocol.py --report_only --results_dir=DIR`` rebuilds every table, the plot and the
html from the records alone, without training.

Size: a segmenter record holds the non-zero entries of its (I, C, C) confusions, a few kB to a few
tens of kB for 100 to 200 real-val images of the embedded benchmark.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import subprocess

import numpy as np

from dakpn_jax.protocol import layout, report

FORMAT = 1
_VOLATILE = ("seeds",)  # protocol config fields that may differ between records that merge


def _canonical(tree) -> str:
    return json.dumps(tree, sort_keys=True, default=layout.json_default, separators=(",", ":"))


def protocol_fields(pconfig) -> dict:
    """The protocol config as a dict, without the fields records of one table may differ in."""
    d = pconfig.to_dict() if hasattr(pconfig, "to_dict") else dict(pconfig)
    return {k: v for k, v in d.items() if k not in _VOLATILE}


def config_hash(tree) -> str:
    """A short, stable hash of a JSON-able tree (sorted keys)."""
    return hashlib.sha256(_canonical(tree).encode()).hexdigest()[:16]


def code_commit() -> str | None:
    """The git commit of the code that made a record (``+dirty`` with local changes), or None."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

    def git(*args: str) -> str:
        run = subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, timeout=10, check=True
        )
        return run.stdout.strip()

    try:
        sha = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    return sha + ("+dirty" if dirty else "")


def _write_json(path: str, tree) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(
            tree, f, indent=None, sort_keys=True, default=layout.json_default, separators=(",", ":")
        )
        f.write("\n")
    os.replace(tmp, path)


def sparse_confusions(conf: np.ndarray) -> dict:
    """(I, C, C) int -> {"shape", "index": [[i, label, prediction], ...], "count": [...]}"""
    conf = np.asarray(conf, np.int64)
    idx = np.argwhere(conf != 0)
    return {"shape": list(conf.shape), "index": idx.tolist(), "count": conf[tuple(idx.T)].tolist()}


def dense_confusions(sparse: dict) -> np.ndarray:
    """Inverse of :func:`sparse_confusions`."""
    conf = np.zeros(tuple(sparse["shape"]), np.int64)
    idx = np.asarray(sparse["index"], np.int64).reshape(-1, len(sparse["shape"]))
    conf[tuple(idx.T)] = np.asarray(sparse["count"], np.int64)
    return conf


def write_seed(results_dir: str, pconfig, workdir: str, seed_result: dict) -> list[str]:
    """Writes the records of one finished seed (read back from its stages under ``workdir``);
    returns their paths. ValueError when ``results_dir`` already holds records of this seed made
    with another protocol config (a rerun with changed settings must go to another directory)."""
    fields = protocol_fields(pconfig)
    phash = config_hash(fields)
    cfg_path = os.path.join(results_dir, "configs", f"{phash}.json")
    if not os.path.exists(cfg_path):
        _write_json(cfg_path, fields)
    seed = int(seed_result["seed"])
    commit = code_commit()
    base = {"format": FORMAT, "protocol": phash, "seed": seed, "commit": commit}
    resolved = _store_resolved(results_dir, pconfig)
    written = []
    for index, (key, res) in enumerate(seed_result["segmenters"].items()):
        directory = os.path.join(workdir, layout.segmenter_key(seed, key))
        conf = layout.load_confusions(directory)
        stage = layout.read_stage(directory) or {}
        rec = {
            **base,
            "kind": "segmenter",
            "key": key,
            "index": index,
            "val": res.get("val"),
            "final": res.get("final"),
            "stage_config": config_hash(res.get("config") or {}),
            "resolved": resolved.get("segmenter"),
            "timing": stage.get("timing"),
            "confusions": None if conf is None else sparse_confusions(conf),
        }
        path = os.path.join(results_dir, layout.seed_dir(seed), f"{key}.json")
        _check_same_protocol(path, phash, results_dir)
        _write_json(path, rec)
        written.append(path)
    for name, keys in seed_result.get("translator_stages", {}).items():
        timing = {
            part: (layout.read_stage(os.path.join(workdir, key)) or {}).get("timing")
            for part, key in keys.items()
            if key is not None
        }
        final = (seed_result.get("translators", {}).get(name) or {}).get("final")
        rec = {**base, "kind": "translator", "key": name, "stages": keys, "timing": timing}
        if resolved.get(name) is not None:
            rec["resolved"] = resolved[name]
        if final is not None:
            rec["final"] = final
        path = os.path.join(results_dir, layout.seed_dir(seed), f"translator_{name}.json")
        _check_same_protocol(path, phash, results_dir)
        _write_json(path, rec)
        written.append(path)
    scores = seed_result.get("scores")
    if scores is not None:
        stage = layout.read_stage(os.path.join(workdir, layout.scores_key(seed))) or {}
        rec = {
            **base,
            "kind": "scores",
            "result": scores,
            "timing": stage.get("timing"),
            "skipped": seed_result.get("skipped", {}),
            "oracle_n": seed_result.get("oracle_n"),
        }
        path = os.path.join(results_dir, layout.seed_dir(seed), "scores.json")
        _check_same_protocol(path, phash, results_dir)
        rec = _merge_scores(path, rec)
        _write_json(path, rec)
        written.append(path)
    return written


def _merge_scores(path: str, rec: dict) -> dict:
    """``rec`` with the translator entries of the scores record already at ``path`` (same protocol,
    checked before) that ``rec`` lacks: runs of different rows of one seed (``--rows``) add up to
    the seed's scores. Entries of ``rec`` win (a rerun of a row replaces its scores). ``timings``
    keeps each run's stage seconds under the rows it scored, so a rerun replaces, never adds."""
    rows = ",".join(sorted(set(rec["result"].get("model_score") or {}) - {"untranslated"}))
    timings = {rows: rec["timing"]} if rec.get("timing") else {}
    if not os.path.exists(path):
        return {**rec, "timings": timings}
    with open(path) as f:
        old = json.load(f)
    result = dict(rec["result"])
    for part in ("model_score", "paired"):
        merged = dict(old.get("result", {}).get(part) or {})
        merged.update(result.get(part) or {})
        if merged:
            result[part] = merged
    return {
        **rec,
        "result": result,
        "skipped": {**old.get("skipped", {}), **rec.get("skipped", {})},
        "timings": {**(old.get("timings") or {}), **timings},
    }


def _store_resolved(results_dir: str, pconfig) -> dict:
    """``{"segmenter" | row: hash}`` of ``pconfig``'s resolved stage configs, each stored once as
    ``configs/resolved_<hash>.json`` (so a later mismatch can name its fields)."""
    out = {}
    for part, tree in _resolved(pconfig).items():
        h = config_hash(tree)
        path = os.path.join(results_dir, "configs", f"resolved_{h}.json")
        if not os.path.exists(path):
            _write_json(path, tree)
        out[part] = h
    return out


def _resolved(pconfig) -> dict:
    from dakpn_jax.protocol import methods  # pylint: disable=import-outside-toplevel

    return json.loads(_canonical(methods.resolved_configs(pconfig)))


def _resolved_part(record: dict) -> str | None:
    """Which resolved config a record's ``resolved`` hash is of: "segmenter", a row, or None."""
    if record.get("resolved") is None:
        return None  # records written before resolved configs were kept
    return "segmenter" if record.get("kind") == "segmenter" else record.get("key")


def _resolved_difference(results_dir: str, a: str, b: str | dict) -> str:
    """The fields in which the stored resolved config ``a`` (a hash) differs from ``b``: another
    stored one's hash, or a resolved config itself (this run's)."""
    ta = _stored_config(results_dir, f"resolved_{a}")
    tb = b if isinstance(b, dict) else _stored_config(results_dir, f"resolved_{b}")
    if ta is None or tb is None:
        return f"resolved config {a if ta is None else b} is not stored"
    return difference(ta, tb)


def cpu_hours(results_dir: str) -> dict:
    """``{"total": h, "per_seed": {seed: h}, "by_kind": {kind: h}}``: process CPU hours of every
    stage the records time (segmenters, scores, translators' training and export), summed."""
    total, per_seed, by_kind = 0.0, {}, {}
    for p in sorted(glob.glob(os.path.join(results_dir, "seed*", "*.json"))):
        with open(p) as f:
            r = json.load(f)
        if r.get("kind") == "translator":
            timings = list((r.get("timing") or {}).values())
        elif r.get("timings"):  # scores: one entry per run that scored some of the seed's rows
            timings = list(r["timings"].values())
        else:
            timings = [r.get("timing")]
        h = sum(float(t.get("cpu_s", 0.0)) for t in timings if t) / 3600.0
        total += h
        per_seed[int(r["seed"])] = per_seed.get(int(r["seed"]), 0.0) + h
        by_kind[r.get("kind", "?")] = by_kind.get(r.get("kind", "?"), 0.0) + h
    return {"total": total, "per_seed": per_seed, "by_kind": by_kind}


def _check_same_protocol(path: str, phash: str, results_dir: str) -> None:
    if not os.path.exists(path):
        return
    with open(path) as f:
        old = json.load(f).get("protocol")
    if old != phash:
        raise ValueError(
            f"{path}: a record of another protocol config is there already "
            f"({describe_difference(results_dir, old, phash)}); write to another --results_dir"
        )


def _flatten(tree, prefix="") -> dict:
    if isinstance(tree, dict):
        out = {}
        for k, v in tree.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: tree}


def _stored_config(results_dir: str, h: str) -> dict | None:
    path = os.path.join(results_dir, "configs", f"{h}.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def difference(a: dict, b: dict) -> str:
    """The protocol config fields (dotted names) in which ``a`` and ``b`` differ, with both values."""
    fa, fb = _flatten(a), _flatten(b)
    diff = sorted(k for k in set(fa) | set(fb) if _canonical(fa.get(k)) != _canonical(fb.get(k)))
    shown = ", ".join(f"{k}: {fa.get(k)!r} vs {fb.get(k)!r}" for k in diff[:5])
    return f"{len(diff)} field(s) differ: {shown}" + (" ..." if len(diff) > 5 else "")


def describe_difference(results_dir: str, a: str, b: str) -> str:
    """Which protocol config fields differ between the stored configs with hashes ``a`` and ``b``."""
    ta, tb = _stored_config(results_dir, a), _stored_config(results_dir, b)
    if ta is None or tb is None:
        return f"config {a if ta is None else b} is not in {os.path.join(results_dir, 'configs')}"
    return f"protocol configs {a} and {b}: " + difference(ta, tb)


def check_compatible(results_dir: str, pconfig) -> None:
    """ValueError, before anything trains, when ``results_dir`` holds records of another protocol
    config than ``pconfig`` (seeds aside): they could never make one table with this run's."""
    mine = protocol_fields(pconfig)
    h = config_hash(mine)
    recs = []
    for p in sorted(glob.glob(os.path.join(results_dir, "seed*", "*.json"))):
        with open(p) as f:
            recs.append((p, json.load(f)))
    for p, rec in recs:
        other = rec.get("protocol")
        if other != h:
            stored = _stored_config(results_dir, other)
            why = (
                difference(stored, mine)
                if stored is not None
                else f"its config {other} is not stored"
            )
            raise ValueError(
                f"--results_dir={results_dir}: {p} was made with another protocol config "
                f"({why}); give another --results_dir or the same config"
            )
    resolved = None
    for p, rec in recs:
        part = _resolved_part(rec)
        if part is None:
            continue
        if resolved is None:
            resolved = _resolved(pconfig)
        if part in resolved and config_hash(resolved[part]) != rec["resolved"]:
            raise ValueError(
                f"--results_dir={results_dir}: {p} was made when the config files resolved "
                f"{part}'s stage config otherwise ("
                f"{_resolved_difference(results_dir, rec['resolved'], resolved[part])}); a config "
                "file changed since: give another --results_dir or restore the file"
            )


def load(results_dir: str, expected_keys: list[str] | None = None) -> dict:
    """Every record under ``results_dir`` -> ``{"protocol_config": dict, "per_seed": [...],
    "confusions": {(seed, key): (I, C, C)}, "missing": {seed: [keys]}, "records": n}``.

    ``per_seed`` holds the seeds whose segmenter rows are all there (``expected_keys``, default: the
    rows of the most complete seed), sorted, in the shape `report.summarise` reads. ValueError when
    there is no record, or when records name different protocol configs (the message names the
    fields that differ)."""
    paths = sorted(glob.glob(os.path.join(results_dir, "seed*", "*.json")))
    if not paths:
        raise ValueError(
            f"{results_dir}: no protocol records (seed<k>/*.json) to build a report from"
        )
    recs = []
    for p in paths:
        with open(p) as f:
            try:
                r = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{p}: not a protocol record ({e})") from e
        if r.get("format") != FORMAT or "protocol" not in r or "seed" not in r:
            raise ValueError(
                f"{p}: not a protocol record of format {FORMAT} (fields format, protocol, seed)"
            )
        recs.append((p, r))
    hashes = sorted({r["protocol"] for _, r in recs})
    if len(hashes) > 1:
        first = next(p for p, r in recs if r["protocol"] == hashes[0])
        other = next(p for p, r in recs if r["protocol"] == hashes[1])
        raise ValueError(
            f"{results_dir}: records of different protocol configs cannot make one table "
            f"({first} and {other}: {describe_difference(results_dir, hashes[0], hashes[1])})"
        )
    by_part: dict[str, tuple[str, str]] = {}
    for p, r in recs:
        part = _resolved_part(r)
        if part is None:
            continue
        first = by_part.setdefault(part, (p, r["resolved"]))
        if first[1] != r["resolved"]:
            raise ValueError(
                f"{results_dir}: {first[0]} and {p} were made with different {part} stage configs "
                f"(a config file changed between the runs: "
                f"{_resolved_difference(results_dir, first[1], r['resolved'])})"
            )
    with open(os.path.join(results_dir, "configs", f"{hashes[0]}.json")) as f:
        protocol_config = json.load(f)
    seeds: dict[int, dict] = {}
    confusions = {}
    # Rows in the order the run made them (the report's row order), not the files' order.
    recs.sort(key=lambda pr: (pr[1].get("kind") != "segmenter", pr[1].get("index", 0)))
    for _, r in recs:
        s = seeds.setdefault(
            int(r["seed"]),
            {"seed": int(r["seed"]), "translators": {}, "segmenters": {}, "skipped": {}},
        )
        if r["kind"] == "segmenter":
            s["segmenters"][r["key"]] = {k: r[k] for k in ("val", "final") if r.get(k) is not None}
            if r.get("confusions") is not None:
                confusions[(int(r["seed"]), r["key"])] = dense_confusions(r["confusions"])
        elif r["kind"] == "scores":
            s["scores"] = r["result"]
            s["skipped"] = r.get("skipped", {})
            if r.get("oracle_n") is not None:
                s["oracle_n"] = r["oracle_n"]
    if expected_keys is None:
        expected_keys = max((list(s["segmenters"]) for s in seeds.values()), key=len)
    complete, missing = [], {}
    for seed in sorted(seeds):
        s = seeds[seed]
        lacking = [k for k in expected_keys if k not in s["segmenters"]]
        if lacking:
            missing[seed] = lacking
            continue
        s["segmenters"] = {k: s["segmenters"][k] for k in expected_keys}
        s.setdefault("scores", {})
        complete.append(s)
    return {
        "protocol_config": protocol_config,
        "per_seed": complete,
        "confusions": confusions,
        "missing": missing,
        "absent": _absent_rows(protocol_config, seeds.values()),
        "records": len(recs),
    }


def _absent_rows(protocol_config: dict, seeds) -> list[str]:
    """Translator rows of the config of which no seed has a segmenter record, leaving out rows a
    run omitted with its reason (``skipped``, e.g. VSAIT without its weights): what a run of some
    rows (``--rows``) has not made yet."""
    import ml_collections  # pylint: disable=import-outside-toplevel

    from dakpn_jax.protocol import methods  # pylint: disable=import-outside-toplevel

    pc = ml_collections.ConfigDict(protocol_config)
    have = {k for s in seeds for k in s["segmenters"]}
    skipped = {k for s in seeds for k in s.get("skipped", {})}
    return [
        name
        for name in pc.translators
        if name not in skipped
        and not any(layout.segmenter_name(name, n) in have for n in methods.n_values(pc, name))
    ]


def rebuild_report(results_dir: str, workdir: str, pconfig=None) -> dict:
    """The report (results.{json,md,html}, the plot) in ``workdir`` from the records in
    ``results_dir`` alone: nothing trains. ``pconfig``, when given, must be the config the records
    were made with (seeds aside); by default the records' own config is used. Returns
    `report.write_report`'s dict plus ``"missing"``."""
    import ml_collections  # pylint: disable=import-outside-toplevel

    loaded = load(results_dir)
    if pconfig is not None and config_hash(protocol_fields(pconfig)) != config_hash(
        loaded["protocol_config"]
    ):
        raise ValueError(
            f"{results_dir}: the records were made with another protocol config "
            f"({difference(loaded['protocol_config'], protocol_fields(pconfig))})"
        )
    if not loaded["per_seed"]:
        raise ValueError(
            f"{results_dir}: no seed has a record of every row (missing: {loaded['missing']})"
        )
    pc = ml_collections.ConfigDict(loaded["protocol_config"])
    with pc.unlocked():
        pc.seeds = tuple(r["seed"] for r in loaded["per_seed"])
    os.makedirs(workdir, exist_ok=True)
    out = report.write_report(
        pc,
        workdir,
        loaded["per_seed"],
        confusions=loaded["confusions"],
        missing=loaded["missing"],
        absent=loaded["absent"],
    )
    return {**out, "missing": loaded["missing"], "absent": loaded["absent"]}
