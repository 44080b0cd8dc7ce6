"""Results as data (dakpn_jax.protocol.records): records written by separate runs merge into one
report equal to the report of all seeds at once; records of another protocol config are refused
with the differing field named; a seed lacking a row is left out and listed."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dakpn_jax.protocol import layout, records, report  # noqa: E402

KEYS = ("source_only_n0", "dakpn_n0", "oracle")


def _tiny():
    from configs import protocol as protocol_configs

    return protocol_configs.get_config("tiny")


def _fake_seed(workdir: Path, seed: int, rng) -> tuple[dict, dict]:
    """One seed's stage folders as a run leaves them (stage.json + per-image confusions) and the
    per-seed result; the confusions differ by seed and row."""
    res = {"seed": seed, "translators": {}, "segmenters": {}, "skipped": {}, "oracle_n": 8}
    confs = {}
    for k, key in enumerate(KEYS):
        conf = np.zeros((6, 19, 19), np.int64)
        for i in range(6):
            for c in (0, 2, 8, 10):  # classes present; some pixels confused
                conf[i, c, c] = rng.integers(50, 200)
                conf[i, c, (c + 1 + k) % 19] = rng.integers(0, 60)
        d = workdir / layout.segmenter_key(seed, key)
        d.mkdir(parents=True)
        np.savez_compressed(d / layout.CONFUSIONS, confusions=conf)
        from dakpn_jax.protocol import stats

        total = conf.sum(0)
        val = {
            "miou": float(stats.miou_from_confusion(total)),
            "images": 6,
            "per_class_iou": {
                str(c): (None if not np.isfinite(v) else float(v))
                for c, v in enumerate(stats.per_class_iou(total))
            },
        }
        res["segmenters"][key] = {"val": val, "config": {"seed": seed, "row": key}}
        (d / layout.STAGE_FILE).write_text(
            json.dumps(
                {
                    "stage": key,
                    "result": res["segmenters"][key],
                    "timing": {"wall_s": 1.0, "cpu_s": 1.5},
                }
            )
        )
        confs[(seed, key)] = conf
    res["scores"] = {
        "model_score": {"dakpn": {"miou": 0.2 + 0.01 * seed, "top_flips": []}},
        "paired": {"dakpn": {"psnr": 17.0 + seed, "ssim": 0.3, "swd": 0.1, "class_color_err": 0.2}},
    }
    return res, confs


def test_records_of_two_runs_make_the_report_of_all_seeds_and_mixed_configs_are_refused(tmp_path):
    pconfig = _tiny()
    rng = np.random.default_rng(0)
    results = tmp_path / "results"
    per_seed, confs = [], {}
    for run, seeds in (
        ("run_a", (0, 1)),
        ("run_b", (2,)),
    ):  # two runs, two workdirs, one results dir
        pconfig.seeds = seeds
        for s in seeds:
            res, c = _fake_seed(tmp_path / run, s, rng)
            written = records.write_seed(str(results), pconfig, str(tmp_path / run), res)
            assert all(Path(p).stat().st_size < 64_000 for p in written)  # kilobytes, not megabytes
            per_seed.append(res)
            confs.update(c)
    loaded = records.load(str(results))
    assert [r["seed"] for r in loaded["per_seed"]] == [0, 1, 2] and loaded["missing"] == {}
    for key_, conf in confs.items():  # the sparse records give back every count
        np.testing.assert_array_equal(loaded["confusions"][key_], conf)
    # The rebuilt report equals the report summarised straight from the three seeds' confusions.
    out = records.rebuild_report(str(results), str(tmp_path / "rebuilt"))
    pconfig.seeds = (0, 1, 2)
    for r in per_seed:
        for v in r["segmenters"].values():
            v.pop("config", None)
    direct = report.summarise(pconfig, per_seed, confusions=confs)
    assert json.dumps(out["summary"]["rows"], sort_keys=True, default=str) == json.dumps(
        direct["rows"], sort_keys=True, default=str
    )
    assert json.dumps(out["summary"]["comparisons"], sort_keys=True, default=str) == json.dumps(
        direct["comparisons"], sort_keys=True, default=str
    )
    assert (tmp_path / "rebuilt" / layout.RESULTS_HTML).exists() and "3 seed(s)" in out["markdown"]
    # A host other than process 0 of a multi-host run (write=False) gets the same report and
    # writes nothing.
    quiet = tmp_path / "not_writer"
    quiet.mkdir()
    same = report.write_report(
        pconfig, str(tmp_path / "rebuilt"), per_seed, confusions=confs, write=False
    )
    mine = report.write_report(pconfig, str(quiet), per_seed, confusions=confs, write=False)
    assert not any(quiet.iterdir()) and mine["markdown"] == same["markdown"]
    assert json.dumps(mine["summary"]["rows"], sort_keys=True, default=str) == json.dumps(
        direct["rows"], sort_keys=True, default=str
    )

    # Another protocol config: refused before training, with the field that differs named.
    other = _tiny()
    other.eval.model_score_images = 7
    other.seeds = (3,)
    with pytest.raises(
        ValueError, match=r"eval\.model_score_images: 4 vs 7|eval\.model_score_images"
    ):
        records.check_compatible(str(results), other)
    with pytest.raises(ValueError, match=r"eval\.model_score_images"):
        records.rebuild_report(str(results), str(tmp_path / "x"), pconfig=other)
    # ... and a record of it planted among the others makes load refuse the mixed set.
    res, _ = _fake_seed(tmp_path / "run_c", 3, rng)
    records.write_seed(str(tmp_path / "results_c"), other, str(tmp_path / "run_c"), res)
    planted = next((tmp_path / "results_c").glob("seed3/*.json"))
    (results / "seed3").mkdir()
    (results / "seed3" / planted.name).write_text(planted.read_text())
    for cfg in (tmp_path / "results_c" / "configs").glob("*.json"):
        (results / "configs" / cfg.name).write_text(cfg.read_text())
    with pytest.raises(ValueError, match=r"different protocol configs.*eval\.model_score_images"):
        records.load(str(results))


def test_a_seed_without_every_row_is_left_out_and_listed(tmp_path):
    pconfig = _tiny()
    pconfig.seeds = (0, 1)
    rng = np.random.default_rng(1)
    results = tmp_path / "results"
    for s in (0, 1):
        res, _ = _fake_seed(tmp_path / "run", s, rng)
        records.write_seed(str(results), pconfig, str(tmp_path / "run"), res)
    (results / "seed1" / "dakpn_n0.json").unlink()
    out = records.rebuild_report(str(results), str(tmp_path / "rebuilt"))
    assert out["missing"] == {1: ["dakpn_n0"]}
    assert (
        "1 seed(s): [0]" in out["markdown"] and "- seed 1: no record of dakpn_n0" in out["markdown"]
    )
    assert json.loads((tmp_path / "rebuilt" / layout.RESULTS_JSON).read_text())["missing"] == {
        "1": ["dakpn_n0"]
    }
    with pytest.raises(ValueError, match="no protocol records"):
        records.load(str(tmp_path / "empty"))


def test_report_only_command_rebuilds_from_records_in_one_line_errors_otherwise(tmp_path):
    import subprocess

    root = Path(__file__).resolve().parents[1]
    pconfig = _tiny()
    pconfig.seeds = (0,)
    res, _ = _fake_seed(tmp_path / "run", 0, np.random.default_rng(2))
    records.write_seed(str(tmp_path / "results"), pconfig, str(tmp_path / "run"), res)
    cmd = [
        sys.executable,
        str(root / "experiments" / "protocol.py"),
        f"--workdir={tmp_path / 'out'}",
    ]
    p = subprocess.run(
        cmd + ["--report_only", f"--results_dir={tmp_path / 'results'}"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=str(tmp_path),
    )
    assert p.returncode == 0, p.stderr
    assert "| dakpn | 0 |" in p.stdout and (tmp_path / "out" / layout.RESULTS_MD).exists()
    assert not (tmp_path / "out" / "seed0").exists()  # nothing trained
    # The records' CPU time: three segmenter records of 1.5 CPU seconds each, a scores record of
    # none (_fake_seed).
    assert (
        "CPU time of the records: total 0.001 h (seed 0: 0.001 h; scores 0.000 h, segmenter 0.001 h)"
        in (p.stdout)
    ), p.stdout[-500:]
    p = subprocess.run(
        cmd + ["--report_only"], capture_output=True, text=True, timeout=300, cwd=str(tmp_path)
    )
    assert p.returncode != 0 and p.stderr.strip().splitlines()[-1].startswith(
        "protocol: error: --report_only needs"
    )


def _stage_file(directory: Path, cpu_s: float) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / layout.STAGE_FILE).write_text(
        json.dumps(
            {"stage": directory.name, "result": {}, "timing": {"wall_s": 1.0, "cpu_s": cpu_s}}
        )
    )


def test_runs_of_different_rows_of_one_seed_merge_and_their_cpu_hours_add_up(tmp_path):
    """A protocol split by rows (``--rows``): two runs of seed 0, one with DA-KPN, one with Reinhard,
    each with source-only and the oracle, write into one results dir under the whole config's hash.
    The seed is complete with all four rows; the scores record holds both translators' entries
    (the later run's win where both have one); translator records time training and export; the
    CPU hours are the sum of the stage seconds, by hand, and a rerun of a run replaces its scores
    timing instead of adding it."""
    pconfig = _tiny()
    pconfig.seeds = (0,)
    rng = np.random.default_rng(3)
    results = tmp_path / "results"
    # Run A: source-only, DA-KPN (trained) and the oracle.
    res_a, _ = _fake_seed(tmp_path / "run_a", 0, rng)
    res_a["translators"] = {"dakpn": {"final": {"loss_G": 0.5}}}
    res_a["translator_stages"] = {
        "dakpn": {"train": "seed0/translator_dakpn", "export": "seed0/export_dakpn"}
    }
    _stage_file(tmp_path / "run_a" / "seed0" / "translator_dakpn", 30.0)
    _stage_file(tmp_path / "run_a" / "seed0" / "export_dakpn", 4.0)
    _stage_file(tmp_path / "run_a" / "seed0" / "scores", 7.0)
    res_a["scores"]["model_score"]["untranslated"] = {"miou": 0.1, "top_flips": []}
    records.write_seed(str(results), pconfig, str(tmp_path / "run_a"), res_a)
    # Until run B, its rows are listed as absent (the tiny config has more rows than A's one).
    absent = records.load(str(results))["absent"]
    assert "reinhard" in absent and "fastcut" in absent and "dakpn" not in absent
    # Run B: source-only, Reinhard (a control: export only) and the oracle, in another workdir.
    res_b, _ = _fake_seed(tmp_path / "run_b", 0, rng)
    res_b["segmenters"] = {
        ("reinhard_n0" if k == "dakpn_n0" else k): v for k, v in res_b["segmenters"].items()
    }
    (tmp_path / "run_b" / "seed0" / "seg_dakpn_n0").rename(
        tmp_path / "run_b" / "seed0" / "seg_reinhard_n0"
    )
    res_b["translators"] = {"reinhard": {"control": {"kind": "control"}}}
    res_b["translator_stages"] = {"reinhard": {"train": None, "export": "seed0/export_reinhard"}}
    _stage_file(tmp_path / "run_b" / "seed0" / "export_reinhard", 2.0)
    _stage_file(tmp_path / "run_b" / "seed0" / "scores", 5.0)
    res_b["scores"] = {
        "model_score": {
            "reinhard": {"miou": 0.15, "top_flips": []},
            "untranslated": {"miou": 0.11, "top_flips": []},
        },
        "paired": {"reinhard": {"psnr": 16.0, "ssim": 0.3, "swd": 0.1, "class_color_err": 0.2}},
    }
    res_b["skipped"] = {"fastcut": "omitted with a reason"}  # e.g. VSAIT without its weights
    records.write_seed(str(results), pconfig, str(tmp_path / "run_b"), res_b)

    loaded = records.load(str(results))
    others = [n for n in pconfig.translators if n not in ("dakpn", "reinhard", "fastcut")]
    assert loaded["absent"] == others and others
    assert loaded["missing"] == {} and [r["seed"] for r in loaded["per_seed"]] == [0]
    seed0 = loaded["per_seed"][0]
    assert set(seed0["segmenters"]) == {"source_only_n0", "dakpn_n0", "reinhard_n0", "oracle"}
    assert set(seed0["scores"]["model_score"]) == {"dakpn", "reinhard", "untranslated"}
    assert seed0["scores"]["model_score"]["untranslated"]["miou"] == 0.11  # run B's, the later
    assert set(seed0["scores"]["paired"]) == {"dakpn", "reinhard"}
    phash = records.config_hash(records.protocol_fields(pconfig))
    rec = json.loads((results / "seed0" / "translator_dakpn.json").read_text())
    assert rec["protocol"] == phash and rec["final"] == {"loss_G": 0.5}
    assert rec["timing"]["train"]["cpu_s"] == 30.0 and rec["timing"]["export"]["cpu_s"] == 4.0
    ctrl = json.loads((results / "seed0" / "translator_reinhard.json").read_text())
    assert set(ctrl["timing"]) == {"export"} and "final" not in ctrl
    # Segmenter records: 1.5 CPU s each (_fake_seed); source-only and the oracle were rewritten by
    # run B, so 4 records; scores 7 + 5; translators 30 + 4 + 2.
    want = (4 * 1.5 + 7.0 + 5.0 + 30.0 + 4.0 + 2.0) / 3600.0
    hours = records.cpu_hours(str(results))
    assert hours["total"] == pytest.approx(want, rel=1e-12)
    assert hours["per_seed"] == {0: pytest.approx(want, rel=1e-12)}
    assert hours["by_kind"]["translator"] == pytest.approx(36.0 / 3600.0, rel=1e-12)
    records.write_seed(str(results), pconfig, str(tmp_path / "run_b"), res_b)  # B again
    assert records.cpu_hours(str(results))["total"] == pytest.approx(want, rel=1e-12)
    out = records.rebuild_report(str(results), str(tmp_path / "rebuilt"))
    assert "| reinhard | 0 |" in out["markdown"] and "| dakpn | 0 |" in out["markdown"]
    assert f"no record in any seed yet: {', '.join(others)};" in out["markdown"]


def test_a_changed_config_file_is_caught_though_the_protocol_hash_is_the_same(
    tmp_path, monkeypatch
):
    """The protocol config names configs/default.py but its hash cannot cover the file's contents:
    the records' resolved stage configs catch a change to it, before training and in `load`."""
    from dakpn_jax.protocol import methods

    pconfig = _tiny()
    rng = np.random.default_rng(1)
    results = tmp_path / "results"
    res, _ = _fake_seed(tmp_path / "run_a", 0, rng)
    res["translator_stages"] = {"dakpn": {"train": None, "export": None}}
    records.write_seed(str(results), pconfig, str(tmp_path / "run_a"), res)
    rec = json.loads((results / "seed0" / "translator_dakpn.json").read_text())
    stored = json.loads((results / "configs" / f"resolved_{rec['resolved']}.json").read_text())
    assert stored["seed"] == 0 and stored["num_train_steps"] == 2  # the tiny row's override
    records.check_compatible(str(results), pconfig)  # same files: accepted

    # configs/default.py "edited": a batch size of one more. The protocol config is unchanged.
    real_load = methods.load_config_file

    def edited(path, arg=None):
        c = real_load(path, arg)
        if path == "configs/default.py":
            c.batch_size = int(c.batch_size) + 1
        return c

    monkeypatch.setattr(methods, "load_config_file", edited)
    assert records.config_hash(records.protocol_fields(pconfig)) == rec["protocol"]
    with pytest.raises(ValueError, match=r"translator_dakpn\.json.*dakpn.*batch_size"):
        records.check_compatible(str(results), pconfig)
    # A second run's records made with the edited file cannot merge with the first's.
    res1, _ = _fake_seed(tmp_path / "run_b", 1, rng)
    res1["translator_stages"] = {"dakpn": {"train": None, "export": None}}
    records.write_seed(str(results), pconfig, str(tmp_path / "run_b"), res1)
    with pytest.raises(ValueError, match=r"different dakpn stage configs.*batch_size"):
        records.load(str(results))
    # The downstream segmenter's file (configs/segmentation.py) is caught the same way.
    monkeypatch.setattr(methods, "load_config_file", real_load)
    (results / "seed1").rename(tmp_path / "seed1_of_the_edited_file")

    def edited_segmenter(path, arg=None):
        c = real_load(path, arg)
        if path == "configs/segmentation.py":
            c.batch_size = int(c.batch_size) + 1
        return c

    records.check_compatible(str(results), pconfig)
    monkeypatch.setattr(methods, "load_config_file", edited_segmenter)
    with pytest.raises(ValueError, match=r"_n0\.json.*segmenter.*batch_size"):
        records.check_compatible(str(results), pconfig)
