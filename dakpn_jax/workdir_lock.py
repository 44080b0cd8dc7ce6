"""One process per run directory: an exclusive, self-releasing lock on a workdir.

A run (training, export, the protocol) holds ``DIR/.lock.process<k>`` locked with ``flock`` for as long
as it writes under ``DIR``; ``k`` is the JAX process index, so every host of a multi-host run takes
its own slot and two launches of the same flags collide slot by slot. A second process that asks
for a held lock ends at once with :class:`WorkdirInUse` (a ``ValueError``, so the CLIs print it as one
line), naming the directory and the process that holds it.

Why ``flock`` and not a file that exists or not: the kernel drops the lock when the holder's file
descriptor closes, which includes any death of the process (SIGKILL, OOM kill, power loss of a
local disk), so a lock left behind never blocks a rerun and nothing has to guess whether a PID in a
stale file is still alive. The file itself stays (it only holds the last holder's description) and
is never deleted: deleting it would let a third process lock a fresh inode while the second still
holds the old one. On file systems without working ``flock`` (some network mounts) the lock is
advisory at best; the docstring of ``exclusive`` says what is checked.

Re-entry: the same process may take the same lock again (a protocol that trains a stage inside its
own directory, a CLI that locks before it routes logs and then calls the library, which locks too);
only the outermost exit releases it.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import socket
import sys
import threading

LOCK_PREFIX = ".lock.process"

_held: dict[str, list] = {}  # lock path -> [fd, depth] for locks this process holds
_guard = threading.Lock()


class WorkdirInUse(ValueError):
    """Another live process holds the lock on this directory."""


def lock_path(workdir: str, process_index: int = 0) -> str:
    """The lock file of process slot ``process_index`` in ``workdir``."""
    return os.path.join(os.path.abspath(os.fspath(workdir)), f"{LOCK_PREFIX}{int(process_index)}")


def _describe_holder(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        info = json.loads(os.read(fd, 1 << 16).decode() or "{}")
    except (OSError, ValueError):
        info = {}
    if not info:
        return "another process"
    return (
        f"process {info.get('pid', '?')} on {info.get('host', '?')} "
        f"(started {info.get('started', '?')}: {info.get('command', '?')})"
    )


@contextlib.contextmanager
def exclusive(workdir: str, *, what: str = "run", process_index: int | None = None):
    """Holds the exclusive lock of ``workdir`` (created if absent) for the block.

    Args:
      workdir: the directory the block writes to.
      what: a word for the message (``"training"``, ``"export"``, ``"protocol"``).
      process_index: the process slot (default ``jax.process_index()`` when jax is imported, else 0).
    Raises:
      WorkdirInUse: another live process holds the lock; the message names the directory, the
        holder's PID, host, start time and command line.
      ValueError: the directory cannot be created or the lock file cannot be opened (names the path).
    """
    if process_index is None:
        jax = sys.modules.get("jax")
        process_index = jax.process_index() if jax is not None else 0
    path = lock_path(workdir, process_index)
    with _guard:
        if path in _held:
            _held[path][1] += 1
            fd = None
        else:
            try:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise ValueError(
                    f"{what}: cannot create the lock file {path} ({e.__class__.__name__}: {e})"
                ) from e
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = _describe_holder(fd)
                os.close(fd)
                raise WorkdirInUse(
                    f"{what}: workdir {os.path.dirname(path)} is in use by {holder}; wait for it to "
                    f"end, stop it, or use another workdir"
                ) from None
            info = {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "started": datetime.datetime.now().isoformat(timespec="seconds"),
                "command": " ".join(sys.argv) or sys.executable,
            }
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode(), 0)
            _held[path] = [fd, 1]
    try:
        yield path
    finally:
        with _guard:
            entry = _held[path]
            entry[1] -= 1
            if entry[1] == 0:
                del _held[path]
                fcntl.flock(entry[0], fcntl.LOCK_UN)
                os.close(entry[0])
