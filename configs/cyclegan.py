"""CycleGAN baseline configs. ``get_config(arg)`` with arg:

- ``None`` / ``"default"``: the published defaults (Zhu et al. 2017): ResNet-9 generators, 64
  filters, 70x70 PatchGAN, LSGAN, cycle 10, identity 0.5, 50-image pool, Adam 2e-4 (0.5, 0.999),
  N(0, 0.02) init, batch 1, 256 x 256 crops, 100 constant + 100 decay epochs (expressed in steps
  for ``train_size`` images; 24,966 = GTA5).
- ``"gta5_cityscapes"``: the CycleGAN authors' recommendation for GTA5 -> Cityscapes (docs/METHOD.md §6):
  both domains scaled to width 1024 (GTA5 1914 x 1052 -> 1024 x 562, their ``scale_width``
  rounding int(1024 * 1052 / 1914); Cityscapes 2048 x 1024 -> 1024 x 512), random 360 x 360 crops
  and flips, identity weight 1, 10 + 10 epochs of GTA5's 24,966 frames at batch 1 = 249,660
  constant + 249,660 decay steps. "Identity weight 1" is their ``--lambda_identity 1.0`` (in their
  code, as here, a weight *relative* to the cycle weight: each identity L1 term is weighted
  lambda_identity * lambda_A = 10, twice the default 0.5 * 10 = 5). Network, losses and optimiser
  stay the published defaults. Data: ``dakpn_jax.data.sources.preset("gta5_cityscapes")`` with the
  sizes above; set ``--config.data.data_dir`` (or ``synthetic_dir`` / ``real_dir``).
- ``"benchmark"``: CPU-feasible variant for the embedded procedural benchmark (128 x 256 frames):
  same losses/optimiser, a slimmer generator (16 filters, 6 blocks - the published 128 px variant
  uses 6 blocks), 64 x 64 crops, batch 4, 4000 steps (half constant, half decay).
- ``"tiny"``: seconds-long test variant (32 x 32 images, 4 filters, 2 blocks, pool of 4).
"""

import ml_collections
from ml_collections import config_dict

VARIANTS = ("default", "gta5_cityscapes", "benchmark", "tiny")
GTA5_TRAIN_IMAGES = 24966
GTA5_SCALE_WIDTH_1024 = (562, 1024)  # (H, W) of a 1914 x 1052 GTA5 frame scaled to width 1024
CITYSCAPES_SCALE_WIDTH_1024 = (512, 1024)


def data_config(height=128, width=256, **overrides):
    """The procedural benchmark's fields (``configs/default.py``: ``ProceduralConfig`` defaults)."""
    from dakpn_jax import config_files  # pylint: disable=import-outside-toplevel

    return config_files.sibling(__file__, "default").data_config(height, width, **overrides)


def real_data_config(name: str, **fields):
    """``sources.preset(name)`` with ``fields`` applied and every field that is still ``None``
    turned into an ``ml_collections`` placeholder (so ``--config.data.data_dir=...`` etc. work)."""
    from dakpn_jax.data import sources  # pylint: disable=import-outside-toplevel

    base = sources.preset(name)
    base.update(fields)
    types = {
        "data_dir": str,
        "synthetic_dir": str,
        "real_dir": str,
        "synthetic_split": str,
        "synthetic_size": tuple,
        "real_size": tuple,
        "real_val_size": tuple,
    }
    c = ml_collections.ConfigDict()
    for k, v in base.items():
        setattr(c, k, config_dict.placeholder(types.get(k, str)) if v is None else v)
    return c


def get_config(arg=None):
    arg = arg or "default"
    if arg not in VARIANTS:
        raise ValueError(f"configs/cyclegan.py: unknown variant {arg!r} ({', '.join(VARIANTS)})")
    c = ml_collections.ConfigDict()
    c.method = "cyclegan"
    c.seed = 0
    c.data = data_config()
    c.crop_size = (256, 256)
    c.random_flip = True
    c.batch_size = 1
    c.model = ml_collections.ConfigDict(
        dict(
            ngf=64,
            n_blocks=9,
            n_down=2,
            ndf=64,
            n_layers_d=3,
            antialias=False,
            antialias_up=False,
            antialias_d=False,
            init="normal",
            init_gain=0.02,
        )
    )
    c.loss = ml_collections.ConfigDict(dict(lambda_cycle=10.0, lambda_identity=0.5, pool_size=50))
    train_size = GTA5_TRAIN_IMAGES
    c.optim = ml_collections.ConfigDict(
        dict(
            lr=2e-4,
            b1=0.5,
            b2=0.999,
            eps=1e-8,
            constant_steps=100 * train_size,
            decay_steps=100 * train_size,
        )
    )
    c.num_train_steps = 200 * train_size
    c.log_every_steps = 100
    c.checkpoint_every_steps = 5000
    c.eval_every_steps = 50000
    c.eval_images = 64
    if arg == "gta5_cityscapes":
        c.data = real_data_config(
            "gta5_cityscapes",
            synthetic_size=GTA5_SCALE_WIDTH_1024,
            real_size=CITYSCAPES_SCALE_WIDTH_1024,
        )
        c.crop_size = (360, 360)
        c.loss.lambda_identity = 1.0
        c.optim.update(constant_steps=10 * train_size, decay_steps=10 * train_size)
        c.num_train_steps = 20 * train_size
        c.eval_images = 0  # no paired view for real datasets
    elif arg == "benchmark":
        c.crop_size = (64, 64)
        c.batch_size = 4
        c.model.update(ngf=16, n_blocks=6, ndf=16)
        c.optim.update(constant_steps=2000, decay_steps=2000)
        c.num_train_steps = 4000
        c.log_every_steps, c.checkpoint_every_steps, c.eval_every_steps = 50, 500, 1000
    elif arg == "tiny":
        c.data = data_config(32, 64)
        c.crop_size = (32, 32)
        c.batch_size = 8
        c.model.update(ngf=4, n_blocks=2, ndf=4)
        c.loss.pool_size = 4
        # eps 1e-3 (published 1e-8): conv biases in front of instance norm get gradients that are 0
        # up to round-off, and Adam with eps 1e-8 turns that noise into lr-sized steps of random
        # sign, which would drown the 1-vs-8-device comparison of the tests.
        c.optim.update(constant_steps=2, decay_steps=4, eps=1e-3)
        c.num_train_steps = 4
        c.log_every_steps, c.checkpoint_every_steps, c.eval_every_steps = 1, 2, 100
        c.eval_images = 4
    return c
