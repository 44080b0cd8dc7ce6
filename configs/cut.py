"""CUT / FastCUT baseline configs. ``get_config(arg)``, arg = ``"<method>[-<variant>]"``:

- method ``cut`` (default) or ``fastcut``; variant ``default`` (omitted), ``gta5_cityscapes``,
  ``benchmark`` or ``tiny``.
- Published defaults (Park et al. 2020, docs/METHOD.md §7), used by every variant unless it says
  otherwise: ResNet-9 generator, 64 filters, with CUT's anti-aliased down- and up-sampling
  (``model.antialias``, ``antialias_up``: conv s1 + blur pool down, blur upsample + conv s1 up;
  exact filters in ``models/resnet_generator``); 70x70 PatchGAN with the same anti-aliased
  downsampling (``model.antialias_d``); Xavier-normal init, gain 0.02, for G, D and F
  (``model.init``, ``init_gain``); LSGAN with lambda_GAN 1; PatchNCE over layers 0,4,8,12,16 (0 =
  the reflection-padded input) with 256 patches, tau 0.07, MLP head 256, features normalised
  v / (||v|| + 1e-7); D updated first, then G and F against the updated D; no image pool; batch 1,
  256 x 256 crops, Adam 2e-4 (0.5, 0.999).
  CUT: lambda_NCE 1 + identity NCE, 200 constant + 200 decay epochs.
  FastCUT: lambda_NCE 10, no identity NCE, flip equivariance, 150 + 50 epochs.
  (Epochs are expressed in steps for ``train_size`` = 24,966 images, GTA5.)
- ``gta5_cityscapes``: CUT publishes no GTA5 -> Cityscapes recipe, so this preset keeps every CUT
  default above and takes the data handling of the CycleGAN authors' GTA5 -> Cityscapes
  recommendation (configs/cyclegan.py:gta5_cityscapes: both domains scaled to width 1024, random
  360 x 360 crops, flips), and their training length of 20 epochs at batch 1 (499,320 steps),
  split in CUT's own proportions: CUT 10 + 10 epochs, FastCUT 15 + 5 epochs. Set
  ``--config.data.data_dir`` (or ``synthetic_dir`` / ``real_dir``).
- ``benchmark``: CPU-feasible for the embedded procedural benchmark: 16 filters, 6 blocks, 64 x 64
  crops, batch 4, 4000 steps for CUT, 3000 for FastCUT (keeping the published 'fewer epochs').
- ``tiny``: test variant (32 x 32, 4 filters, 2 blocks, layers 0,4,8,12,13, 16 patches).

Deviations from the published CUT that remain (all variants):
- The learning-rate decay is linear per step rather than per epoch (same end points).
- CUT's first iteration (``data_dependent_initialize``) only builds F lazily and takes no extra
  step; here F is built at init from the feature shapes, so the trajectories match from step 1.
- PatchNCE negatives: as published (other positions of the same image, batch-wise bmm); the patch
  positions are drawn with JAX's PRNG, not NumPy's, so runs are reproducible but not bit-identical
  to PyTorch's.
- ``benchmark``/``tiny`` shrink widths, blocks, crops, batch and steps (they are CPU variants);
  ``tiny`` also uses Adam eps 1e-3 (see below).
"""

import ml_collections

from dakpn_jax import config_files

_cyclegan = config_files.sibling(__file__, "cyclegan")  # shared data fields and frame sizes
CITYSCAPES_SCALE_WIDTH_1024 = _cyclegan.CITYSCAPES_SCALE_WIDTH_1024
GTA5_SCALE_WIDTH_1024 = _cyclegan.GTA5_SCALE_WIDTH_1024
GTA5_TRAIN_IMAGES = _cyclegan.GTA5_TRAIN_IMAGES
data_config = _cyclegan.data_config
real_data_config = _cyclegan.real_data_config

VARIANTS = ("default", "gta5_cityscapes", "benchmark", "tiny")


def get_config(arg=None):
    arg = arg or "cut"
    method, _, variant = arg.partition("-")
    variant = variant or "default"
    if method not in ("cut", "fastcut") or variant not in VARIANTS:
        raise ValueError(
            f"configs/cut.py: unknown variant {arg!r} (cut|fastcut[-{'|-'.join(VARIANTS[1:])}])"
        )
    fast = method == "fastcut"
    c = ml_collections.ConfigDict()
    c.method = "cut"  # one method module; FastCUT is CUT with the settings below
    c.variant = method
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
            antialias=True,
            antialias_up=True,
            antialias_d=True,
            init="xavier",
            init_gain=0.02,
        )
    )
    c.loss = ml_collections.ConfigDict(dict(lambda_gan=1.0))
    c.nce = ml_collections.ConfigDict(
        dict(
            layers=(0, 4, 8, 12, 16),
            num_patches=256,
            tau=0.07,
            mlp_dim=256,
            lambda_nce=10.0 if fast else 1.0,
            nce_idt=not fast,
            flip_equivariance=fast,
        )
    )
    train_size = GTA5_TRAIN_IMAGES
    const, decay = (150, 50) if fast else (200, 200)
    c.optim = ml_collections.ConfigDict(
        dict(
            lr=2e-4,
            b1=0.5,
            b2=0.999,
            eps=1e-8,
            constant_steps=const * train_size,
            decay_steps=decay * train_size,
        )
    )
    c.num_train_steps = (const + decay) * train_size
    c.log_every_steps = 100
    c.checkpoint_every_steps = 5000
    c.eval_every_steps = 50000
    c.eval_images = 64
    if variant == "gta5_cityscapes":
        c.data = real_data_config(
            "gta5_cityscapes",
            synthetic_size=GTA5_SCALE_WIDTH_1024,
            real_size=CITYSCAPES_SCALE_WIDTH_1024,
        )
        c.crop_size = (360, 360)
        const, decay = (15, 5) if fast else (10, 10)
        c.optim.update(constant_steps=const * train_size, decay_steps=decay * train_size)
        c.num_train_steps = (const + decay) * train_size
        c.eval_images = 0  # no paired view for real datasets
    elif variant == "benchmark":
        c.crop_size = (64, 64)
        c.batch_size = 4
        c.model.update(ngf=16, n_blocks=6, ndf=16)
        steps = 3000 if fast else 4000
        c.optim.update(
            constant_steps=steps * 3 // 4 if fast else steps // 2,
            decay_steps=steps // 4 if fast else steps // 2,
        )
        c.num_train_steps = steps
        c.log_every_steps, c.checkpoint_every_steps, c.eval_every_steps = 50, 500, 1000
    elif variant == "tiny":
        c.data = data_config(32, 64)
        c.crop_size = (32, 32)
        c.batch_size = 8
        c.model.update(ngf=4, n_blocks=2, ndf=4)
        c.nce.update(layers=(0, 4, 8, 12, 13), num_patches=16, mlp_dim=8)
        # eps 1e-3 (published 1e-8): conv biases in front of instance norm get gradients that are 0
        # up to round-off, and Adam with eps 1e-8 turns that noise into lr-sized steps of random
        # sign, which would drown the 1-vs-8-device comparison of the tests.
        c.optim.update(constant_steps=2, decay_steps=4, eps=1e-3)
        c.num_train_steps = 4
        c.log_every_steps, c.checkpoint_every_steps, c.eval_every_steps = 1, 2, 100
        c.eval_images = 4
    return c
