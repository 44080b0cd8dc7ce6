"""2 processes x 4 CPU devices (jax.distributed on 127.0.0.1, gloo collectives) == 1 process x 8 devices.

Each subprocess runs the real multi-host path of the trainer: distributed init, a mesh spanning both
processes, per-process batches stitched into global arrays, a shared orbax workdir (iterator states
of both processes in one checkpoint), then restores the final state and writes its own copy.
"""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from tests import toy_method  # noqa: E402

from dakpn_jax.training import trainer  # noqa: E402
from conftest import XLA_OPT_FLAGS, assert_float64_equivalent, float64_config  # noqa: E402

WORKER = r"""
import os, sys, json
import numpy as np
sys.path.insert(0, {repo!r})
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize({address!r}, num_processes=2, process_id={pid})
import ml_collections
from dakpn_jax.training import trainer
config = ml_collections.ConfigDict(json.loads({config!r}))
metrics = trainer.train_and_evaluate(config, {workdir!r})
_, state = trainer.restore_state({workdir!r})
flat = jax.tree_util.tree_flatten_with_path(state)[0]
np.savez({out!r}, **{{jax.tree_util.keystr(p): np.asarray(x.addressable_data(0)) for p, x in flat}})
print("METRICS", json.dumps(metrics))
if {export!r}:  # both processes export into one folder, each its share of the images
    from dakpn_jax import export
    manifest = export.export_translated({workdir!r}, {export!r}, batch_size=4, progress=False)
    print("MANIFEST", json.dumps(manifest))
"""


PROBE = r"""
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize({address!r}, num_processes=2, process_id={pid})
from jax.experimental import multihost_utils
got = multihost_utils.process_allgather(jax.numpy.asarray([{pid} + 1.0]))
assert got.reshape(-1).tolist() == [1.0, 2.0], got
print("PROBE_OK")
"""

_PROBE: dict = {}


def gloo_probe() -> str | None:
    """None when a trivial two-process gloo collective (jax.distributed + an all-gather) works on
    this machine, else why not. Run once per session: it is the only reason to skip."""
    if "result" not in _PROBE:
        address = f"127.0.0.1:{free_port()}"
        env = {
            **os.environ,
            "JAX_PLATFORMS": "cpu",
            "XLA_FLAGS": f"--xla_force_host_platform_device_count=1 {XLA_OPT_FLAGS}",
        }
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", PROBE.format(address=address, pid=pid)],
                env=env,
                text=True,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            for pid in range(2)
        ]
        why = None
        for p in procs:
            try:
                out, err = p.communicate(timeout=120)
            except subprocess.TimeoutExpired:
                for q in procs:
                    q.kill()
                why = "probe timed out after 120 s"
                break
            if p.returncode != 0 or "PROBE_OK" not in out:
                why = f"probe exited {p.returncode}: {err[-500:]}"
        _PROBE["result"] = why
    return _PROBE["result"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(codes, devices: int, *, x64: bool = False, timeout: int = 300) -> list[str]:
    """Runs one Python process per source in ``codes`` (each with ``devices`` CPU devices) and
    returns their stdouts; every one must exit 0 (collectives work here, see the probe, so any
    failure is the code's). Kills them all if one times out."""
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices} {XLA_OPT_FLAGS}",
    }
    if x64:
        env["JAX_ENABLE_X64"] = "1"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code],
            cwd=REPO,
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for code in codes
    ]
    outs = []
    for p in procs:
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        outs.append((p.returncode, out, err))
    for rc, out, err in outs:
        assert rc == 0, err[-4000:]
    return [out for _, out, _ in outs]


def needs_gloo():
    why = gloo_probe()
    if why is not None:
        pytest.skip(f"two-process gloo collectives unavailable here ({why})")


def run_two_processes(config, tmp_path, export_dir=None, x64=False):
    needs_gloo()
    address = f"127.0.0.1:{free_port()}"
    codes = [
        WORKER.format(
            repo=REPO,
            address=address,
            pid=pid,
            config=config.to_json(),
            workdir=str(tmp_path / "two"),
            out=str(tmp_path / f"out{pid}.npz"),
            export=None if export_dir is None else str(export_dir),
        )
        for pid in range(2)
    ]
    outs = [(0, out, "") for out in launch(codes, 4, x64=x64)]
    return [dict(np.load(tmp_path / f"out{pid}.npz")) for pid in range(2)], outs


def leaves(state):
    return {
        jax.tree_util.keystr(p): np.asarray(x)
        for p, x in jax.tree_util.tree_flatten_with_path(state)[0]
    }


