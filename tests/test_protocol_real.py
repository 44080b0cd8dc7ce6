"""The protocol on the real benchmarks (configs/protocol_real.py, issue 25), end to end on miniature
official-layout trees (conftest.official_tree, built from tests/test_datasets.py's builders):
every row of GTA5 -> Cityscapes, the label space of each benchmark in the per-class tables (19,
16, 13 classes, the 18 face parts), the report's skip lines, the recorded labelled subset, the
dry run, and one-line errors for a missing data folder and a missing weights file."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # configs/ lives at the repo root

from dakpn_jax import protocol  # noqa: E402
from dakpn_jax.data import cityscapes_labels, label_space  # noqa: E402
from dakpn_jax.protocol import dryrun, preflight  # noqa: E402
from conftest import official_tree, persistent_compilation_cache  # noqa: E402

PAIR = {"gta5": "gta5", "synthia16": "synthia", "synthia13": "synthia", "faces": "faces"}
NAMES = {
    "gta5": cityscapes_labels.TRAIN_NAMES,
    "synthia16": tuple(
        cityscapes_labels.TRAIN_NAMES[i] for i in cityscapes_labels.PROTOCOLS["synthia16"]
    ),
    "synthia13": tuple(
        cityscapes_labels.TRAIN_NAMES[i] for i in cityscapes_labels.PROTOCOLS["synthia13"]
    ),
    "faces": (
        "skin",
        "nose",
        "eye_g",
        "l_eye",
        "r_eye",
        "l_brow",
        "r_brow",
        "l_ear",
        "r_ear",
        "mouth",
        "u_lip",
        "l_lip",
        "hair",
        "hat",
        "ear_r",
        "neck_l",
        "neck",
        "cloth",
    ),
}


def _config(bench, tmp_path, variant="-tiny"):
    from configs import protocol_real

    c = protocol_real.get_config(bench + variant)
    c.data.update(official_tree(tmp_path / "data", PAIR[bench]))
    return c


@pytest.fixture(scope="module")
def jax_cache(tmp_path_factory):
    # One compilation cache for the module: the benchmarks share frame sizes, so they share compiles.
    return tmp_path_factory.mktemp("jax_cache")


GAN_ROWS = ("cyclegan", "cut", "fastcut")
ALL_ROWS = os.environ.get("DAKPN_TEST_ALL_ROWS") == "1"
"""CycleGAN / CUT / FastCUT train here only with DAKPN_TEST_ALL_ROWS=1 (about 115 CPU s more on 2
cores): by default their rows are built and planned on the real data (below) and trained by the
embedded benchmark's protocol test (tests/test_protocol.py: the same kind-"train" stages)."""


