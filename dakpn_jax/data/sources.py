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
  labelled_seed           optional int: draw those N images by a seeded permutation instead
                          (`labelled_indices`; nested over N, recorded by the protocol)
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

This module is only the dispatcher. The pieces the dataset files share (`Example`, the decoders,
`DirectSource`, `View`, the dataset table) are in `dakpn_jax.data.base`, `PreparedSource` is in
`dakpn_jax.data.prepare`; they are re-exported here under their old names, so
``sources.read_image`` and the like keep working.
"""

from __future__ import annotations

import os

import numpy as np

from dakpn_jax.data import celebamask_hq, cityscapes_labels

# The base layer's names, re-exported: callers and tests reach them as `sources.<name>`.
from dakpn_jax.data.base import (
    DATASETS,
    DirectSource,
    Example,
    View,
    check_size,
    dataset_module,
    encode_image,
    open_image,
    read_image,
    read_label_png,
)
from dakpn_jax.data.prepare import PreparedSource

__all__ = [
    "DATASETS",
    "SPLITS",
    "DirectSource",
    "Example",
    "PreparedSource",
    "View",
    "check_size",
    "class_names",
    "dataset_module",
    "encode_image",
    "make_source",
    "num_classes",
    "open_image",
    "preset",
    "read_image",
    "read_label_png",
]

SPLITS = ("synthetic-train", "real-train", "real-train-labelled", "real-val", "paired-eval")


def _get(config, name, default=None):
    """`config.get(name, default)` for ConfigDicts and dicts, `getattr` for dataclasses."""
    if hasattr(config, "get"):
        return config.get(name, default)
    return getattr(config, name, default)


# --------------------------------------------------------------------------- dispatch


def _protocols(label_space: str) -> dict:
    if label_space == "cityscapes":
        return cityscapes_labels.PROTOCOLS
    return celebamask_hq.PROTOCOLS


def _resolve(data_config):
    """(synthetic module, real module, protocol name, kept class ids) of a ``name="real"`` config."""
    syn = dataset_module(_get(data_config, "synthetic", "gta5"))
    real = dataset_module(_get(data_config, "real", "cityscapes"))
    if syn.ROLE != "synthetic" or real.ROLE != "real":
        roles = {n: dataset_module(n).ROLE for n in DATASETS}  # the registry, not a list kept here
        raise ValueError(
            f"data_config.synthetic={syn.NAME!r} / real={real.NAME!r}: expected a synthetic "
            f"dataset ({', '.join(n for n, r in roles.items() if r == 'synthetic')}) and a real "
            f"one ({', '.join(n for n, r in roles.items() if r == 'real')})"
        )
    if syn.LABEL_SPACE != real.LABEL_SPACE:
        raise ValueError(
            f"data_config.synthetic={syn.NAME!r} ({syn.LABEL_SPACE} labels) and "
            f"real={real.NAME!r} ({real.LABEL_SPACE} labels) have different label spaces"
        )
    protocols = _protocols(syn.LABEL_SPACE)
    protocol = _get(data_config, "label_protocol", None) or syn.DEFAULT_PROTOCOL
    if protocol not in protocols:
        raise ValueError(
            f"data_config.label_protocol={protocol!r}: expected one of {sorted(protocols)} "
            f"for {syn.LABEL_SPACE} labels"
        )
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
        return cityscapes_labels.TRAIN_NAMES
    syn, _, _, kept = _resolve(data_config)
    if syn.LABEL_SPACE == "cityscapes":
        return tuple(cityscapes_labels.TRAIN_NAMES[t] for t in kept)
    return tuple(celebamask_hq.CLASSES[t] for t in kept)


def _base(module, data_config, split, field_dir, with_labels=True):
    direct = _get(data_config, field_dir, None)
    if direct:
        return DirectSource(
            module,
            direct,
            split,
            with_labels=with_labels,
            on_error=_get(data_config, "on_error", None) or "raise",
        )
    data_dir = _get(data_config, "data_dir", None)
    if not data_dir:
        raise ValueError(
            f"data_config: set data_dir (prepared TFDS datasets) or {field_dir} (the "
            f"extracted official {module.NAME} folder)"
        )
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

            return procedural_cache.CachedProceduralSource(
                split, data_config, _get(data_config, "cache_dir")
            )
        return procedural.make_source(split, data_config)
    if name != "real":
        raise ValueError(f"data_config.name={name!r} is unknown; expected 'procedural' or 'real'")
    syn, real, _, kept = _resolve(data_config)
    lut = cityscapes_labels.protocol_lut(kept)
    flip = None
    if (
        syn.LABEL_SPACE == "faces"
    ):  # sided parts: a flipped label swaps l_/r_ (street classes have no side)
        from dakpn_jax.data import pipeline  # pylint: disable=import-outside-toplevel

        flip = pipeline.flip_label_map(class_names(data_config))
    if split == "paired-eval":
        raise ValueError(
            "split='paired-eval' exists only for the procedural benchmark (real datasets "
            "have no paired view)"
        )
    if split == "synthetic-train":
        base = _base(
            syn,
            data_config,
            _get(data_config, "synthetic_split", None) or "+".join(syn.SPLITS),
            "synthetic_dir",
        )
        return View(
            base, lut=lut, size=_get(data_config, "synthetic_size", None), flip_label_map=flip
        )
    size = _get(data_config, "real_size", None)
    if split == "real-val":
        return View(
            _base(real, data_config, _get(data_config, "real_val_split", "validation"), "real_dir"),
            lut=lut,
            size=_get(data_config, "real_val_size", size),
            flip_label_map=flip,
        )
    if split == "real-train":
        return View(
            _base(
                real,
                data_config,
                _get(data_config, "real_train_split", "train"),
                "real_dir",
                with_labels=False,
            ),
            lut=None,
            size=size,
        )
    base = _base(real, data_config, _get(data_config, "real_train_split", "train"), "real_dir")
    n, count = len(base), _get(data_config, "num_real_labelled", None)
    if count is None or not 1 <= int(count) <= n:
        raise ValueError(
            f"data_config.num_real_labelled={count!r}: must be in [1, {n}] (the size of "
            f"{real.NAME} {_get(data_config, 'real_train_split', 'train')})"
        )
    return View(
        base,
        indices=labelled_indices(n, int(count), _get(data_config, "labelled_seed", None)),
        lut=lut,
        size=size,
        flip_label_map=flip,
    )


def labelled_indices(total: int, count: int, seed=None) -> np.ndarray:
    """Indices (sorted, int64) of the ``count`` real-train images of real-train-labelled.

    ``seed`` None: evenly spaced over the sorted list (floor(i * total / count)). ``seed`` an int:
    the first ``count`` entries of a seeded permutation of ``range(total)`` (numpy PCG64), so the
    subsets of one seed are nested (the 100 images are among the 500) and any seed can be redrawn
    from the number alone (``data_config.labelled_seed``).
    """
    if not 1 <= int(count) <= int(total):
        raise ValueError(f"labelled_indices: count={count} must be in [1, {total}]")
    if seed is None:
        return np.arange(int(count), dtype=np.int64) * int(total) // int(count)
    return np.sort(np.random.default_rng(int(seed)).permutation(int(total))[: int(count)]).astype(
        np.int64
    )


def preset(name: str, data_dir=None):
    """Data-config fields of the paper's benchmarks: ``gta5_cityscapes``, ``synthia_cityscapes``,
    ``faces``. Resolutions: GTA5 frames stay at 1914 x 1052, SYNTHIA at 1280 x 760, Cityscapes is
    halved to 1024 x 512 for training (the usual size) and kept full-size for scoring, faces are
    512 x 512.
    """
    import ml_collections  # pylint: disable=import-outside-toplevel
    from ml_collections import config_dict  # pylint: disable=import-outside-toplevel

    fields = {
        "gta5_cityscapes": dict(
            synthetic="gta5",
            real="cityscapes",
            label_protocol="cityscapes19",
            real_size=(512, 1024),
        ),
        "synthia_cityscapes": dict(
            synthetic="synthia",
            real="cityscapes",
            label_protocol="synthia16",
            real_size=(512, 1024),
        ),
        "faces": dict(
            synthetic="face_synthetics",
            real="celebamask_hq",
            label_protocol="faces18",
            synthetic_size=(512, 512),
            real_size=(512, 512),
            real_val_size=(512, 512),
        ),
    }
    if name not in fields:
        raise ValueError(f"preset name={name!r}: expected one of {sorted(fields)}")
    # Unset fields are typed placeholders, so `--config.data.data_dir=DIR` (etc.) works on the
    # command line (a plain None field cannot be overridden by flags).
    c = ml_collections.ConfigDict(
        dict(
            name="real",
            data_dir=config_dict.placeholder(str),
            synthetic_dir=config_dict.placeholder(str),
            real_dir=config_dict.placeholder(str),
            synthetic_split=config_dict.placeholder(str),
            real_train_split="train",
            real_val_split="validation",
            num_real_labelled=100,
            synthetic_size=config_dict.placeholder(tuple),
            real_size=config_dict.placeholder(tuple),
            real_val_size=config_dict.placeholder(tuple),
            on_error="raise",
        )
    )
    c.update(fields[name])
    if data_dir is not None:
        c.data_dir = os.fspath(data_dir)
    return c
