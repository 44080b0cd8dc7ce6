"""Run state on disk: an orbax ``CheckpointManager`` holding the method state and the data position.

Layout under ``workdir``::

    workdir/config.json              the config of the latest (re)start
    workdir/checkpoints/<step>/state      the method state pytree (orbax StandardSave, async)
    workdir/checkpoints/<step>/iterators  JSON: {"process_<i>-of-<n>": {stream name: grain state}}

Every process keeps its own grain iterators, so their states differ between processes; they are
gathered to all processes at save time (a padded byte array through ``process_allgather``) and the
primary process writes them as one JSON item, which each process reads its own entry back from.
Saves are asynchronous: ``save`` returns once the arrays are copied off the devices, so the next
(donating) training call may start while the files are written.

Atomicity: orbax writes every step into a temporary ``<step>.orbax-checkpoint-tmp-*`` folder and
renames it to ``<step>`` only after all items are written (plus a ``commit_success.txt`` marker on
file systems without atomic rename, e.g. GCS), so a killed save never leaves a folder that
``all_steps`` lists; leftover temporary folders are ignored.

Damaged checkpoints (`Checkpointer.restore_newest_intact`): a listed step whose files cannot be
read back (array data truncated on disk after a full disk or a killed copy: TensorStore
``OUT_OF_RANGE`` / ``DATA_LOSS``; unparsable metadata: ``JSONDecodeError``) is moved, never
deleted, to ``workdir/checkpoints_damaged/<step>-<reason>/`` (with ``<step>-<reason>.txt`` holding
the full error), and the next older step is tried. A checkpoint of a *different model*
(`IncompatibleCheckpoint`) is not damage: it stops the run and nothing is moved. With several
processes every process tries the same steps in the same order (newest first) and after each try
they exchange a success flag (``process_allgather``): a step is used only if every process
restored it, otherwise process 0 moves it aside and all processes wait for that (a barrier)
before trying the next, so all of them resume from the same step. Caveat: orbax's restore ends in
a cross-process barrier, so a failure that only some processes see (a host-local read error)
makes the others wait at that barrier until its timeout, after which they agree on the failure.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Callable, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp

PyTree = Any


def _process_key(index: int | None = None, count: int | None = None) -> str:
    index = jax.process_index() if index is None else index
    count = jax.process_count() if count is None else count
    return f"process_{index}-of-{count}"


def gather_iterator_states(states: Mapping[str, Any]) -> dict[str, Any]:
    """``{process key: states}`` for every process, from this process's ``{stream: grain state}``.

    Grain states are small JSON-serialisable dicts; they travel between processes as uint8 arrays
    padded to the longest one.
    """
    payload = json.dumps(states, sort_keys=True).encode()
    if jax.process_count() == 1:
        return {_process_key(): json.loads(payload)}
    from jax.experimental import multihost_utils

    lengths = multihost_utils.process_allgather(np.asarray([len(payload)], np.int32))
    size = int(np.max(lengths))
    buf = np.zeros((size,), np.uint8)
    buf[: len(payload)] = np.frombuffer(payload, np.uint8)
    every = np.asarray(multihost_utils.process_allgather(buf)).reshape(jax.process_count(), size)
    return {
        _process_key(i): json.loads(bytes(every[i, : int(np.ravel(lengths)[i])]).decode())
        for i in range(jax.process_count())
    }


def abstract_like(state: PyTree) -> PyTree:
    """ShapeDtypeStructs (with shardings where known) of a state or an ``eval_shape`` result."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
        state,
    )


