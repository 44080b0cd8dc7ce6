"""Checks a protocol config can run before any stage trains: data folders and weight files.

A real-data protocol takes hours of device time; a typo in ``--config.data.data_dir`` or a missing
``mit-b5`` checkpoint should not surface after the first translator has trained. :func:`check`
raises ``ValueError`` with one message naming the field and the path, which experiments/protocol.py
prints as one line (`dakpn_jax.console.fail`).

- Data: every folder field that is set (``data_dir``, ``synthetic_dir``, ``real_dir``) must exist;
  then synthetic-train, real-train and real-val are listed (the dataset readers name the missing
  sub-folder or file, e.g. ``.../leftImg8bit/train: folder is missing``).
- Weights: every field named in :data:`WEIGHT_FIELDS` anywhere in the protocol config (rows'
  overrides, the segmenters' overrides and models) that is set must exist (a file, or a
  ``save_pretrained`` folder for ``pretrained``).
- Required weights: a segmenter spec with ``require_weights=True`` (the real-data configs: the
  paper's SegFormer-B5 starts from ImageNet MiT-B5, FCN-ResNet50 from torchvision weights) must
  name its weights file.
"""

from __future__ import annotations

import os

WEIGHT_FIELDS = (
    "pretrained",
    "weights",
    "vgg_weights",
    "segmenter_weights",
    "generator_checkpoint",
)
_DATA_DIRS = ("data_dir", "synthetic_dir", "real_dir")


def _walk(tree, path):
    """(dotted path, value) of every WEIGHT_FIELDS entry in a nested dict."""
    if isinstance(tree, dict):
        for k, v in tree.items():
            p = f"{path}.{k}"
            if k in WEIGHT_FIELDS and isinstance(v, str):
                yield p, v
            else:
                yield from _walk(v, p)


def check_weights(pconfig) -> None:
    scorer = pconfig.get("eval", {}).get("model_score_workdir", None)
    if scorer and not os.path.isdir(os.path.expanduser(scorer)):
        raise ValueError(
            f"config.eval.model_score_workdir={scorer!r}: no such folder (a segmentation run)"
        )
    for path, value in _walk(pconfig.to_dict(), "config"):
        if value and not os.path.exists(os.path.expanduser(value)):
            raise ValueError(f"{path}={value!r}: no such weights file")
    for name in ("segmentation", "feature_segmenter"):
        spec = pconfig.get(name, None)
        if spec is None or not spec.get("require_weights", False):
            continue  # (a feature segmenter with same_as_segmentation has no own requirement)
        if name == "feature_segmenter" and not _needs_feature_segmenter(pconfig):
            continue
        model = spec.get("model", None) or spec.get("overrides", {}).get("model", {})
        kwargs = dict(model.get("kwargs", {}) or {})
        fcn = model.get("name", "") == "fcn_resnet50"
        field = "weights" if fcn else "pretrained"
        if not kwargs.get(field):
            where = "model" if spec.get("model", None) else "overrides.model"
            what = (
                "torchvision FCN-ResNet50 weights" if fcn else "ImageNet MiT-B5 (SegFormer) weights"
            )
            raise ValueError(
                f"config.{name}.{where}.kwargs.{field} is not set: the {name} segmenters start from "
                f"local {what}; set --config.{name}.{where}.kwargs.{field}=PATH"
            )


def _needs_feature_segmenter(pconfig) -> bool:
    from dakpn_jax.protocol import methods  # pylint: disable=import-outside-toplevel

    try:
        ts = methods.build_translators(pconfig, int(pconfig.seeds[0]), omitted={})
    except ValueError:
        return False  # the row's own error comes later, with its own message
    return any(t.uses_segmenter_features for t in ts.values())


def check_data(pconfig) -> dict:
    """{split: image count} of the protocol data, after its folders were found."""
    from dakpn_jax.protocol import methods  # pylint: disable=import-outside-toplevel

    d = pconfig.data
    if d.get("name", "procedural") == "real":
        for field in _DATA_DIRS:
            value = d.get(field, None)
            if value and not os.path.isdir(os.path.expanduser(value)):
                raise ValueError(f"config.data.{field}={value!r}: no such folder")
        if not any(d.get(f, None) for f in _DATA_DIRS):
            raise ValueError(
                "config.data.data_dir is not set: give --config.data.data_dir=DIR (prepared TFDS "
                "datasets) or --config.data.synthetic_dir and --config.data.real_dir (the extracted "
                "official folders)"
            )
    return {
        split: methods._count(pconfig, split)  # pylint: disable=protected-access
        for split in ("synthetic-train", "real-train", "real-val")
    }


def check(pconfig) -> dict:
    """Weights first (cheap), then the data (lists the folders); returns the split counts."""
    check_weights(pconfig)
    return check_data(pconfig)
