"""DA-KPN GTA5 -> Cityscapes (Mata, Ryoo, Turbell, ECCV 2024 W). ``get_config(arg)``:

- ``"paper"``: as the authors' code trains it (configs/_dakpn_real.py; docs/METHOD.md §6).
- ``None`` / ``"default"`` / ``"clean"``: the project's choices with the domain-scale gap fixed.

Pixel scale of each domain, both presets: **GTA5 at its native 1052 x 1914** (frames of another
size are resized to exactly that, so batches stack) and **Cityscapes at its native 1024 x 2048**
(train and val). Both are ~2 k-pixel-wide dash-cam views, so a tile (H/8 x W/8 = 131 x 239 px of
GTA5) covers the same angular extent in both domains up to 7 %. (Before issue 15 Cityscapes was
halved to 512 x 1024 while GTA5 stayed native: a 2x scale gap that lets D separate the domains by
blur and noise level alone and biases the learned sigma and noise scale; translating native GTA5
at export then needs the native-scale parameters, so both domains stay native rather than both halved.)

Shared: parameter grid 96 x 160, low view 96 x 160, blur window K = 25, linear 1x1 KPN head with the
identity-like init (sigma 1 px, used raw), 64-filter BatchNorm D, saturating / BCE loss, identity
MSE weight 1, Adam 1e-4 (betas 0.9, 0.999) for both, batch 8. ``paper``: GTA5 ``split.mat``
trainIds only (12,403 frames), no flips, 103,000 iterations (the checkpoint the authors used);
``clean``: all 24,966 frames with flips, 100 epochs.

Launch (features: a torchvision-layout FCN-ResNet50 file, or a segmentation run)::

    python -m dakpn_jax.main --config=configs/gta5_cityscapes.py:paper --workdir=DIR \\
        --config.data.data_dir=TFDS_DIR --config.segmenter_weights=fcn_resnet50_cityscapes.pth
    python -m dakpn_jax.main --config=configs/gta5_cityscapes.py:clean --workdir=DIR \\
        --config.data.data_dir=TFDS_DIR --config.segmenter_workdir=SEG_WORKDIR
"""

from dakpn_jax import config_files

TRAIN_IMAGES = 24966
FRAME = (1052, 1914)


def _presets():
    return config_files.sibling(__file__, "_dakpn_real")


def get_config(arg=None):
    variant = "clean" if arg in (None, "default") else arg
    return _presets().build(
        "gta5_cityscapes",
        variant,
        num_classes=19,
        frame=FRAME,
        param_size=(96, 160),
        low_size=(96, 160),
        tile_size=None,
        train_images=TRAIN_IMAGES,
        paper_steps=103_000,
        data_fields=dict(synthetic_size=FRAME, real_size=None, real_val_size=None),
        paper_data_fields=dict(
            synthetic_size=FRAME, real_size=None, real_val_size=None, synthetic_split="train"
        ),
    )
