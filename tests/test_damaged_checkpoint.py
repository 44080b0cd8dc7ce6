"""Resume with a damaged newest checkpoint (issue #13): it is moved aside, never deleted, and the run
continues from the newest intact one exactly as if it had resumed from that one directly.

The damage is the one seen in the field: the array data of the newest step cut short on disk (a
full disk, a killed copy), which TensorStore reports as ``OUT_OF_RANGE ... OCDBT``. Driven by the
toy method (tests/toy_method.py): its state hashes every consumed example index, so equal states
mean equal parameters, optimizer states, RNG and data position.
"""

import glob
import os
import shutil
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from tests import toy_method  # noqa: E402
from conftest import XLA_OPT_FLAGS, persistent_compilation_cache  # noqa: E402

from dakpn_jax.training import checkpoint as ckpt  # noqa: E402
from dakpn_jax.training import trainer  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def compilation_cache(tmp_path_factory):
    """The runs here repeat one toy compilation; jax's persistent cache lets them share it (the
    executables are the ones a fresh compilation produces), as in tests/test_trainer.py."""
    with persistent_compilation_cache(tmp_path_factory.mktemp("jax_cache"), 0.0):
        yield


def toy(**overrides):
    return ml_collections.ConfigDict({**toy_method.get_config().to_dict(), **overrides})


def leaves(state):
    return {
        jax.tree_util.keystr(p): np.asarray(x)
        for p, x in jax.tree_util.tree_flatten_with_path(state)[0]
    }


def array_files(step_dir):
    """The OCDBT data files of a checkpoint's state item (not the manifests or the metadata)."""
    return sorted(
        f
        for f in glob.glob(os.path.join(step_dir, "state", "**", "d", "*"), recursive=True)
        if os.path.isfile(f)
    )