@pytest.mark.slow
@pytest.mark.parametrize("bench", ["gta5", "synthia16", "synthia13", "faces"])
def test_real_protocol_end_to_end_on_miniature_trees(bench, tmp_path, jax_cache):
    c = _config(bench, tmp_path)
    omitted = {}
    built = protocol.build_translators(c, 0, omitted=omitted)
    assert set(built) == {
        "dakpn",
        "dakpn_paper",
        *GAN_ROWS,
        "randomize",
        "histogram",
        "reinhard",
        "fda",
    }
    assert set(omitted) == {"vsait", "cyclegan_official", "cut_official", "fastcut_official"}
    assert built["dakpn_paper"].config.preset == "paper"
    for g in GAN_ROWS:  # their tiny configs, on this data
        assert (
            built[g].config.model.ngf == 4
            and built[g].config.data.synthetic_dir == c.data.synthetic_dir
        )
    keep = {"gta5": [k for k in c.translators if ALL_ROWS or k not in GAN_ROWS]}.get(
        bench, ["reinhard"]
    )
    with c.unlocked():
        # GTA5: both DA-KPN presets (+ their feature segmenter), the controls, VSAIT's omission;
        # the other label spaces: source-only, a control and the oracle, which is what the
        # per-class tables need, at a fraction of the time.
        c.translators = {k: c.translators[k].to_dict() for k in keep}
        if bench == "gta5":
            c.n_real = (0, 1)  # N = "all" is resolved on the other benchmarks
        else:
            c.headline, c.compare_to, c.n_real = ("source_only",), ("source_only",), (0, -1)
    with persistent_compilation_cache(jax_cache):
        out = protocol.run_protocol(c, str(tmp_path / "p"))
    report = json.loads((tmp_path / "p" / "results.json").read_text())
    n_train = {"gta5": 4, "synthia16": 4, "synthia13": 4, "faces": 2}[bench]
    rows = {(r["method"], r["n"]) for r in report["summary"]["rows"]}
    ns = (0, 1) if bench == "gta5" else (0, n_train)
    want = {("source_only", n) for n in ns} | {("oracle", n_train), ("reinhard", 0)}
    if bench == "gta5":
        want |= {("dakpn", n) for n in ns} | {("dakpn_paper", n) for n in ns}
        want |= {(m, 0) for m in keep if m not in ("dakpn", "dakpn_paper", "reinhard", *omitted)}
    assert rows == want
    # The label space travels with the data: per-class tables, the report, the stage results.
    space = label_space.for_data(c.data)
    assert space.class_names == NAMES[bench] and report["label_space"]["num_classes"] == len(
        NAMES[bench]
    )
    for key, per in report["summary"]["per_class_iou"].items():  # results.json sorts its keys
        assert set(per) == set(NAMES[bench]), key
    stage = json.loads((tmp_path / "p" / "seed0" / "seg_reinhard_n0" / "stage.json").read_text())
    assert tuple(stage["result"]["val"]["per_class_iou"]) == NAMES[bench]  # class-id order
    conf = np.load(tmp_path / "p" / "seed0" / "seg_reinhard_n0" / "confusions.npz")["confusions"]
    assert conf.shape[1:] == (len(NAMES[bench]),) * 2
    text = out["markdown"]
    assert f"Label space: {space.name}, {len(NAMES[bench])} classes" in text
    assert "- skipped paired scores: this data has no paired view" in text
    assert "| oracle | all |" in text
    seed0 = report["per_seed"][0]
    assert seed0["scores"]["paired"] == {} and "untranslated" in seed0["scores"]["model_score"]
    assert (
        seed0["scores"]["grid_columns"][-1] == "label"
        and "real" not in seed0["scores"]["grid_columns"]
    )
    assert (tmp_path / "p" / "grid_seed0.png").exists()
    # The limited-label subset: seeded, recorded, nested over N (the oracle's is all of real-train).
    sub = seed0["segmenters"]["oracle"]["labelled_subset"]
    assert (
        sub["seed"] == 0
        and sub["indices"] == list(range(n_train))
        and "seeded permutation" in sub["rule"]
    )
    if bench == "gta5":
        assert "- skipped vsait: no ImageNet VGG19 weights" in text
        one = seed0["segmenters"]["dakpn_paper_n1"]["labelled_subset"]["indices"]
        assert len(one) == 1 and set(one) <= set(sub["indices"])
        # The dry run of the finished workdir: every stage measured, exports measured on disk.
        lines = dryrun.lines(c, str(tmp_path / "p"))
        stages = [ln for ln in lines if ln.startswith("[")]
        assert len(stages) == len(protocol.plan(c)) and all(
            ln.endswith("(measured)") for ln in stages
        )
        assert f"exports: {len(keep) - len(omitted)} folders" in lines[-1]


