"""The generic trainer (mesh, sharding, resume, NaN guard, errors), the CLI and the sweep helper.

Driven by the tiny method in tests/toy_method.py; the DA-KPN method gets the same checks in
test_trainer_dakpn_* below once its data pipeline exists.
"""

import json
import os
import signal
import subprocess
import sys

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # tests.toy_method is imported by its dotted name (config.method)
    sys.path.insert(0, REPO)

from tests import toy_method  # noqa: E402

from dakpn_jax import sweep  # noqa: E402
from dakpn_jax.training import checkpoint as ckpt  # noqa: E402
from dakpn_jax.training import metrics_writer as mw  # noqa: E402
from dakpn_jax.training import preemption  # noqa: E402
from dakpn_jax.training import trainer  # noqa: E402
from conftest import (  # noqa: E402
    XLA_OPT_FLAGS,
    assert_float64_equivalent,
    float64_config,
    persistent_compilation_cache,
)


@pytest.fixture(scope="module", autouse=True)
def compilation_cache(tmp_path_factory):
    """Runs here repeat identical XLA compilations (the same step for a straight and a resumed run);
    jax's persistent compilation cache lets them share one, which keeps this file within its time
    budget. The executables are the same ones a fresh compilation would produce."""
    with persistent_compilation_cache(tmp_path_factory.mktemp("jax_cache"), 0.5):
        yield


def toy_config(**overrides):
    # Rebuilt from a dict so a test may also give a field a wrong type.
    return ml_collections.ConfigDict({**toy_method.get_config().to_dict(), **overrides})


def leaves(state):
    return {
        jax.tree_util.keystr(p): np.asarray(x)
        for p, x in jax.tree_util.tree_flatten_with_path(state)[0]
    }


def global_index_batches(config, n):
    """Independent reference for the batches: grain's seeded shuffle of range(num_examples), in
    global batches of batch_size."""
    ds = grain.MapDataset.range(config.data.num_examples).shuffle(seed=config.seed).repeat(None)
    flat = [int(ds[i]) for i in range(n * config.batch_size)]
    return np.asarray(flat).reshape(n, config.batch_size)


def read_event_tags(path):
    """{tag: "simple_value" | "image"} from a TensorBoard event file (TFRecord framing: u64 length,
    u32 crc, payload, u32 crc), parsed with tensorboardX's own protobufs."""
    import struct

    from tensorboardX.proto import event_pb2

    tags, data = {}, open(path, "rb").read()
    pos = 0
    while pos < len(data):
        (n,) = struct.unpack("<Q", data[pos : pos + 8])
        event = event_pb2.Event.FromString(data[pos + 12 : pos + 12 + n])
        pos += 12 + n + 4
        for v in event.summary.value:
            tags[v.tag] = v.WhichOneof("value")
    return tags


@pytest.mark.smoke
def test_one_step_trains_and_writes_run_directory(tmp_path):
    c = toy_config(num_train_steps=1, eval_every_steps=1)
    out = trainer.train_and_evaluate(c, str(tmp_path))
    assert out["step"] == 1
    assert all(np.isfinite(v) for v in out.values())
    # The batch consumed is the first global batch of the seeded shuffle.
    assert out["batch_checksum"] == float(global_index_batches(c, 1)[0].sum())

    # Reference: the same step run eagerly on one device from the same initial state.
    mesh1 = trainer.make_mesh(jax.devices()[:1])
    init = trainer.init_state(toy_method, c, mesh1)
    batch = toy_method.next_batch(toy_method.make_iterators(c))
    ref, ref_metrics = toy_method.make_train_step(c)(
        jax.tree.map(np.asarray, init), jax.tree.map(jnp.asarray, batch)
    )
    np.testing.assert_allclose(out["loss"], float(ref_metrics["loss"]), rtol=1e-5)
    cfg, state = trainer.restore_state(str(tmp_path))
    assert cfg.to_dict() == json.loads(c.to_json())
    got, want, before = leaves(state), leaves(ref), leaves(init)
    assert got.keys() == want.keys()
    for k in got:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6, err_msg=k)
    assert not np.array_equal(got["['params']['a']['kernel']"], before["['params']['a']['kernel']"])
    assert int(state["step"]) == 1
    # TensorBoard: event file with the scalars and the summary image.
    files = mw.event_files(str(tmp_path))
    assert files and os.path.getsize(files[0]) > 0
    tags = read_event_tags(files[0])
    assert tags["train/loss"] == "simple_value" and tags["eval/mse"] == "simple_value"
    assert tags["input_output"] == "image"


