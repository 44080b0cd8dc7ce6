"""Translation export: full frames, labels unchanged, atomic + resumable, refuses foreign targets.

The translator is the trainer's toy method (tests/toy_method.py: a 1x1-conv colour map with a
`make_translator`), trained for one step, over a tiny procedural benchmark.
"""

import filecmp
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from dakpn_jax import export
from dakpn_jax.data import procedural
from dakpn_jax.data.folder import FolderSource
from dakpn_jax.training import trainer
from tests import toy_method
from conftest import snapshot, values_around_half_levels

N = 5  # synthetic-train items: padded to one 8-device batch


def toy_config(**overrides):
    c = toy_method.get_config()
    c.num_train_steps = 1
    c.checkpoint_every_steps = 1
    c.data.update(
        dict(
            seed=3,
            height=32,
            width=64,
            num_synthetic_train=N,
            num_real_train=2,
            num_real_labelled=0,
            num_real_val=2,
            num_paired_eval=2,
        )
    )
    c.update(overrides)
    return c


@pytest.fixture(scope="module")
def translator(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("toy_run"))
    trainer.train_and_evaluate(toy_config(), workdir)
    return workdir


@pytest.fixture(scope="module")
def exported(translator, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("export") / "ds")
    manifest = export.export_translated(
        translator, out, split="synthetic-train", batch_size=4, progress=False
    )
    return out, manifest


def read(path):
    with Image.open(path) as im:
        return np.asarray(im)


def read_manifest(out):
    with open(os.path.join(out, "manifest.json")) as f:
        return json.load(f)


@pytest.mark.smoke
def test_export_writes_translated_frames_and_identical_labels(translator, exported):
    out, manifest = exported
    config, state = trainer.restore_state(translator)
    source = procedural.make_source("synthetic-train", config.data)
    translate = toy_method.make_translator(config, state)
    assert manifest["complete"] and manifest["count"] == N and manifest["checkpoint_step"] == 1
    assert sorted(os.listdir(os.path.join(out, "images"))) == [f"{i:06d}.png" for i in range(N)]
    for i in range(N):
        item = source[i]
        label = read(os.path.join(out, "labels", f"{i:06d}.png"))
        assert label.dtype == np.uint8 and np.array_equal(label, item["label"])
        image = read(os.path.join(out, "images", f"{i:06d}.png"))
        assert image.shape == (32, 64, 3)  # whole frame, full resolution
        ref = np.round(
            np.clip(np.asarray(translate(item["image"][None].astype(np.float32) / 255.0)), 0, 1)
            * 255.0
        ).astype(np.uint8)[0]
        # The translator runs on 8 devices in a padded batch: allow one grey level of round-off.
        assert np.abs(image.astype(int) - ref.astype(int)).max() <= 1
        assert np.abs(image.astype(int) - item["image"].astype(int)).mean() > 1  # it did translate
    on_disk = read_manifest(out)
    assert on_disk["config_hash"] == export.config_hash(config) and on_disk["complete"]


def test_rerun_skips_finished_files(translator, exported):
    out, _ = exported
    before = snapshot(out)
    written = []
    export.export_translated(
        translator,
        out,
        split="synthetic-train",
        batch_size=4,
        progress=False,
        on_file_written=written.append,
    )
    after = snapshot(out)
    assert written == []
    # The manifest and the lock file (its holder's PID and start time) are rewritten by every run.
    mine = lambda k: k != "manifest.json" and not k.startswith(".lock.process")  # noqa: E731
    assert {k: v for k, v in after.items() if mine(k)} == {
        k: v for k, v in before.items() if mine(k)
    }


class Killed(Exception):
    pass


