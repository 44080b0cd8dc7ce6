"""Preemption notices: stop at a step boundary with a checkpoint instead of losing the work since
the last periodic one.

Cloud TPU VMs and most GPU schedulers send SIGTERM some seconds before they evict a job. The
trainer asks :meth:`PreemptionWatch.reached` after every call of the jitted step; when it says
yes, the trainer saves the state and the data-iterator states at that step, waits for the write and
raises :class:`Preempted`. Rerunning the same command resumes from that checkpoint exactly.

Two mechanisms, because processes of a multi-host run must agree on the step at which they all
save (a collective save that one host skips hangs the others):

- several processes (``jax.distributed``): JAX's preemption sync manager, which already
  listens for SIGTERM on every host and picks one common step
  (``jax.experimental.multihost_utils.reached_preemption_sync_point``). The id it is given must
  advance by one per call on every host, so the watch counts calls, not steps (``steps_per_call``
  steps are one call).
- one process: a Python SIGTERM handler that sets a flag; the previous handler is put back when
  the watch closes. Signal handlers can only be installed from the main thread; elsewhere the
  watch is inert (and says so in the log).
"""

from __future__ import annotations

import logging
import signal
import threading

import jax

log = logging.getLogger("dakpn_jax.train")


class Preempted(RuntimeError):
    """The run stopped on a preemption notice after checkpointing ``step``; rerun to resume."""

    def __init__(self, step: int, directory: str):
        super().__init__(
            f"preempted: saved step {step} in {directory}; rerun the same command to resume"
        )
        self.step = step


class PreemptionWatch:
    """``reached()`` after every call: True once a preemption notice says to stop (see module doc)."""

    def __init__(self, signum: int = signal.SIGTERM):
        self._calls = 0
        self._flag = threading.Event()
        self._signum, self._previous = signum, None
        self._sync = jax.process_count() > 1
        if self._sync:
            return
        if threading.current_thread() is not threading.main_thread():
            log.warning("preemption watch off: signal handlers need the main thread")
            return
        self._previous = signal.signal(signum, self._on_signal)

    def _on_signal(self, signum, frame):  # pylint: disable=unused-argument
        log.warning("signal %d: saving a checkpoint after the current step, then stopping", signum)
        self._flag.set()

    def reached(self) -> bool:
        self._calls += 1
        if self._sync:
            from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel

            return bool(multihost_utils.reached_preemption_sync_point(self._calls))
        return self._flag.is_set()

    def close(self) -> None:
        if self._previous is not None:
            signal.signal(self._signum, self._previous)
            self._previous = None