def as_tree_of(reference, flat):
    """The flat ``{keystr: array}`` of a worker, in the structure of ``reference``."""
    paths, treedef = jax.tree_util.tree_flatten_with_path(reference)
    return jax.tree_util.tree_unflatten(treedef, [flat[jax.tree_util.keystr(p)] for p, _ in paths])


# In float64 (tests/float64_method.py): one process and two differ only in summation order, whose
# float32 round-off depends on the processor; FLOAT64_REL of each network's scale does not.


@pytest.mark.slow
def test_two_processes_match_one_process_eight_devices(tmp_path):
    config = toy_method.get_config()
    config.num_train_steps, config.checkpoint_every_steps, config.eval_every_steps = 3, 2, 100
    config = float64_config(config)
    (p0, p1), outs = run_two_processes(config, tmp_path, x64=True)
    with jax.enable_x64(True):
        trainer.train_and_evaluate(config, str(tmp_path / "one"))
        ref_state = jax.device_get(trainer.restore_state(str(tmp_path / "one"))[1])
    ref = leaves(ref_state)
    assert p0.keys() == ref.keys()
    assert all(v.dtype == np.float64 for k, v in ref.items() if k.startswith("['params']"))
    for k in ref:
        np.testing.assert_array_equal(p0[k], p1[k], err_msg=k)  # replicated: both processes agree
    assert_float64_equivalent(ref_state, as_tree_of(ref_state, p0))
    assert int(p0["['consumed']"]) == int(ref["['consumed']"])  # same global batches, same order
    # One checkpoint holds both processes' iterator states (3 batches consumed by each).
    saved = json.loads(
        (tmp_path / "two" / "checkpoints" / "3" / "iterators" / "metadata").read_text()
    )
    assert saved == {f"process_{i}-of-2": {"train": {"next_index": 3}} for i in range(2)}


@pytest.mark.slow
def test_dakpn_two_processes_match_one_process_eight_devices(tmp_path):
    """The same for DA-KPN (configs/default.py:tiny): per-row randomness (tile positions) needs the
    global batch to be row-for-row the same on any process count, which the pipeline guarantees."""
    from dakpn_jax import sweep

    module, arg = sweep.load_config_module(os.path.join(REPO, "configs", "default.py") + ":tiny")
    config = module.get_config(arg)
    # norm "none": a conv bias in front of a norm layer has an exactly-zero true gradient (see
    # tests/test_trainer.py).
    config.model.disc.norm = "none"
    config.num_train_steps, config.checkpoint_every_steps, config.eval_every_steps = 2, 2, 0
    config = float64_config(config)
    (p0, p1), outs = run_two_processes(
        config, tmp_path, export_dir=tmp_path / "export_two", x64=True
    )
    from dakpn_jax import export

    with jax.enable_x64(True):
        trainer.train_and_evaluate(config, str(tmp_path / "one"))
        ref_state = jax.device_get(trainer.restore_state(str(tmp_path / "one"))[1])
        # The two-process export is the one-process export of the same checkpoint, file for file.
        one = export.export_translated(
            str(tmp_path / "two"), str(tmp_path / "export_one"), batch_size=4, progress=False
        )
    ref = leaves(ref_state)
    assert p0.keys() == ref.keys()
    for k in ref:
        np.testing.assert_array_equal(p0[k], p1[k], err_msg=k)
    assert_float64_equivalent(ref_state, as_tree_of(ref_state, p0))
    manifests = [json.loads(out.split("MANIFEST", 1)[1].splitlines()[0]) for _, out, _ in outs]
    n = config.data.num_synthetic_train
    assert one["complete"] and one["count"] == n
    assert (
        manifests[0]["complete"] and manifests[0]["count"] == n
    )  # process 0 counted process 1's files
    written = json.loads((tmp_path / "export_two" / export.MANIFEST).read_text())
    assert written["complete"] and written["count"] == n
    for sub in ("images", "labels"):
        names = sorted(os.listdir(tmp_path / "export_one" / sub))
        assert len(names) == n and names == sorted(os.listdir(tmp_path / "export_two" / sub))
        for name in names:
            a = (tmp_path / "export_one" / sub / name).read_bytes()
            assert a == (tmp_path / "export_two" / sub / name).read_bytes(), f"{sub}/{name}"


STAGE_WORKER = r"""
import json, os, sys
sys.path.insert(0, {repo!r})
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize({address!r}, num_processes=2, process_id={pid})
from dakpn_jax.protocol import hosts, stages
root = {root!r}  # each process its own folder: what one host's local disk would be
ran = []
def fn(directory):
    ran.append(directory)
    return {{"value": {pid}, "dir": directory}}
first = stages.stage(os.path.join(root, "a"), fn, what="stage a")
second = stages.stage(os.path.join(root, "a"), fn, what="stage a again")
big = hosts.broadcast_json({{"text": "x" * (3000 + {pid})}} if {pid} == 0 else None)
print("RESULT", json.dumps({{"first": first, "second": second, "ran": len(ran),
                            "big": len(big["text"]), "writer": hosts.is_writer()}}))
"""


