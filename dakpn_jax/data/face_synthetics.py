"""Microsoft Face Synthetics (Wood et al., ICCV 2021): 100,000 rendered faces, 512 x 512.

Official layout (the extracted ``dataset_100000.zip``, github.com/microsoft/FaceSynthetics)::

    <root>/000000.png ... 099999.png          RGB renders
    <root>/000000_seg.png ...                 8-bit class ids (table below), 255 = ignore
    <root>/000000_ldmks.txt ...               landmarks (not used)

One split, ``train`` (all renders; the dataset has no official split), sorted by name.

Class mapping to the CelebAMask-HQ label space (`celebamask_hq.CLASSES`), by part name
(`FACE_SYNTHETICS_TO_CELEBAMASK`): left/right parts map to the same-named CelebAMask-HQ part
(LEFT_EYE -> l_eye, ...); MOUTH_INTERIOR -> mouth; TOP_LIP -> u_lip; BOTTOM_LIP -> l_lip;
BEARD -> hair (CelebAMask-HQ annotates facial hair as hair); CLOTHING -> cloth; GLASSES -> eye_g;
HEADWEAR -> hat; BACKGROUND -> background (ignored by the default ``faces18`` protocol);
FACEWEAR (masks, face coverings; no CelebAMask-HQ class) and IGNORE -> 255. CelebAMask-HQ's
earring and necklace classes never occur in the synthetic labels. Caveat: the mapping pairs
sides by name; that both datasets mean the same side (the subject's or the viewer's left) is
assumed, not verified here. A horizontal-flip augmentation must swap the l_/r_ classes.
"""

from __future__ import annotations

import os

import numpy as np

from dakpn_jax.data import base, celebamask_hq, cityscapes_labels

NAME = "face_synthetics"
ROLE = "synthetic"
LABEL_SPACE = "faces"
DEFAULT_PROTOCOL = "faces18"
SPLITS = ("train",)

# Face Synthetics class id -> (name, CelebAMask-HQ class name or None = ignore).
CLASSES = {
    0: ("BACKGROUND", "background"),
    1: ("SKIN", "skin"),
    2: ("NOSE", "nose"),
    3: ("RIGHT_EYE", "r_eye"),
    4: ("LEFT_EYE", "l_eye"),
    5: ("RIGHT_BROW", "r_brow"),
    6: ("LEFT_BROW", "l_brow"),
    7: ("RIGHT_EAR", "r_ear"),
    8: ("LEFT_EAR", "l_ear"),
    9: ("MOUTH_INTERIOR", "mouth"),
    10: ("TOP_LIP", "u_lip"),
    11: ("BOTTOM_LIP", "l_lip"),
    12: ("NECK", "neck"),
    13: ("HAIR", "hair"),
    14: ("BEARD", "hair"),
    15: ("CLOTHING", "cloth"),
    16: ("GLASSES", "eye_g"),
    17: ("HEADWEAR", "hat"),
    18: ("FACEWEAR", None),
    255: ("IGNORE", None),
}
FACE_SYNTHETICS_TO_CELEBAMASK = np.full(256, -1, np.int16)
for _fid, (_name, _target) in CLASSES.items():
    FACE_SYNTHETICS_TO_CELEBAMASK[_fid] = (
        255 if _target is None else celebamask_hq.CLASSES.index(_target)
    )


def list_examples(root, split: str) -> list[base.Example]:
    """All renders NNNNNN.png, sorted, paired with NNNNNN_seg.png."""
    del split  # one split
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise ValueError(
            f"{root}: folder is missing (expected the extracted Face Synthetics archive)"
        )
    stems = set()
    for f in os.listdir(root):
        if f.endswith("_seg.png"):
            stems.add(f[: -len("_seg.png")])
        elif f.endswith(".png"):
            stems.add(f[: -len(".png")])
    return [
        base.Example(
            key=s, image=os.path.join(root, s + ".png"), label=os.path.join(root, s + "_seg.png")
        )
        for s in sorted(stems)
    ]


def load_label(path, image_hw) -> np.ndarray:
    """uint8 (H, W) CelebAMask-HQ class ids of a ``*_seg.png`` file, checked against the image size."""
    ids = base.read_label_png(path)
    return base.check_size(
        cityscapes_labels.map_ids(ids, FACE_SYNTHETICS_TO_CELEBAMASK, path), image_hw, path
    )