def test_eight_devices_match_one_device_and_scan(tmp_path):
    # In float64 (tests/float64_method.py): the three runs differ only in summation order, which is
    # processor-dependent round-off in float32 and ~1e-16 here; FLOAT64_REL is processor-independent.
    c = float64_config(
        toy_config(num_train_steps=3, checkpoint_every_steps=100, eval_every_steps=100)
    )
    c3 = c.copy_and_resolve_references()
    c3.steps_per_call = 3
    with jax.enable_x64(True):
        trainer.train_and_evaluate(c, str(tmp_path / "one"), devices=jax.devices()[:1])
        trainer.train_and_evaluate(c, str(tmp_path / "eight"))
        trainer.train_and_evaluate(c3, str(tmp_path / "scan"))
        one = trainer.restore_state(str(tmp_path / "one"))[1]
        assert all(
            v.dtype == np.float64 for k, v in leaves(one).items() if k.startswith("['params']")
        )
        for other in ("eight", "scan"):
            got = trainer.restore_state(str(tmp_path / other))[1]
            assert_float64_equivalent(one, got)
            assert int(got["consumed"]) == int(one["consumed"])  # same batches, same order


def test_float64_comparison_catches_a_missing_cross_device_reduction():
    """What the tolerance above is for: a step whose gradient is the mean over one device's shard
    only (a forgotten all-reduce: device 0's update, broadcast) must fail the comparison with the
    step over the whole global batch, by orders of magnitude."""
    c = float64_config(toy_config())
    from tests import float64_method

    with jax.enable_x64(True):
        state = float64_method.init_state(c, jax.random.key(0))
        batch = float64_method.next_batch(
            float64_method.make_iterators(c, shard_index=0, shard_count=1)
        )
        step = jax.jit(float64_method.make_train_step(c))
        full, _ = step(state, batch)
        shard = c.batch_size // 8  # device 0's rows of an 8-device mesh
        local, _ = step(state, {k: v[:shard] for k, v in batch.items()})
        assert assert_float64_equivalent(full, step(state, batch)[0]) <= 1.0  # itself: passes
        with pytest.raises(AssertionError):
            assert_float64_equivalent(full, local)
        # ... and by a wide margin: the moments differ by far more than FLOAT64_REL of their scale.
        with pytest.raises(AssertionError):
            assert_float64_equivalent(full, local, rel=1e-3)


def preempted_run(monkeypatch, module, config, workdir, after_steps):
    """Runs ``config`` but kills it (KeyboardInterrupt) when it asks for batch ``after_steps + 1``,
    like a preemption: the same config, the run resumes from its last checkpoint."""
    real, seen = module.next_batch, []

    def next_batch(iterators):
        if len(seen) == after_steps:
            raise KeyboardInterrupt("preempted")
        seen.append(1)
        return real(iterators)

    with monkeypatch.context() as mp:
        mp.setattr(module, "next_batch", next_batch)
        with pytest.raises(KeyboardInterrupt, match="preempted"):
            trainer.train_and_evaluate(config, workdir)


