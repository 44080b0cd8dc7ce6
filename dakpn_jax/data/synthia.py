"""SYNTHIA-RAND-CITYSCAPES (Ros et al., CVPR 2016): 9400 rendered frames, 1280 x 760.

Official layout (the extracted ``SYNTHIA_RAND_CITYSCAPES`` archive, synthia-dataset.net)::

    <root>/RGB/0000000.png ... 0009399.png       RGB frames
    <root>/GT/LABELS/0000000.png ...             16-bit PNGs: channel 0 = class id, channel 1 = instance

One split, ``train`` (all frames; the dataset has no official split). Class ids (the dataset's
README) map to Cityscapes train ids by class name (`SYNTHIA_TO_TRAIN_ID`); void, parking-slot,
road-work and lane-marking are ignored (255), as is usual in SYNTHIA -> Cityscapes work. The
16- and 13-class protocols (`cityscapes_labels.PROTOCOLS`) are applied when reading.

Reading the 16-bit labels. Pillow opens a 16-bit-per-channel RGB PNG as 8-bit RGB keeping only
each sample's high byte, which would turn every class id < 256 into 0. `read_class_ids` decodes the
image twice with Pillow's own (C) PNG decoder, once unpacking the big-endian high bytes ("RGB;16B")
and once the low bytes (the same data read as little-endian, "RGB;16L"), and recombines them: the
exact 16-bit samples, with every PNG filter type handled by Pillow.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from dakpn_jax.data import base, cityscapes_labels

NAME = "synthia"
ROLE = "synthetic"
LABEL_SPACE = "cityscapes"
DEFAULT_PROTOCOL = "synthia16"
SPLITS = ("train",)
LABEL_MODES = (
    None  # 16-bit colour PNGs: PIL reports several modes; sizes are still checked by the scan
)

# SYNTHIA class id -> (name, Cityscapes train id).
CLASSES = {
    0: ("void", 255),
    1: ("sky", 10),
    2: ("building", 2),
    3: ("road", 0),
    4: ("sidewalk", 1),
    5: ("fence", 4),
    6: ("vegetation", 8),
    7: ("pole", 5),
    8: ("car", 13),
    9: ("traffic sign", 7),
    10: ("pedestrian", 11),
    11: ("bicycle", 18),
    12: ("motorcycle", 17),
    13: ("parking-slot", 255),
    14: ("road-work", 255),
    15: ("traffic light", 6),
    16: ("terrain", 9),
    17: ("rider", 12),
    18: ("truck", 14),
    19: ("bus", 15),
    20: ("train", 16),
    21: ("wall", 3),
    22: ("lanemarking", 255),
}
SYNTHIA_TO_TRAIN_ID = np.full(len(CLASSES), -1, np.int16)
for _sid, (_name, _tid) in CLASSES.items():
    SYNTHIA_TO_TRAIN_ID[_sid] = _tid


def _decode(path, rawmode=None) -> np.ndarray:
    try:
        with Image.open(path) as im:
            if rawmode is not None:
                t = im.tile[0]
                im.tile = [
                    t._replace(args=rawmode)
                    if hasattr(t, "_replace")
                    else (t[0], t[1], t[2], rawmode)
                ]
            im.load()
            return np.asarray(im)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ValueError(f"{path}: unreadable or truncated label file ({e})") from e


def read_class_ids(path) -> np.ndarray:
    """Channel 0 of a SYNTHIA label PNG, exactly, as int32 (H, W) (16- or 8-bit, grey or colour)."""
    if not os.path.isfile(path):
        raise ValueError(f"{path}: label file is missing")
    try:
        with Image.open(path) as im:
            tiles = list(im.tile)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ValueError(f"{path}: unreadable or truncated label file ({e})") from e
    rawmode = tiles[0][3] if len(tiles) == 1 else None
    if rawmode in ("RGB;16B", "RGBA;16B"):
        hi = _decode(path, rawmode)[..., 0].astype(np.int32)
        lo = _decode(path, rawmode.replace("16B", "16L"))[..., 0].astype(np.int32)
        return hi * 256 + lo
    ids = _decode(path).astype(np.int32)
    return ids if ids.ndim == 2 else ids[..., 0]


def list_examples(root, split: str) -> list[base.Example]:
    """All frames, sorted by name, paired with GT/LABELS/<same name>."""
    del split  # one split
    root = os.fspath(root)
    rgb, gt = os.path.join(root, "RGB"), os.path.join(root, "GT", "LABELS")
    for folder in (rgb, gt):
        if not os.path.isdir(folder):
            raise ValueError(
                f"{folder}: folder is missing (expected the extracted SYNTHIA-RAND-CITYSCAPES archive)"
            )
    names = {f for f in os.listdir(rgb) if f.endswith(".png")} | {
        f for f in os.listdir(gt) if f.endswith(".png")
    }
    return [
        base.Example(key=f[:-4], image=os.path.join(rgb, f), label=os.path.join(gt, f))
        for f in sorted(names)
    ]


def load_label(path, image_hw) -> np.ndarray:
    """uint8 (H, W) Cityscapes train ids of a SYNTHIA label file, checked against the frame size."""
    ids = read_class_ids(path)
    return base.check_size(
        cityscapes_labels.map_ids(ids, SYNTHIA_TO_TRAIN_ID, path), image_hw, path
    )
