"""SegFormer segmenter configs with the paper's downstream recipe (method ``"segmentation"``).

The paper trains its downstream segmenter (and the frozen semantic encoder) as SegFormer-B5 from
ImageNet-pretrained MiT-B5 weights with AdamW (lr 6e-5, weight decay 0.01), polynomial decay
(power 1.0, to 0), batch 8, 50 epochs; ImageNet mean/std normalisation happens inside the model
(`dakpn_jax.models.segformer`). Everything else is the segmentation method's config
(configs/segmentation.py documents the fields); this file only changes ``model``, ``optim``,
``crop_size``, ``num_train_steps`` and the intervals.

``get_config(arg)``:
- ``None`` / ``"b5"``: the paper's SegFormer-B5 on the data of configs/segmentation.py (the embedded
  procedural benchmark by default, full 128 x 256 frames); ``"b0"``..``"b4"``: the same recipe with
  a smaller MiT.
- ``"tiny"``: a B0 seconds-long smoke run on the segmentation config's tiny data (tests).

ImageNet weights: ``--config.model.kwargs.pretrained=/path/to/mit-b5`` (a local Hugging Face
``save_pretrained`` directory or .safetensors/.bin file of ``nvidia/mit-b5``); without it the encoder
starts from random initialisation, which is far from the paper's setting. A fine-tuned SegFormer
checkpoint works too (its classifier is re-initialised when the class count differs).

Steps: 50 epochs of ``config.data.num_synthetic_train`` images at batch 8 (2000 procedural
frames: 12,500 steps). For GTA5 (24,966 frames) that is 156,038 steps; set
``--config.num_train_steps`` when the data differ.

As in mmsegmentation's SegFormer recipe, the decode head learns at 10x the base rate
(``optim.lr_mult``). Its zero weight decay on LayerNorm and position-embedding parameters is matched
by skipping weight decay on every 1-D parameter (biases, norm scales); the MiT has no other
position parameters.
"""

import math

import ml_collections
from ml_collections import config_dict

from dakpn_jax import config_files

EPOCHS = 50
VARIANTS = ("b0", "b1", "b2", "b3", "b4", "b5")


def _segmentation_config(arg=None):
    """configs/segmentation.py's get_config, loaded from its path (``configs`` is not a package)."""
    return config_files.sibling(__file__, "segmentation").get_config(arg)


def get_config(arg=None):
    arg = arg or "b5"
    if arg not in VARIANTS + ("tiny",):
        raise ValueError(
            f"configs/segformer.py: unknown variant {arg!r} ({', '.join(VARIANTS)}, tiny)"
        )
    tiny = arg == "tiny"
    c = _segmentation_config("tiny" if tiny else None)
    c.model = ml_collections.ConfigDict(
        dict(name=f"segformer_{'b0' if tiny else arg}", num_classes=19)
    )
    c.model.kwargs = ml_collections.ConfigDict(
        dict(
            pretrained=config_dict.placeholder(str),  # local HF MiT / SegFormer checkpoint
            drop_path_rate=0.1,
            classifier_dropout=0.1,
        )
    )
    c.optim = ml_collections.ConfigDict(
        dict(
            name="adamw",
            lr=6e-5,
            weight_decay=0.01,
            b1=0.9,
            b2=0.999,
            eps=1e-8,
            schedule="poly",
            poly_power=1.0,
            end_lr_ratio=0.0,
            warmup_steps=0,
            grad_clip=0.0,
            weight_decay_on="matrices",
            steps_per_epoch=0,
            lr_mult=ml_collections.ConfigDict({"decode_head": 10.0}),
        )
    )
    c.batch_size = 8
    c.crop_size = config_dict.placeholder(
        tuple
    )  # full frames (128 x 256 on the procedural benchmark)
    c.random_flip = True
    train_images = int(c.data.get("num_synthetic_train", 2000))
    c.num_train_steps = math.ceil(EPOCHS * train_images / c.batch_size)
    c.log_every_steps = 50
    c.checkpoint_every_steps = 1000
    c.eval_every_steps = 2500
    c.eval_batch_size = 8
    if tiny:
        c.model.kwargs.update(drop_path_rate=0.0, classifier_dropout=0.0)
        c.num_train_steps = 2
        c.log_every_steps, c.checkpoint_every_steps, c.eval_every_steps = 1, 2, 2
    return c
