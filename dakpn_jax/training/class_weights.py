"""Per-class weights for DA-KPN's fake terms (``config.loss.class_weights``): the ratio of a target
class prior to the synthetic one.

Why: a discriminator that sees only colours separates the domains by class frequencies too (real
scenes have more vegetation and less sky than synthetic ones), which the translation family cannot
change; the translator then pays for recolouring classes (docs/METHOD.md §5). Weighting each fake
pixel's term by ``w_c = pi_target(c) / pi_synthetic(c)`` shows D the fakes at the target's class
frequencies, so the optimal D no longer rewards recolouring:

    sum_c pi_f(c) w_c p(x | c) = sum_c pi_t(c) p(x | c).

``pi_target`` may come from the N labelled real images of a regime (:func:`class_frequencies` of
``real-train-labelled``), never from more real labels than the regime has.
"""

from __future__ import annotations

import numpy as np


def class_frequencies(source, num_classes: int, max_images: int | None = None) -> np.ndarray:
    """(C,) float64 pixel frequencies of each class over a labelled source's labels (ignored pixels,
    labels outside [0, C), excluded); sums to 1. ``max_images``: the first ones only."""
    n = len(source) if max_images is None else min(len(source), int(max_images))
    if n == 0:
        raise ValueError("class_frequencies: the source is empty")
    counts = np.zeros((num_classes,), np.int64)
    for i in range(n):
        y = np.asarray(source[i]["label"]).reshape(-1).astype(np.int64)
        y = y[(y >= 0) & (y < num_classes)]
        counts += np.bincount(y, minlength=num_classes)
    total = counts.sum()
    if total == 0:
        raise ValueError("class_frequencies: no labelled pixel in the source")
    return counts / total


def prior_ratio_weights(
    target: np.ndarray, synthetic: np.ndarray, clip: tuple[float, float] = (0.1, 10.0)
) -> np.ndarray:
    """(C,) ``w_c = target_c / synthetic_c``, clipped to ``clip`` (a class the target sample lacks
    keeps a small weight; none dominates), then scaled so that ``sum_c synthetic_c w_c = 1`` (the
    fakes' mean weight is 1). Classes absent from the synthetic data get weight 1 (never used)."""
    target = np.asarray(target, np.float64)
    synthetic = np.asarray(synthetic, np.float64)
    if target.shape != synthetic.shape or target.ndim != 1:
        raise ValueError(f"prior_ratio_weights: shapes {target.shape} and {synthetic.shape}")
    present = synthetic > 0
    w = np.ones_like(synthetic)
    w[present] = np.clip(target[present] / synthetic[present], *clip)
    return w / float(np.sum(synthetic * w))
