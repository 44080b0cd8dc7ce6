"""The one dispatch every method uses to get a data source: `make_source(data_config, split)`.

Logical splits (docs/ARCHITECTURE.md): ``synthetic-train`` (labelled), ``real-train`` (images only),
``real-train-labelled`` (a deterministic labelled subset of real-train), ``real-val`` (labelled) and,
for the procedural benchmark only, ``paired-eval``. Every source is a grain random-access source
returning ``{"image": uint8 (H, W, 3), "label": uint8 (H, W)}`` (``{"image"}`` for real-train),
labels already in the protocol's class ids with 255 = ignore.

``data_config.name``:

- ``"procedural"`` (default): `dakpn_jax.data.procedural.make_source(split, data_config)`; with
  ``data_config.cache_dir`` set, the render-once disk cache of `dakpn_jax.data.procedural_cache`.
- ``"real"``: the real datasets of issue #7, read from TFDS-prepared copies (``data_dir``, see
  ``python -m dakpn_jax.data.prepare``) or straight from the extracted official folders
  (``synthetic_dir`` / ``real_dir``). Fields (read with ``data_config.get``):

  ======================  ======================================================================
  synthetic               ``"gta5"``, ``"synthia"`` or ``"face_synthetics"``
  real                    ``"cityscapes"`` or ``"celebamask_hq"``
  data_dir                TFDS data dir holding the prepared datasets (``None``: direct folders)
  synthetic_dir           extracted official folder of `synthetic` (overrides ``data_dir``)
  real_dir                extracted official folder of `real` (overrides ``data_dir``)
  synthetic_split         dataset split(s) for synthetic-train, ``+``-joined; default: all splits
  real_train_split        default ``"train"``
  real_val_split          default ``"validation"``
  num_real_labelled       N of real-train-labelled: N images evenly spaced over the sorted
                          real-train list (index floor(i * n / N), i < N), so all Cityscapes
                          cities are represented (the first N sorted files would be one city)
  label_protocol          ``cityscapes19`` / ``synthia16`` / ``synthia13`` (street scenes),
                          ``faces18`` (background ignored, docs/METHOD.md §1 step 8) / ``faces19``; default:
                          ``cityscapes19``, ``synthia16`` for SYNTHIA, ``faces18`` for faces
  synthetic_size          optional (height, width) the synthetic images are resized to
  real_size               optional (height, width) the real train images are resized to
  real_val_size           the same for real-val; default: real_size (``None`` in the presets:
                          scored at the labels' full resolution, as the benchmarks report)
  on_error                direct reads only: ``"raise"`` (default) or ``"skip"``; the folders
                          are scanned before training (`dakpn_jax.data.scan`); a malformed pair
                          either stops with its file name or is skipped and counted, exactly
                          as ``prepare --on_error`` does
  ======================  ======================================================================

  Resizing uses PIL: bilinear with antialiasing for images, nearest for labels.
  `preset(name, data_dir)` returns these fields for the paper's three benchmarks;
  `num_classes(data_config)` and `class_names(data_config)` give the protocol's classes.

The shared pieces of the dataset files live here too: `Example` (one listed image/label pair),
`read_image` / `read_label_png` (decoding that names the file on any failure) and the two base
sources, `DirectSource` (official layout) and `PreparedSource` (TFDS array_record, `prepare.py`).
"""
from __future__ import annotations

import dataclasses
import importlib
import io
import os
from typing import Any

import numpy as np
from PIL import Image

SPLITS = ("synthetic-train", "real-train", "real-train-labelled", "real-val", "paired-eval")

DATASETS = {
    "gta5": "dakpn_jax.data.gta5",
    "synthia": "dakpn_jax.data.synthia",
    "cityscapes": "dakpn_jax.data.cityscapes",
    "face_synthetics": "dakpn_jax.data.face_synthetics",
    "celebamask_hq": "dakpn_jax.data.celebamask_hq",
}


def _get(config, name, default=None):
    """`config.get(name, default)` for ConfigDicts and dicts, `getattr` for dataclasses."""
    if hasattr(config, "get"):
        return config.get(name, default)
    return getattr(config, name, default)


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
            raise ValueError(f"{path}: label file has mode {im.mode!r}; expected 8-bit single-channel "
                             "ids ('L' or palette 'P')")
        return np.asarray(im)


def check_size(label: np.ndarray, image_hw, path) -> np.ndarray:
    """Raises ValueError naming `path` unless label.shape == image_hw."""
    if tuple(label.shape[:2]) != tuple(image_hw):
        raise ValueError(f"{path}: label size {tuple(label.shape[:2])} (H, W) does not match its "
                         f"image size {tuple(image_hw)}")
    return label


# --------------------------------------------------------------------------- base sources

