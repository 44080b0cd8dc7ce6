"""The protocol's run directory, in one place: where each stage lives and what it writes.

::

    WORKDIR/
      protocol.log                      library logs of the run
      results.json, results.md, results.html, miou_vs_n.png, grid_seed<k>.png   the report
      seed<k>/                          one training seed
        feature_segmenter/              (only for DA-KPN rows with segmenter features)
        translator_<row>/run/           a trained translator's trainer workdir
        export_<row>/data/              its translated synthetic-train set (images/, labels/)
        seg_<row>_n<N>/run/             a segmenter trained on <row>'s images + N real labels
        seg_<row>_n<N>/confusions.npz   its per-image real-val confusion matrices (rows: labels)
        seg_oracle/                     the oracle segmenter (all real-train labels)
        scores/                         model score, paired scores, grid.png

Every stage directory holds ``stage.json`` (:data:`STAGE_FILE`: ``{"stage", "result", "timing"}``),
written last and atomically: a stage is complete exactly when it exists. A stage key is the stage
directory relative to WORKDIR (``seed0/seg_dakpn_n20``); the console, the dry run and the report
name stages by it.

This module imports nothing else of the protocol, so every other protocol module can read the layout
without import cycles.
"""

from __future__ import annotations

import json
import os

import numpy as np

STAGE_FILE = "stage.json"
CONFUSIONS = "confusions.npz"
RESULTS_JSON, RESULTS_MD, RESULTS_HTML = "results.json", "results.md", "results.html"
PLOT = "miou_vs_n.png"
GRID = "grid.png"  # in a seed's scores/ stage
LOG = "protocol.log"


def seed_dir(seed: int) -> str:
    return f"seed{int(seed)}"


def feature_segmenter_key(seed: int) -> str:
    return f"{seed_dir(seed)}/feature_segmenter"


def translator_key(seed: int, row: str) -> str:
    return f"{seed_dir(seed)}/translator_{row}"


def export_key(seed: int, row: str) -> str:
    return f"{seed_dir(seed)}/export_{row}"


def segmenter_name(row: str, n: int) -> str:
    """The segmenter row key of the results (``<row>_n<N>``; the oracle is ``oracle``)."""
    return f"{row}_n{int(n)}"


def segmenter_key(seed: int, name: str) -> str:
    """``name``: :func:`segmenter_name` or ``"oracle"``."""
    return f"{seed_dir(seed)}/seg_{name}"


def scores_key(seed: int) -> str:
    return f"{seed_dir(seed)}/scores"


def grid_file(seed: int) -> str:
    """The report's copy of a seed's image grid (WORKDIR-relative)."""
    return f"grid_seed{int(seed)}.png"


def json_default(x):
    """``json.dump(default=...)`` for NumPy scalars and arrays."""
    if isinstance(x, (np.floating, np.integer, np.bool_)):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"not JSON serialisable: {type(x)}")


def read_stage(directory: str) -> dict | None:
    """A complete stage's ``stage.json`` (``{"stage", "result", "timing"}``), else None."""
    marker = os.path.join(directory, STAGE_FILE)
    if not os.path.exists(marker):
        return None
    with open(marker) as f:
        return json.load(f)


def stage_timing(directory: str) -> dict | None:
    """``{"wall_s", "cpu_s"}`` of a complete stage, else None."""
    done = read_stage(directory)
    return None if done is None else done.get("timing")


def load_confusions(directory: str) -> np.ndarray | None:
    """(I, C, C) per-image confusions of a scored segmenter stage (rows: labels), else None."""
    path = os.path.join(directory, CONFUSIONS)
    if not os.path.exists(path):
        return None
    with np.load(path) as f:
        return f["confusions"]
