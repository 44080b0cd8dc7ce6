"""The data layer's base: what every dataset module and the dispatcher share.

`Example` (one listed image/label pair of an official layout), the decoders that name the file on
any failure (`open_image`, `read_image`, `encode_image`, `read_label_png`, `check_size`), the table
of real datasets (`DATASETS`, `dataset_module`), and the sources every dataset is read through:
`DirectSource` (an extracted official folder, scanned first) and `View` (index subset, label
protocol, resize). `PreparedSource` (TFDS array_record) lives beside its writer in
`dakpn_jax.data.prepare`.

This module imports no dataset module, so the dataset modules (gta5, synthia, ...), `prepare` and the
dispatcher `dakpn_jax.data.sources` can all import it without a cycle: the table names the dataset
modules by string and `dataset_module` imports them on demand.
"""

from __future__ import annotations

import dataclasses
import importlib
import io
import os
from typing import Any

import numpy as np
from PIL import Image

from dakpn_jax.data import scan as scan_lib

DATASETS = {
    "gta5": "dakpn_jax.data.gta5",
    "synthia": "dakpn_jax.data.synthia",
    "cityscapes": "dakpn_jax.data.cityscapes",
    "face_synthetics": "dakpn_jax.data.face_synthetics",
    "celebamask_hq": "dakpn_jax.data.celebamask_hq",
}


def dataset_module(name: str):
    """The dataset module (gta5, synthia, ...) for a dataset name."""
    if name not in DATASETS:
        raise ValueError(f"dataset {name!r} is unknown; expected one of {sorted(DATASETS)}")
    return importlib.import_module(DATASETS[name])


# --------------------------------------------------------------------------- decoding


@dataclasses.dataclass(frozen=True)
class Example:
    """One listed example of an official layout.

    key: unique id inside the dataset (the file stem). image: path of the image file. label: a
    path or a dataset-specific label reference (CelebAMask-HQ: the list of part masks), passed to
    the dataset's ``load_label(label, image_hw)``.
    """

    key: str
    image: str
    label: Any


def open_image(path, what):
    """The loaded PIL image at `path`; ValueError naming the file if missing, unreadable or truncated."""
    if not os.path.isfile(path):
        raise ValueError(f"{path}: {what} file is missing")
    try:
        im = Image.open(path)
        im.load()  # decode now: truncated or corrupt files fail here, not later in a worker
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ValueError(f"{path}: unreadable or truncated {what} file ({e})") from e
    return im


def read_image(path) -> np.ndarray:
    """The RGB image at `path` as uint8 (H, W, 3); ValueError naming the file if unreadable."""
    with open_image(path, "image") as im:
        return np.asarray(im.convert("RGB"))


def encode_image(path) -> tuple[bytes, np.ndarray]:
    """(bytes to store, decoded uint8 (H, W, 3)) for the image at `path`.

    RGB PNG and JPEG files are stored byte for byte (no re-encoding loss); anything else (grey,
    palette, RGBA, other formats) is converted to RGB and stored as PNG, so decoding the stored
    bytes always gives exactly `read_image(path)`.
    """
    array = read_image(path)
    with open(path, "rb") as f:
        data = f.read()
    with Image.open(io.BytesIO(data)) as im:
        keep = im.mode == "RGB" and im.format in ("PNG", "JPEG")
    if not keep:
        buf = io.BytesIO()
        Image.fromarray(array).save(buf, format="PNG")
        data = buf.getvalue()
    return data, array


def read_label_png(path) -> np.ndarray:
    """Raw ids of an 8-bit single-channel (grey or palette-index) label PNG, uint8 (H, W)."""
    with open_image(path, "label") as im:
        if im.mode not in ("L", "P"):
            raise ValueError(
                f"{path}: label file has mode {im.mode!r}; expected 8-bit single-channel "
                "ids ('L' or palette 'P')"
            )
        return np.asarray(im)