def _key_name(k) -> str:
    # Stored metadata turns namedtuples (optax states) into dicts: compare by plain names.
    for attr in ("name", "key", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def _paths_shapes(tree: PyTree) -> dict[str, tuple[tuple[int, ...], str]]:
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {
        "/".join(_key_name(k) for k in p): (
            tuple(x.shape),
            str(np.dtype(x.dtype)) if hasattr(x, "dtype") else "?",
        )
        for p, x in flat
    }


class IncompatibleCheckpoint(ValueError):
    """The workdir holds a checkpoint of another model (not damage: nothing is moved)."""


def check_compatible(saved: PyTree, expected: PyTree, where: str) -> None:
    """ValueError naming the first leaf whose presence, shape or dtype differs between the stored
    state metadata ``saved`` and the ``expected`` abstract state."""
    a, b = _paths_shapes(saved), _paths_shapes(expected)
    missing, extra = sorted(set(b) - set(a)), sorted(set(a) - set(b))
    if missing or extra:
        raise IncompatibleCheckpoint(
            f"{where} holds a checkpoint of a different model: state leaves missing there "
            f"{missing[:5]}, unexpected there {extra[:5]}. Use another --workdir or the "
            "config it was trained with; nothing was overwritten."
        )
    for k in sorted(b):
        (sa, da), (sb, db) = a[k], b[k]
        if sa != sb or (da != "?" and da != db):
            raise IncompatibleCheckpoint(
                f"{where} holds a checkpoint of a different model: state leaf '{k}' has shape {sa} "
                f"dtype {da} there but the config gives shape {sb} dtype {db}. Use another "
                "--workdir or the config it was trained with; nothing was overwritten."
            )


class Checkpointer:
    """Thin wrapper over ``ocp.CheckpointManager`` for (state, iterator states) pairs."""

    def __init__(
        self,
        workdir: str,
        *,
        max_to_keep: int | None = 3,
        async_save: bool = True,
        read_only: bool = False,
    ):
        self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
        self._read_only = read_only
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            create=not read_only,
            enable_async_checkpointing=async_save,
            read_only=read_only,
        )
        # Explicit handlers, so a fresh manager can read item metadata before any save/restore call.
        handlers = {
            "state": ocp.StandardCheckpointHandler(),
            "iterators": ocp.JsonCheckpointHandler(),
        }
        self._mngr = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)

    def latest_step(self) -> int | None:
        return self._mngr.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._mngr.all_steps())

    def check_compatible(self, step: int, abstract_state: PyTree) -> None:
        """ValueError if checkpoint ``step`` does not hold a state shaped like ``abstract_state``."""
        meta = self._mngr.item_metadata(step)
        saved = meta["state"]
        if saved is None:
            raise ValueError(
                f"{self.directory}/{step}: checkpoint has no 'state' item (unreadable metadata)"
            )
        check_compatible(saved, abstract_state, f"{self.directory}/{step}")

    def save(self, step: int, state: PyTree, iterator_states: Mapping[str, Any]) -> None:
        """Asynchronous save of ``state`` and every process's iterator states at ``step``."""
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            iterators=ocp.args.JsonSave(gather_iterator_states(iterator_states)),
        )
        self._mngr.save(int(step), args=args, force=True)

    def restore(self, step: int, abstract_state: PyTree, *, with_iterators: bool = True):
        """(state placed as ``abstract_state`` says, this process's ``{stream: grain state}`` or None)."""
        items = {"state": ocp.args.StandardRestore(abstract_state)}
        if with_iterators:
            items["iterators"] = ocp.args.JsonRestore()
        out = self._mngr.restore(int(step), args=ocp.args.Composite(**items))
        if not with_iterators:
            return out["state"], None
        per_process = out["iterators"] or {}
        key = _process_key()
        if key not in per_process:
            raise IncompatibleCheckpoint(
                f"{self.directory}/{step}: no data-iterator state for {key} (saved for "
                f"{sorted(per_process)}); resume with the process count it was saved with"
            )
        return out["state"], per_process[key]

    def restore_newest_intact(
        self,
        abstract_state: PyTree,
        *,
        with_iterators: bool = True,
        on_damaged: Callable[[int, str, str], None] | None = None,
    ):
        """(step, state, iterator states) of the newest checkpoint that restores, or None if none is left.

        Damaged steps are moved aside (module docstring; a read-only checkpointer only skips them)
        and ``on_damaged(step, reason, moved_to)`` is called for each (process 0 only). `IncompatibleCheckpoint` propagates: a different model is
        the user's mistake, not damage.
        """
        for step in sorted(self.all_steps(), reverse=True):
            error = None
            try:
                self.check_compatible(step, abstract_state)
                state, iters = self.restore(step, abstract_state, with_iterators=with_iterators)
            except IncompatibleCheckpoint:
                raise
            except Exception as e:  # pylint: disable=broad-except  # TensorStore/JSON/orbax: any failure to read
                error, state, iters = e, None, None
                _quiet_closed_loop_callbacks()
            if _everyone_succeeded(error is None):
                return step, state, iters
            reason = _reason(error) if error is not None else "failed_on_another_process"
            moved = (
                "(left in place: read-only)"
                if self._read_only
                else self._move_aside(step, reason, error)
            )
            if on_damaged is not None and jax.process_index() == 0:
                on_damaged(step, str(error)[:500] if error is not None else reason, moved)
        return None

    def _move_aside(self, step: int, reason: str, error: BaseException | None) -> str:
        """Renames ``checkpoints/<step>`` to ``checkpoints_damaged/<step>-<reason>`` (process 0), then
        all processes wait for it and re-list the steps."""
        from etils import epath  # orbax's path library: local paths and gs:// alike

        root = epath.Path(self.directory).parent / "checkpoints_damaged"
        target = root / f"{step}-{reason}"
        if jax.process_index() == 0:
            root.mkdir(parents=True, exist_ok=True)
            n = 1
            while target.exists():  # the same step damaged twice: keep both
                n += 1
                target = root / f"{step}-{reason}-{n}"
            (root / f"{target.name}.txt").write_text(
                f"checkpoint step {step} could not be restored and was moved here from "
                f"{self.directory}/{step}\n\n{type(error).__name__ if error else ''}: {error}\n"
            )
            epath.Path(self.directory, str(step)).rename(target)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"dakpn_checkpoint_moved_aside_{step}")
        self._mngr.reload()
        return str(target)

    def wait(self) -> None:
        """Block until pending asynchronous saves are on disk."""
        self._mngr.wait_until_finished()

    def close(self) -> None:
        self._mngr.wait_until_finished()
        self._mngr.close()