def test_dry_run_and_one_line_errors(tmp_path):
    """Before any stage: a missing data folder and a missing weights file end the command in one
    line naming them; with both present, --dry_run prints every stage, a time and the disk."""
    c = _config("synthia13", tmp_path, variant="")
    with pytest.raises(ValueError, match="pretrained is not set"):
        preflight.check(c)
    weights = tmp_path / "mit-b5"
    weights.mkdir()
    c.segmentation.overrides.model.kwargs.pretrained = str(weights)
    counts = preflight.check(c)
    assert counts == {"synthetic-train": 3, "real-train": 4, "real-val": 2}
    lines = dryrun.lines(c, backend="gpu")
    assert lines[0].startswith("dry run: ") and "synthia13 (13 classes)" in lines[0]
    assert sum(ln.startswith("[") for ln in lines) == len(protocol.plan(c))
    assert any("train translator dakpn_paper" in ln and "(H100 DA-KPN step)" in ln for ln in lines)
    # On a CPU backend the H100 rule does not apply: DA-KPN is priced by the CPU profile, at
    # 0.027 s per (step x batch) unit scaled by the frame's pixels (module docstring, rule 4).
    cpu = dryrun.estimate(c, backend="cpu")
    h, w = dryrun.frame_size(c)
    dakpn_rows = [r for r in cpu["stages"] if "train translator dakpn_paper" in r["what"]]
    assert dakpn_rows and all(r["rule"] == "CPU profile" for r in dakpn_rows)
    for r in dakpn_rows:
        assert r["seconds"] == pytest.approx(r["cost"] * 0.027 * h * w / (128 * 256), rel=1e-9)
    lines = dryrun.lines(c)
    assert lines[-1].startswith("exports: 27 folders")  # 9 rows (no VSAIT) x 3 seeds
    # Translators and controls pinned to seed 0: each trained and exported once, for every seed.
    pinned = c.copy_and_resolve_references()
    pinned.fixed_seeds.translator = pinned.fixed_seeds.control = 0
    lines = dryrun.lines(pinned)
    assert lines[-1].startswith("exports: 9 folders")
    trains = [ln for ln in lines if "train translator" in ln]
    assert trains and all("seed 0: train translator" in ln for ln in trains)
    cmd = [
        sys.executable,
        str(ROOT / "experiments" / "protocol.py"),
        "--config=" + str(ROOT / "configs" / "protocol_real.py") + ":synthia13",
        f"--workdir={tmp_path / 'w'}",
        f"--config.data.synthetic_dir={c.data.synthetic_dir}",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # The data-folder check (in process); the command prints the same checks' message as one line.
    bad = c.copy_and_resolve_references()
    bad.data.real_dir = str(tmp_path / "no_cityscapes")
    with pytest.raises(
        ValueError, match=f"^config.data.real_dir='{tmp_path / 'no_cityscapes'}': no such folder$"
    ):
        preflight.check(bad)
    missing = tmp_path / "mit-b5-missing"
    run = subprocess.run(
        cmd
        + [
            f"--config.data.real_dir={c.data.real_dir}",
            f"--config.segmentation.overrides.model.kwargs.pretrained={missing}",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert run.returncode == 2, run.stderr
    assert run.stderr.strip().splitlines() == [
        f"protocol: error: config.segmentation.overrides.model.kwargs.pretrained='{missing}': no such weights file"
    ]
    assert not (tmp_path / "w").exists()  # nothing written before the checks


def test_label_spaces_of_every_benchmark_config():
    from configs import protocol_real

    for bench, names in NAMES.items():
        space = label_space.for_data(protocol_real.get_config(bench).data)
        assert space.class_names == names and space.ignore_index == 255
        assert len(set(space.palette)) == len(names)
        if bench == "faces":  # l_/r_ parts swap on a flip, the lower lip stays
            lut = space.flip_lut()
            assert lut[names.index("l_eye")] == names.index("r_eye") and lut[
                names.index("l_lip")
            ] == names.index("l_lip")
        else:
            assert space.flip_swaps == ()
    bench = label_space.for_data(protocol_real.get_config("gta5").data)
    procedural = label_space.for_data({"name": "procedural"})
    assert procedural.class_names == bench.class_names and procedural.palette == bench.palette
    np.testing.assert_array_equal(
        procedural.colorize(np.array([[0, 255]])), np.array([[[128, 64, 128], [0, 0, 0]]], np.uint8)
    )
    with pytest.raises(ValueError, match="unknown variant"):
        protocol_real.get_config("gta5-nope")
    # The labelled subsets: seeded ones nested over N and reproducible; without a seed, evenly spaced.
    from dakpn_jax.data import sources

    small, large = sources.labelled_indices(2975, 100, 0), sources.labelled_indices(2975, 500, 0)
    assert len(set(small)) == 100 and set(small) <= set(large)
    np.testing.assert_array_equal(small, sources.labelled_indices(2975, 100, 0))
    np.testing.assert_array_equal(sources.labelled_indices(10, 4), [0, 2, 5, 7])
