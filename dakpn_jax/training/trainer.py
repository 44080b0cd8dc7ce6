"""The one generic training loop: mesh, sharding, jit, orbax, logging, resume, NaN guard.

It knows nothing of GANs. ``config.method`` names a method module (docs/ARCHITECTURE.md, "Method
modules") that defines the state, the pure step and the data streams; this file drives it.

Parallelism (data parallel, any number of hosts)::

    mesh     1-D, axis "data", over jax.devices() (or an explicit device list)
    state    replicated, NamedSharding(mesh, P())
    batch    global arrays, NamedSharding(mesh, P("data")): every process loads batch_size /
             process_count examples, jax.make_array_from_process_local_data stitches them
    step     jax.jit(step, donate_argnums=0) with those in/out shardings; the method's step sees the
             global batch and averages over it, XLA inserts the gradient all-reduce

With ``steps_per_call = k > 1`` one call runs ``lax.scan`` over k stacked batches (k, B, ...), sharded
P(None, "data"), which removes the per-step dispatch cost for tiny models such as the KPN head.

Multi-host: call :func:`initialize_distributed` (``dakpn_jax.main`` does) before anything touches
jax devices. On a Cloud TPU VM slice run the same command on every worker and
``jax.distributed.initialize()`` discovers the cluster by itself (also on SLURM / Open MPI); on other
GPU clusters pass the coordinator address, process count and this process's id.

Checkpoints (``checkpoint.Checkpointer``): ``workdir/checkpoints/<step>`` with the state pytree and
every process's grain iterator states, written asynchronously every ``checkpoint_every_steps`` and
at the end; a restart with the same workdir resumes from the latest one, and the consumed batches,
parameters and optimizer states continue exactly as in an uninterrupted run.

Config fields read here (``config.get(name, default)`` for the optional ones)::

    method, seed, batch_size (global), num_train_steps, log_every_steps, checkpoint_every_steps,
    eval_every_steps, steps_per_call = 1, keep_checkpoints = 3 (None keeps all),
    summary_every_steps = eval_every_steps, async_checkpoints = True

Events (logging, summaries, evaluation, checkpoints) fire after a call that crossed a multiple of
their interval, and logging, evaluation and the checkpoint also after the last step.
``eval_every_steps = 0`` (``summary_every_steps = 0``) switches evaluation (image summaries) off.

Console (``dakpn_jax.console``): library INFO records (absl, orbax, grain, ours) go to
``workdir/log.txt``; the console shows a start line, one live progress bar and an end line
(``verbose=True`` or ``config.log_to_console = True`` brings the INFO records back to the console).
A damaged newest checkpoint is moved to ``workdir/checkpoints_damaged/`` and the run resumes from
the newest intact one, saying so in one line (``checkpoint.Checkpointer.restore_newest_intact``).

Preemption (``preemption.py``): on SIGTERM the loop finishes the current call, checkpoints that
step and raises ``Preempted``; ``dakpn_jax.main`` exits with status 143, the shell's code for a
SIGTERM-ended job, so a scheduler restarts it and the restart resumes.
"""

from __future__ import annotations

import json
import logging
import os
import time
import types
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from dakpn_jax import console, registry, workdir_lock
from dakpn_jax.training import checkpoint as ckpt
from dakpn_jax.training import get_method
from dakpn_jax.training import metrics_writer as mw
from dakpn_jax.training import preemption

log = logging.getLogger("dakpn_jax.train")
PyTree = Any

_REQUIRED_INT = (
    "seed",
    "batch_size",
    "num_train_steps",
    "log_every_steps",
    "checkpoint_every_steps",
    "eval_every_steps",
)
_METHOD_FUNCTIONS = ("init_state", "make_train_step", "make_iterators", "next_batch")


# ----------------------------------------------------------------------------- setup


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> None:
    """``jax.distributed.initialize`` once per process (a no-op when already initialised).

    No arguments: auto-detection (Cloud TPU VM slices, SLURM, Open MPI). GPU clusters without such a
    launcher: ``coordinator_address="host0:1234"``, ``num_processes``, ``process_id``.
    """
    if jax.distributed.is_initialized():
        return
    kwargs = {
        k: v
        for k, v in (
            ("coordinator_address", coordinator_address),
            ("num_processes", num_processes),
            ("process_id", process_id),
        )
        if v is not None
    }
    jax.distributed.initialize(**kwargs)


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """1-D mesh with axis ``"data"`` over ``devices`` (default: all devices of all processes)."""
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("devices: empty device list")
    return Mesh(np.asarray(devices), ("data",))


