"""The protocol on several hosts (a multi-host TPU slice, several GPU VMs): one writer, one decision.

Every host runs the same stage sequence: the trainer is SPMD across hosts, and an export writes
each host's shard of the images (``process_index::process_count``). Around that, three rules:

- **One decision.** Whether a stage is reused is decided by process 0 from its marker and sent to
  every host with its stored result (:func:`broadcast_json`), so hosts never disagree about which
  stages to run, even where a marker appears while another host is still reading.
- **One writer.** Stage markers, ``confusions.npz``, grids, the report and the records are written
  by process 0 only (:func:`is_writer`); the other hosts compute the same thing and keep it in
  memory.
- **Barriers** (:func:`barrier`) after each stage, so no host starts a stage whose input another
  host is still writing.

The workdir (and so every export) must be on a filesystem that every host sees: a bucket mounted on
each VM, or NFS. A segmenter stage reads all hosts' export shards.

With one process every function here is a no-op (or returns its input): a single-host run takes no
collective and writes exactly as before.
"""

from __future__ import annotations

import json

import numpy as np


def _count() -> int:
    import jax  # pylint: disable=import-outside-toplevel

    return jax.process_count()


def is_writer() -> bool:
    """True on the one process that writes shared files (process 0; always with one process)."""
    import jax  # pylint: disable=import-outside-toplevel

    return _count() == 1 or jax.process_index() == 0


def barrier(tag: str) -> None:
    """Every host waits here until all have arrived (``tag`` names the point; all hosts must pass
    the same tags in the same order)."""
    if _count() > 1:
        from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel

        multihost_utils.sync_global_devices(tag)


def broadcast_json(value):
    """Process 0's ``value`` (any JSON-serialisable tree) on every host; every host must call it.
    Sent as uint8 bytes, length first."""
    if _count() == 1:
        return value
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel

    payload = json.dumps(value).encode() if is_writer() else b""
    n = int(np.asarray(multihost_utils.broadcast_one_to_all(np.int32(len(payload)))))
    buf = np.zeros((max(n, 1),), np.uint8)
    buf[: len(payload)] = np.frombuffer(payload, np.uint8)
    got = np.asarray(multihost_utils.broadcast_one_to_all(buf))
    return json.loads(bytes(got[:n]).decode())