def _split_names(module, split: str, field: str) -> list[str]:
    parts = [s for s in split.split("+")]
    for s in parts:
        if s not in module.SPLITS:
            raise ValueError(f"data_config.{field}={split!r}: {module.NAME} has splits {module.SPLITS}")
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

    def __init__(self, module, root, split: str, *, with_labels: bool = True, on_error: str = "raise",
                 scan: bool = True):
        if on_error not in ("raise", "skip"):
            raise ValueError(f"data_config.on_error={on_error!r}: expected 'raise' or 'skip'")
        self._load_label = module.load_label  # a function pickles (grain workers), a module does not
        self._with_labels = with_labels
        root = os.path.expanduser(os.fspath(root))
        self._examples = []
        self.skipped: list[tuple[str, str, str]] = []  # (split, key, reason), as prepare's skipped.json
        for s in _split_names(module, split, "split"):
            listed = module.list_examples(root, s)
            if scan:
                from dakpn_jax.data import scan as scan_lib  # pylint: disable=import-outside-toplevel
                listed, skipped = scan_lib.scanned(module, root, s, listed, with_labels=with_labels,
                                                   on_error=on_error)
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


class PreparedSource:
    """Random-access source over a prepared dataset (TFDS array_record, read without TensorFlow)."""

    def __init__(self, module, data_dir, split: str):
        from dakpn_jax.data import prepare  # pylint: disable=import-outside-toplevel
        _split_names(module, split, "split")
        self._ds = prepare.open_prepared(data_dir, module.NAME, split, encoded=True)

    def __len__(self):
        return len(self._ds)

    def __getitem__(self, index):
        if not 0 <= index < len(self._ds):  # IndexError, as the sequence protocol expects
            raise IndexError(f"index {index} out of range for a source of length {len(self._ds)}")
        ex = self._ds[index]
        with Image.open(io.BytesIO(ex["image"])) as image, Image.open(io.BytesIO(ex["label"])) as label:
            return {"image": np.asarray(image.convert("RGB")), "label": np.asarray(label)}


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


# --------------------------------------------------------------------------- dispatch

def _protocols(label_space: str) -> dict:
    if label_space == "cityscapes":
        from dakpn_jax.data import cityscapes_labels  # pylint: disable=import-outside-toplevel
        return cityscapes_labels.PROTOCOLS
    from dakpn_jax.data import celebamask_hq  # pylint: disable=import-outside-toplevel
    return celebamask_hq.PROTOCOLS


def _resolve(data_config):
    """(synthetic module, real module, protocol name, kept class ids) of a ``name="real"`` config."""
    syn = dataset_module(_get(data_config, "synthetic", "gta5"))
    real = dataset_module(_get(data_config, "real", "cityscapes"))
    if syn.ROLE != "synthetic" or real.ROLE != "real":
        raise ValueError(f"data_config.synthetic={syn.NAME!r} / real={real.NAME!r}: expected a synthetic "
                         "dataset (gta5, synthia, face_synthetics) and a real one (cityscapes, celebamask_hq)")
    if syn.LABEL_SPACE != real.LABEL_SPACE:
        raise ValueError(f"data_config.synthetic={syn.NAME!r} ({syn.LABEL_SPACE} labels) and "
                         f"real={real.NAME!r} ({real.LABEL_SPACE} labels) have different label spaces")
    protocols = _protocols(syn.LABEL_SPACE)
    protocol = _get(data_config, "label_protocol", None) or syn.DEFAULT_PROTOCOL
    if protocol not in protocols:
        raise ValueError(f"data_config.label_protocol={protocol!r}: expected one of {sorted(protocols)} "
                         f"for {syn.LABEL_SPACE} labels")
    return syn, real, protocol, protocols[protocol]


def num_classes(data_config) -> int:
    """Number of segmentation classes the sources of `data_config` label (19 for procedural)."""
    if _get(data_config, "name", "procedural") == "procedural":
        from dakpn_jax.data import procedural  # pylint: disable=import-outside-toplevel
        return procedural.NUM_CLASSES
    return len(_resolve(data_config)[3])


def class_names(data_config) -> tuple[str, ...]:
    """Names of the classes 0..num_classes-1 the sources of `data_config` label."""
    if _get(data_config, "name", "procedural") == "procedural":
        from dakpn_jax.data import cityscapes_labels  # pylint: disable=import-outside-toplevel
        return cityscapes_labels.TRAIN_NAMES
    syn, _, _, kept = _resolve(data_config)
    if syn.LABEL_SPACE == "cityscapes":
        from dakpn_jax.data import cityscapes_labels  # pylint: disable=import-outside-toplevel
        return tuple(cityscapes_labels.TRAIN_NAMES[t] for t in kept)
    from dakpn_jax.data import celebamask_hq  # pylint: disable=import-outside-toplevel
    return tuple(celebamask_hq.CLASSES[t] for t in kept)