def validate_config(config, mesh: Mesh) -> types.ModuleType:
    """Checks the generic fields and returns the method module; ValueError naming the field."""
    if not isinstance(config.get("method"), str):
        raise ValueError(f"config.method must be a method name (str), got {config.get('method')!r}")
    method = get_method(config.method)
    missing_fns = [f for f in _METHOD_FUNCTIONS if not callable(getattr(method, f, None))]
    if missing_fns:
        raise ValueError(
            f"config.method={config.method!r}: module {method.__name__} lacks {missing_fns}"
        )
    for name in _REQUIRED_INT + ("steps_per_call", "keep_checkpoints", "summary_every_steps"):
        if name in _REQUIRED_INT and name not in config:
            raise ValueError(f"config.{name} is missing (required by the trainer)")
        v = config.get(name)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise ValueError(f"config.{name} must be an int, got {v!r}")
        if name in ("seed", "num_train_steps", "eval_every_steps", "summary_every_steps"):
            if v < 0:
                raise ValueError(f"config.{name} must be >= 0, got {v}")
        elif v < 1:
            raise ValueError(f"config.{name} must be >= 1, got {v}")
    n_dev, n_proc = mesh.devices.size, jax.process_count()
    if config.batch_size % n_dev or config.batch_size % n_proc:
        raise ValueError(
            f"config.batch_size={config.batch_size} must be divisible by the device count {n_dev} "
            f"and the process count {n_proc} (global batch, split over the 'data' axis)"
        )
    return method


def check_workdir(workdir: str) -> str:
    """Creates ``workdir`` and proves it writable before any training; returns its absolute path."""
    if not isinstance(workdir, (str, os.PathLike)) or not str(workdir):
        raise ValueError(f"workdir must be a non-empty path, got {workdir!r}")
    workdir = os.path.abspath(os.fspath(workdir))
    try:
        os.makedirs(workdir, exist_ok=True)
        probe = os.path.join(workdir, f".write_test_{jax.process_index()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise ValueError(
            f"workdir={workdir!r} is not a writable directory ({e.__class__.__name__}: {e})"
        ) from e
    return workdir


def save_config(config, workdir: str) -> None:
    """``workdir/config.json`` (primary process only)."""
    if jax.process_index() == 0:
        path = os.path.join(workdir, "config.json")
        with open(path + ".tmp", "w") as f:
            f.write(config.to_json_best_effort(indent=2, sort_keys=True))
        os.replace(path + ".tmp", path)


def load_config(workdir: str) -> ml_collections.ConfigDict:
    """The config a run saved in ``workdir/config.json``; ValueError naming the file if absent or unreadable."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise ValueError(f"workdir={workdir!r} has no config.json (not a training run directory?)")
    try:
        with open(path) as f:
            config = ml_collections.ConfigDict(json.load(f))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, TypeError) as e:
        raise ValueError(
            f"{path}: unreadable run config ({e.__class__.__name__}: {e}). The file is written "
            "atomically, so it was changed or damaged by something else; restore it, or pass "
            "the config explicitly (restore_state(workdir, config))."
        ) from e
    return complete_saved_config(config)


def complete_saved_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A saved run config with the fields its method added since filled in: the method module's
    optional ``complete_saved_config(config)`` (docs/ARCHITECTURE.md), for registered methods. A
    run saved by an older version then still restores, translates and exports as it trained."""
    name = config.get("method")
    if isinstance(name, str) and name in registry.REGISTRY:
        complete = getattr(get_method(name), "complete_saved_config", None)
        if complete is not None:
            config = complete(config)
    return config


# ----------------------------------------------------------------------------- state and step


def _replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def abstract_state(method, config, mesh: Mesh) -> PyTree:
    """The state's ShapeDtypeStructs, replicated on ``mesh``, without computing anything."""
    shapes = jax.eval_shape(lambda rng: method.init_state(config, rng), jax.random.key(0))
    for path, x in jax.tree_util.tree_flatten_with_path(shapes)[0]:
        if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            raise ValueError(
                f"{method.__name__}.init_state: state{jax.tree_util.keystr(path)} is a typed PRNG key; "
                "store jax.random.key_data(key) (uint32) so it can be checkpointed"
            )
    rep = _replicated(mesh)
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rep), shapes)


def replicate(tree: PyTree, mesh: Mesh) -> PyTree:
    """Host values (identical on every process) -> arrays replicated over ``mesh`` (multi-host safe)."""
    rep = _replicated(mesh)

    def put(x):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, rep, lambda index: x[index])

    return jax.tree.map(put, tree)


