"""load_translator (issue #18): equals the export's decoded PNGs, works under a user's mesh, fresh
noise, clear errors; on-the-fly translation in segmentation training sees the export's images; the
worked example (experiments/example_own_pipeline.py) runs.

A tiny DA-KPN (2 steps, checkpoints at 1 and 2) and a tiny CycleGAN (1 step) are trained in the
module's tmp dir on a 32 x 64 procedural benchmark.
"""

import importlib.util
import os
import re
import shutil
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # configs/ lives at the repo root

import dakpn_jax  # noqa: E402
from configs import cyclegan as cyclegan_configs  # noqa: E402
from configs import default as dakpn_configs  # noqa: E402
from configs import segmentation as seg_configs  # noqa: E402
from dakpn_jax import export  # noqa: E402
from dakpn_jax.data import procedural  # noqa: E402
from dakpn_jax.training import segmentation as seg  # noqa: E402
from dakpn_jax.training import trainer  # noqa: E402
from conftest import snapshot  # noqa: E402

N = 6  # synthetic-train items
ROUND = 0.5 / 255 + 1e-5  # the export rounds to the nearest 8-bit level


def _data(c):
    c.data.update(
        seed=5,
        num_synthetic_train=N,
        num_real_train=8,
        num_real_labelled=2,
        num_real_val=2,
        num_paired_eval=2,
    )
    return c


def dakpn_config():
    c = _data(dakpn_configs.get_config("tiny"))
    c.optim.lr = 0.02  # a visibly non-identity translator (noise scale, colour) after 2 steps
    c.num_train_steps, c.checkpoint_every_steps, c.eval_every_steps, c.log_every_steps = 2, 1, 0, 1
    c.keep_checkpoints = None
    return c


def cyclegan_config():
    c = cyclegan_configs.get_config("tiny")
    c.data.update(
        seed=5,
        num_synthetic_train=N,
        num_real_train=8,
        num_real_labelled=2,
        num_real_val=2,
        num_paired_eval=2,
    )
    c.num_train_steps, c.checkpoint_every_steps, c.eval_every_steps, c.log_every_steps = 1, 1, 0, 1
    return c


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = {}
    for name, make in (("dakpn", dakpn_config), ("cyclegan", cyclegan_config)):
        workdir = str(tmp_path_factory.mktemp(name))
        trainer.train_and_evaluate(
            make(), workdir, devices=jax.devices()[:1]
        )  # 1 device: faster compile
        out[name] = workdir
    return out


@pytest.fixture(scope="module")
def exports(runs, tmp_path_factory):
    out = {}
    for name, workdir in runs.items():
        target = str(tmp_path_factory.mktemp(f"{name}_export") / "ds")
        export.export_translated(
            workdir, target, split="synthetic-train", batch_size=8, progress=False
        )
        out[name] = target
    return out


def read_png(path):
    with Image.open(path) as im:
        return np.asarray(im)


def source_batch(config, n=N):
    src = procedural.make_source("synthetic-train", config.data)
    items = [src[i] for i in range(n)]
    return (
        np.stack([it["image"] for it in items]).astype(np.float32) / 255.0,
        np.stack([it["label"] for it in items]).astype(np.int32),
    )


# ----------------------------------------------------------------------------- load_translator


@pytest.mark.parametrize("name", ["dakpn", "cyclegan"])
def test_equals_export_pngs_and_is_read_only(runs, exports, name):
    workdir = runs[name]
    before = snapshot(workdir)
    translate = dakpn_jax.load_translator(workdir)
    assert snapshot(workdir) == before  # read-only: nothing created or touched
    config = trainer.load_config(workdir)
    assert translate.method == name and translate.step == config.num_train_steps
    images, labels = source_batch(config)
    got = np.asarray(jax.jit(lambda x, y: translate(x, y))(images, labels))
    assert got.shape == images.shape and got.dtype == np.float32
    disk = np.stack(
        [read_png(os.path.join(exports[name], "images", f"{i:06d}.png")) for i in range(N)]
    )
    err = np.abs(np.clip(got, 0, 1) - disk.astype(np.float64) / 255.0)
    assert err.max() <= ROUND, err.max()
    assert np.abs(got - images).mean() > 2 / 255  # it did translate
    if name == "cyclegan":  # GAN baselines ignore labels, None is accepted
        np.testing.assert_array_equal(np.asarray(translate(images, None)), got)


