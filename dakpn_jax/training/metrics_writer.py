"""What training shows: clu metric aggregation, TensorBoard event files and the progress line.

TensorBoard files are written with tensorboardX (no TensorFlow) under ``workdir/tensorboard`` by the
primary process only, so a multi-host run produces one set of curves.
"""

from __future__ import annotations

import logging
import math
import os
import time
from typing import Mapping

import jax
import numpy as np
from clu import metrics as clu_metrics

log = logging.getLogger("dakpn_jax.train")


class MetricAverager:
    """Running mean per metric key between two log points (a ``clu.metrics.Average`` per key).

    ``update`` takes host values: scalars or (k,) arrays of k steps from one ``steps_per_call`` call.
    """

    def __init__(self):
        self._avgs: dict[str, clu_metrics.Average] = {}

    def update(self, metrics: Mapping[str, np.ndarray]) -> None:
        for k, v in metrics.items():
            m = clu_metrics.Average.from_model_output(np.asarray(v, np.float32).reshape(-1))
            self._avgs[k] = m if k not in self._avgs else self._avgs[k].merge(m)

    def compute_and_reset(self) -> dict[str, float]:
        out = {k: float(m.compute()) for k, m in self._avgs.items()}
        self._avgs = {}
        return out

    def __bool__(self) -> bool:
        return bool(self._avgs)


def first_non_finite(metrics: Mapping[str, np.ndarray]) -> tuple[str, int] | None:
    """(metric name, position in the call) of the first NaN/Inf value, or None if all are finite."""
    for k in sorted(metrics):
        v = np.asarray(metrics[k]).reshape(-1)
        bad = np.flatnonzero(~np.isfinite(v))
        if bad.size:
            return k, int(bad[0])
    return None


class SummaryWriter:
    """Scalars and images to TensorBoard (primary process only; a no-op elsewhere)."""

    def __init__(self, logdir: str):
        self._writer = None
        if jax.process_index() == 0:
            from tensorboardX import (
                SummaryWriter as _TBWriter,
            )  # import here: only the primary writes

            self._writer = _TBWriter(logdir=logdir)

    def scalars(self, step: int, scalars: Mapping[str, float], prefix: str = "") -> None:
        if self._writer is None:
            return
        for k, v in scalars.items():
            self._writer.add_scalar(f"{prefix}{k}", float(v), int(step))

    def images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
        """``images``: name -> (H, W, 3) float in [0, 1] (clipped; written as HWC)."""
        if self._writer is None:
            return
        for k, img in images.items():
            img = np.asarray(img, np.float32)
            if img.ndim != 3 or img.shape[-1] not in (1, 3):
                raise ValueError(
                    f"summaries()['{k}']: expected an (H, W, 3) image, got shape {img.shape}"
                )
            self._writer.add_image(k, np.clip(img, 0.0, 1.0), int(step), dataformats="HWC")

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


class Progress:
    """The progress line: ``step 120/1000 | 35.2 steps/s | ETA 0:00:25 | loss_D 0.69 loss_G 0.71``.

    Speed is measured since the previous report or :meth:`mark` (the trainer marks the end of the
    first call, so compilation is not counted) and the ETA extrapolates it to ``total_steps``.
    """

    def __init__(self, total_steps: int, start_step: int):
        self.total = int(total_steps)
        self._t, self._step = time.perf_counter(), int(start_step)
        self.steps_per_sec = float("nan")

    def mark(self, step: int) -> None:
        """Restart the speed measurement at ``step`` (e.g. after compilation)."""
        self._t, self._step = time.perf_counter(), int(step)

    def report(self, step: int, metrics: Mapping[str, float], max_keys: int = 8) -> str:
        """Logs and returns the line; shows up to ``max_keys`` metrics, ``loss*`` ones first."""
        now = time.perf_counter()
        if step > self._step and now > self._t:
            self.steps_per_sec = (step - self._step) / (now - self._t)
        self._t, self._step = now, int(step)
        left = max(self.total - step, 0)
        eta = left / self.steps_per_sec if self.steps_per_sec > 0 else float("nan")
        eta_s = "?" if not math.isfinite(eta) else time.strftime("%H:%M:%S", time.gmtime(eta))
        shown = sorted(metrics, key=lambda k: (not k.startswith("loss"), k))[:max_keys]
        keys = " ".join(f"{k} {metrics[k]:.4g}" for k in shown)
        speed = "?" if not math.isfinite(self.steps_per_sec) else f"{self.steps_per_sec:.3g}"
        line = f"step {step}/{self.total} | {speed} steps/s | ETA {eta_s} | {keys}"
        log.info(line)
        return line


def event_files(workdir: str) -> list[str]:
    """TensorBoard event files under ``workdir/tensorboard`` (for tests and tools)."""
    root = os.path.join(workdir, "tensorboard")
    return sorted(
        os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs if f.startswith("events.out")
    )
