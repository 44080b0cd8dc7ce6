"""Cityscapes (Cordts et al., CVPR 2016), fine annotations: 2975 train / 500 val frames, 2048 x 1024.

Official layout (``leftImg8bit_trainvaltest.zip`` and ``gtFine_trainvaltest.zip`` from
www.cityscapes-dataset.com, extracted into one folder)::

    <root>/leftImg8bit/{train,val}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    <root>/gtFine/{train,val}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png

Splits ``train`` and ``validation`` (= the official ``val``; the test labels are not public).
Examples are sorted by file name (city, sequence, frame). ``*_gtFine_labelIds.png`` holds label ids,
mapped with the official table (`cityscapes_labels`); an image without its label, a label without
its image, a size mismatch, an unreadable file or an id outside the table raises ValueError
naming the file (``prepare --on_error=skip`` counts and lists such frames instead).
"""

from __future__ import annotations

import os

import numpy as np

from dakpn_jax.data import base, cityscapes_labels

NAME = "cityscapes"
ROLE = "real"
LABEL_SPACE = "cityscapes"
DEFAULT_PROTOCOL = "cityscapes19"
SPLITS = ("train", "validation")
_FOLDER = {"train": "train", "validation": "val"}
_IMAGE_SUFFIX, _LABEL_SUFFIX = "_leftImg8bit.png", "_gtFine_labelIds.png"


def _scan(top, suffix):
    """{stem: path} of every file under top/<city>/ ending in `suffix`."""
    if not os.path.isdir(top):
        raise ValueError(f"{top}: folder is missing (expected the extracted Cityscapes archives)")
    found = {}
    for city in sorted(os.listdir(top)):
        folder = os.path.join(top, city)
        if os.path.isdir(folder):
            for f in os.listdir(folder):
                if f.endswith(suffix):
                    found[f[: -len(suffix)]] = os.path.join(folder, f)
    return found


def list_examples(root, split: str) -> list[base.Example]:
    """Image/label pairs of `split`, sorted by stem; unpaired files get a missing partner path."""
    root = os.fspath(root)
    images = _scan(os.path.join(root, "leftImg8bit", _FOLDER[split]), _IMAGE_SUFFIX)
    labels = _scan(os.path.join(root, "gtFine", _FOLDER[split]), _LABEL_SUFFIX)
    examples = []
    for stem in sorted(set(images) | set(labels)):
        city_dir = os.path.join(_FOLDER[split], stem.split("_")[0])
        image = images.get(stem, os.path.join(root, "leftImg8bit", city_dir, stem + _IMAGE_SUFFIX))
        label = labels.get(stem, os.path.join(root, "gtFine", city_dir, stem + _LABEL_SUFFIX))
        examples.append(base.Example(key=stem, image=image, label=label))
    return examples


def load_label(path, image_hw) -> np.ndarray:
    """uint8 (H, W) train ids of a ``*_gtFine_labelIds.png`` file, checked against the image size."""
    ids = base.read_label_png(path)
    return base.check_size(
        cityscapes_labels.map_ids(ids, cityscapes_labels.LABEL_ID_TO_TRAIN_ID, path), image_hw, path
    )