def test_step_and_fresh_noise(runs):
    workdir = runs["dakpn"]
    latest, first = dakpn_jax.load_translator(workdir), dakpn_jax.load_translator(workdir, step=1)
    assert (latest.step, first.step) == (2, 1)
    images, labels = source_batch(trainer.load_config(workdir), 2)
    images, labels = np.repeat(images[:1], 2, 0), np.repeat(labels[:1], 2, 0)  # two identical rows
    fixed = np.asarray(latest(images, labels))
    assert (
        np.abs(np.asarray(first(images, labels)) - fixed).max() > 1e-3
    )  # step 1 is another translator
    np.testing.assert_array_equal(fixed[0], fixed[1])  # one fixed field for every sample
    jitted = jax.jit(lambda x, y, k: latest(x, y, rng=k))
    fresh = np.asarray(jitted(images, labels, jax.random.key(1)))
    assert np.abs(fresh[0] - fresh[1]).max() > 1e-4  # fresh noise per sample
    assert np.abs(fresh - fixed).max() > 1e-4
    np.testing.assert_array_equal(fresh, np.asarray(jitted(images, labels, jax.random.key(1))))
    raw = np.asarray(latest(images, labels, rng=jax.random.key_data(jax.random.key(1))))
    np.testing.assert_array_equal(raw, fresh)
    with pytest.raises(ValueError, match="reads the labels"):
        latest(images, None)
    with pytest.raises(ValueError, match=r"\(B, H, W, 3\)"):
        latest(images[0], labels[0])
    with pytest.raises(ValueError, match="labels must be"):
        latest(images, labels[:, :8])


@pytest.mark.parametrize("name", ["dakpn", "cyclegan"])
def test_sharded_over_user_mesh_equals_single_device(runs, name):
    translate = dakpn_jax.load_translator(runs[name])
    images, labels = source_batch(trainer.load_config(runs[name]))
    images, labels = (
        np.resize(images, (8,) + images.shape[1:]),
        np.resize(labels, (8,) + labels.shape[1:]),
    )
    mesh = Mesh(np.asarray(jax.devices()), ("data",))
    assert mesh.devices.size == 8
    shard = NamedSharding(mesh, P("data"))
    rng = jax.random.key(3) if translate.accepts_rng else None

    def fn(x, y, k):
        return translate(x, y, rng=k)

    on_mesh = jax.jit(fn, out_shardings=shard)(
        jax.device_put(images, shard), jax.device_put(labels, shard), rng
    )
    assert on_mesh.sharding.is_equivalent_to(shard, 4)
    with jax.default_device(jax.devices()[0]):
        single = jax.jit(fn)(images, labels, rng)
    np.testing.assert_allclose(np.asarray(on_mesh), np.asarray(single), rtol=0, atol=1e-5)


def test_clear_errors(runs, on_the_fly_workdir, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=f"{re.escape(str(empty))}.*no config.json"):
        dakpn_jax.load_translator(str(empty))
    with pytest.raises(ValueError, match="does not exist"):
        dakpn_jax.load_translator(str(tmp_path / "missing"))
    with pytest.raises(
        ValueError,
        match=f"{re.escape(on_the_fly_workdir)}.*'segmentation' run, which is not a translator",
    ):
        dakpn_jax.load_translator(on_the_fly_workdir)
    with pytest.raises(ValueError, match=r"no checkpoint at step 7; available steps: \[1, 2\]"):
        dakpn_jax.load_translator(runs["dakpn"], step=7)
    bare = tmp_path / "bare"  # a translator config but no checkpoint yet
    bare.mkdir()
    shutil.copy(os.path.join(runs["dakpn"], "config.json"), bare / "config.json")
    with pytest.raises(ValueError, match=f"{re.escape(str(bare))}.*holds no checkpoint"):
        dakpn_jax.load_translator(str(bare))


# ----------------------------------------------------------------------------- on-the-fly segmentation


