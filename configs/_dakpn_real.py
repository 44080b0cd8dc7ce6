"""Shared builder of the real-data DA-KPN presets (configs/gta5_cityscapes.py, synthia_cityscapes.py,
faces.py load it by path; ``configs`` need not be a package). Not a config file itself.

``build(benchmark, variant, ...)`` with ``variant``:

- ``"paper"``: what the authors' code does (docs/METHOD.md §6): the NLayer 70 x 70 PatchGAN with
  BatchNorm (per-call statistics) and PyTorch's default init judging the translated tile, the real
  tile and the low view; the aligned 8 x 8 grid of H/8 x W/8 tiles; the low view = the synthetic
  frame resized to 96 x 160 and translated with the unscaled parameters, no real low view; one
  gradient-reversal forward/backward with BCE-with-logits, Adam 1e-4 for both players stepping at
  once; raw head outputs (sigma parametrised directly); trainIds only (GTA5); no augmentation;
  both domains at native scale; frozen FCN-ResNet50 features on the un-normalised 96 x 160 frame
  (``--config.segmenter_weights=fcn.pth``); the iteration count of the checkpoint the authors used.
- ``"clean"``: the project's choices (the 46-px PatchGAN with a 3x3 head, uniform random tiles, a
  real low view and rescaled low-view parameters, the alternating D-then-G update, flips (with
  the l_/r_ swap for faces), all frames) with the domain-scale gap fixed: both domains at the same
  pixel scale (see each config's docstring); features from a segmentation run
  (``--config.segmenter_workdir``) or FCN weights.

docs/PAPER.md lists every difference with the reason.
"""

import ml_collections
from ml_collections import config_dict

VARIANTS = ("clean", "paper")


def build(
    benchmark: str,
    variant: str,
    *,
    num_classes: int,
    frame,
    param_size,
    low_size,
    tile_size,
    train_images: int,
    paper_steps: int,
    data_fields: dict,
    paper_data_fields: dict,
):
    """The ConfigDict of a real-data DA-KPN preset (module docstring)."""
    from dakpn_jax.data import sources  # pylint: disable=import-outside-toplevel

    if variant not in VARIANTS:
        raise ValueError(
            f"configs/{benchmark}.py: unknown variant {variant!r} (default = clean, clean, paper)"
        )
    paper = variant == "paper"
    c = ml_collections.ConfigDict()
    c.method = "dakpn"
    c.preset = variant
    c.seed = 0
    c.data = sources.preset(benchmark)
    c.data.update(paper_data_fields if paper else data_fields)
    c.random_flip = not paper
    c.batch_size = 8
    c.features = "segmenter"
    c.segmenter_workdir = config_dict.placeholder(str)  # a segmentation run (load_segmenter)
    c.segmenter_weights = config_dict.placeholder(
        str
    )  # or a torchvision-layout FCN-ResNet50 .pth / .safetensors
    # The authors' export script: FCN-ResNet50 on the frame resized to 96 x 160, not normalised.
    c.segmenter_input_size = (96, 160) if paper else config_dict.placeholder(tuple)
    c.segmenter_normalize = not paper
    c.model = ml_collections.ConfigDict(
        dict(
            num_classes=num_classes,
            head="linear",
            hidden=32,
            sigma0=1.0,
            sigma_param="sigma",
            kernel_size=25,
            impl="auto",
            frame_size=tuple(frame),
            param_size=tuple(param_size),
            tile_size=config_dict.placeholder(tuple) if tile_size is None else tuple(tile_size),
            low_size=tuple(low_size),
            noise="fixed",
            noise_seed=0,
            ablate=(),
            tile_grid="aligned" if paper else "random",
            low_params="unscaled" if paper else "rescaled",
            disc=ml_collections.ConfigDict(
                dict(
                    ndf=64,
                    n_layers=3,
                    norm="batch",
                    num_D=1,
                    arch="nlayer" if paper else "patchgan",
                    init="torch" if paper else "normal",
                )
            ),
        )
    )
    c.loss = ml_collections.ConfigDict(
        dict(
            form="saturating",
            identity=1.0,
            r1=0.0,
            d_inputs=("tile", "low"),
            real_low=not paper,
            update_rule="gradient_reversal" if paper else "alternating",
            # D conditioned on a semantic map (dakpn_segmenter.py, "Conditioned D"): "none" (the paper) or "segmenter".
            d_condition="none",
            d_condition_fake="labels",
            d_condition_probs="hard",
        )
    )
    c.optim = ml_collections.ConfigDict(
        dict(
            lr=1e-4,
            lr_D=1e-4,
            b1=0.9,
            b2=0.999,
            eps=1e-8,
            schedule="constant",
            warmup_steps=0,
            kpn_lr_scale=(1.0, 1.0, 1.0),
        )
    )  # (affine, blur, noise) x lr
    c.num_train_steps = paper_steps if paper else 100 * train_images // c.batch_size
    c.steps_per_call = 1
    c.log_every_steps = 100
    c.checkpoint_every_steps = 5000
    c.eval_every_steps = 20000
    c.keep_checkpoints = 3
    c.eval_images = 0  # no paired view for real datasets: evaluate() is skipped
    c.eval_diagnostics = False  # the family-ceiling diagnostics need the paired view too
    c.eval_ceiling_steps = 40
    return c
