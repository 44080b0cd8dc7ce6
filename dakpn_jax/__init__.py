"""dakpn-jax: label-preserving synthetic-to-real translation (DA-KPN) in JAX/Flax NNX.

Public API (stable names, docs/METHOD.md §3; all jit-able, NHWC float32, batch first):

    rgb_to_hsv(x), hsv_to_rgb(x)                                  colour conversion, hue in [0, 1)
    local_gaussian_blur(x, sigma, *, kernel_size=25, impl="auto") per-pixel, per-channel Gaussian
    translate(x, params, noise, *, kernel_size=25, impl="auto")   the DA-KPN translation function
    confusion_matrix(pred, label, num_classes, ignore_index=255)  rows labels, columns predictions
    mean_iou(confusion)                                           (mIoU over non-empty classes, per-class IoU)
    load_translator(workdir, *, step=None)                        a trained run as translate(images (B,H,W,3),
                                                                  labels (B,H,W) | None, *, rng=None) -> (B,H,W,3)
                                                                  (dakpn_jax.inference; docs/EXAMPLE_JAX_PIPELINE.md)
    make_control(name, *, reference, seed, ...)                   training-free control translator (docs/METHOD.md §9)
    fda, match_histograms, reinhard, randomize                     the controls' pure functions

The protocol (stages, statistics, report) is the subpackage ``dakpn_jax.protocol``.

The names are resolved lazily (PEP 562) so that `import dakpn_jax.data...` stays light and does not
pull in every module.
"""

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "rgb_to_hsv": "dakpn_jax.translation",
    "hsv_to_rgb": "dakpn_jax.translation",
    "local_gaussian_blur": "dakpn_jax.translation",
    "translate": "dakpn_jax.translation",
    "confusion_matrix": "dakpn_jax.evaluation.metrics",
    "mean_iou": "dakpn_jax.evaluation.metrics",
    "load_translator": "dakpn_jax.inference",
    "make_control": "dakpn_jax.controls",
    "fda": "dakpn_jax.controls",
    "match_histograms": "dakpn_jax.controls",
    "reinhard": "dakpn_jax.controls",
    "randomize": "dakpn_jax.controls",
}
__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'dakpn_jax' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
