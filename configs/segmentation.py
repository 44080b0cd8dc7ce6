"""Segmenter training configs (method ``"segmentation"``). ``get_config(arg)`` with arg:

- ``None`` / ``"default"``: ``unet_small`` (3 levels, 16/32/64 filters) on the embedded procedural
  benchmark (128 x 256 frames), trained on synthetic-train, evaluated on real-val; AdamW 1e-3,
  weight decay 1e-4, 50 warmup steps then polynomial decay (power 0.9), batch 8, 64 x 128 random
  crops + flips, 800 steps (CPU: a few minutes). A 200-step run of it (20 warmup steps, scored on
  64 real-val images) already separates the regimes: synthetic-train only mIoU 0.13,
  real-train-labelled (N = 100) only 0.50.
- ``"tiny"``: seconds-long test variant (32 x 64 frames, a 2-level U-Net with 4 base filters).

Fields read by `dakpn_jax.training.segmentation` (SegFormer configs build on the same ones):

- ``data``: the procedural benchmark fields (``ProceduralConfig``) plus
  ``train_sources``: a tuple (a tuple, so the command line can override it:
  ``--config.data.train_sources="({'kind': 'split', 'split': 'real-train-labelled'},)"``) of ``{"kind": "split", "split": SPLIT}`` (a labelled split of
  ``dakpn_jax.data.sources.make_source``, e.g. ``synthetic-train``, ``real-train-labelled``) or
  ``{"kind": "folder", "root": DIR}`` (``DIR/images/*.png`` + ``DIR/labels/*.png``, e.g. a translated
  export), each with an optional ``"weight"``. Without any weight the sources are concatenated
  (each image equally likely); with weights, every source must have one and a batch draws from
  source k with probability weight_k / sum(weights). Empty sources (e.g. N = 0 real labels) are
  dropped. ``eval_split``: the labelled split ``evaluate`` scores (default ``real-val``).
- ``model``: ``name`` (``make_segmenter`` name), ``num_classes``, ``kwargs`` (passed to the model).
- ``optim``: ``name`` (``adam`` | ``adamw``), ``lr``, ``weight_decay`` (adamw only), ``b1``, ``b2``,
  ``schedule`` (``constant`` | ``poly`` | ``cosine``), ``warmup_steps`` (linear from 0),
  ``poly_power``, ``end_lr_ratio`` (final lr / lr for poly and cosine), ``grad_clip`` (global norm,
  0 = off), ``lr_mult`` (optional ``{top-level parameter group: learning-rate multiplier}``, e.g.
  ``{"decode_head": 10.0}`` for SegFormer).
- ``crop_size`` (None = full frames), ``random_flip``, ``eval_batch_size`` (global, rounded up to
  a multiple of the device count), ``eval_images`` (None = the whole eval split).
- ``ema_decay``: weight averaging, ema <- d ema + (1 - d) params after every step, scored instead
  of the trained weights (0 = off); ``eval_flip``: flip test-time augmentation, the mean of the
  logits of the image and of its mirror image (off by default; issue 24's recipe candidates).
"""

import dataclasses

import ml_collections
from ml_collections import config_dict


def data_config(height=128, width=256):
    """The procedural benchmark's fields (``ProceduralConfig`` defaults when that module exists)."""
    try:
        from dakpn_jax.data.procedural import ProceduralConfig  # pylint: disable=import-outside-toplevel

        fields = dataclasses.asdict(ProceduralConfig())
    except (
        ImportError,
        TypeError,
        AttributeError,
    ):  # data module not importable yet: minimal fields
        fields = {"seed": 0}
    fields.update(height=height, width=width)
    return ml_collections.ConfigDict(fields)


def get_config(arg=None):
    arg = arg or "default"
    if arg not in ("default", "tiny"):
        raise ValueError(f"configs/segmentation.py: unknown variant {arg!r} (default, tiny)")
    c = ml_collections.ConfigDict()
    c.method = "segmentation"
    c.seed = 0
    c.data = data_config()
    c.data.train_sources = ({"kind": "split", "split": "synthetic-train"},)
    c.data.eval_split = "real-val"
    c.crop_size = (64, 128)
    c.random_flip = True
    c.batch_size = 8
    c.model = ml_collections.ConfigDict(dict(name="unet_small", num_classes=19))
    c.model.kwargs = ml_collections.ConfigDict(dict(features=(16, 32, 64)))
    c.optim = ml_collections.ConfigDict(
        dict(
            name="adamw",
            lr=1e-3,
            weight_decay=1e-4,
            b1=0.9,
            b2=0.999,
            eps=1e-8,
            schedule="poly",
            warmup_steps=50,
            poly_power=0.9,
            end_lr_ratio=0.0,
            grad_clip=0.0,
            weight_decay_on="matrices",  # "matrices": weights with ndim >= 2; "all": biases and norm scales too
            steps_per_epoch=0,  # read by schedule="poly_per_epoch" only (the authors' per-epoch decay)
            lr_mult=ml_collections.ConfigDict(),
        )
    )  # {top-level parameter group: lr multiplier}; empty = none
    c.num_train_steps = 800
    c.steps_per_call = 1
    c.log_every_steps = 50
    c.checkpoint_every_steps = 400
    c.eval_every_steps = 400
    c.keep_checkpoints = 3
    c.eval_batch_size = 16
    c.eval_images = config_dict.placeholder(
        int
    )  # None: the whole eval split; --config.eval_images=N works
    c.ema_decay = 0.0  # weight averaging of the scored weights; 0 = off
    c.eval_flip = False  # flip test-time augmentation when scoring
    if arg == "tiny":
        c.data = data_config(32, 64)
        c.data.update(
            num_synthetic_train=32,
            num_real_train=8,
            num_real_labelled=4,
            num_real_val=8,
            num_paired_eval=4,
        )
        c.data.train_sources = ({"kind": "split", "split": "synthetic-train"},)
        c.data.eval_split = "real-val"
        c.crop_size = config_dict.placeholder(tuple)  # full frames
        c.batch_size = 8
        c.model.kwargs = ml_collections.ConfigDict(dict(features=(4, 8)))
        c.optim.update(lr=1e-2, warmup_steps=0, schedule="constant")
        c.num_train_steps = 4
        c.log_every_steps, c.checkpoint_every_steps, c.eval_every_steps = 1, 2, 4
        c.eval_batch_size = 8
        c.eval_images = 8
    return c
