"""DA-KPN Microsoft Face Synthetics -> CelebAMask-HQ (face parsing) with the paper's settings.

Both domains at 512 x 512 (``dakpn_jax.data.sources.preset("faces")``, class mapping ``faces18``:
background ignored); parameter grid 64 x 64 (H/8, the street-scene grid's ratio to the frame);
blur window K = 25; frozen-segmenter features; linear 1x1 KPN head with the identity-like init
(sigma 1 px, parametrised directly); PatchGAN (64 filters, 3 layers, BatchNorm over the global
batch) on a 64 x 64 full-resolution tile and on the whole face resized to 64 x 64; saturating
(minimax) loss, identity MSE weight 1; Adam 1e-4 for both; batch 8; 100 epochs of the 100,000
Face Synthetics images.

Launch (train the face segmenter first)::

    python -m dakpn_jax.main --config=configs/faces.py --workdir=DIR \\
        --config.data.data_dir=TFDS_DIR --config.segmenter_workdir=SEG_WORKDIR

``get_config(arg)``: ``None`` / ``"default"`` only.
"""
import ml_collections
from ml_collections import config_dict

TRAIN_IMAGES = 100000
FRAME = (512, 512)


def get_config(arg=None):
    if arg not in (None, "default"):
        raise ValueError(f"configs/faces.py: unknown variant {arg!r} (default)")
    from dakpn_jax.data import sources

    c = ml_collections.ConfigDict()
    c.method = "dakpn"
    c.seed = 0
    c.data = sources.preset("faces")
    c.random_flip = True
    c.batch_size = 8
    c.features = "segmenter"
    c.segmenter_workdir = ""  # required: --config.segmenter_workdir=...
    c.model = ml_collections.ConfigDict(dict(
        num_classes=18, head="linear", hidden=32, sigma0=1.0, sigma_param="sigma",
        kernel_size=25, impl="auto", frame_size=FRAME, param_size=(64, 64), tile_size=config_dict.placeholder(tuple),
        low_size=(64, 64), noise="fixed", noise_seed=0,
        disc=ml_collections.ConfigDict(dict(ndf=64, n_layers=3, norm="batch", num_D=1))))
    c.loss = ml_collections.ConfigDict(dict(form="saturating", identity=1.0, r1=0.0, d_inputs=("tile", "low")))
    c.optim = ml_collections.ConfigDict(dict(lr=1e-4, lr_D=1e-4, b1=0.9, b2=0.999, eps=1e-8,
                                             schedule="constant", warmup_steps=0))
    c.num_train_steps = 100 * TRAIN_IMAGES // c.batch_size
    c.steps_per_call = 1
    c.log_every_steps = 100
    c.checkpoint_every_steps = 5000
    c.eval_every_steps = 20000
    c.keep_checkpoints = 3
    c.eval_images = 0  # no paired view for real datasets: evaluate() is skipped
    return c
