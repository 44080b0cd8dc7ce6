"""The authors' downstream recipe for SegFormer-B5 (docs/METHOD.md §6), one file to point at:
``get_config(arg)`` with arg ``gta5`` (default), ``synthia`` or ``faces`` is
``configs/segmentation_real.py:<arg>_paper`` (that file documents the recipe: 720 x 720 squashed
inputs, 180 x 180 labels against the stride-4 logits, no augmentation, AdamW 6e-5, weight decay
0.01 on all parameters, polynomial decay stepped per epoch over 50 epochs, batch 8).
"""

from dakpn_jax import config_files


def get_config(arg=None):
    module = config_files.sibling(__file__, "segmentation_real")
    return module.get_config(f"{arg or 'gta5'}_paper")