def seg_config(translator_workdir, source, **extra):
    c = seg_configs.get_config("tiny")
    c.data = trainer.load_config(
        translator_workdir
    ).data  # the benchmark the translator was trained on
    c.data.train_sources = ({**source, **extra},)
    c.crop_size, c.random_flip = (16, 32), True
    c.num_train_steps, c.checkpoint_every_steps, c.eval_every_steps = 2, 2, 0
    return c


def otf_source(runs):
    return {"kind": seg.ON_THE_FLY, "translator_workdir": runs["dakpn"], "split": "synthetic-train"}


@pytest.fixture(scope="module")
def on_the_fly_run(runs, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("seg_otf"))
    final = trainer.train_and_evaluate(seg_config(runs["dakpn"], otf_source(runs)), workdir)
    return workdir, final


@pytest.fixture
def on_the_fly_workdir(on_the_fly_run):
    return on_the_fly_run[0]


def test_on_the_fly_sees_the_export_and_the_source_labels(runs, exports):
    c_export = seg_config(runs["dakpn"], {"kind": "folder", "root": exports["dakpn"]})
    c_otf = seg_config(runs["dakpn"], otf_source(runs))
    it_export = seg.make_iterators(c_export)["train"]
    it_otf = seg.make_iterators(c_otf)["train"]
    images_seen = seg.make_on_the_fly_fn(c_otf)
    seen = jax.jit(lambda b: images_seen(b, None))
    src = procedural.make_source("synthetic-train", c_otf.data)
    originals = [src[i] for i in range(N)]
    flips = set()
    for _ in range(3):  # 3 batches of 8 over 6 items: every item, crops and flips of both kinds
        a, b = seg.next_batch({"train": it_export}), seg.next_batch({"train": it_otf})
        assert b["label"].dtype == np.uint8 and np.array_equal(a["label"], b["label"])
        err = np.abs(np.asarray(seen(b)) - a["image"]).max()
        assert err <= ROUND, err
        assert (
            np.abs(b["image"] - a["image"]).max() > 2 / 255
        )  # the pipeline's images are untranslated
        for j in range(len(b["label"])):  # labels: the source's, cropped and flipped like the image
            match = [it for it in originals if np.array_equal(it["image"], b["otf_frame"][j])]
            assert len(match) == 1
            t, l, f = int(b["otf_top"][j]), int(b["otf_left"][j]), bool(b["otf_flip"][j])
            np.testing.assert_array_equal(b["otf_frame_label"][j], match[0]["label"])
            window = match[0]["label"][t : t + 16, l : l + 32]
            np.testing.assert_array_equal(b["label"][j], window[:, ::-1] if f else window)
            flips.add(f)
    assert flips == {True, False}


@pytest.mark.slow
def test_on_the_fly_training_matches_export_training(runs, exports, on_the_fly_run, tmp_path):
    # Same seed, same global batches (the on-the-fly run used the trainer's 8-device mesh, this one
    # 1 device: the global batch does not depend on it): the losses differ only by the export's
    # 8-bit rounding.
    _, otf = on_the_fly_run
    ref = trainer.train_and_evaluate(
        seg_config(runs["dakpn"], {"kind": "folder", "root": exports["dakpn"]}),
        str(tmp_path / "seg_export"),
        devices=jax.devices()[:1],
    )
    assert otf["step"] == ref["step"] == 2
    assert abs(otf["loss"] - ref["loss"]) <= 2e-3 * abs(ref["loss"]), (otf["loss"], ref["loss"])


