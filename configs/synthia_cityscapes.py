"""DA-KPN SYNTHIA -> Cityscapes with the paper's settings (Mata, Ryoo, Turbell, ECCV 2024 W).

SYNTHIA (RAND-CITYSCAPES) frames at their full 760 x 1280 (resized to exactly that size when a
frame differs, so batches stack), Cityscapes train frames halved to 512 x 1024; parameter grid 96 x 160; blur window
K = 25; features: the class logits of a frozen segmenter; linear 1x1 KPN head with the
identity-like init (sigma 1 px, parametrised directly as in the paper); PatchGAN (64 filters, 3
layers, BatchNorm, statistics over the global batch) on an H/8 x W/8 full-resolution tile and on
the whole frame resized to the parameter grid; saturating (minimax) loss, identity MSE weight 1;
Adam 1e-4 for both players with PyTorch's default betas; batch 8; 100 epochs of the 9,400 SYNTHIA
frames.

Launch (train the segmenter first, e.g. a SegFormer run of configs/segmentation*.py on SYNTHIA with
the 16 classes)::

    python -m dakpn_jax.main --config=configs/synthia_cityscapes.py --workdir=DIR \\
        --config.data.data_dir=TFDS_DIR --config.segmenter_workdir=SEG_WORKDIR

``get_config(arg)``: ``None`` / ``"default"`` only. Data fields: ``dakpn_jax.data.sources.preset``.
"""
import ml_collections
from ml_collections import config_dict

TRAIN_IMAGES = 9400
FRAME = (760, 1280)


def get_config(arg=None):
    if arg not in (None, "default"):
        raise ValueError(f"configs/synthia_cityscapes.py: unknown variant {arg!r} (default)")
    from dakpn_jax.data import sources

    c = ml_collections.ConfigDict()
    c.method = "dakpn"
    c.seed = 0
    c.data = sources.preset("synthia_cityscapes")
    c.data.synthetic_size = FRAME
    c.random_flip = True
    c.batch_size = 8
    c.features = "segmenter"
    c.segmenter_workdir = ""  # required: --config.segmenter_workdir=...
    c.model = ml_collections.ConfigDict(dict(
        num_classes=16, head="linear", hidden=32, sigma0=1.0, sigma_param="sigma",
        kernel_size=25, impl="auto", frame_size=FRAME, param_size=(96, 160), tile_size=config_dict.placeholder(tuple),
        low_size=(96, 160), noise="fixed", noise_seed=0,
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
