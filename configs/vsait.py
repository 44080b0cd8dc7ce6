"""VSAIT baseline configs (Theiss et al., ECCV 2022; docs/METHOD.md §8). ``get_config(arg)`` with arg:

- ``None`` / ``"default"`` (the paper): GTA5 -> Cityscapes, both domains resized to 256 x 512,
  random 256 x 256 crops and flips, batch 1, 200k steps; generator 64 filters, 9 blocks; 4096-d
  hypervectors; D 4096 -> 1024 -> 1024 -> 1; VSA weight 10, adversarial 0.5; Adam (0, 0.9), L2 decay
  1e-4, lr 1e-4 (G, M) and 4e-4 (D), halved every 100k steps. Needs ImageNet VGG19 weights::

      python -m dakpn_jax.main --config=configs/vsait.py --workdir=DIR \\
          --config.data.data_dir=TFDS_DIR --config.model.vgg_weights=/path/vgg19-dcbb9e9d.pth

  Without ``model.vgg_weights`` ``init_state`` refuses to train (nothing can be downloaded here).
- ``"benchmark"``: the embedded procedural benchmark (128 x 256 frames) on a CPU: 128 x 128 crops
  (half-width, as the paper's 256 crops of 256 x 512 frames), batch 1, 512-d hypervectors, D hidden
  256, generator 16 filters / 6 blocks, 4000 steps halved at 2000. It sets
  ``model.allow_random_vgg = True`` so it also runs without weights, with a loud warning, for smoke
  runs only; ``dakpn_jax.training.vsait.vsait_available(config)`` is False until
  ``model.vgg_weights`` is set, and the protocol must then omit the VSAIT row.
- ``"tiny"``: seconds-long test variant (32 x 32 crops of 32 x 64 frames, batch 8, VGG width 4,
  64-d hypervectors, random VGG).
"""

import ml_collections
from ml_collections import config_dict


def get_config(arg=None):
    arg = arg or "default"
    if arg not in ("default", "benchmark", "tiny"):
        raise ValueError(f"configs/vsait.py: unknown variant {arg!r} (default, benchmark, tiny)")
    c = ml_collections.ConfigDict()
    c.method = "vsait"
    c.seed = 0
    if arg == "default":
        from dakpn_jax.data import sources  # pylint: disable=import-outside-toplevel

        c.data = sources.preset("gta5_cityscapes")
        c.data.synthetic_size = (256, 512)
        c.data.real_size = (256, 512)
    else:
        from dakpn_jax import config_files  # pylint: disable=import-outside-toplevel

        data_config = config_files.sibling(__file__, "default").data_config
        c.data = data_config(128, 256) if arg == "benchmark" else data_config(32, 64)
    c.crop_size = (256, 256)
    c.random_flip = True
    c.batch_size = 1
    c.model = ml_collections.ConfigDict(
        dict(
            ngf=64,
            n_blocks=9,
            n_down=2,
            gain=0.2,  # generator (Xavier-normal gain 0.2)
            hv_dim=4096,
            d_hidden=1024,  # hypervector size, D's hidden width
            vgg_width=64,  # 64 = torchvision's VGG19 (only tests use less)
            vgg_weights=config_dict.placeholder(str),  # local vgg19-dcbb9e9d.pth or .safetensors
            allow_random_vgg=False,
        )
    )  # tests / smoke runs only: not VSAIT
    c.loss = ml_collections.ConfigDict(dict(lambda_vsa=10.0, lambda_adv=0.5))
    c.optim = ml_collections.ConfigDict(
        dict(lr_G=1e-4, lr_D=4e-4, b1=0.0, b2=0.9, eps=1e-8, weight_decay=1e-4, halve_every=100_000)
    )
    c.num_train_steps = 200_000
    c.log_every_steps = 100
    c.checkpoint_every_steps = 5000
    c.eval_every_steps = 0  # real datasets have no paired view
    c.eval_images = 64
    if arg == "benchmark":
        c.crop_size = (128, 128)
        c.model.update(ngf=16, n_blocks=6, hv_dim=512, d_hidden=256, allow_random_vgg=True)
        c.optim.halve_every = 2000
        c.num_train_steps = 4000
        c.log_every_steps, c.checkpoint_every_steps, c.eval_every_steps = 50, 500, 1000
    elif arg == "tiny":
        c.crop_size = (32, 32)
        c.batch_size = 8
        c.model.update(
            ngf=4, n_blocks=2, hv_dim=64, d_hidden=16, vgg_width=4, allow_random_vgg=True
        )
        c.optim.halve_every = 2
        c.num_train_steps = 4
        c.log_every_steps, c.checkpoint_every_steps, c.eval_every_steps = 1, 2, 100
        c.eval_images = 4
    return c