def test_protocol_stage_on_two_hosts_one_decision_one_writer(tmp_path):
    """Two real processes (jax.distributed, gloo) run `protocol.stages.stage` over their own
    folders, as hosts with local disks would: both run the stage once and return process 0's
    result; only process 0 writes the marker; on the second call process 1 reuses the stage
    although its own folder has no marker (process 0 decided)."""
    needs_gloo()
    address = f"127.0.0.1:{free_port()}"
    codes = [
        STAGE_WORKER.format(repo=REPO, address=address, pid=pid, root=str(tmp_path / f"host{pid}"))
        for pid in range(2)
    ]
    res = [json.loads(out.split("RESULT", 1)[1].splitlines()[0]) for out in launch(codes, 1)]
    want = {"value": 0, "dir": str(tmp_path / "host0" / "a")}
    for pid, r in enumerate(res):
        assert r["first"] == want and r["second"] == want, (pid, r)
        assert r["ran"] == 1, (pid, r)  # ran once, then reused on process 0's word
        assert r["writer"] == (pid == 0)
        assert r["big"] == 3000  # process 0's payload, longer than any fixed buffer
    marker = json.loads((tmp_path / "host0" / "a" / "stage.json").read_text())
    assert marker["result"] == want
    assert not (tmp_path / "host1" / "a" / "stage.json").exists()


PROTOCOL_WORKER = r"""
import json, sys
sys.path.insert(0, {repo!r})
import jax
if {nproc} > 1:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize({address!r}, num_processes={nproc}, process_id={pid})
import ml_collections
from dakpn_jax.protocol import run_protocol
config = ml_collections.ConfigDict(json.loads({config!r}))
out = run_protocol(config, {workdir!r}, results_dir={results!r})
print("RESULT", json.dumps(out["summary"]["rows"], sort_keys=True, default=str))
"""


def _protocol_processes(config, workdir, results, nproc, devices):
    address = f"127.0.0.1:{free_port()}"
    codes = [
        PROTOCOL_WORKER.format(
            repo=REPO,
            address=address,
            nproc=nproc,
            pid=pid,
            config=config.to_json(),
            workdir=str(workdir),
            results=str(results),
        )
        for pid in range(nproc)
    ]
    return [
        out.split("RESULT", 1)[1].splitlines()[0] for out in launch(codes, devices, timeout=600)
    ]


@pytest.mark.slow
def test_protocol_on_two_hosts_equals_one_host_and_process_zero_alone_writes(tmp_path):
    """A minimal protocol (source-only, a training-free control, the oracle, the scores stage) on
    two processes x 4 devices sharing one workdir gives the one-process x 8 devices table exactly
    (every segmenter trains SPMD across both; the control's export is sharded), both processes
    return it, and the report and the records are written once, by process 0 (its lock slot is
    the only other file of process 1)."""
    needs_gloo()
    from configs import protocol as protocol_configs

    config = protocol_configs.get_config("tiny")
    config.seeds = (0,)
    config.translators = {"reinhard": config.translators.reinhard.to_dict()}
    config.headline = config.compare_to = ("source_only", "reinhard")
    config.n_real = config.side_n_real = (0,)
    one = _protocol_processes(config, tmp_path / "one", tmp_path / "rec_one", 1, 8)
    two = _protocol_processes(config, tmp_path / "two", tmp_path / "rec_two", 2, 4)
    assert two[0] == two[1] == one[0]
    rows = json.loads(one[0])
    assert {r["key"] for r in rows} == {"source_only_n0", "reinhard_n0", "oracle"}
    for name in ("results.json", "results.md", "grid_seed0.png"):
        assert (tmp_path / "two" / name).exists()
    a = json.loads((tmp_path / "one" / "results.json").read_text())["summary"]["rows"]
    b = json.loads((tmp_path / "two" / "results.json").read_text())["summary"]["rows"]
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    # The records of the two-process run are those of the one-process run, written once.
    recs = lambda d: sorted(str(p.relative_to(d)) for p in d.rglob("*.json"))
    assert recs(tmp_path / "rec_two") == recs(tmp_path / "rec_one")
    # Only process 0's files: the stage markers and confusions exist once, and process 1 left
    # nothing but its lock slot.
    assert sorted(p.name for p in (tmp_path / "two").glob(".lock*")) == [
        ".lock.process0",
        ".lock.process1",
    ]
    assert not list((tmp_path / "two").rglob("*.tmp*"))
