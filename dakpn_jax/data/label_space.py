"""The label space a data config speaks: class names, ignore index, flip swaps, palette.

Every stage that needs the classes (the protocol's segmenters, scores, per-class tables, grids and
report) asks the data config for them through :func:`for_data` instead of importing the Cityscapes
table, so the same code scores GTA5 -> Cityscapes (19 classes), SYNTHIA -> Cityscapes (16 or 13)
and Face Synthetics -> CelebAMask-HQ (the face parts)::

    from dakpn_jax.data import label_space
    space = label_space.for_data(config.data)   # LabelSpace(name="synthia16", ...)
    space.num_classes, space.class_names, space.colorize(label)

Which space a config gets:

- the procedural benchmark: ``cityscapes19`` (it labels with the 19 Cityscapes train ids);
- ``name="real"``: the config's ``label_protocol`` (default: the synthetic dataset's
  ``DEFAULT_PROTOCOL``), with the names `dakpn_jax.data.sources.class_names` gives. Street classes
  keep their official Cityscapes colours; the face parts get a fixed palette of distinct hues
  (CelebAMask-HQ publishes none with its masks).

A paired view (the same scene rendered in both domains, docs/METHOD.md §2) exists only for the procedural
benchmark: :func:`has_paired_view` says whether stages that need one (paired PSNR / SSIM / SWD,
the paired grid) can run.
"""

from __future__ import annotations

import colorsys
import dataclasses

import numpy as np

IGNORE_INDEX = 255


@dataclasses.dataclass(frozen=True)
class LabelSpace:
    """Classes 0..num_classes-1 of a dataset's label maps (ids >= num_classes other than
    ``ignore_index`` never occur).

    name: the protocol's name (``cityscapes19``, ``synthia16``, ``synthia13``, ``faces18``, ...).
    class_names: one name per class id. palette: one (r, g, b) per class id, for label pictures.
    flip_swaps: (i, j) class pairs a horizontal flip exchanges (``l_eye`` <-> ``r_eye``).
    """

    name: str
    class_names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    ignore_index: int = IGNORE_INDEX
    flip_swaps: tuple[tuple[int, int], ...] = ()

    def __post_init__(self):
        if len(self.palette) != len(self.class_names):
            raise ValueError(
                f"LabelSpace {self.name!r}: {len(self.palette)} palette colours for "
                f"{len(self.class_names)} classes"
            )
        if not len(self.class_names) <= self.ignore_index <= 255:
            raise ValueError(
                f"LabelSpace {self.name!r}: ignore_index={self.ignore_index} must lie in "
                f"[{len(self.class_names)}, 255] (uint8 labels, above every class id)"
            )

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def flip_lut(self) -> np.ndarray:
        """(256,) uint8 label lookup of a horizontal flip (identity but for ``flip_swaps``)."""
        lut = np.arange(256, dtype=np.uint8)
        for i, j in self.flip_swaps:
            lut[i], lut[j] = j, i
        return lut

    def colorize(self, label) -> np.ndarray:
        """uint8 (..., H, W, 3) picture of an integer label map (ignore and unknown ids black)."""
        label = np.asarray(label)
        if not np.issubdtype(label.dtype, np.integer):
            raise ValueError(f"label must be an integer array, got dtype {label.dtype}")
        lut = np.zeros((256, 3), np.uint8)
        lut[: self.num_classes] = np.asarray(self.palette, np.uint8)
        return lut[np.clip(label, 0, 255).astype(np.uint8)]

    def to_dict(self) -> dict:
        """What the report records (plain JSON types)."""
        return {
            "name": self.name,
            "num_classes": self.num_classes,
            "class_names": list(self.class_names),
            "ignore_index": self.ignore_index,
            "flip_swaps": [list(p) for p in self.flip_swaps],
        }


def side_swaps(class_names) -> tuple[tuple[int, int], ...]:
    """Pairs (i, j) with names ``l_X`` / ``r_X`` (``l_lip``, the lower lip, has no ``r_lip``)."""
    index = {str(n): i for i, n in enumerate(class_names)}
    return tuple(
        (i, index["r_" + n[2:]])
        for n, i in index.items()
        if n.startswith("l_") and ("r_" + n[2:]) in index
    )


def face_palette(count: int) -> tuple[tuple[int, int, int], ...]:
    """``count`` distinct colours: hues a golden-ratio turn apart, two brightness levels alternating
    (neighbouring ids, often adjacent parts such as upper / lower lip, stay easy to tell apart)."""
    out = []
    for k in range(count):
        r, g, b = colorsys.hsv_to_rgb((k * 0.618034) % 1.0, 0.75, 0.95 if k % 2 == 0 else 0.65)
        out.append((int(round(255 * r)), int(round(255 * g)), int(round(255 * b))))
    return tuple(out)


def _get(config, name, default=None):
    return config.get(name, default) if hasattr(config, "get") else getattr(config, name, default)


def for_data(data_config) -> LabelSpace:
    """The :class:`LabelSpace` of the sources ``data_config`` describes (module docstring)."""
    from dakpn_jax.data import labels, sources  # pylint: disable=import-outside-toplevel

    if _get(data_config, "name", "procedural") == "procedural":
        return LabelSpace(
            "cityscapes19", tuple(labels.CLASS_NAMES), tuple(map(tuple, labels.PALETTE.tolist()))
        )
    names = tuple(sources.class_names(data_config))
    syn = sources.dataset_module(_get(data_config, "synthetic", "gta5"))
    protocol = _get(data_config, "label_protocol", None) or syn.DEFAULT_PROTOCOL
    if syn.LABEL_SPACE == "cityscapes":
        full = list(labels.CLASS_NAMES)
        palette = tuple(tuple(labels.PALETTE[full.index(n)].tolist()) for n in names)
    else:  # faces: one fixed palette over all CelebAMask-HQ classes, so faces18 and faces19 agree
        from dakpn_jax.data import celebamask_hq  # pylint: disable=import-outside-toplevel

        every = face_palette(len(celebamask_hq.CLASSES))
        palette = tuple(every[celebamask_hq.CLASSES.index(n)] for n in names)
    return LabelSpace(protocol, names, palette, IGNORE_INDEX, side_swaps(names))


def has_paired_view(data_config) -> bool:
    """Whether the data has a ``paired-eval`` split (the procedural benchmark only)."""
    return _get(data_config, "name", "procedural") == "procedural"
