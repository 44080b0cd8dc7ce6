"""Cityscapes label set: the 19 train ids, their names and colours, and label colourisation.

Every dataset in the project (the procedural benchmark, GTA5, SYNTHIA, Cityscapes) speaks these train
ids: 0..18 for the classes below and ``IGNORE_INDEX = 255`` for "not scored" pixels.
"""

from __future__ import annotations

import numpy as np

IGNORE_INDEX = 255

# (train id, name, RGB colour) in train-id order; colours are the official Cityscapes palette.
_TABLE = (
    (0, "road", (128, 64, 128)),
    (1, "sidewalk", (244, 35, 232)),
    (2, "building", (70, 70, 70)),
    (3, "wall", (102, 102, 156)),
    (4, "fence", (190, 153, 153)),
    (5, "pole", (153, 153, 153)),
    (6, "traffic light", (250, 170, 30)),
    (7, "traffic sign", (220, 220, 0)),
    (8, "vegetation", (107, 142, 35)),
    (9, "terrain", (152, 251, 152)),
    (10, "sky", (70, 130, 180)),
    (11, "person", (220, 20, 60)),
    (12, "rider", (255, 0, 0)),
    (13, "car", (0, 0, 142)),
    (14, "truck", (0, 0, 70)),
    (15, "bus", (0, 60, 100)),
    (16, "train", (0, 80, 100)),
    (17, "motorcycle", (0, 0, 230)),
    (18, "bicycle", (119, 11, 32)),
)

NUM_CLASSES = len(_TABLE)
CLASS_NAMES: tuple[str, ...] = tuple(name for _, name, _ in _TABLE)
# (NUM_CLASSES, 3) uint8; row k is the colour of train id k.
PALETTE = np.array([rgb for _, _, rgb in _TABLE], dtype=np.uint8)
PALETTE.setflags(write=False)

# Named ids, so scene code reads `ROAD` rather than `0`.
(
    ROAD,
    SIDEWALK,
    BUILDING,
    WALL,
    FENCE,
    POLE,
    TRAFFIC_LIGHT,
    TRAFFIC_SIGN,
    VEGETATION,
    TERRAIN,
    SKY,
    PERSON,
    RIDER,
    CAR,
    TRUCK,
    BUS,
    TRAIN,
    MOTORCYCLE,
    BICYCLE,
) = range(NUM_CLASSES)

# 256-entry lookup: every train id to its colour, everything else (255 = ignore, unknown ids) black.
_LUT = np.zeros((256, 3), dtype=np.uint8)
_LUT[:NUM_CLASSES] = PALETTE


def colorize(label) -> np.ndarray:
    """Colours a label map with the Cityscapes palette.

    Args:
      label: integer array (..., H, W) of train ids; 255 (ignore) and any id >= 19 are drawn black.

    Returns:
      uint8 array (..., H, W, 3).
    """
    label = np.asarray(label)
    if not np.issubdtype(label.dtype, np.integer):
        raise ValueError(f"label must be an integer array, got dtype {label.dtype}")
    if label.ndim < 2:
        raise ValueError(f"label must have shape (..., H, W), got shape {label.shape}")
    if label.size and (label.min() < 0 or label.max() > 255):
        raise ValueError(
            f"label values must lie in [0, 255], got range [{label.min()}, {label.max()}]"
        )
    return _LUT[label.astype(np.uint8)]
