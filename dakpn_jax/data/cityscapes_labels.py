"""Cityscapes label ids -> train ids, and the 19/16/13-class evaluation protocols.

Origin. The table is the `labels` list of the official Cityscapes scripts
(github.com/mcordts/cityscapesScripts, `cityscapesscripts/helpers/labels.py`): every
annotated class has a *label id* (what `*_gtFine_labelIds.png` stores, 0..33) and a *train id*
(0..18 for the 19 evaluated classes, 255 = ignored). GTA5 ("Playing for Data", Richter et al.
2016) annotates its frames with the same label ids, so both datasets share `LABEL_ID_TO_TRAIN_ID`.
The license-plate class (label id -1) is never written into labelIds images and is not listed.

Protocols. Benchmarks score subsets of the 19 train ids (docs/METHOD.md §1 step 8):
- ``cityscapes19``: all 19 classes (GTA5 -> Cityscapes).
- ``synthia16``: SYNTHIA -> Cityscapes, without terrain, truck and train (SYNTHIA-RAND-CITYSCAPES has
  no such pixels).
- ``synthia13``: ``synthia16`` without wall, fence and pole (the other common SYNTHIA protocol).
A protocol keeps the listed train ids, renumbers them contiguously 0..n-1 in train-id order and
sends everything else to 255, so a segmenter trained under it has exactly n outputs.
"""

from __future__ import annotations

import numpy as np

IGNORE = 255

# (name, label id, train id): cityscapesScripts labels.py, license plate omitted (see above).
LABELS = (
    ("unlabeled", 0, 255),
    ("ego vehicle", 1, 255),
    ("rectification border", 2, 255),
    ("out of roi", 3, 255),
    ("static", 4, 255),
    ("dynamic", 5, 255),
    ("ground", 6, 255),
    ("road", 7, 0),
    ("sidewalk", 8, 1),
    ("parking", 9, 255),
    ("rail track", 10, 255),
    ("building", 11, 2),
    ("wall", 12, 3),
    ("fence", 13, 4),
    ("guard rail", 14, 255),
    ("bridge", 15, 255),
    ("tunnel", 16, 255),
    ("pole", 17, 5),
    ("polegroup", 18, 255),
    ("traffic light", 19, 6),
    ("traffic sign", 20, 7),
    ("vegetation", 21, 8),
    ("terrain", 22, 9),
    ("sky", 23, 10),
    ("person", 24, 11),
    ("rider", 25, 12),
    ("car", 26, 13),
    ("truck", 27, 14),
    ("bus", 28, 15),
    ("caravan", 29, 255),
    ("trailer", 30, 255),
    ("train", 31, 16),
    ("motorcycle", 32, 17),
    ("bicycle", 33, 18),
)

# The 19 train classes, in train-id order.
TRAIN_NAMES = tuple(name for name, _, tid in sorted(LABELS, key=lambda l: l[2]) if tid != IGNORE)
NUM_TRAIN_CLASSES = len(TRAIN_NAMES)  # 19

# Lookup table over all 256 uint8 values: label id -> train id; -1 marks values that are no
# Cityscapes label id (a corrupt or foreign label file; readers raise on them).
LABEL_ID_TO_TRAIN_ID = np.full(256, -1, np.int16)
for _name, _lid, _tid in LABELS:
    LABEL_ID_TO_TRAIN_ID[_lid] = _tid

# Protocols: train ids kept (in the order they are renumbered to 0..n-1).
PROTOCOLS = {
    "cityscapes19": tuple(range(19)),
    "synthia16": (0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18),
    "synthia13": (0, 1, 2, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18),
}


def protocol_lut(kept: tuple[int, ...]) -> np.ndarray:
    """uint8 (256,) table: stored train id -> protocol class (0..len(kept)-1), others -> 255."""
    lut = np.full(256, IGNORE, np.uint8)
    lut[np.asarray(kept, np.int64)] = np.arange(len(kept), dtype=np.uint8)
    return lut


def map_ids(ids: np.ndarray, table: np.ndarray, path) -> np.ndarray:
    """Maps raw label ids through `table` (-1 = not a valid id) to uint8, naming `path` on bad ids.

    Args:
      ids: integer array (H, W) of raw ids, each < len(table).
      table: int16 (N,) lookup table, -1 marks invalid ids.
      path: the file the ids came from (for the error message).
    Returns:
      uint8 (H, W) mapped ids.
    """
    ids = np.asarray(ids)
    if ids.size and int(ids.max()) >= len(table):
        bad = np.unique(ids[ids >= len(table)])
        raise ValueError(
            f"{path}: label ids {bad[:10].tolist()} are outside the label table "
            f"(valid ids: {np.flatnonzero(table >= 0).tolist()})"
        )
    out = table[ids]
    if (out < 0).any():
        bad = np.unique(ids[out < 0])
        raise ValueError(
            f"{path}: label ids {bad[:10].tolist()} are outside the label table "
            f"(valid ids: {np.flatnonzero(table >= 0).tolist()})"
        )
    return out.astype(np.uint8)