def test_resume_is_bit_exact(tmp_path, monkeypatch):
    # Killed after step 3 with the last checkpoint at step 2: the resumed run redoes step 3 from the
    # checkpointed data position, so it must consume exactly the batches an uninterrupted run does.
    c = toy_config(
        num_train_steps=6, checkpoint_every_steps=2, keep_checkpoints=2, eval_every_steps=100
    )
    preempted_run(monkeypatch, toy_method, c, str(tmp_path / "resumed"), after_steps=3)
    assert ckpt.Checkpointer(str(tmp_path / "resumed"), read_only=True).all_steps() == [2]
    out = trainer.train_and_evaluate(c, str(tmp_path / "resumed"))
    straight = trainer.train_and_evaluate(c, str(tmp_path / "straight"))
    assert out == straight  # last logged metrics (incl. the batch checksum) identical
    a = leaves(trainer.restore_state(str(tmp_path / "resumed"))[1])
    b = leaves(trainer.restore_state(str(tmp_path / "straight"))[1])
    assert a.keys() == b.keys() and any("opt" in k for k in a)
    for k in a:
        np.testing.assert_array_equal(
            a[k], b[k], err_msg=k
        )  # params, both Adam moments, rng, batches
    # The consumed-batch hash equals the hash of the reference index batches.
    h = np.uint32(0)
    for row in global_index_batches(toy_config(), 6):
        for i in row:
            h = np.uint32((int(h) * int(toy_method._HASH_MUL) + int(i) + 1) % (1 << 32))
    assert int(a["['consumed']"]) == int(h)
    assert ckpt.Checkpointer(str(tmp_path / "straight"), read_only=True).all_steps() == [
        4,
        6,
    ]  # keep last 2


def test_sigterm_checkpoints_the_step_in_progress_and_resume_is_exact(tmp_path, monkeypatch):
    # SIGTERM arrives while batch 4 is loaded: step 4 still runs, is checkpointed (no periodic
    # checkpoint is due: every 5), and the run raises Preempted; the rerun finishes like a straight run.
    c = toy_config(num_train_steps=6, checkpoint_every_steps=5, eval_every_steps=100)
    before = signal.getsignal(signal.SIGTERM)
    real, seen = toy_method.next_batch, []

    def next_batch(iterators):
        seen.append(1)
        if len(seen) == 4:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(iterators)

    with monkeypatch.context() as mp:
        mp.setattr(toy_method, "next_batch", next_batch)
        with pytest.raises(preemption.Preempted, match="saved step 4") as info:
            trainer.train_and_evaluate(c, str(tmp_path / "resumed"))
    assert info.value.step == 4 and len(seen) == 4
    assert signal.getsignal(signal.SIGTERM) is before  # the trainer's handler is gone again
    assert ckpt.Checkpointer(str(tmp_path / "resumed"), read_only=True).all_steps() == [4]
    out = trainer.train_and_evaluate(c, str(tmp_path / "resumed"))
    assert out == trainer.train_and_evaluate(c, str(tmp_path / "straight"))
    a = leaves(trainer.restore_state(str(tmp_path / "resumed"))[1])
    b = leaves(trainer.restore_state(str(tmp_path / "straight"))[1])
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_nan_guard_stops_and_keeps_last_good_checkpoint(tmp_path):
    c = toy_config(num_train_steps=6, nan_at_step=3, checkpoint_every_steps=2, eval_every_steps=100)
    with pytest.raises(
        FloatingPointError, match=r"metric 'loss' is nan at step 4.*checkpoint is step 2"
    ):
        trainer.train_and_evaluate(c, str(tmp_path))
    assert ckpt.Checkpointer(str(tmp_path), read_only=True).all_steps() == [2]
    _, state = trainer.restore_state(str(tmp_path))
    assert int(state["step"]) == 2 and all(np.isfinite(v).all() for v in leaves(state).values())