def truncate_arrays(step_dir):
    for f in array_files(step_dir):
        with open(f, "r+b") as fh:
            fh.truncate(os.path.getsize(f) // 3)


def test_truncated_newest_checkpoint_resumes_from_the_previous_one_bit_exactly(tmp_path, capsys):
    c4, c6 = toy(num_train_steps=4), toy(num_train_steps=6)  # checkpoints every 2 steps: 2, 4
    damaged, direct = tmp_path / "damaged", tmp_path / "direct"
    trainer.train_and_evaluate(c4, str(damaged), progress=False)
    shutil.copytree(damaged, direct)
    assert sorted(os.listdir(damaged / "checkpoints")) == ["2", "4"]

    files = array_files(str(damaged / "checkpoints" / "4"))
    assert files
    sizes_before = {
        os.path.relpath(f, damaged / "checkpoints" / "4"): os.path.getsize(f) // 3 for f in files
    }
    truncate_arrays(str(damaged / "checkpoints" / "4"))
    # The damage is real: restoring step 4 by itself fails inside TensorStore.
    mngr = ckpt.Checkpointer(str(damaged), read_only=True, max_to_keep=None)
    abstract = trainer.abstract_state(toy_method, c6, trainer.make_mesh())
    with pytest.raises(Exception, match="OUT_OF_RANGE|DATA_LOSS"):
        mngr.restore(4, abstract)
    mngr.close()

    # Reference: the same workdir with step 4 taken away by hand, so the run resumes from step 2.
    shutil.move(str(direct / "checkpoints" / "4"), str(tmp_path / "step4_elsewhere"))
    capsys.readouterr()
    out_damaged = trainer.train_and_evaluate(c6, str(damaged), progress=False)
    console = capsys.readouterr().err
    out_direct = trainer.train_and_evaluate(c6, str(direct), progress=False)

    # One line says what happened; the damaged step is kept, renamed with the reason.
    said = [ln for ln in console.splitlines() if " is damaged " in ln]
    assert len(said) == 1 and "step 4" in said[0] and "resuming from step 2" in said[0], console
    kept = damaged / "checkpoints_damaged" / "4-OUT_OF_RANGE"
    assert kept.is_dir(), os.listdir(damaged / "checkpoints_damaged")
    assert {
        os.path.relpath(f, kept): os.path.getsize(f) for f in array_files(str(kept))
    } == sizes_before
    assert "OUT_OF_RANGE" in (damaged / "checkpoints_damaged" / "4-OUT_OF_RANGE.txt").read_text()
    assert sorted(os.listdir(damaged / "checkpoints")) == sorted(os.listdir(direct / "checkpoints"))

    # Bit-identical to the run that resumed from step 2 directly (and both really trained 4 steps).
    assert out_damaged == out_direct and out_damaged["step"] == 6
    _, a = trainer.restore_state(str(damaged))
    _, b = trainer.restore_state(str(direct))
    la, lb = leaves(a), leaves(b)
    assert la.keys() == lb.keys()
    for k in la:
        np.testing.assert_array_equal(la[k], lb[k], err_msg=k)
    assert int(la["['step']"]) == 6


def test_a_different_model_is_not_damage_and_nothing_is_moved(tmp_path):
    trainer.train_and_evaluate(toy(num_train_steps=2), str(tmp_path), progress=False)
    with pytest.raises(ckpt.IncompatibleCheckpoint, match="different model"):
        trainer.train_and_evaluate(
            toy(num_train_steps=4, features=8), str(tmp_path), progress=False
        )
    assert (
        os.listdir(tmp_path / "checkpoints") == ["2"]
        and not (tmp_path / "checkpoints_damaged").exists()
    )


def test_cli_workdir_errors_are_one_paragraph(tmp_path):
    """Unrecoverable workdir states: through the CLI one `dakpn: error:` line, no traceback (a
    checkpoint of another model); an unreadable config.json names the file."""
    trainer.train_and_evaluate(toy(num_train_steps=2), str(tmp_path), progress=False)
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": XLA_OPT_FLAGS}
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "dakpn_jax.main",
            "--config=tests/toy_method.py",
            f"--workdir={tmp_path}",
            "--config.num_train_steps=2",
            "--config.features=8",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    last = r.stderr.strip().splitlines()[-1]
    assert (
        last.startswith("dakpn: error:")
        and "different model" in last
        and "nothing was overwritten" in last
    )
    assert " absl] " in (tmp_path / "log.txt").read_text()  # orbax's INFO records went to the file
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json: unreadable"):
        trainer.restore_state(str(tmp_path))


def test_processes_agree_a_step_another_process_could_not_restore_is_moved_aside(
    tmp_path, monkeypatch
):
    """The agreement rule with a simulated peer: this process restores step 4 fine, but the
    allgathered flags say another process could not, so every process must give step 4 up (moved
    aside, reason named) and take step 2, the next one all of them restore."""
    trainer.train_and_evaluate(toy(num_train_steps=4), str(tmp_path), progress=False)
    flags_seen = []

    def allgather_with_a_failing_peer(ok):
        flags_seen.append(ok)
        return ok and len(flags_seen) > 1  # the peer fails on the first candidate only

    monkeypatch.setattr(ckpt, "_everyone_succeeded", allgather_with_a_failing_peer)
    c = toy(num_train_steps=6)
    mngr = ckpt.Checkpointer(str(tmp_path), max_to_keep=None)
    damaged = []
    try:
        step, state, iters = mngr.restore_newest_intact(
            trainer.abstract_state(toy_method, c, trainer.make_mesh()),
            on_damaged=lambda *d: damaged.append(d),
        )
        assert mngr.all_steps() == [2]
    finally:
        mngr.close()
    assert (
        flags_seen == [True, True]
        and step == 2
        and int(state["step"]) == 2
        and set(iters) == {"train"}
    )
    assert [d[0] for d in damaged] == [4]
    assert (tmp_path / "checkpoints_damaged" / "4-failed_on_another_process").is_dir()