def init_state(method, config, mesh: Mesh) -> PyTree:
    """Fresh state from ``jax.random.key(config.seed)``, replicated on ``mesh``.

    Computed eagerly on this process's first device, then copied to every mesh device: every
    process computes the same values, and eager ops reuse their compilations across runs (a jitted
    init would recompile for every config).
    """
    with jax.default_device(jax.local_devices()[0]):
        state = jax.device_get(method.init_state(config, jax.random.key(config.seed)))
    return replicate(state, mesh)


@jax.jit
def _all_finite(state: PyTree) -> jax.Array:
    leaves = [
        jnp.all(jnp.isfinite(x))
        for x in jax.tree.leaves(state)
        if jnp.issubdtype(x.dtype, jnp.inexact)
    ]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def make_call(train_step: Callable, mesh: Mesh, steps: int) -> Callable:
    """Jitted, donating ``call(state, batch) -> (state, metrics)`` running ``steps`` train steps.

    ``steps == 1``: batch leaves (B, ...) on P("data"), metrics scalars.
    ``steps > 1``: batch leaves (steps, B, ...) on P(None, "data"), ``lax.scan`` over the leading
    axis, metrics (steps,).
    """
    rep = _replicated(mesh)
    if steps == 1:
        return jax.jit(
            train_step,
            in_shardings=(rep, NamedSharding(mesh, P("data"))),
            out_shardings=(rep, rep),
            donate_argnums=0,
        )

    def multi(state, batches):
        return jax.lax.scan(train_step, state, batches)

    return jax.jit(
        multi,
        in_shardings=(rep, NamedSharding(mesh, P(None, "data"))),
        out_shardings=(rep, rep),
        donate_argnums=0,
    )


def to_global(
    local_batch: Mapping[str, np.ndarray], mesh: Mesh, stacked: bool
) -> dict[str, jax.Array]:
    """Per-process numpy batches -> global arrays sharded over the mesh's "data" axis (dim 0, or dim 1
    for a (steps, b, ...) stack)."""
    sharding = NamedSharding(mesh, P(None, "data") if stacked else P("data"))
    return {
        k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
        for k, v in local_batch.items()
    }


def _host_scalars(tree: PyTree) -> dict[str, np.ndarray]:
    """Replicated metric arrays -> numpy (this process's copy; works on multi-host too)."""
    return {k: np.asarray(v.addressable_data(0)) for k, v in tree.items()}


def _local_view(state: PyTree) -> PyTree:
    """This process's copy of a replicated state, as single-device arrays (for summaries/evaluate,
    which run their own single-device computations)."""
    return jax.tree.map(lambda x: x.addressable_data(0), state)


def _crossed(before: int, after: int, every: int) -> bool:
    return every > 0 and before // every != after // every


# ----------------------------------------------------------------------------- the loop


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    devices: Sequence[jax.Device] | None = None,
    verbose: bool | None = None,
    progress: bool = True,
    desc: str | None = None,
    announce: bool = True,
) -> dict[str, float]:
    """Trains ``config.method`` to ``config.num_train_steps`` under ``workdir`` (resuming if possible).

    Args:
      config: the experiment config (generic fields: module docstring; the rest is the method's).
      workdir: run directory: checkpoints, config.json, TensorBoard events.
      devices: devices of the "data" mesh (default: all). Lets a test compare 1 device with 8.
      verbose: library INFO records on the console too (default: ``config.log_to_console``, else
        False: they go to ``workdir/log.txt`` only).
      progress: show the live progress bar (start and end lines are always printed).
      desc: label of the console lines and the bar (default: ``config.method``).
      announce: print the start and end lines (a driver with its own per-stage lines, such as the
        protocol, passes False: they then go to the log file only; damaged-checkpoint notices always show).
    Returns:
      The final metrics: the last logged training averages, the last evaluation (``eval/...``) and
      ``step``.
    Raises:
      ValueError: bad config, unwritable workdir, workdir holding another model's checkpoint (checked
        before anything is written); `workdir_lock.WorkdirInUse` when another live process trains there.
      FloatingPointError: a metric became NaN/Inf; the last checkpoint (all finite) is kept.
      preemption.Preempted: SIGTERM (or, multi-host, JAX's preemption notice) arrived; the state at
        the step where it was seen is checkpointed, and rerunning resumes from it.
    """
    mesh = make_mesh(devices)
    method = validate_config(config, mesh)
    workdir = check_workdir(workdir)
    if verbose is None:
        verbose = bool(config.get("log_to_console", False))
    # One process per workdir (per host slot): a second launch ends here, before it writes anything.
    with (
        workdir_lock.exclusive(workdir, what="training"),
        console.route_library_logs(workdir, verbose=verbose) as logs,
    ):
        keep = config.get("keep_checkpoints", 3)
        checkpointer = ckpt.Checkpointer(
            workdir,
            max_to_keep=None if keep is None else int(keep),
            async_save=bool(config.get("async_checkpoints", True)),
        )
        watch = preemption.PreemptionWatch()
        try:
            return _train(
                method,
                config,
                workdir,
                mesh,
                checkpointer,
                watch,
                ui=dict(
                    progress=progress,
                    desc=desc or str(config.method),
                    log=logs.path,
                    announce=announce,
                ),
            )
        finally:
            watch.close()
            checkpointer.close()


