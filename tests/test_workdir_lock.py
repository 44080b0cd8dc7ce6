"""One process per workdir (dakpn_jax.workdir_lock): a second run on a held workdir ends at once with
one line naming the holder, before it writes anything; a lock left by a SIGKILLed process never
blocks a rerun; the trainer, the CLI, export and the protocol all take the same lock."""

import os
import signal
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from dakpn_jax import workdir_lock  # noqa: E402

# A holder in another process: takes the lock, says so, then sleeps until killed.
HOLDER = (
    "import sys, time\nfrom dakpn_jax import workdir_lock\n"
    "with workdir_lock.exclusive(sys.argv[1], what='holder', process_index=int(sys.argv[2])):\n"
    "    print('locked', flush=True)\n    time.sleep(600)\n"
)


@pytest.fixture
def holder():
    """start(workdir, slot=0) -> Popen of a process that holds the lock (killed at teardown)."""
    procs = []

    def start(workdir, slot=0):
        env = {**os.environ, "PYTHONPATH": REPO}
        p = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(workdir), str(slot)],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        procs.append(p)
        assert p.stdout.readline().strip() == "locked"
        return p

    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()


def test_second_process_fails_fast_naming_holder_and_sigkill_releases(tmp_path, holder):
    p = holder(tmp_path)
    with pytest.raises(workdir_lock.WorkdirInUse) as e:
        with workdir_lock.exclusive(tmp_path, what="training", process_index=0):
            pytest.fail("entered a workdir another process holds")
    msg = str(e.value)
    assert str(tmp_path) in msg and f"process {p.pid}" in msg and "training" in msg
    assert "\n" not in msg
    # Another process slot (another host of a multi-host run) is not blocked.
    with workdir_lock.exclusive(tmp_path, process_index=1):
        pass
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert os.path.exists(workdir_lock.lock_path(tmp_path, 0))  # the stale file is still there ...
    with workdir_lock.exclusive(tmp_path, process_index=0):  # ... and blocks nothing
        pass


def test_reentrant_in_one_process_and_released_after_outermost(tmp_path):
    with workdir_lock.exclusive(tmp_path, process_index=0):
        with workdir_lock.exclusive(tmp_path, process_index=0):
            pass
        # Still held after the inner exit: a child process cannot take it.
        code = (
            "import sys\nfrom dakpn_jax import workdir_lock\n"
            "try:\n    workdir_lock.exclusive(sys.argv[1], process_index=0).__enter__()\n"
            "except workdir_lock.WorkdirInUse:\n    sys.exit(3)\n"
        )
        env = {**os.environ, "PYTHONPATH": REPO}
        assert subprocess.run([sys.executable, "-c", code, str(tmp_path)], env=env).returncode == 3
    assert subprocess.run([sys.executable, "-c", code, str(tmp_path)], env=env).returncode == 0


def test_trainer_and_cli_refuse_a_held_workdir_before_writing(tmp_path, holder):
    from tests import toy_method
    from dakpn_jax.training import trainer

    holder(tmp_path)
    with pytest.raises(workdir_lock.WorkdirInUse, match="training"):
        trainer.train_and_evaluate(toy_method.get_config(), str(tmp_path))
    env = {**os.environ, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu"}
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "dakpn_jax.main",
            "--config=tests/toy_method.py",
            f"--workdir={tmp_path}",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2, r.stderr[-2000:]
    last = r.stderr.strip().splitlines()[-1]
    assert (
        last.startswith("dakpn: error:") and "in use by process" in last and str(tmp_path) in last
    )
    # Neither the library call nor the CLI wrote anything beside the lock file.
    assert sorted(os.listdir(tmp_path)) == [".lock.process0"]


def test_export_and_protocol_honour_the_lock(tmp_path, holder):
    from configs import default as default_configs
    from configs import protocol as protocol_configs
    from dakpn_jax import export
    from dakpn_jax.protocol import run_protocol

    out = tmp_path / "export"
    holder(out)
    with pytest.raises(workdir_lock.WorkdirInUse, match="export"):
        export.export_translated(
            "unused",
            str(out),
            config=default_configs.get_config("tiny"),
            translate_fn=lambda x, y: x,
            translator_id="identity",
            split="real-val",
        )
    assert sorted(os.listdir(out)) == [".lock.process0"]

    proto = tmp_path / "protocol"
    holder(proto)
    with pytest.raises(workdir_lock.WorkdirInUse, match="protocol"):
        run_protocol(protocol_configs.get_config(), str(proto))
    assert sorted(os.listdir(proto)) == [".lock.process0"]
    env = {**os.environ, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu"}
    r = subprocess.run(
        [sys.executable, "experiments/protocol.py", f"--workdir={proto}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.strip().splitlines()[-1].startswith("protocol: error:")
    assert sorted(os.listdir(proto)) == [".lock.process0"]
