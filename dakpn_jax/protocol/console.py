"""The protocol's per-stage console lines (the log routing and the live bar are the project
console's, :mod:`dakpn_jax.console`, which every single run uses too).

:class:`StageReporter` prints ``[k/n] <stage> ...`` when a stage starts and ``[k/n] <stage>: done
in 41 s (cpu 38 s) | elapsed 3:02 | ETA 2:10`` when it ends. ETA: each stage left times the
seconds per cost unit measured on this machine for stages of its kind (segmenter, translator,
export, ...), or over all stages run so far for a kind not yet run: a kind's own rate, because the
planned costs' ratios between kinds were calibrated on one CPU and differ on another. While a stage trains, the trainer draws its own live bar
(on a terminal only) and writes its start / end lines to the log file instead of the console.
"""

from __future__ import annotations

import sys
import time


def _fmt_s(seconds: float) -> str:
    if not seconds == seconds or seconds == float("inf"):  # NaN / inf
        return "?"
    s = int(round(seconds))
    return (
        f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"
    )


def stage_kind(key: str) -> str:
    """Stage key ``seed0/seg_dakpn_n20`` -> profile group ``segmenter``."""
    name = key.split("/", 1)[-1]
    for prefix, kind in (
        ("seg_", "segmenter"),
        ("translator_", "translator"),
        ("export_", "export"),
        ("scores", "scores"),
        ("feature_segmenter", "feature segmenter"),
    ):
        if name.startswith(prefix):
            return kind
    return name


class StageReporter:
    """Start / end lines for a planned list of stages ``[(key, cost), ...]`` (cost: relative
    expected seconds, e.g. training steps x frame pixels; only ratios matter)."""

    def __init__(
        self, plan: list[tuple[str, float]], stream=None, enabled: bool = True, kind_of=None
    ):
        self.costs = {k: max(float(c), 1e-9) for k, c in plan}
        self.kind_of = kind_of or (lambda key: key)
        self.kind_rates: dict[str, list[float]] = {}  # kind -> [seconds, cost units] of stages run
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
        if not reused:
            self.done_cost += self.costs.get(key, 0.0)
            self.done_time += dt
            k = self.kind_rates.setdefault(self.kind_of(key), [0.0, 0.0])
            k[0] += dt
            k[1] += self.costs.get(key, 0.0)
        self.times[key] = {"wall_s": dt, "cpu_s": cpu_s, "reused": reused}
        tag = "reused" if reused else f"done in {dt:.0f} s (cpu {cpu_s:.0f} s)"
        self._print(
            f"[{self._index(key)}/{len(self.order)}] {what}: {tag} | elapsed "
            f"{_fmt_s(time.perf_counter() - self.t0)} | ETA {_fmt_s(self.eta())}"
        )

    def eta(self) -> float:
        """Seconds left: each unfinished stage's cost times its kind's measured seconds per cost
        unit (the overall rate for a kind not run yet; NaN before any stage ran)."""
        overall = self.done_time / self.done_cost if self.done_cost > 0 else float("nan")
        left = 0.0
        for key, cost in self.costs.items():
            if key not in self.finished:
                spent, units = self.kind_rates.get(self.kind_of(key), (0.0, 0.0))
                left += cost * (spent / units if units > 0 else overall)
        return left