def _train(
    method,
    config,
    workdir: str,
    mesh: Mesh,
    checkpointer: ckpt.Checkpointer,
    watch: preemption.PreemptionWatch,
    ui: Mapping[str, Any],
) -> dict[str, float]:
    steps_per_call = int(config.get("steps_per_call", 1))
    total = int(config.num_train_steps)
    every_log, every_ckpt = int(config.log_every_steps), int(config.checkpoint_every_steps)
    every_eval = int(config.eval_every_steps)
    every_summary = int(
        config.get("summary_every_steps", None)
        if config.get("summary_every_steps", None) is not None
        else every_eval
    )

    abstract = abstract_state(method, config, mesh)
    iterators = method.make_iterators(
        config, shard_index=jax.process_index(), shard_count=jax.process_count()
    )
    desc, t_start = ui["desc"], time.perf_counter()
    damaged: list[tuple[int, str, str]] = []
    # Compatibility is checked before anything is written; damaged steps are moved aside.
    found = checkpointer.restore_newest_intact(abstract, on_damaged=lambda *d: damaged.append(d))
    if found is not None:
        start, state, iter_states = found
        if set(iter_states) != set(iterators):
            raise ValueError(
                f"{checkpointer.directory}/{start}: iterator states for {sorted(iter_states)} but "
                f"{method.__name__}.make_iterators gives {sorted(iterators)}"
            )
        for name, it in iterators.items():
            it.set_state(iter_states[name])
        log.info("Resumed from %s at step %d", checkpointer.directory, start)
    else:
        start = 0
        state = init_state(method, config, mesh)
    if damaged:
        for d_step, reason, moved in damaged:
            log.info(
                "checkpoint step %d cannot be restored (%s); moved to %s", d_step, reason, moved
            )
        steps = ", ".join(str(d[0]) for d in damaged)
        console.say(
            f"{desc}: checkpoint step {steps} in {checkpointer.directory} is damaged "
            f"({os.path.basename(damaged[0][2]).split('-', 1)[-1]}); moved to {os.path.dirname(damaged[0][2])}; "
            + (
                f"resuming from step {start}, the newest intact one"
                if found is not None
                else "no intact checkpoint is left, starting from step 0"
            )
        )
    save_config(config, workdir)
    total_s = f"step {start} -> {total}" if start else f"{total} steps"
    announce = console.say if ui.get("announce", True) else log.info
    announce(
        f"{desc}: {'resuming' if start else 'training'} {config.method}, {total_s}, in {workdir} "
        f"(log: {ui['log']})"
    )

    train_step = method.make_train_step(config)
    calls: dict[int, Callable] = {}
    writer = mw.SummaryWriter(os.path.join(workdir, "tensorboard"))
    averager, progress = mw.MetricAverager(), mw.Progress(total, start)
    has_eval, has_summaries = (
        callable(getattr(method, "evaluate", None)),
        callable(getattr(method, "summaries", None)),
    )
    final: dict[str, float] = {}
    step, last_saved, last_eval = start, start, None
    bar = console.progress_bar(total, start, desc, enabled=ui["progress"] and start < total)

    def save(at: int, st: PyTree) -> None:
        if not bool(np.asarray(_all_finite(st).addressable_data(0))):
            raise FloatingPointError(
                f"step {at}: the state holds NaN/Inf; not saving it (the last good "
                f"checkpoint stays at step {checkpointer.latest_step()})"
            )
        checkpointer.save(at, st, {k: it.get_state() for k, it in iterators.items()})

    try:
        while step < total:
            k = min(steps_per_call, total - step)
            local = [method.next_batch(iterators) for _ in range(k)]
            batch = (
                local[0] if k == 1 else {key: np.stack([b[key] for b in local]) for key in local[0]}
            )
            if k not in calls:
                calls[k] = make_call(train_step, mesh, k)
            state, metrics = calls[k](state, to_global(batch, mesh, stacked=k > 1))
            before, step = step, step + k
            bar.update(k)
            host = _host_scalars(metrics)
            bad = mw.first_non_finite(host)
            if bad is not None:
                name, pos = bad
                checkpointer.wait()
                raise FloatingPointError(
                    f"metric '{name}' is {np.asarray(host[name]).reshape(-1)[pos]} at step {before + pos + 1} "
                    f"(config.method={config.method!r}); stopping. The last good checkpoint is step "
                    f"{checkpointer.latest_step()} in {checkpointer.directory}"
                )
            averager.update(host)
            if before == start:
                progress.mark(step)  # the first call includes compilation: time the rest
            if _crossed(before, step, every_log) or step == total:
                train_metrics = averager.compute_and_reset()
                final = {
                    **{k2: v for k2, v in final.items() if k2.startswith("eval/")},
                    **train_metrics,
                }
                writer.scalars(step, train_metrics, "train/")
                line = progress.report(step, train_metrics, max_keys=4)
                bar.set_postfix_str(line.split(" | ", 3)[-1], refresh=False)
                if np.isfinite(progress.steps_per_sec):
                    writer.scalars(step, {"steps_per_sec": progress.steps_per_sec}, "perf/")
            if has_summaries and _crossed(before, step, every_summary):
                writer.images(step, method.summaries(config, _local_view(state), local[-1]))
            if has_eval and every_eval and (_crossed(before, step, every_eval) or step == total):
                ev = {
                    f"eval/{k2}": float(v)
                    for k2, v in method.evaluate(config, _local_view(state)).items()
                }
                writer.scalars(step, ev)
                final.update(ev)
                last_eval = step
                log.info(
                    "step %d eval: %s", step, " ".join(f"{k2} {v:.4g}" for k2, v in ev.items())
                )
            if _crossed(before, step, every_ckpt) or step == total:
                save(step, state)
                last_saved = step
            if watch.reached() and step < total:
                if last_saved != step:
                    save(step, state)
                checkpointer.wait()
                log.warning("preempted: saved step %d in %s", step, checkpointer.directory)
                raise preemption.Preempted(step, checkpointer.directory)
        if (
            has_eval and every_eval and last_eval is None and start == total
        ):  # resumed a finished run
            final.update(
                {
                    f"eval/{k2}": float(v)
                    for k2, v in method.evaluate(config, _local_view(state)).items()
                }
            )
        if last_saved != step:
            save(step, state)
        checkpointer.wait()
    finally:
        bar.close()
        writer.close()
    final["step"] = step
    shown = {k2: v for k2, v in final.items() if k2.startswith("eval/")} or {
        k2: v for k2, v in final.items() if k2.startswith("loss")
    }
    announce(
        f"{desc}: done at step {step} in {console.format_duration(time.perf_counter() - t_start)}"
        + (
            f" ({progress.steps_per_sec:.3g} steps/s)"
            if np.isfinite(progress.steps_per_sec)
            else ""
        )
        + "".join(f", {k2} {v:.4g}" for k2, v in list(shown.items())[:4])
        + f"; checkpoints in {checkpointer.directory}"
    )
    return final


