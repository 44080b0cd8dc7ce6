"""CycleGAN baseline configs. ``get_config(arg)`` with arg:

- ``None`` / ``"default"``: the published defaults (Zhu et al. 2017): ResNet-9 generators, 64
  filters, 70x70 PatchGAN, LSGAN, cycle 10, identity 0.5, 50-image pool, Adam 2e-4 (0.5, 0.999),
  batch 1, 256 x 256 crops, 100 constant + 100 decay epochs (expressed in steps for
  ``train_size`` images; 24,966 = GTA5).
- ``"benchmark"``: CPU-feasible variant for the embedded procedural benchmark (128 x 256 frames):
  same losses/optimiser, a slimmer generator (16 filters, 6 blocks - the published 128 px variant
  uses 6 blocks), 64 x 64 crops, batch 4, 4000 steps (half constant, half decay).
- ``"tiny"``: seconds-long test variant (32 x 32 images, 4 filters, 2 blocks, pool of 4).
"""
import ml_collections


def data_config(height=128, width=256, **overrides):
    """The procedural benchmark's fields (``configs/default.py``: ``ProceduralConfig`` defaults)."""
    from configs import default  # pylint: disable=import-outside-toplevel
    return default.data_config(height, width, **overrides)


def get_config(arg=None):
    arg = arg or "default"
    if arg not in ("default", "benchmark", "tiny"):
        raise ValueError(f"configs/cyclegan.py: unknown variant {arg!r} (default, benchmark, tiny)")
    c = ml_collections.ConfigDict()
    c.method = "cyclegan"
    c.seed = 0
    c.data = data_config()
    c.crop_size = (256, 256)
    c.random_flip = True
    c.batch_size = 1
    c.model = ml_collections.ConfigDict(dict(ngf=64, n_blocks=9, n_down=2, ndf=64, n_layers_d=3))
    c.loss = ml_collections.ConfigDict(dict(lambda_cycle=10.0, lambda_identity=0.5, pool_size=50))
    train_size = 24966
    c.optim = ml_collections.ConfigDict(dict(lr=2e-4, b1=0.5, b2=0.999, eps=1e-8,
                                             constant_steps=100 * train_size, decay_steps=100 * train_size))
    c.num_train_steps = 200 * train_size
    c.log_every_steps = 100
    c.checkpoint_every_steps = 5000
    c.eval_every_steps = 50000
    c.eval_images = 64
    if arg == "benchmark":
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
