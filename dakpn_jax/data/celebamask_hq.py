"""CelebAMask-HQ (Lee et al., CVPR 2020): 30,000 real faces, 1024 x 1024, 19-class part masks.

Official layout (the extracted ``CelebAMask-HQ.zip``, github.com/switchablenorms/CelebAMask-HQ,
plus CelebA's ``list_eval_partition.txt`` from the CelebA page, folder ``Eval``)::

    <root>/CelebA-HQ-img/0.jpg ... 29999.jpg
    <root>/CelebAMask-HQ-mask-anno/<k>/<iiiii>_<part>.png     k = i // 2000, 512 x 512 binary masks
    <root>/CelebA-HQ-to-CelebA-mapping.txt                     idx orig_idx orig_file
    <root>/list_eval_partition.txt                             <celeba file> <0 train|1 val|2 test>

Label map. Class ids follow the dataset's own part list (`CLASSES`, 0 = background). A pixel gets
the id of the *last* part in that order whose mask is non-zero there (channel 0), as the dataset's
mask-merging script does, so e.g. hair overrides skin and cloth overrides neck. The 512 x 512 map
is upsampled to the image size by pixel repetition (an integer factor is required), so images
stay exactly as distributed.

Splits ``train`` / ``validation`` / ``test``: CelebA's official partition of each image's source
CelebA file (through the mapping file): 24,183 / 2,993 / 2,824 images.

Protocols (this is the face label space; Face Synthetics maps into it): ``faces18`` ignores
background (docs/METHOD.md §1 step 8: synthetic backgrounds are random scenery, so background is not scored)
and renumbers the 18 parts 0..17; ``faces19`` keeps all 19 ids.
"""

from __future__ import annotations

import os

import numpy as np

from dakpn_jax.data import base, scan

NAME = "celebamask_hq"
ROLE = "real"
LABEL_SPACE = "faces"
DEFAULT_PROTOCOL = "faces18"
SPLITS = ("train", "validation", "test")

CLASSES = (
    "background",
    "skin",
    "nose",
    "eye_g",
    "l_eye",
    "r_eye",
    "l_brow",
    "r_brow",
    "l_ear",
    "r_ear",
    "mouth",
    "u_lip",
    "l_lip",
    "hair",
    "hat",
    "ear_r",
    "neck_l",
    "neck",
    "cloth",
)
PARTS = CLASSES[1:]  # mask file suffixes, in merge order; part k has class id k + 1
PROTOCOLS = {"faces19": tuple(range(19)), "faces18": tuple(range(1, 19))}
_PARTITION = {"0": "train", "1": "validation", "2": "test"}


def _read_table(path, columns, what):
    if not os.path.isfile(path):
        raise ValueError(f"{path}: file is missing ({what})")
    rows = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            parts = line.split()
            if not parts or not parts[0][0].isdigit():
                continue  # header lines
            if len(parts) != columns:
                raise ValueError(f"{path}:{n}: expected {columns} columns, got {line.strip()!r}")
            rows.append(parts)
    return rows


def list_examples(root, split: str) -> list[base.Example]:
    """Images of `split` in index order, each with the list of its existing part masks."""
    root = os.fspath(root)
    images, masks = (
        os.path.join(root, "CelebA-HQ-img"),
        os.path.join(root, "CelebAMask-HQ-mask-anno"),
    )
    for folder in (images, masks):
        if not os.path.isdir(folder):
            raise ValueError(
                f"{folder}: folder is missing (expected the extracted CelebAMask-HQ archive)"
            )
    partition = dict(
        _read_table(
            os.path.join(root, "list_eval_partition.txt"),
            2,
            "CelebA's official partition, from the CelebA 'Eval' folder",
        )
    )
    mapping_path = os.path.join(root, "CelebA-HQ-to-CelebA-mapping.txt")
    examples = []
    for idx, _, orig_file in _read_table(mapping_path, 3, "part of the CelebAMask-HQ archive"):
        if orig_file not in partition:
            raise ValueError(
                f"{mapping_path}: {orig_file!r} (image {idx}) is not in list_eval_partition.txt"
            )
        if _PARTITION.get(partition[orig_file]) != split:
            continue
        i = int(idx)
        folder = os.path.join(masks, str(i // 2000))
        parts = [
            (k + 1, os.path.join(folder, f"{i:05d}_{part}.png")) for k, part in enumerate(PARTS)
        ]
        examples.append(
            base.Example(
                key=str(i),
                image=os.path.join(images, f"{i}.jpg"),
                label=(f"{folder}/{i:05d}_*.png", tuple(parts)),
            )
        )
    return examples


def load_label(ref, image_hw) -> np.ndarray:
    """uint8 (H, W) class ids merged from the part masks of one image (see the module docstring)."""
    pattern, parts = ref
    label, mask_hw = None, None
    for class_id, path in parts:
        if not os.path.exists(path):
            continue  # parts absent from a face have no file
        mask = _read_mask(path)
        if label is None:
            mask_hw = mask.shape
            label = np.zeros(mask_hw, np.uint8)
        elif mask.shape != mask_hw:
            raise ValueError(
                f"{path}: mask size {mask.shape} differs from the other masks {mask_hw}"
            )
        label[mask != 0] = class_id
    if label is None:
        raise ValueError(f"{pattern}: no part masks found for this image (image without label)")
    f = _mask_upscale(pattern, mask_hw, image_hw)
    return np.repeat(np.repeat(label, f, axis=0), f, axis=1)


def check_label(ref, image_hw) -> None:
    """Header-only checks of one image's part masks (the direct-read scan, `scan.check_example`):
    at least one mask, all readable and intact, all one size, an integer fraction of the image."""
    pattern, parts = ref
    mask_hw = None
    for _, path in parts:
        if not os.path.exists(path):
            continue
        hw, _ = scan.file_header(path, "mask")
        if mask_hw is None:
            mask_hw = hw
        elif hw != mask_hw:
            raise ValueError(f"{path}: mask size {hw} differs from the other masks {mask_hw}")
    if mask_hw is None:
        raise ValueError(f"{pattern}: no part masks found for this image (image without label)")
    _mask_upscale(pattern, mask_hw, image_hw)


def _mask_upscale(pattern, mask_hw, image_hw) -> int:
    """The integer factor from the part masks' size to the image size; ValueError if there is none."""
    fy, fx = image_hw[0] // mask_hw[0], image_hw[1] // mask_hw[1]
    if fy < 1 or fy != fx or (fy * mask_hw[0], fx * mask_hw[1]) != tuple(image_hw):
        raise ValueError(
            f"{pattern}: mask size {mask_hw} is not an integer fraction of its image size "
            f"{tuple(image_hw)}"
        )
    return fy


def _read_mask(path) -> np.ndarray:
    """Channel 0 of a part mask as uint8 (H, W) (grey, bilevel, palette or colour files)."""
    with base.open_image(path, "mask") as im:
        if im.mode in ("1", "L"):
            return np.asarray(im.convert("L"))
        return np.asarray(im.convert("RGB"))[..., 0]
