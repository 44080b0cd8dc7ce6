"""A random-access source over an image folder and, optionally, a label folder matched by file stem.

Layout (the one `dakpn_jax.export` writes)::

    image_dir/<stem>.png|.jpg|.jpeg     RGB images (grey / RGBA / palette images are converted to RGB)
    label_dir/<stem>.png                single-channel uint8 train ids, 255 = ignore ("L" or "P" mode:
                                        palette images are read as their indices)

Items: ``{"image": uint8 (H, W, 3), "label": uint8 (H, W)}`` (``{"image"}`` without `label_dir`),
in sorted stem order; ``source.stems[i]`` names item i. Problems raise ``ValueError`` naming the
file: a missing or extra label, two images with one stem, an unreadable file, an image/label size
mismatch, a colour (RGB) label.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
from PIL import Image


def _index(directory: str, suffixes: Sequence[str], what: str) -> dict[str, str]:
    """{stem: path} of the files in `directory` whose suffix (case-insensitive) is in `suffixes`."""
    if not os.path.isdir(directory):
        raise ValueError(f"FolderSource: {what} directory {directory!r} does not exist")
    suffixes = tuple(s.lower() for s in suffixes)
    out: dict[str, str] = {}
    for name in sorted(os.listdir(directory)):
        stem, ext = os.path.splitext(name)
        if ext.lower() not in suffixes or stem.startswith("."):
            continue  # not ours (hidden / temporary files included)
        if stem in out:
            raise ValueError(
                f"FolderSource: two {what} files share the stem {stem!r}: "
                f"{out[stem]!r} and {os.path.join(directory, name)!r}"
            )
        out[stem] = os.path.join(directory, name)
    return out


def _read(path: str) -> Image.Image:
    try:
        with Image.open(path) as im:
            im.load()
            return im
    except (OSError, ValueError, SyntaxError) as e:  # PIL raises all three on corrupt files
        raise ValueError(f"FolderSource: cannot read image file {path!r}: {e}") from e


class FolderSource:
    """Random-access (grain-compatible) source over `image_dir` [+ `label_dir`] (module docstring)."""

    def __init__(
        self,
        image_dir: str,
        label_dir: str | None = None,
        *,
        image_suffixes: Sequence[str] = (".png", ".jpg", ".jpeg"),
        label_suffixes: Sequence[str] = (".png",),
    ):
        self.image_dir, self.label_dir = image_dir, label_dir
        images = _index(image_dir, image_suffixes, "image")
        if not images:
            raise ValueError(
                f"FolderSource: no images with suffix {tuple(image_suffixes)} in {image_dir!r}"
            )
        self.stems = sorted(images)
        self.image_paths = [images[s] for s in self.stems]
        self.label_paths = None
        if label_dir is not None:
            labels = _index(label_dir, label_suffixes, "label")
            missing = [s for s in self.stems if s not in labels]
            extra = sorted(set(labels) - set(images))
            if missing:
                raise ValueError(
                    f"FolderSource: {len(missing)} image(s) have no label in {label_dir!r}, e.g. "
                    f"{images[missing[0]]!r} (expected {missing[0]}{label_suffixes[0]})"
                )
            if extra:
                raise ValueError(
                    f"FolderSource: {len(extra)} label(s) have no image in {image_dir!r}, e.g. "
                    f"{labels[extra[0]]!r}"
                )
            self.label_paths = [labels[s] for s in self.stems]

    def __len__(self) -> int:
        return len(self.stems)

    def __repr__(self) -> str:
        return f"FolderSource({self.image_dir!r}, {self.label_dir!r}, n={len(self)})"

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        index = int(index)
        if not -len(self) <= index < len(self):
            raise IndexError(f"FolderSource: index {index} out of range for {len(self)} items")
        path = self.image_paths[index]
        image = np.asarray(_read(path).convert("RGB"), np.uint8)
        if self.label_paths is None:
            return {"image": image}
        label_path = self.label_paths[index]
        im = _read(label_path)
        if im.mode not in ("L", "P"):
            raise ValueError(
                f"FolderSource: label file {label_path!r} has mode {im.mode!r}; expected a "
                "single-channel uint8 train-id PNG ('L' or 'P')"
            )
        label = np.asarray(im, np.uint8)
        if label.shape != image.shape[:2]:
            raise ValueError(
                f"FolderSource: label {label_path!r} is {label.shape[1]}x{label.shape[0]} but "
                f"image {path!r} is {image.shape[1]}x{image.shape[0]} (W x H)"
            )
        return {"image": image, "label": label}