@pytest.mark.parametrize(
    "field,value,match",
    [
        ("method", "no_such_method", r"config.method='no_such_method' is unknown"),
        ("method", "tests.no_such_module", r"config.method='tests.no_such_module': cannot import"),
        ("batch_size", 12, r"config.batch_size=12 must be divisible by the device count 8"),
        ("steps_per_call", 0, r"config.steps_per_call must be >= 1, got 0"),
        ("num_train_steps", -1, r"config.num_train_steps must be >= 0, got -1"),
        ("seed", "0", r"config.seed must be an int, got '0'"),
    ],
)
def test_bad_config_is_rejected(tmp_path, field, value, match):
    with pytest.raises(ValueError, match=match):
        trainer.train_and_evaluate(toy_config(**{field: value}), str(tmp_path / "w"))
    assert not (tmp_path / "w").exists() or not os.listdir(tmp_path / "w")


def test_bad_workdir_is_rejected(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match=r"workdir=.*file/run' is not a writable directory"):
        trainer.train_and_evaluate(toy_config(num_train_steps=1), str(tmp_path / "file" / "run"))
    with pytest.raises(ValueError, match=r"no config.json"):
        trainer.restore_state(str(tmp_path))

    wd = tmp_path / "run"
    trainer.train_and_evaluate(toy_config(num_train_steps=1, eval_every_steps=100), str(wd))

    def run_state():  # log.txt (append-only diagnostics) and the workdir lock (its holder's PID) aside
        return {
            os.path.join(d, f): os.path.getmtime(os.path.join(d, f))
            for d, _, fs in os.walk(wd)
            for f in fs
            if f != "log.txt" and not f.startswith(".lock.process")
        }

    snapshot = run_state()
    config_text = (wd / "config.json").read_text()
    with pytest.raises(
        ValueError, match=r"different model: state leaf '[a-z/0-9]*a/bias' has shape \(4,\).*\(8,\)"
    ):
        trainer.train_and_evaluate(toy_config(num_train_steps=2, features=8), str(wd))
    with pytest.raises(ValueError, match=r"different model"):
        trainer.restore_state(str(wd), toy_config(features=8))
    assert snapshot == run_state()  # nothing written, not even a TensorBoard file
    assert (wd / "config.json").read_text() == config_text


def test_check_compatible_names_missing_leaves():
    saved = {"a": jax.ShapeDtypeStruct((2,), jnp.float32)}
    want = {
        "a": jax.ShapeDtypeStruct((2,), jnp.float32),
        "b": jax.ShapeDtypeStruct((1,), jnp.int32),
    }
    with pytest.raises(ValueError, match=r"missing there \['b'\]"):
        ckpt.check_compatible(saved, want, "ckpt")
    ckpt.check_compatible(want, want, "ckpt")
    with pytest.raises(ValueError, match=r"'a' has shape \(2,\) dtype float32 there.*dtype int32"):
        ckpt.check_compatible(saved, {"a": jax.ShapeDtypeStruct((2,), jnp.int32)}, "ckpt")


def test_metric_averager_and_non_finite_detection():
    avg = mw.MetricAverager()
    avg.update({"loss": np.float32(1.0)})
    avg.update({"loss": np.asarray([2.0, 6.0], np.float32)})  # one steps_per_call=2 call
    assert avg.compute_and_reset() == {"loss": pytest.approx(3.0)}
    assert not avg
    assert mw.first_non_finite({"a": np.asarray([1.0, 2.0]), "b": np.asarray([0.0, np.inf])}) == (
        "b",
        1,
    )
    assert mw.first_non_finite({"a": np.float32(1.0)}) is None
    progress = mw.Progress(total_steps=10, start_step=0)
    progress.mark(1)
    line = progress.report(1, {"loss": 0.5, "acc": 0.25, "loss_D": 2.0})
    assert (
        line == "step 1/10 | ? steps/s | ETA ? | loss 0.5 loss_D 2 acc 0.25"
    )  # losses first; no speed yet


# ----------------------------------------------------------------------------- sweep and CLI