def test_on_the_fly_fresh_noise_and_bad_specs(runs, tmp_path):
    c = seg_config(runs["dakpn"], otf_source(runs), fresh_noise=True)
    it = seg.make_iterators(c)["train"]
    batch = seg.next_batch({"train": it})
    fn = jax.jit(seg.make_on_the_fly_fn(c))
    fixed = np.asarray(seg.on_the_fly_images(dakpn_jax.load_translator(runs["dakpn"]), batch, None))
    fresh = np.asarray(fn(batch, jax.random.key(0)))
    assert 1e-4 < np.abs(fresh - fixed).max() < 0.5  # noise only: the colour map is the same
    panel = seg.summaries(c, seg.init_state(c, jax.random.key(0)), batch)["segmentation"]
    np.testing.assert_allclose(
        panel[:, :32], fixed[0], atol=1e-6
    )  # TensorBoard shows the translated crop
    # Mixed with real labelled frames: only the on-the-fly source's rows are translated.
    mix = seg_config(runs["dakpn"], otf_source(runs))
    mix.data.train_sources = (
        {**otf_source(runs), "weight": 1.0},
        {"kind": "split", "split": "real-train-labelled", "weight": 1.0},
    )
    b = seg.next_batch({"train": seg.make_iterators(mix)["train"]})
    t = b["otf_translate"]
    assert t.any() and not t.all()
    out = np.asarray(fn(b, jax.random.key(0)))
    np.testing.assert_array_equal(out[~t], b["image"][~t])
    assert np.abs(out[t] - b["image"][t]).mean() > 2 / 255
    with pytest.raises(ValueError, match="no noise input"):
        seg.make_on_the_fly_fn(
            seg_config(
                runs["cyclegan"],
                {**otf_source(runs), "translator_workdir": runs["cyclegan"]},
                fresh_noise=True,
            )
        )
    with pytest.raises(ValueError, match="translator_workdir"):
        seg.make_train_source(
            seg_config(
                runs["dakpn"],
                {"kind": seg.ON_THE_FLY, "translator_workdir": str(tmp_path / "nope")},
            )
        )
    two = seg_config(runs["dakpn"], otf_source(runs))
    two.data.train_sources = (
        otf_source(runs),
        {**otf_source(runs), "translator_workdir": runs["cyclegan"]},
    )
    with pytest.raises(ValueError, match="share one translator_workdir"):
        seg.make_on_the_fly_fn(two)


# ----------------------------------------------------------------------------- the worked example


@pytest.mark.slow
def test_worked_example_runs(runs, tmp_path):
    spec = importlib.util.spec_from_file_location(
        "example_own_pipeline", ROOT / "experiments" / "example_own_pipeline.py"
    )
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    data = tmp_path / "pngs"
    (data / "images").mkdir(parents=True)
    (data / "labels").mkdir()
    src = procedural.make_source("synthetic-train", trainer.load_config(runs["dakpn"]).data)
    for i in range(N):
        Image.fromarray(src[i]["image"]).save(data / "images" / f"f{i}.png")
        Image.fromarray(src[i]["label"]).save(data / "labels" / f"f{i}.png")
    losses = example.train(runs["dakpn"], str(data), steps=3, batch_size=8, lr=1e-2, log_every=0)
    assert len(losses) == 3 and np.all(np.isfinite(losses))
    assert losses[-1] < losses[0]  # it trains


@pytest.mark.parametrize("name", ["reinhard", "randomize"])
def test_control_run_loads_like_a_trained_translator(tmp_path, name):
    """A training-free control saved with save_control_run is served by load_translator exactly as
    controls.make_control serves it (same pool of real-train frames, same seed)."""
    from dakpn_jax import controls, inference
    from dakpn_jax.data import sources

    data = dakpn_configs.get_config("tiny").data
    workdir = inference.save_control_run(tmp_path / name, name, data, seed=3, pool=4)
    t = dakpn_jax.load_translator(workdir)
    assert t.method == "control" and t.step is None and t.needs_labels == (name == "randomize")
    src = sources.make_source(data, "synthetic-train")
    images = np.stack([src[i]["image"] for i in range(2)]).astype(np.float32) / 255.0
    labels = np.stack([src[i]["label"] for i in range(2)])
    real = sources.make_source(data, "real-train")
    pool = (
        None
        if name == "randomize"
        else np.stack([real[i]["image"] for i in range(min(4, len(real)))])
    )
    want = controls.make_control(name, reference=pool, seed=3)(images, labels)
    np.testing.assert_array_equal(np.asarray(t(images, labels)), np.asarray(want))
    with pytest.raises(ValueError, match="save_control_run: name="):
        inference.save_control_run(tmp_path / "bad", "cyclegan", data)
