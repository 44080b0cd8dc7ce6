"""DA-KPN Microsoft Face Synthetics -> CelebAMask-HQ (face parsing, ``faces18``: background
ignored). ``get_config(arg)``:

- ``"paper"``: as the authors' code trains it (configs/_dakpn_real.py; docs/METHOD.md §6), 67,000
  iterations (the face checkpoint the authors used), no flips.
- ``None`` / ``"default"`` / ``"clean"``: the project's choices; flips swap the l_/r_ classes
  (`dakpn_jax.data.pipeline.flip_label_map`).

Pixel scale, both presets: **Face Synthetics at its native 512 x 512, CelebAMask-HQ images
resized from 1024 x 1024 to 512 x 512** (the resolution of its part masks). Both are aligned
face crops of similar framing, so a face spans about the same pixels in both. (The authors'
code fixes no face resolution in docs/METHOD.md §6; 512 is both the synthetic native size and the
real labels' native size.)

Shared: parameter grid 64 x 64 (H/8), low view 64 x 64, tiles 64 x 64, K = 25, linear head (raw
outputs), 64-filter BatchNorm D, saturating / BCE loss, identity weight 1, Adam 1e-4, batch 8.
"""

from dakpn_jax import config_files

TRAIN_IMAGES = 100000
FRAME = (512, 512)


def _presets():
    return config_files.sibling(__file__, "_dakpn_real")


def get_config(arg=None):
    variant = "clean" if arg in (None, "default") else arg
    sizes = dict(synthetic_size=FRAME, real_size=FRAME, real_val_size=FRAME)
    # The paper preset's low view: the 96 x 160 of the street scenes does not fit a square face;
    # the faces use H/8 = 64 x 64 for the grid and the low view.
    return _presets().build(
        "faces",
        variant,
        num_classes=18,
        frame=FRAME,
        param_size=(64, 64),
        low_size=(64, 64),
        tile_size=None,
        train_images=TRAIN_IMAGES,
        paper_steps=67_000,
        data_fields=sizes,
        paper_data_fields=sizes,
    )