def restore_state(
    workdir: str,
    config: ml_collections.ConfigDict | None = None,
    *,
    devices: Sequence[jax.Device] | None = None,
) -> tuple[ml_collections.ConfigDict, PyTree]:
    """(config, state) of the latest checkpoint in ``workdir``, the state replicated over ``devices``.

    ``config`` defaults to ``workdir/config.json``; a given config must describe the same model
    shapes as the checkpoint (ValueError otherwise).
    """
    workdir = os.path.abspath(workdir)
    if config is None:
        config = load_config(workdir)
    mesh = make_mesh(devices)
    if not isinstance(config.get("method"), str):
        raise ValueError(f"config.method must be a method name (str), got {config.get('method')!r}")
    method = get_method(config.method)  # no batch/device checks: restoring needs none
    checkpointer = ckpt.Checkpointer(workdir, read_only=True, max_to_keep=None)
    try:
        if checkpointer.latest_step() is None:
            raise ValueError(
                f"workdir={workdir!r} holds no checkpoint under {checkpointer.directory}"
            )
        abstract = abstract_state(method, config, mesh)
        # Read-only: a damaged newest step is skipped (and named), not moved; training moves it.
        found = checkpointer.restore_newest_intact(
            abstract,
            with_iterators=False,
            on_damaged=lambda s, reason, _: log.warning(
                "%s/%d cannot be restored (%s); using an older step",
                checkpointer.directory,
                s,
                reason,
            ),
        )
        if found is None:
            raise ValueError(
                f"workdir={workdir!r}: no checkpoint under {checkpointer.directory} can be "
                "restored (all damaged)"
            )
        state = found[1]
    finally:
        checkpointer.close()
    return config, state
