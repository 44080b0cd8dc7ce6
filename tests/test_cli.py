"""The command lines (issue #19): ``dakpn_jax.main`` exits with 143 on preemption (a real SIGTERM
through the real trainer, and the resumed run finishes), parses the multi-host flags into
``trainer.initialize_distributed`` and the ``--config.x`` overrides; ``experiments/protocol.py``
exits with 143 when a stage is preempted and requires ``--workdir``.

Each case is a subprocess (absl parses flags once per process). A driver patches the trainer where
a case needs it, then runs the real entry point with the given argv."""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PATCHED_TRAINER = r"""
import json, sys
from dakpn_jax.training import preemption, trainer
def fake_init(*args):
    print("INIT " + json.dumps(list(args)), flush=True)
def fake_train(config, workdir, **kwargs):
    print("TRAIN " + json.dumps({"steps": config.num_train_steps, "workdir": workdir}), flush=True)
    if PREEMPT:
        raise preemption.Preempted(3, workdir)
    return {"step": 0}
trainer.initialize_distributed = fake_init
trainer.train_and_evaluate = fake_train
"""

MAIN = "import sys\nfrom dakpn_jax import main\nsys.argv = ['dakpn'] + sys.argv[1:]\nmain.run()\n"
PROTOCOL = (
    "import runpy, sys\nsys.argv = ['protocol.py'] + sys.argv[1:]\n"
    f"runpy.run_path({os.path.join(REPO, 'experiments', 'protocol.py')!r}, run_name='__main__')\n"
)


def run(code, *args, env=None, timeout=240):
    full = {**os.environ, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu"}
    full.pop("JAX_COORDINATOR_ADDRESS", None)
    full.update(env or {})
    p = subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=REPO,
        env=full,
        text=True,
        capture_output=True,
        timeout=timeout,
    )
    return p.returncode, p.stdout, p.stderr


def lines(out, tag):
    return [json.loads(l[len(tag) + 1 :]) for l in out.splitlines() if l.startswith(tag + " ")]


def test_main_preempted_exits_143_and_passes_multihost_flags(tmp_path):
    rc, out, err = run(
        PATCHED_TRAINER.replace("PREEMPT", "True") + MAIN,
        "--config=tests/toy_method.py",
        f"--workdir={tmp_path}",
        "--config.num_train_steps=7",
        "--coordinator_address=host0:1234",
        "--num_processes=4",
        "--process_id=2",
    )
    assert rc == 143, err[-2000:]
    assert lines(out, "INIT") == [["host0:1234", 4, 2]]
    assert lines(out, "TRAIN") == [{"steps": 7, "workdir": str(tmp_path)}]


@pytest.mark.parametrize(
    "args, env, want",
    [
        (["--multihost"], {}, [[None, None, None]]),  # auto-detection: no arguments
        ([], {"JAX_COORDINATOR_ADDRESS": "host1:99"}, [[None, None, None]]),
        ([], {}, []),  # one machine: no distributed initialisation at all
    ],
)
def test_main_multihost_switches(tmp_path, args, env, want):
    rc, out, err = run(
        PATCHED_TRAINER.replace("PREEMPT", "False") + MAIN,
        "--config=tests/toy_method.py",
        f"--workdir={tmp_path}",
        *args,
        env=env,
    )
    assert rc == 0, err[-2000:]
    assert lines(out, "INIT") == want
    assert json.loads(out.strip().splitlines()[-1]) == {"workdir": str(tmp_path), "step": 0}


def test_main_bad_flags_are_usage_errors(tmp_path):
    rc, _, err = run(
        MAIN, "--config=tests/toy_method.py", f"--workdir={tmp_path}", "--config.no_such_field=1"
    )
    assert rc != 0 and "no_such_field" in err
    rc, _, err = run(MAIN, "--config=tests/toy_method.py")
    assert rc != 0 and "workdir" in err


SIGTERM_AT_SECOND_BATCH = r"""
import os, signal, sys
from tests import toy_method
_next, _calls = toy_method.next_batch, [0]
def next_batch(iterators):
    _calls[0] += 1
    if _calls[0] == 2:  # the scheduler's notice arrives while step 2's batch loads
        os.kill(os.getpid(), signal.SIGTERM)
    return _next(iterators)
toy_method.next_batch = next_batch
"""


@pytest.mark.slow
def test_main_real_sigterm_checkpoints_exits_143_and_resumes(tmp_path):
    workdir = str(tmp_path / "run")
    args = [
        "--config=tests/toy_method.py",
        f"--workdir={workdir}",
        "--config.num_train_steps=5",
        "--config.checkpoint_every_steps=100",
    ]
    rc, out, err = run(SIGTERM_AT_SECOND_BATCH + MAIN, *args)
    assert rc == 143, err[-3000:]
    assert "preempted: saved step 2" in err
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2"]
    rc, out, err = run(MAIN, *args)  # the same command again: resumes and finishes
    assert rc == 0, err[-3000:]
    assert json.loads(out.strip().splitlines()[-1])["step"] == 5


def test_protocol_preempted_stage_exits_143(tmp_path):
    rc, out, err = run(
        PATCHED_TRAINER.replace("PREEMPT", "True") + PROTOCOL,
        f"--workdir={tmp_path}",
        "--config=configs/protocol.py:tiny",
    )
    assert rc == 143, err[-3000:]
    assert len(lines(out, "TRAIN")) == 1  # the first stage was preempted, nothing ran after it
    rc, _, err = run(PROTOCOL)
    assert rc != 0 and "workdir" in err
