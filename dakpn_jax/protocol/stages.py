"""The protocol's stages (docs/METHOD.md §1 step 8, §9) and the driver that runs them for every seed.

Per seed, each stage in its own folder under ``DIR/seed<k>/`` (reused when ``stage.json`` says it
is complete, so an interrupted run continues where it stopped; a trainer stage also resumes from
its checkpoint):

1. ``feature_segmenter``: a segmenter on the synthetic labels, only if a translator uses
   frozen-segmenter features.
2. ``translator_<name>``: every trained row of ``config.translators`` (`methods`), trained with
   `dakpn_jax.training.trainer.train_and_evaluate`; training-free controls have no such stage.
3. ``export_<name>``: synthetic-train translated to disk (`dakpn_jax.export.export_translated`,
   with the control's ``translate_fn`` for controls).
4. ``seg_<row>_n<N>``: downstream segmenters on {source-only, each translation} (+ N labelled real
   images) and ``seg_oracle`` (all real-train labels). Each is then scored on real-val image by
   image: ``confusions.npz`` (I, C, C) in its folder, mIoU and per-class IoU in its result; the
   statistics (`stats`) resample those.
5. ``scores``: model score and paired-eval PSNR / SSIM / SWD per translation (and untranslated),
   and the paired-eval grid.

Pairing: a seed's segmenters share ``config.seed`` (initialisation, data order); see `stats`.
Stage timings (wall and process CPU seconds) are stored in every ``stage.json``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any, Callable

import ml_collections
import numpy as np

from dakpn_jax import registry, workdir_lock
from dakpn_jax.protocol import hosts, layout, methods, records, report
from dakpn_jax.protocol.console import StageReporter, stage_kind

log = logging.getLogger("dakpn_jax.protocol")
STAGE_FILE = layout.STAGE_FILE  # protocol.STAGE_FILE, as before
NO_PAIRED_VIEW = (
    "this data has no paired view (the same scene in both domains), so paired PSNR / SSIM / SWD, "
    "class colour error and the paired grid are not computed; the model score (the oracle segmenter "
    "of this run on each translated set) and real-val mIoU are"
)


# ----------------------------------------------------------------------------- one stage


def stage(
    directory: str,
    fn: Callable[[str], dict],
    *,
    what: str,
    still_valid: Callable[[dict], bool] | None = None,
    key: str | None = None,
    reporter: StageReporter | None = None,
) -> dict:
    """Runs ``fn(directory) -> result`` unless ``directory/stage.json`` says it is complete (and
    ``still_valid(result)``, when given: a stage that summarises other stages reruns when the
    config has grown, e.g. the scores once a translator was added). The marker is written
    atomically, with the stage's wall and CPU seconds. ``reporter``: the run's console lines
    (None: silent), told about the stage under ``key``. Several hosts (`hosts`): every host runs
    ``fn``; process 0 alone decides reuse and writes the marker, and every host returns its result.
    """
    marker = os.path.join(directory, STAGE_FILE)
    rep, key = reporter, key or directory
    # Several hosts: process 0 decides from its marker and sends the stored result (`hosts`).
    reuse = None
    if hosts.is_writer():
        done = layout.read_stage(directory)
        if done is not None:
            if still_valid is None or still_valid(done["result"]):
                reuse = done["result"]
            else:
                log.info(
                    "rerun %s: its stored result does not cover this config (%s)", what, directory
                )
    reuse = hosts.broadcast_json(reuse)
    if reuse is not None:
        log.info("reuse %s (%s)", what, directory)
        if rep is not None:
            rep.end(key, what, time.perf_counter(), 0.0, reused=True)
        return reuse
    os.makedirs(directory, exist_ok=True)
    log.info("run %s (%s)", what, directory)
    t0 = rep.start(key, what) if rep is not None else time.perf_counter()
    c0 = time.process_time()
    wall0 = time.perf_counter()
    result = fn(directory)
    timing = {"wall_s": time.perf_counter() - wall0, "cpu_s": time.process_time() - c0}
    text = json.dumps(
        {"stage": what, "result": result, "timing": timing}, indent=1, default=layout.json_default
    )
    if hosts.is_writer():
        tmp = marker + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, marker)  # complete only once the marker exists
    # Every host returns process 0's result (what a reusing run reads back, so both report alike),
    # once the marker is written.
    result = hosts.broadcast_json(json.loads(text)["result"])
    hosts.barrier(f"dakpn_protocol_stage:{what}")
    if rep is not None:
        rep.end(key, what, t0, timing["cpu_s"])
    return result


def train(config, what: str = "train", *, progress: bool = False) -> Callable[[str], dict]:
    """A trainer stage; ``progress``: the trainer's live bar (the protocol's console run)."""

    def run(workdir):
        from dakpn_jax.training import trainer  # pylint: disable=import-outside-toplevel

        # The trainer's own start/end lines would double the protocol's per-stage lines: to the log.
        final = trainer.train_and_evaluate(
            config, os.path.join(workdir, "run"), desc=what, progress=progress, announce=False
        )
        return {"final": {k: float(v) for k, v in final.items()}, "config": config.to_dict()}

    return run


def export(
    pconfig, translator: methods.Translator, translator_dir: str | None, seed: int
) -> Callable[[str], dict]:
    """Synthetic-train translated to ``directory/data`` (a trained run's checkpoint, or a control)."""

    def run(directory):
        from dakpn_jax import export as exporter  # pylint: disable=import-outside-toplevel

        out = os.path.join(directory, "data")
        bs = int(pconfig.eval.batch_size)
        if translator.trained:
            m = exporter.export_translated(
                os.path.join(translator_dir, "run"),
                out,
                split="synthetic-train",
                batch_size=bs,
                progress=False,
            )
        else:
            import ml_collections  # pylint: disable=import-outside-toplevel

            cfg = ml_collections.ConfigDict(
                {"data": pconfig.data.to_dict(), "seed": seed, "control": dict(translator.spec)}
            )
            m = exporter.export_translated(
                None,
                out,
                split="synthetic-train",
                config=cfg,
                batch_size=bs,
                progress=False,
                translate_fn=translator.make_fn(pconfig, seed),
                translator_id=f"{translator.kind}:{translator.spec.get('control', translator.name)}",
            )
        if not m["complete"]:
            raise RuntimeError(f"export to {out} is incomplete ({m['count']} files)")
        return {"root": out, "count": m["count"]}

    return run


# ----------------------------------------------------------------------------- segmenters


def per_image_confusions(
    apply_fn,
    params,
    source,
    num_classes: int,
    *,
    batch_size: int = 16,
    max_images: int | None = None,
) -> np.ndarray:
    """(I, C, C) int64 confusion matrix of each image of a labelled source (rows labels)."""
    import jax  # pylint: disable=import-outside-toplevel
    import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
    from dakpn_jax.evaluation import metrics  # pylint: disable=import-outside-toplevel

    @jax.jit
    def conf(p, images, labels):
        pred = jnp.argmax(apply_fn(p, images), axis=-1)
        return jax.vmap(lambda a, b: metrics.confusion_matrix(a[None], b[None], num_classes))(
            pred, labels
        )

    n = len(source) if max_images is None else min(len(source), int(max_images))
    out = []
    for s in range(0, n, batch_size):
        items = [source[i] for i in range(s, min(n, s + batch_size))]
        pad = batch_size - len(items)
        images = (
            np.stack([it["image"] for it in items] + [items[-1]["image"]] * pad).astype(np.float32)
            / 255.0
        )
        labels = np.stack([it["label"] for it in items] + [items[-1]["label"]] * pad).astype(
            np.int32
        )
        out.append(np.asarray(conf(params, images, labels), np.int64)[: len(items)])
    return np.concatenate(out)


def segmenter(pconfig, config, what: str, *, progress: bool = False) -> Callable[[str], dict]:
    """Trains a segmenter, then scores it on real-val image by image (``confusions.npz``)."""

    def run(directory):
        from dakpn_jax.data import sources  # pylint: disable=import-outside-toplevel
        from dakpn_jax.protocol import stats  # pylint: disable=import-outside-toplevel
        from dakpn_jax.training import segmentation  # pylint: disable=import-outside-toplevel

        space = methods.label_space(pconfig)
        res = train(config, what, progress=progress)(directory)
        apply_fn, params = segmentation.load_segmenter(os.path.join(directory, "run"))
        # Scored as the segmenter's own evaluation does: a config with image_size / label_size (the
        # authors' 720 x 720 frames against 180 x 180 labels) resizes real-val and the logits alike.
        label_size = segmentation._size(config.data, "label_size")  # pylint: disable=protected-access
        if label_size is not None:
            apply_fn = segmentation.make_apply_fn(config, label_size=label_size)
        val = segmentation.resized_source(config, sources.make_source(pconfig.data, "real-val"))
        conf = per_image_confusions(
            apply_fn, params, val, space.num_classes, batch_size=int(pconfig.eval.batch_size)
        )
        if hosts.is_writer():
            tmp = os.path.join(directory, "confusions.tmp.npz")
            np.savez_compressed(tmp, confusions=conf)
            os.replace(tmp, os.path.join(directory, layout.CONFUSIONS))
        total = conf.sum(0)
        per = stats.per_class_iou(total)
        res["val"] = {
            "miou": float(stats.miou_from_confusion(total)),
            "images": int(conf.shape[0]),
            "per_class_iou": {
                space.class_names[c]: (None if not np.isfinite(v) else float(v))
                for c, v in enumerate(per)
            },
        }
        n = int(config.data.get("num_real_labelled", 0) or 0)
        if config.data.get("name", "procedural") == "real" and any(
            s.get("split") == "real-train-labelled" for s in config.data.train_sources
        ):
            # The labelled subset's rule and indices, so the run can be checked and redrawn.
            seed = config.data.get("labelled_seed", None)
            idx = sources.labelled_indices(methods.real_train_count(pconfig), n, seed)
            res["labelled_subset"] = {
                "n": n,
                "seed": seed,
                "indices": idx.tolist(),
                "rule": "evenly spaced over the sorted real-train list"
                if seed is None
                else "first n of a seeded permutation of real-train (numpy PCG64)",
            }
        return res

    return run


# ----------------------------------------------------------------------------- scores


def scores(
    pconfig, seg_oracle_dir: str, exports: dict, translate_fns: Callable[[], dict]
) -> Callable[[str], dict]:
    """Model score of every translated set (and untranslated) + paired-eval PSNR/SSIM/SWD + grid."""

    def run(directory):
        import jax  # pylint: disable=import-outside-toplevel
        from dakpn_jax.data import sources  # pylint: disable=import-outside-toplevel
        from dakpn_jax.data.folder import FolderSource  # pylint: disable=import-outside-toplevel
        from dakpn_jax.data import label_space  # pylint: disable=import-outside-toplevel
        from dakpn_jax.evaluation import image_quality, model_score  # pylint: disable=import-outside-toplevel
        from dakpn_jax.training import segmentation  # pylint: disable=import-outside-toplevel

        # The run's oracle labels the translated sets, unless eval.model_score_workdir names another
        # segmentation run (e.g. the paper's: an FCN-ResNet50 trained on all of Cityscapes).
        scorer = pconfig.eval.get("model_score_workdir", None) or os.path.join(
            seg_oracle_dir, "run"
        )
        apply_fn, params = segmentation.load_segmenter(scorer)
        segment = jax.jit(apply_fn)
        segment_fn = lambda images: segment(params, images)
        e = pconfig.eval
        sets = {"untranslated": sources.make_source(pconfig.data, "synthetic-train")}
        for name, exp in exports.items():
            sets[name] = FolderSource(
                os.path.join(exp["root"], "images"), os.path.join(exp["root"], "labels")
            )
        space = methods.label_space(pconfig)
        out = {"model_score": {}, "paired": {}, "model_score_segmenter": scorer}
        for name, src in sets.items():
            s = model_score.score_source(
                segment_fn,
                src,
                space.num_classes,
                batch_size=int(e.batch_size),
                max_images=int(e.model_score_images),
                class_names=space.class_names,
            )
            out["model_score"][name] = {
                k: s[k] for k in ("miou", "per_class_iou", "flip", "top_flips", "pixels")
            }
        fns = {"untranslated": lambda x, y: x, **translate_fns()}
        if label_space.has_paired_view(pconfig.data):
            paired = sources.make_source(pconfig.data, "paired-eval")
            for name, fn in fns.items():
                out["paired"][name] = image_quality.evaluate_paired_source(
                    fn,
                    paired,
                    batch_size=int(e.batch_size),
                    max_images=int(e.paired_images),
                    num_classes=space.num_classes,
                )
        out["grid_columns"] = grid(pconfig, fns, os.path.join(directory, layout.GRID))
        return out

    return run


def grid(pconfig, fns: dict, path: str) -> list[str]:
    """Scenes, one per row: synthetic | each translation | real | colourised label (paired-eval);
    without a paired view, synthetic-train frames and no real column. Returns the column names."""
    from dakpn_jax import viz  # pylint: disable=import-outside-toplevel
    from dakpn_jax.data import label_space, sources  # pylint: disable=import-outside-toplevel

    paired = label_space.has_paired_view(pconfig.data)
    src = sources.make_source(pconfig.data, "paired-eval" if paired else "synthetic-train")
    space = methods.label_space(pconfig)
    rows = []
    for i in range(min(int(pconfig.eval.grid_rows), len(src))):
        it = src[i]
        syn = it["synthetic"] if paired else it["image"]
        x = syn[None].astype(np.float32) / 255.0
        y = it["label"][None].astype(np.int32)
        row = [syn] + [np.asarray(fn(x, y))[0] for k, fn in fns.items() if k != "untranslated"]
        rows.append(row + ([it["real"]] if paired else []) + [space.colorize(it["label"])])
    if hosts.is_writer():
        viz.save_grid(path, rows)
    return (
        ["synthetic"]
        + [k for k in fns if k != "untranslated"]
        + (["real"] if paired else [])
        + ["label"]
    )


def _translate_fns(pconfig, translators: dict, tdirs: dict, seed: int) -> dict:
    from dakpn_jax import export as exporter  # pylint: disable=import-outside-toplevel
    from dakpn_jax.training import trainer  # pylint: disable=import-outside-toplevel

    fns = {}
    for name, t in translators.items():
        if t.trained:
            config, state = trainer.restore_state(os.path.join(tdirs[name], "run"))
            fns[name] = exporter.make_translate_fn(config, state)
        else:
            fns[name] = t.make_fn(pconfig, seed)
    return fns


# ----------------------------------------------------------------------------- plan


def stage_seed(pconfig, translator: methods.Translator, seed: int) -> int:
    """The seed folder of a row's translator and export stages: its role's seed
    (`methods.role_seed`), so that a component pinned by ``config.fixed_seeds`` is trained and
    exported once, in the pinned seed's folder, and reused by every run seed."""
    role = "translator" if translator.trained else "control"
    return methods.role_seed(pconfig, role, seed)


def _steps(c) -> float:
    return float(c.num_train_steps) * float(c.batch_size)


def plan(pconfig) -> list[tuple[str, str, float]]:
    """(key, description, relative cost) of every stage, seed by seed, in run order. Costs are
    relative CPU costs from the measured stage profile (docs/notes/issue14.md), in units of one
    segmenter image-step (~0.027 CPU s at 128 x 256): a DA-KPN image-step ~ 0.9, a GAN
    benchmark image-step ~ 4.5, an exported image ~ 0.5, a scored image per translator ~ 3;
    they only steer the ETA."""
    out = []
    seg_cost = _steps(methods.segmenter_config(pconfig, pconfig.segmentation, 0, [])) + 100
    # Ceiling rows whose fit an earlier stage of this run pays for (the fit is cached in-process).
    fitted = set()
    for s in pconfig.seeds:
        s = int(s)
        ts = methods.build_translators(pconfig, s)
        if any(t.uses_segmenter_features for t in ts.values()):
            fs = methods.role_seed(pconfig, "translator", s)
            out.append(
                (layout.feature_segmenter_key(fs), f"seed {fs}: feature segmenter", seg_cost)
            )
        for name, t in ts.items():
            tseed = stage_seed(pconfig, t, s)
            if t.trained:
                method = registry.REGISTRY.get(t.config.get("method"))
                w = method.cost if method is not None else 4.5
                out.append(
                    (
                        layout.translator_key(tseed, name),
                        f"seed {tseed}: train translator {name}",
                        w * _steps(t.config),
                    )
                )
            export_cost = 0.5 * methods.synthetic_train_count(pconfig)
            if t.kind == "ceiling" and name not in fitted:
                # The family ceiling's L-BFGS fit runs in its first export (about 2 units per
                # scene and step: 140 CPU s for 40 steps on 64 scenes here); later seeds reuse it.
                fitted.add(name)
                n_fit, steps = methods.ceiling_fit_size(pconfig, t.spec)
                export_cost += 2.0 * n_fit * steps
            out.append(
                (layout.export_key(tseed, name), f"seed {tseed}: export {name}", export_cost)
            )
        for name in ["source_only", *ts]:
            for n in methods.n_values(pconfig, name):
                out.append(
                    (
                        layout.segmenter_key(s, layout.segmenter_name(name, n)),
                        f"seed {s}: segmenter {name}, N={n}",
                        seg_cost,
                    )
                )
        out.append((layout.segmenter_key(s, "oracle"), f"seed {s}: segmenter oracle", seg_cost))
        if pconfig.eval.get("scores", True):
            out.append(
                (
                    layout.scores_key(s),
                    f"seed {s}: model score, paired scores, grid",
                    3.0
                    * (len(ts) + 1)
                    * (int(pconfig.eval.model_score_images) + int(pconfig.eval.paired_images)),
                )
            )
    seen: set[str] = set()  # a pinned component's stages are listed (and run) once
    return [row for row in out if not (row[0] in seen or seen.add(row[0]))]


# ----------------------------------------------------------------------------- one seed


def run_seed(pconfig, seed: int, root: str, reporter: StageReporter | None = None) -> dict:
    """All stages for one seed under ``root`` (``WORKDIR/seed<k>``, :mod:`layout`); returns the
    per-seed results. ``reporter``: the run's console lines (None: silent)."""
    res: dict[str, Any] = {"seed": seed, "translators": {}, "segmenters": {}, "skipped": {}}
    translators = methods.build_translators(pconfig, seed, omitted=res["skipped"])
    for name, why in res["skipped"].items():
        log.warning("seed %d: row %s omitted: %s", seed, name, why)
    from dakpn_jax.data import label_space  # pylint: disable=import-outside-toplevel

    paired = label_space.has_paired_view(pconfig.data)
    if not paired:
        res["skipped"]["paired scores"] = NO_PAIRED_VIEW
    progress = reporter is not None
    # A stage key's directory: keys are WORKDIR-relative (``seed<k>/...``), and a pinned
    # component's key names the pinned seed's folder, not this seed's.
    key_dir = lambda key: os.path.join(os.path.dirname(os.path.normpath(root)), key)

    if any(t.uses_segmenter_features for t in translators.values()):
        src, _ = methods.segmenter_sources(
            pconfig, {"kind": "split", "split": "synthetic-train"}, 0
        )
        fseed = methods.role_seed(pconfig, "translator", seed)
        fcfg = methods.segmenter_config(
            pconfig, methods.feature_segmenter_spec(pconfig), fseed, src
        )
        fkey = layout.feature_segmenter_key(fseed)
        fdir = key_dir(fkey)
        res["feature_segmenter"] = stage(
            fdir,
            train(fcfg, "feature segmenter", progress=progress),
            what=f"seed {fseed}: feature segmenter",
            key=fkey,
            reporter=reporter,
        )
        for t in translators.values():
            if t.uses_segmenter_features:
                t.config = methods.override(
                    t.config, {"segmenter_workdir": os.path.join(fdir, "run")}
                )

    tdirs, exports = {}, {}
    # Where each translator's stages live (pinned ones in the pinned seed's folder): the records
    # (`records.write_seed`) read their wall and CPU seconds from there.
    res["translator_stages"] = {}
    for name, t in translators.items():
        tseed = stage_seed(pconfig, t, seed)
        tkey = layout.translator_key(tseed, name) if t.trained else None
        res["translator_stages"][name] = {"train": tkey, "export": layout.export_key(tseed, name)}
        if t.trained:
            tdirs[name] = key_dir(tkey)
            res["translators"][name] = stage(
                tdirs[name],
                train(t.config, name, progress=progress),
                what=f"seed {tseed}: train translator {name}",
                key=tkey,
                reporter=reporter,
            )
        else:
            res["translators"][name] = {"control": t.spec}
        ekey = layout.export_key(tseed, name)
        exports[name] = stage(
            key_dir(ekey),
            export(pconfig, t, tdirs.get(name), tseed),
            what=f"seed {tseed}: export {name}",
            key=ekey,
            reporter=reporter,
        )

    seg = pconfig.segmentation
    bases = {"source_only": {"kind": "split", "split": "synthetic-train"}}
    bases.update({name: {"kind": "folder", "root": e["root"]} for name, e in exports.items()})
    for name, base in bases.items():
        for n in methods.n_values(pconfig, name):
            src, fields = methods.segmenter_sources(pconfig, base, int(n))
            cfg = methods.segmenter_config(
                pconfig, seg, methods.role_seed(pconfig, "segmenter", seed), src, **fields
            )
            key = layout.segmenter_name(name, n)
            skey = layout.segmenter_key(seed, key)
            what = f"seed {seed}: segmenter {name}, N={n}"
            res["segmenters"][key] = stage(
                key_dir(skey),
                segmenter(pconfig, cfg, f"seg {key}", progress=progress),
                what=what,
                key=skey,
                reporter=reporter,
            )
    oracle_n = methods.real_train_count(pconfig)
    res["oracle_n"] = oracle_n
    cfg = methods.segmenter_config(
        pconfig,
        seg,
        methods.role_seed(pconfig, "segmenter", seed),
        [{"kind": "split", "split": "real-train-labelled"}],
        num_real_labelled=oracle_n,
    )
    okey = layout.segmenter_key(seed, "oracle")
    odir = key_dir(okey)
    res["segmenters"]["oracle"] = stage(
        odir,
        segmenter(pconfig, cfg, "seg oracle", progress=progress),
        what=f"seed {seed}: segmenter oracle",
        key=okey,
        reporter=reporter,
    )
    if not pconfig.eval.get("scores", True):  # e.g. the noise-floor variant: segmenters only
        res["scores"] = {}
        return res
    wanted = {"untranslated", *exports}
    res["scores"] = stage(
        key_dir(layout.scores_key(seed)),
        scores(pconfig, odir, exports, lambda: _translate_fns(pconfig, translators, tdirs, seed)),
        what=f"seed {seed}: model score, paired scores, grid",
        key=layout.scores_key(seed),
        reporter=reporter,
        still_valid=lambda r: (
            wanted <= set(r["model_score"]) and (not paired or wanted <= set(r["paired"]))
        ),
    )
    return res


def collect_timings(workdir: str, pconfig) -> dict:
    """{stage key: {wall_s, cpu_s}} read back from the stage markers (the measured profile)."""
    out = {}
    for key, _, _ in plan(pconfig):
        t = layout.stage_timing(os.path.join(workdir, key))
        if t is not None:
            out[key] = t
    return out


# ----------------------------------------------------------------------------- driver


def select_rows(pconfig, rows):
    """``pconfig`` with only the translator rows ``rows`` (source-only and the oracle always run):
    a long protocol split into runs that fit a session, each run some rows of some seeds. The
    baselines of the comparisons and the headline keep the rows that remain. ``rows`` None or
    empty: ``pconfig`` itself. ValueError naming any row the config does not have."""
    if not rows:
        return pconfig
    rows = tuple(rows)
    unknown = [r for r in rows if r not in pconfig.translators]
    if unknown:
        raise ValueError(
            f"--rows: {', '.join(unknown)} not among the config's translator rows "
            f"({', '.join(pconfig.translators)})"
        )
    out = ml_collections.ConfigDict(pconfig.to_dict())
    for name in list(out.translators):
        if name not in rows:
            del out.translators[name]
    keep = lambda names: tuple(n for n in names if n == "source_only" or n in rows)
    out.compare_to = keep(pconfig.get("compare_to", ("source_only", "dakpn")))
    out.headline = keep(pconfig.get("headline", ("source_only", "dakpn")))
    return out


def run_protocol(
    pconfig,
    workdir: str,
    *,
    console: bool = False,
    results_dir: str | None = None,
    rows=None,
) -> dict:
    """Runs (or reuses) every stage for every seed, writes the report (results.{json,md,html},
    miou_vs_n.png, grid_seed<k>.png); returns ``{"summary", "markdown", "report"}``.

    ``console``: print one start / end line per stage and a progress bar while a stage trains.
    ``results_dir``: also write each finished seed's records there (`records`: results as data,
    e.g. ``results/<name>`` committed to the repository; a report can be rebuilt from them).
    ``rows``: run only these translator rows (:func:`select_rows`); the records still name the
    whole config, so runs of different rows (and seeds, and machines) merge into its table."""
    if not pconfig.seeds:
        raise ValueError("config.seeds is empty; give at least one training seed")
    record_config, pconfig = pconfig, select_rows(pconfig, rows)
    if not pconfig.translators.get("dakpn") and "dakpn" in tuple(pconfig.get("compare_to", ())):
        raise ValueError(
            "config.compare_to names 'dakpn' but config.translators has no 'dakpn' row"
        )
    from dakpn_jax.protocol import preflight  # pylint: disable=import-outside-toplevel

    preflight.check(pconfig)  # a missing folder or weights file stops here, before any stage
    if results_dir:
        records.check_compatible(
            results_dir, record_config
        )  # records of another config: stop before training
    os.makedirs(workdir, exist_ok=True)
    # One protocol per workdir; its trainer and export stages lock their own subdirectories too.
    with workdir_lock.exclusive(workdir, what="protocol"):
        return _run_protocol_locked(
            pconfig, workdir, console=console, results_dir=results_dir, record_config=record_config
        )


def _run_protocol_locked(
    pconfig, workdir: str, *, console: bool, results_dir: str | None = None, record_config=None
) -> dict:
    p = plan(pconfig)
    reporter = (
        StageReporter([(key, cost) for key, _, cost in p], enabled=console, kind_of=stage_kind)
        if console
        else None
    )
    from dakpn_jax.data import procedural  # pylint: disable=import-outside-toplevel

    # Render each benchmark example once per run, not once per stage that reads it.
    procedural.set_render_cache(int(pconfig.eval.get("render_cache", 0)))
    try:
        per_seed = []
        for s in pconfig.seeds:
            per_seed.append(
                run_seed(pconfig, int(s), os.path.join(workdir, layout.seed_dir(s)), reporter)
            )
            if (
                results_dir and hosts.is_writer()
            ):  # a seed's records as soon as it is done: a long run is kept seed by seed
                records.write_seed(results_dir, record_config or pconfig, workdir, per_seed[-1])
    finally:
        procedural.set_render_cache(0)
    # Timings from process 0's markers, the report written by process 0 only (`hosts`).
    timings = hosts.broadcast_json(collect_timings(workdir, pconfig) if hosts.is_writer() else None)
    out = report.write_report(pconfig, workdir, per_seed, timings=timings, write=hosts.is_writer())
    hosts.barrier("dakpn_protocol_report")
    return out
