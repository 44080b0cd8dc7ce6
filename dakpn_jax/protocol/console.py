"""The protocol's console: library logs to a file, one line per stage start/end, one progress bar.

A minimal protocol-side stand-in for the project console (issue #13); kept small so it can be
unified with ``dakpn_jax.console`` at merge.

- :func:`route_logs` sends every INFO record (dakpn_jax, orbax, absl, jax) to ``workdir/protocol.log``
  and keeps only warnings on the console (``verbose=True`` keeps INFO there too).
- :class:`StageReporter` prints ``[k/n] start <stage>`` and ``[k/n] done <stage> in 41 s | elapsed
  3:02 | ETA 2:10`` lines (ETA: the time per stage so far, weighted by each stage's planned cost).
- While a stage trains, a :class:`ProgressBar` handler reads the trainer's progress records
  (``step 120/300 | ...`` from ``dakpn_jax.train``) and redraws one ``\\r`` bar line.
"""
from __future__ import annotations

import logging
import os
import re
import sys
import time

_STEP = re.compile(r"^step (\d+)/(\d+) \|")


def _fmt_s(seconds: float) -> str:
    if not seconds == seconds or seconds == float("inf"):  # NaN / inf
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def route_logs(workdir: str, verbose: bool = False, filename: str = "protocol.log") -> str:
    """Library INFO logs -> ``workdir/filename``; the console keeps WARNING and above (all of it
    with ``verbose``). Idempotent. Returns the log file path."""
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(os.path.abspath(workdir), filename)
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    level = logging.INFO if verbose else logging.WARNING
    consoles = []
    for h in list(root.handlers):
        if getattr(h, "_protocol_file", None) is not None:
            root.removeHandler(h)
            h.close()
        elif not isinstance(h, logging.FileHandler):  # absl's handler (not a StreamHandler) included
            consoles.append(h)
    if not consoles:
        consoles.append(logging.StreamHandler(sys.stderr))
        root.addHandler(consoles[0])
    for h in consoles:
        h.setLevel(level)
        if not verbose and not any(isinstance(f, _CheckpointNoise) for f in h.filters):
            h.addFilter(_CheckpointNoise())
    fh = logging.FileHandler(path)
    fh._protocol_file = path  # pylint: disable=protected-access
    fh.setLevel(logging.INFO)
    fh.setFormatter(logging.Formatter("%(asctime)s %(levelname).1s %(name)s: %(message)s"))
    root.addHandler(fh)
    try:  # orbax logs through absl.logging, which has its own verbosity
        from absl import logging as absl_logging  # pylint: disable=import-outside-toplevel
        absl_logging.set_verbosity(absl_logging.INFO)
    except ImportError:
        pass
    return path


class _CheckpointNoise(logging.Filter):
    """Keeps orbax's routine warnings (read-only restore managers, ...) off the console; they are
    in the log file. Errors still show."""

    def filter(self, record):
        noisy = record.name.startswith(("absl", "orbax")) or "orbax" in record.pathname
        return not noisy or record.levelno >= logging.ERROR


class ProgressBar(logging.Handler):
    """One live ``\\r`` line ``  <label> [#####.....] 120/300 steps  ETA 0:25`` fed by the trainer's
    progress records; a no-op on streams that are not terminals unless ``force``."""

    def __init__(self, label: str, stream=None, width: int = 30, force: bool = False):
        super().__init__(logging.INFO)
        self.label, self.width = label, width
        self.stream = stream or sys.stderr
        self.enabled = force or getattr(self.stream, "isatty", lambda: False)()
        self.t0, self.drawn = time.perf_counter(), False

    def emit(self, record):
        m = _STEP.match(record.getMessage())
        if not m or not self.enabled:
            return
        k, n = int(m.group(1)), max(int(m.group(2)), 1)
        dt = time.perf_counter() - self.t0
        eta = dt / k * (n - k) if k else float("nan")
        fill = int(self.width * k / n)
        self.stream.write(f"\r  {self.label} [{'#' * fill}{'.' * (self.width - fill)}] {k}/{n} steps "
                          f"ETA {_fmt_s(eta)}  ")
        self.stream.flush()
        self.drawn = True

    def close(self):
        if self.drawn:
            self.stream.write("\r" + " " * (len(self.label) + self.width + 40) + "\r")
            self.stream.flush()
        super().close()


class StageReporter:
    """Start / end lines for a planned list of stages ``[(key, cost), ...]`` (cost: relative
    expected seconds, e.g. training steps x frame pixels; only ratios matter)."""

    def __init__(self, plan: list[tuple[str, float]], stream=None, enabled: bool = True):
        self.costs = {k: max(float(c), 1e-9) for k, c in plan}
        self.order = [k for k, _ in plan]
        self.stream = stream or sys.stdout
        self.enabled = enabled
        self.t0 = time.perf_counter()
        self.done_cost = self.done_time = 0.0
        self.finished: set[str] = set()
        self.times: dict[str, dict] = {}

    def _index(self, key):
        return (self.order.index(key) + 1) if key in self.order else len(self.order)

    def _print(self, text):
        if self.enabled:
            print(text, file=self.stream, flush=True)

    def start(self, key: str, what: str) -> float:
        self._print(f"[{self._index(key)}/{len(self.order)}] {what} ...")
        return time.perf_counter()

    def end(self, key: str, what: str, t_start: float, cpu_s: float, reused: bool = False) -> None:
        dt = time.perf_counter() - t_start
        self.finished.add(key)
        left = sum(c for k, c in self.costs.items() if k not in self.finished)
        if not reused:
            self.done_cost += self.costs.get(key, 0.0)
            self.done_time += dt
        rate = self.done_time / self.done_cost if self.done_cost > 0 else float("nan")
        self.times[key] = {"wall_s": dt, "cpu_s": cpu_s, "reused": reused}
        tag = "reused" if reused else f"done in {dt:.0f} s (cpu {cpu_s:.0f} s)"
        self._print(f"[{self._index(key)}/{len(self.order)}] {what}: {tag} | elapsed "
                    f"{_fmt_s(time.perf_counter() - self.t0)} | ETA {_fmt_s(rate * left)}")

    def bar(self, what: str) -> ProgressBar:
        return ProgressBar(what, force=False)