def check_size(label: np.ndarray, image_hw, path) -> np.ndarray:
    """Raises ValueError naming `path` unless label.shape == image_hw."""
    if tuple(label.shape[:2]) != tuple(image_hw):
        raise ValueError(
            f"{path}: label size {tuple(label.shape[:2])} (H, W) does not match its "
            f"image size {tuple(image_hw)}"
        )
    return label


# --------------------------------------------------------------------------- base sources


def split_names(module, split: str, field: str) -> list[str]:
    parts = [s for s in split.split("+")]
    for s in parts:
        if s not in module.SPLITS:
            raise ValueError(
                f"data_config.{field}={split!r}: {module.NAME} has splits {module.SPLITS}"
            )
    return parts


class DirectSource:
    """Random-access source over an extracted official layout (no preparation step).

    The listed pairs are scanned once when the source is built, before any training step
    (`dakpn_jax.data.scan`: existence, so orphans are found, a readable header and an intact end of
    every file, label mode and image/label size from the headers alone), and ``on_error`` decides
    what a malformed pair does: ``"raise"`` (ValueError naming the file) or ``"skip"`` (dropped,
    counted on stderr), the policy of ``prepare --on_error``. Every access still decodes and
    validates fully, so a defect the headers cannot show (a label id outside the table) fails with
    the file's name when it is read.
    """

    def __init__(
        self,
        module,
        root,
        split: str,
        *,
        with_labels: bool = True,
        on_error: str = "raise",
        scan: bool = True,
    ):
        if on_error not in ("raise", "skip"):
            raise ValueError(f"data_config.on_error={on_error!r}: expected 'raise' or 'skip'")
        self._load_label = (
            module.load_label
        )  # a function pickles (grain workers), a module does not
        self._with_labels = with_labels
        root = os.path.expanduser(os.fspath(root))
        self._examples = []
        self.skipped: list[
            tuple[str, str, str]
        ] = []  # (split, key, reason), as prepare's skipped.json
        for s in split_names(module, split, "split"):
            listed = module.list_examples(root, s)
            if scan:
                listed, skipped = scan_lib.scanned(
                    module, root, s, listed, with_labels=with_labels, on_error=on_error
                )
                self.skipped += [(s, k, r) for k, r in skipped]
            self._examples += listed

    @property
    def keys(self) -> list[str]:
        return [ex.key for ex in self._examples]

    def __len__(self):
        return len(self._examples)

    def __getitem__(self, index):
        ex = self._examples[index]
        image = read_image(ex.image)
        if not self._with_labels:
            return {"image": image}
        return {"image": image, "label": self._load_label(ex.label, image.shape[:2])}


class View:
    """A sub-selection of a base source: index subset, label protocol, optional resize.

    Args:
      base: source returning {"image", "label"} in the dataset's stored label space.
      indices: optional int sequence selecting examples of `base`.
      lut: uint8 (256,) stored label -> protocol class table, or None to drop the labels.
      size: optional (height, width) to resize to.
    """

    def __init__(self, base, *, indices=None, lut=None, size=None, flip_label_map=None):
        self.flip_label_map = flip_label_map  # read by pipeline.make_pipeline (l_/r_ swap on flips)
        self._base = base
        self._indices = None if indices is None else np.asarray(indices, np.int64)
        self._lut = lut
        self._size = None if size is None else (int(size[0]), int(size[1]))

    def __len__(self):
        return len(self._base) if self._indices is None else len(self._indices)

    def __getitem__(self, index):
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for a source of length {len(self)}")
        ex = self._base[int(index if self._indices is None else self._indices[index])]
        image = ex["image"]
        if self._size is not None and image.shape[:2] != self._size:
            image = np.asarray(Image.fromarray(image).resize(self._size[::-1], Image.BILINEAR))
        out = {"image": image}
        if self._lut is not None:
            label = self._lut[ex["label"]]
            if self._size is not None and label.shape != self._size:
                label = np.asarray(Image.fromarray(label).resize(self._size[::-1], Image.NEAREST))
            out["label"] = label
        return out