@pytest.mark.smoke
def test_sweep_expansion_product_and_points():
    pts = sweep.expand_sweep({"lr": [1, 2], "model.depth": [3, 4, 5]})
    assert pts == [{"lr": a, "model.depth": b} for a in (1, 2) for b in (3, 4, 5)]
    assert sweep.expand_sweep([{"lr": 1}, {"seed": 2}]) == [{"lr": 1}, {"seed": 2}]
    assert sweep.run_name({"lr": 0.001, "crop": (8, 16)}) == "lr=0.001,crop=(8,16)"
    with pytest.raises(ValueError, match=r"get_sweep\(\)\['lr'\]: expected a non-empty list"):
        sweep.expand_sweep({"lr": []})
    with pytest.raises(ValueError, match=r"get_sweep\(\)\[1\]: expected a dict"):
        sweep.expand_sweep([{"lr": 1}, 3])
    c = sweep.apply_overrides(toy_config(), {"lr": 0.5, "data.height": 8})
    assert c.lr == 0.5 and c.data.height == 8 and toy_config().lr == 1e-2
    with pytest.raises(ValueError, match=r"sweep override 'lrr': config has no field 'lrr'"):
        sweep.apply_overrides(toy_config(), {"lrr": 0.5})
    with pytest.raises(
        ValueError, match=r"sweep override 'datum.height': config has no field 'datum'"
    ):
        sweep.apply_overrides(toy_config(), {"datum.height": 8})


def test_sweep_runs_points_into_named_directories(tmp_path):
    path = os.path.join(REPO, "tests", "toy_method.py")
    cmds = sweep.run_sweep(path + ":sweep", str(tmp_path), dry_run=True)
    assert list(cmds) == [
        "lr=0.01,features=4",
        "lr=0.01,features=8",
        "lr=0.003,features=4",
        "lr=0.003,features=8",
    ]
    assert cmds["lr=0.003,features=8"].endswith(
        f"--workdir={tmp_path}/lr=0.003,features=8 --config.lr=0.003 --config.features=8"
    )
    cfg_file = tmp_path / "two.py"
    cfg_file.write_text(
        f"import sys; sys.path.insert(0, {REPO!r})\n"
        "from tests.toy_method import get_config\n"
        "def get_sweep(arg):\n    return [{'seed': 1, 'eval_every_steps': 0}, {'seed': 2, 'eval_every_steps': 1}]\n"
    )
    out = sweep.run_sweep(str(cfg_file) + ":sweep", str(tmp_path / "root"), dry_run=False)
    assert set(out) == {"seed=1,eval_every_steps=0", "seed=2,eval_every_steps=1"}
    assert (
        "eval/mse" in out["seed=2,eval_every_steps=1"]
        and "eval/mse" not in out["seed=1,eval_every_steps=0"]
    )
    cfg, st = trainer.restore_state(str(tmp_path / "root" / "seed=2,eval_every_steps=1"))
    assert cfg.seed == 2 and cfg.eval_every_steps == 1 and int(st["step"]) == 1
    assert json.loads((tmp_path / "root" / "sweep.json").read_text())["runs"].keys() == out.keys()


@pytest.mark.slow
def test_main_cli_trains_from_a_config_file(tmp_path):
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": f"--xla_force_host_platform_device_count=2 {XLA_OPT_FLAGS}",
    }
    cmd = [
        sys.executable,
        "-m",
        "dakpn_jax.main",
        "--config=tests/toy_method.py",
        f"--workdir={tmp_path}",
        "--config.num_train_steps=2",
        "--config.batch_size=4",
    ]
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    final = json.loads(r.stdout.strip().splitlines()[-1])
    assert final["step"] == 2 and np.isfinite(final["loss"])
    assert json.loads((tmp_path / "config.json").read_text())["batch_size"] == 4


# ----------------------------------------------------------------------------- DA-KPN through the trainer


def dakpn_tiny(**overrides):
    path = os.path.join(REPO, "configs", "default.py")
    if not os.path.exists(path):
        pytest.skip("configs/default.py not there yet")
    module, arg = sweep.load_config_module(path + ":tiny")
    c = module.get_config(arg)
    c.eval_every_steps = 0  # evaluation is the method's own test; here only the loop matters
    for k, v in overrides.items():
        c[k] = v
    return c