def _base(module, data_config, split, field_dir, with_labels=True):
    direct = _get(data_config, field_dir, None)
    if direct:
        return DirectSource(module, direct, split, with_labels=with_labels,
                            on_error=_get(data_config, "on_error", None) or "raise")
    data_dir = _get(data_config, "data_dir", None)
    if not data_dir:
        raise ValueError(f"data_config: set data_dir (prepared TFDS datasets) or {field_dir} (the "
                         f"extracted official {module.NAME} folder)")
    return PreparedSource(module, data_dir, split)


def make_source(data_config, split: str):
    """A grain random-access source for the logical `split` of the dataset `data_config` names."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is unknown; expected one of {SPLITS}")
    name = _get(data_config, "name", "procedural")
    if name == "procedural":
        from dakpn_jax.data import procedural  # pylint: disable=import-outside-toplevel
        if _get(data_config, "cache_dir", None):  # render once, read from disk (procedural_cache)
            from dakpn_jax.data import procedural_cache  # pylint: disable=import-outside-toplevel
            return procedural_cache.CachedProceduralSource(split, data_config,
                                                           _get(data_config, "cache_dir"))
        return procedural.make_source(split, data_config)
    if name != "real":
        raise ValueError(f"data_config.name={name!r} is unknown; expected 'procedural' or 'real'")
    from dakpn_jax.data import cityscapes_labels  # pylint: disable=import-outside-toplevel
    syn, real, _, kept = _resolve(data_config)
    lut = cityscapes_labels.protocol_lut(kept)
    flip = None
    if syn.LABEL_SPACE == "faces":  # sided parts: a flipped label swaps l_/r_ (street classes have no side)
        from dakpn_jax.data import pipeline  # pylint: disable=import-outside-toplevel
        flip = pipeline.flip_label_map(class_names(data_config))
    if split == "paired-eval":
        raise ValueError("split='paired-eval' exists only for the procedural benchmark (real datasets "
                         "have no paired view)")
    if split == "synthetic-train":
        base = _base(syn, data_config, _get(data_config, "synthetic_split", None) or "+".join(syn.SPLITS),
                     "synthetic_dir")
        return View(base, lut=lut, size=_get(data_config, "synthetic_size", None), flip_label_map=flip)
    size = _get(data_config, "real_size", None)
    if split == "real-val":
        return View(_base(real, data_config, _get(data_config, "real_val_split", "validation"), "real_dir"),
                    lut=lut, size=_get(data_config, "real_val_size", size), flip_label_map=flip)
    if split == "real-train":
        return View(_base(real, data_config, _get(data_config, "real_train_split", "train"), "real_dir",
                          with_labels=False), lut=None, size=size)
    base = _base(real, data_config, _get(data_config, "real_train_split", "train"), "real_dir")
    n, count = len(base), _get(data_config, "num_real_labelled", None)
    if count is None or not 1 <= int(count) <= n:
        raise ValueError(f"data_config.num_real_labelled={count!r}: must be in [1, {n}] (the size of "
                         f"{real.NAME} {_get(data_config, 'real_train_split', 'train')})")
    return View(base, indices=np.arange(int(count)) * n // int(count), lut=lut, size=size, flip_label_map=flip)


def preset(name: str, data_dir=None):
    """Data-config fields of the paper's benchmarks: ``gta5_cityscapes``, ``synthia_cityscapes``,
    ``faces``. Resolutions: GTA5 frames stay at 1914 x 1052, SYNTHIA at 1280 x 760, Cityscapes is
    halved to 1024 x 512 for training (the usual size) and kept full-size for scoring, faces are
    512 x 512.
    """
    import ml_collections  # pylint: disable=import-outside-toplevel
    from ml_collections import config_dict  # pylint: disable=import-outside-toplevel
    fields = {
        "gta5_cityscapes": dict(synthetic="gta5", real="cityscapes", label_protocol="cityscapes19",
                                real_size=(512, 1024)),
        "synthia_cityscapes": dict(synthetic="synthia", real="cityscapes", label_protocol="synthia16",
                                   real_size=(512, 1024)),
        "faces": dict(synthetic="face_synthetics", real="celebamask_hq", label_protocol="faces18",
                      synthetic_size=(512, 512), real_size=(512, 512), real_val_size=(512, 512)),
    }
    if name not in fields:
        raise ValueError(f"preset name={name!r}: expected one of {sorted(fields)}")
    # Unset fields are typed placeholders, so `--config.data.data_dir=DIR` (etc.) works on the
    # command line (a plain None field cannot be overridden by flags).
    c = ml_collections.ConfigDict(dict(
        name="real", data_dir=config_dict.placeholder(str), synthetic_dir=config_dict.placeholder(str),
        real_dir=config_dict.placeholder(str), synthetic_split=config_dict.placeholder(str),
        real_train_split="train", real_val_split="validation", num_real_labelled=100,
        synthetic_size=config_dict.placeholder(tuple), real_size=config_dict.placeholder(tuple),
        real_val_size=config_dict.placeholder(tuple), on_error="raise"))
    c.update(fields[name])
    if data_dir is not None:
        c.data_dir = os.fspath(data_dir)
    return c