def test_killed_export_resumes_and_matches_uninterrupted(translator, exported, tmp_path):
    out = str(tmp_path / "ds")

    def die_after(k):
        count = []

        def hook(path):
            count.append(path)
            if len(count) == k:
                raise Killed()

        return hook, count

    hook, count = die_after(2)
    with pytest.raises(Killed):
        export.export_translated(
            translator,
            out,
            split="synthetic-train",
            batch_size=4,
            progress=False,
            on_file_written=hook,
        )
    assert len(os.listdir(os.path.join(out, "images"))) == 2
    assert not read_manifest(out)["complete"]
    leftovers = [f for f in os.listdir(os.path.join(out, "images")) if not f.endswith(".png")]
    assert leftovers == []  # no temporary files left behind
    written = []
    m = export.export_translated(
        translator,
        out,
        split="synthetic-train",
        batch_size=4,
        progress=False,
        on_file_written=written.append,
    )
    assert len(written) == N - 2 and m["complete"] and m["count"] == N
    ref, _ = exported
    for sub in ("images", "labels"):
        names = sorted(os.listdir(os.path.join(ref, sub)))
        assert names == sorted(os.listdir(os.path.join(out, sub)))
        _, mismatch, errors = filecmp.cmpfiles(
            os.path.join(ref, sub), os.path.join(out, sub), names, shallow=False
        )
        assert mismatch == [] and errors == []


def test_folder_input_labels_are_byte_identical(translator, exported, tmp_path):
    src, _ = exported
    out = str(tmp_path / "again")
    m = export.export_translated(translator, out, input_dir=src, batch_size=8, progress=False)
    assert m["complete"] and m["source"]["folder"] == os.path.abspath(src)
    names = sorted(os.listdir(os.path.join(src, "labels")))
    _, mismatch, errors = filecmp.cmpfiles(
        os.path.join(src, "labels"), os.path.join(out, "labels"), names, shallow=False
    )
    assert mismatch == [] and errors == []
    assert len(FolderSource(os.path.join(out, "images"), os.path.join(out, "labels"))) == N


def test_foreign_targets_and_mismatched_checkpoint_are_refused(translator, exported, tmp_path):
    out, _ = exported
    before = snapshot(out)
    other = toy_config(lr=3e-3)  # same shapes, another config: another translator
    with pytest.raises(ValueError, match="config_hash"):
        export.export_translated(
            translator, out, split="synthetic-train", config=other, progress=False
        )
    with pytest.raises(ValueError, match="source"):
        export.export_translated(translator, out, split="real-val", progress=False)
    assert snapshot(out) == before  # nothing overwritten, not even the manifest
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty"):
        export.export_translated(translator, str(busy), progress=False)
    assert sorted(os.listdir(busy)) == ["notes.txt"]
    with pytest.raises(ValueError):  # checkpoint shapes (4 features) do not match features=8
        export.export_translated(
            translator, str(tmp_path / "new"), config=toy_config(features=8), progress=False
        )
    assert not (tmp_path / "new").exists()


def test_cli(translator, tmp_path):
    out = tmp_path / "cli"
    env = dict(os.environ, PYTHONPATH=os.getcwd(), JAX_PLATFORMS="cpu")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "dakpn_jax.export",
            f"--workdir={translator}",
            "--split=real-val",
            f"--output={out}",
            "--batch_size=2",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "2 images" in r.stdout
    assert sorted(os.listdir(out / "labels")) == ["000000.png", "000001.png"]


def test_exported_uint8_is_exactly_the_rounded_translation(translator, tmp_path, monkeypatch):
    """Bit for bit: a translator whose output is known exactly (float32 values a few ulps around
    every half grey level, and outside [0, 1]) exports round(clip(x) * 255), the expectation
    computed here in float64 from that output."""
    vals = np.array(values_around_half_levels(below=4, count=8) + [-0.2, 1.3, 0.0, 1.0], np.float32)
    field = np.resize(vals, (32, 64, 3))
    want = np.floor(np.clip(field.astype(np.float64), 0, 1) * 255 + 0.5).astype(np.uint8)
    monkeypatch.setattr(
        export,
        "make_translate_fn",
        lambda config, state: (
            lambda x, y: jax.numpy.broadcast_to(jax.numpy.asarray(field), x.shape)
        ),
    )
    out = str(tmp_path / "exact")
    export.export_translated(translator, out, split="synthetic-train", batch_size=4, progress=False)
    for i in range(N):
        np.testing.assert_array_equal(read(os.path.join(out, "images", f"{i:06d}.png")), want)
