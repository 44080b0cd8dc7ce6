"""Downstream segmenters on the real benchmarks (method ``"segmentation"``), the authors' recipe
(``*_paper``) and the project's (``*_clean``). ``get_config(arg)``, arg = ``<benchmark>_<preset>``
with benchmark ``gta5`` (GTA5 -> Cityscapes, 19 classes), ``synthia`` (16 classes) or ``faces``
(Face Synthetics -> CelebAMask-HQ, ``faces18``), preset ``paper`` or ``clean``; default ``gta5_paper``.

``paper`` (docs/METHOD.md §6, the authors' downstream code): SegFormer-B5, images squashed to 720 x 720
and labels nearest-resized to 180 x 180, compared with the stride-4 logits (no upsampling); no
augmentation; AdamW lr 6e-5, weight decay 0.01 on *all* parameters (biases and norms included), one
learning rate for the whole model; polynomial decay (power 1, to 0) stepped once per epoch over 50
epochs; batch 8. Cityscapes val is scored the same way (720 x 720 input, 180 x 180 labels), and
the metrics carry the clean ``miou`` and the authors' ``miou_paper_empty_as_1`` (an empty class
counts as IoU 1). Faces: the authors' face resolution is not in docs/METHOD.md §6; 512 x 512 images
(both domains' native face size) with 128 x 128 labels (stride 4) are the analogue.

``clean``: SegFormer-B5 at the domains' common pixel scale (configs/gta5_cityscapes.py etc.:
GTA5 native 1052 x 1914, SYNTHIA native 760 x 1280, faces 512 x 512), random 512 x 1024 crops
(faces: full 512 x 512 frames) and flips (face flips swap l_/r_), AdamW 6e-5 with weight decay
0.01 on weight matrices only and 10x the rate on the decode head (mmsegmentation's SegFormer
recipe), polynomial decay per step, batch 8, 50 epochs; Cityscapes val scored at its full
1024 x 2048 against logits upsampled to the labels.

Training data: ``data.train_sources`` defaults to the synthetic labels (source-only); the paper
trains on *all translated* frames, an export of a DA-KPN run::

    python -m dakpn_jax.main --config=configs/segmentation_real.py:gta5_paper --workdir=DIR \\
        --config.data.data_dir=TFDS_DIR --config.model.kwargs.pretrained=/path/mit-b5 \\
        --config.data.train_sources="({'kind': 'folder', 'root': 'EXPORT_DIR'},)"

Steps: 50 epochs of the synthetic set's size at batch 8 (``num_train_steps``, and
``optim.steps_per_epoch`` for the per-epoch schedule); set both when the training mix differs.
"""

import math

import ml_collections
from ml_collections import config_dict

from dakpn_jax import config_files

EPOCHS = 50
BENCHMARKS = {  # name: (data preset, classes, synthetic frames, native synthetic frame)
    "gta5": ("gta5_cityscapes", 19, 24966, (1052, 1914)),
    "synthia": ("synthia_cityscapes", 16, 9400, (760, 1280)),
    "faces": ("faces", 18, 100000, (512, 512)),
}


def _segmentation_config(arg=None):
    return config_files.sibling(__file__, "segmentation").get_config(arg)


def get_config(arg=None):
    arg = arg or "gta5_paper"
    bench, _, preset = arg.rpartition("_")
    if bench not in BENCHMARKS or preset not in ("paper", "clean"):
        raise ValueError(
            f"configs/segmentation_real.py: unknown variant {arg!r} "
            f"({', '.join(f'{b}_{p}' for b in BENCHMARKS for p in ('paper', 'clean'))})"
        )
    from dakpn_jax.data import sources  # pylint: disable=import-outside-toplevel

    name, classes, images, frame = BENCHMARKS[bench]
    paper = preset == "paper"
    c = _segmentation_config()
    c.preset = preset
    c.data = sources.preset(name)
    c.data.train_sources = ({"kind": "split", "split": "synthetic-train"},)
    c.data.eval_split = "real-val"
    c.data.synthetic_size = frame
    if bench == "synthia" and not paper:
        c.data.real_size = (
            640,
            1280,
        )  # the clean DA-KPN preset's common scale (unused by real-val)
    face = bench == "faces"
    c.data.image_size = (
        ((512, 512) if face else (720, 720)) if paper else config_dict.placeholder(tuple)
    )
    c.data.label_size = (
        ((128, 128) if face else (180, 180)) if paper else config_dict.placeholder(tuple)
    )
    c.model = ml_collections.ConfigDict(dict(name="segformer_b5", num_classes=classes))
    c.model.kwargs = ml_collections.ConfigDict(
        dict(
            pretrained=config_dict.placeholder(str),  # local HF MiT-B5 / SegFormer checkpoint
            drop_path_rate=0.1,
            classifier_dropout=0.1,
        )
    )
    c.batch_size = 8
    steps_per_epoch = math.ceil(images / c.batch_size)
    c.num_train_steps = EPOCHS * steps_per_epoch
    c.optim = ml_collections.ConfigDict(
        dict(
            name="adamw",
            lr=6e-5,
            weight_decay=0.01,
            b1=0.9,
            b2=0.999,
            eps=1e-8,
            poly_power=1.0,
            end_lr_ratio=0.0,
            warmup_steps=0,
            grad_clip=0.0,
            weight_decay_on="all" if paper else "matrices",
            schedule="poly_per_epoch" if paper else "poly",
            steps_per_epoch=steps_per_epoch,
            lr_mult=ml_collections.ConfigDict({} if paper else {"decode_head": 10.0}),
        )
    )
    c.random_flip = not paper
    c.crop_size = (512, 1024) if not (paper or face) else config_dict.placeholder(tuple)
    c.log_every_steps = 50
    c.checkpoint_every_steps = 2000
    c.eval_every_steps = 10000
    c.eval_batch_size = 8
    return c