def test_dakpn_tiny_one_vs_eight_devices_and_exact_resume(tmp_path, monkeypatch):
    """DA-KPN tiny, 3 steps in float64 (tests/float64_method.py): 1 device == 8 devices within
    FLOAT64_REL per network; killed after 2 steps + restart == 3 straight steps bit for bit (KPN and
    D parameters, both Adam states, rng); both networks trained."""
    # norm "none": a conv bias in front of a BatchNorm gets an exactly-zero gradient; in float64 its
    # round-off (~1e-17) stays far below Adam's eps, but the check should not lean on that margin.
    c = dakpn_tiny(num_train_steps=3, checkpoint_every_steps=2)
    c.model.disc.norm = "none"
    c = float64_config(c)
    from tests import float64_method

    with jax.enable_x64(True):
        out = trainer.train_and_evaluate(c, str(tmp_path / "eight"))
        assert out["step"] == 3 and all(np.isfinite(v) for v in out.values())
        trainer.train_and_evaluate(c, str(tmp_path / "one"), devices=jax.devices()[:1])
        preempted_run(monkeypatch, float64_method, c, str(tmp_path / "resumed"), after_steps=2)
        trainer.train_and_evaluate(c, str(tmp_path / "resumed"))
        init = leaves(trainer.init_state(float64_method, c, trainer.make_mesh()))
        eight_state = trainer.restore_state(str(tmp_path / "eight"))[1]
        one_state = trainer.restore_state(str(tmp_path / "one"))[1]
        resumed = leaves(trainer.restore_state(str(tmp_path / "resumed"))[1])
    eight, one = leaves(eight_state), leaves(one_state)
    assert eight.keys() == one.keys() == resumed.keys() == init.keys()
    assert all(v.dtype == np.float64 for k, v in eight.items() if k.startswith("['params']"))
    assert_float64_equivalent(one_state, eight_state)
    for k in eight:
        assert np.isfinite(eight[k]).all(), k
        np.testing.assert_array_equal(resumed[k], eight[k], err_msg=k)
    for net in ("kpn", "D"):
        changed = [
            k
            for k in eight
            if k.startswith(f"['params']['{net}']") and not np.array_equal(eight[k], init[k])
        ]
        assert changed, f"{net} parameters did not change"
    assert "['step']" in eight and int(eight["['step']"]) == 3
    assert "train/loss_D" in read_event_tags(mw.event_files(str(tmp_path / "eight"))[0])


def test_route_library_logs_sends_info_to_the_workdir_file_and_nests(tmp_path, capfd):
    """absl/orbax/grain INFO -> WORKDIR/log.txt, not the console; warnings still on the console;
    an inner routing (a trainer run inside a driver) gets its own file; everything undone on exit."""
    import logging as pylogging

    from absl import logging as absl_logging

    from dakpn_jax import console

    root = pylogging.getLogger()
    handlers_before, level_before = list(root.handlers), root.level
    with console.route_library_logs(str(tmp_path)) as outer:
        absl_logging.info("orbax-like record %d", 1)
        pylogging.getLogger("grain").warning("a grain warning")
        with console.route_library_logs(str(tmp_path / "stage")) as inner:
            pylogging.getLogger("orbax").info("inner record")
        with console.route_library_logs(
            str(tmp_path)
        ):  # the same file again: no duplicated records
            pylogging.getLogger("orbax").info("same-file record")
        console.say("a console line")
    outer_text, inner_text = open(outer.path).read(), open(inner.path).read()
    assert outer.path == str(tmp_path / "log.txt")
    for needle in ("orbax-like record 1", "a grain warning", "inner record", "a console line"):
        assert needle in outer_text
    assert outer_text.count("same-file record") == 1
    assert "inner record" in inner_text and "orbax-like" not in inner_text
    err = capfd.readouterr().err
    assert "orbax-like record" not in err and "inner record" not in err
    assert "a grain warning" in err and err.count("a console line") == 1
    assert root.handlers == handlers_before and root.level == level_before