def _everyone_succeeded(ok: bool) -> bool:
    """True iff ``ok`` on every process (an allgather of flags; every process must call it)."""
    if jax.process_count() == 1:
        return ok
    from jax.experimental import multihost_utils

    return bool(np.all(multihost_utils.process_allgather(np.asarray([int(ok)], np.int32))))


def _reason(error: BaseException) -> str:
    """Short file-name-safe reason: TensorStore's status code (``OUT_OF_RANGE``, ``DATA_LOSS``, ...)
    when the message starts with one, else the exception type."""
    m = re.match(r"\s*([A-Z][A-Z_]{3,})\s*:", str(error))
    return m.group(1) if m else re.sub(r"[^A-Za-z0-9_]+", "_", type(error).__name__)


def _quiet_closed_loop_callbacks() -> None:
    """Drops the noise of a failed orbax restore's leftover TensorStore callbacks.

    When one read of a restore fails, orbax's event loop closes while other TensorStore reads are
    still in flight; their completion callbacks then call ``loop.call_soon_threadsafe`` on the
    closed loop, and the ``RuntimeError: Event loop is closed`` they raise in a TensorStore thread
    is reported through ``sys.unraisablehook`` (a traceback per pending read, harmless: the restore
    has already failed and is handled). Only exactly those are dropped; everything else reaches
    the previous hook.
    """
    import sys  # pylint: disable=import-outside-toplevel

    previous = sys.unraisablehook
    if getattr(previous, "_dakpn_quiet_loop", False):
        return

    def hook(unraisable):
        value = unraisable.exc_value
        if isinstance(value, RuntimeError) and str(value) == "Event loop is closed":
            tb = unraisable.exc_traceback
            while tb is not None and tb.tb_next is not None:
                tb = tb.tb_next
            if tb is not None and os.sep + "asyncio" + os.sep in tb.tb_frame.f_code.co_filename:
                return
        previous(unraisable)

    hook._dakpn_quiet_loop = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook
