"""GTA5 ("Playing for Data", Richter et al., ECCV 2016): 24,966 game frames, 1914 x 1052.

Official layout (the extracted ``NN_images.zip`` / ``NN_labels.zip`` archives plus ``split.mat``
from the dataset page, download.visinf.tu-darmstadt.de/data/from_games)::

    <root>/images/00001.png ... 24966.png    RGB frames
    <root>/labels/00001.png ...              palette PNGs, palette index = Cityscapes label id
    <root>/split.mat                         trainIds, valIds, testIds: 1-based frame numbers

Labels are mapped with `cityscapes_labels.LABEL_ID_TO_TRAIN_ID` (the official Cityscapes table);
an id outside the table, a missing or unreadable file, or a label whose size differs from its
frame raises ValueError naming the file (``prepare --on_error=skip`` counts and lists such frames
instead). The real set has frames whose label size differs from the image: read directly (no
``prepare``), the folder is scanned from the file headers before training starts
(`base.DirectSource`), so such a frame stops the run before its first step, or, with
``--config.data.on_error=skip``, is dropped and counted. The domain-adaptation protocol trains on all frames: ``synthetic_split`` defaults to
``train+validation+test``.
"""

from __future__ import annotations

import os

import numpy as np

from dakpn_jax.data import base, cityscapes_labels

NAME = "gta5"
ROLE = "synthetic"
LABEL_SPACE = "cityscapes"
DEFAULT_PROTOCOL = "cityscapes19"
SPLITS = ("train", "validation", "test")
_MAT_KEYS = {"train": "trainIds", "validation": "valIds", "test": "testIds"}


def _require_dir(path):
    if not os.path.isdir(path):
        raise ValueError(f"{path}: folder is missing (expected the extracted GTA5 archives)")


def list_examples(root, split: str) -> list[base.Example]:
    """The frames of `split`, in split.mat order, paired with their label files."""
    import scipy.io  # pylint: disable=import-outside-toplevel

    root = os.fspath(root)
    for sub in ("images", "labels"):
        _require_dir(os.path.join(root, sub))
    mat_path = os.path.join(root, "split.mat")
    if not os.path.isfile(mat_path):
        raise ValueError(
            f"{mat_path}: file is missing (GTA5's official split, from the dataset page)"
        )
    try:
        mat = scipy.io.loadmat(mat_path)
    except Exception as e:  # scipy raises several types on corrupt files  # pylint: disable=broad-except
        raise ValueError(f"{mat_path}: unreadable split file ({e})") from e
    if _MAT_KEYS[split] not in mat:
        raise ValueError(
            f"{mat_path}: no {_MAT_KEYS[split]!r} entry (has {sorted(k for k in mat if not k.startswith('__'))})"
        )
    ids = np.asarray(mat[_MAT_KEYS[split]]).reshape(-1).astype(np.int64)
    return [
        base.Example(
            key=f"{i:05d}",
            image=os.path.join(root, "images", f"{i:05d}.png"),
            label=os.path.join(root, "labels", f"{i:05d}.png"),
        )
        for i in ids
    ]


def load_label(path, image_hw) -> np.ndarray:
    """uint8 (H, W) train ids of the label file `path`, checked against the frame size."""
    ids = base.read_label_png(path)
    return base.check_size(
        cityscapes_labels.map_ids(ids, cityscapes_labels.LABEL_ID_TO_TRAIN_ID, path), image_hw, path
    )
