"""DA-KPN SYNTHIA (RAND-CITYSCAPES) -> Cityscapes, 16 classes. ``get_config(arg)``:

- ``"paper"``: as the authors' code trains it (configs/_dakpn_real.py; docs/METHOD.md §6): **both domains
  at native scale**, SYNTHIA 760 x 1280 and Cityscapes 1024 x 2048.
- ``None`` / ``"default"`` / ``"clean"``: the project's choices with the domain-scale gap fixed:
  **SYNTHIA at its native 760 x 1280, Cityscapes train resized to 640 x 1280** (the same frame width,
  so a pixel spans about the same angle in both domains; natively a SYNTHIA pixel spans ~1.6x a
  Cityscapes one, which D can use to tell the domains apart by blur / noise level alone).
  Cityscapes val is scored at its native 1024 x 2048.

Shared: parameter grid 96 x 160, low view 96 x 160, tiles H/8 x W/8 = 95 x 160, K = 25, linear head
(raw outputs), 64-filter BatchNorm D, saturating / BCE loss, identity weight 1, Adam 1e-4 for
both, batch 8. ``paper``: no flips, 103,000 iterations (the GTA5 checkpoint's count; the authors'
SYNTHIA count is not in their code); ``clean``: flips, 100 epochs of the 9,400 frames.

Launch: as configs/gta5_cityscapes.py, with a 16-class segmenter.
"""

from dakpn_jax import config_files

TRAIN_IMAGES = 9400
FRAME = (760, 1280)


def _presets():
    return config_files.sibling(__file__, "_dakpn_real")


def get_config(arg=None):
    variant = "clean" if arg in (None, "default") else arg
    return _presets().build(
        "synthia_cityscapes",
        variant,
        num_classes=16,
        frame=FRAME,
        param_size=(96, 160),
        low_size=(96, 160),
        tile_size=None,
        train_images=TRAIN_IMAGES,
        paper_steps=103_000,
        data_fields=dict(synthetic_size=FRAME, real_size=(640, 1280), real_val_size=None),
        paper_data_fields=dict(synthetic_size=FRAME, real_size=None, real_val_size=None),
    )
