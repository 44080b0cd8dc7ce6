"""The authors' downstream recipe for SegFormer-B5 (docs/METHOD.md §6), one file to point at:
``get_config(arg)`` with arg ``gta5`` (default), ``synthia`` or ``faces`` is
``configs/segmentation_real.py:<arg>_paper`` (that file documents the recipe: 720 x 720 squashed
inputs, 180 x 180 labels against the stride-4 logits, no augmentation, AdamW 6e-5, weight decay
0.01 on all parameters, polynomial decay stepped per epoch over 50 epochs, batch 8).
"""

import importlib.util
import os


def get_config(arg=None):
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "segmentation_real.py")
    spec = importlib.util.spec_from_file_location("_dakpn_configs_segmentation_real", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(f"{arg or 'gta5'}_paper")
