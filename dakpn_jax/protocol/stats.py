"""Statistics of the protocol: mIoU from confusion matrices, paired bootstrap intervals, verdicts.

Pairing (docs/METHOD.md §9). Seed s gives every method the same segmenter initialisation and data order
(`dakpn_jax.training.segmentation` seeds both from ``config.seed``), and every method is scored on
the same real-val images. A comparison of method A with baseline B therefore uses the per-seed
differences d_s = mIoU_A(s) - mIoU_B(s), which cancel what the seeds share.

Two bootstrap intervals of the mean difference (percentile method, ``num_resamples`` resamples):

- over seeds (:func:`paired_bootstrap`): resample the S differences with replacement; the spread
  of a new seed's training. With S = 5 the percentile interval is known to be a little narrow
  (it ignores the t-correction), so the report also gives the two-level one:
- over seeds and val images (:func:`paired_bootstrap_confusions`): resample seeds, and
  independently the I val images (one image resample shared by A and B, so the pairing over
  images is kept too); per seed, mIoU is recomputed from the summed per-image confusion matrices.
  It adds the uncertainty of a finite val set. With one seed it is the image bootstrap alone
  (an interval conditional on that seed's training).

A difference is claimed (:func:`verdict`) only where the interval excludes 0.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "bootstrap_mean",
    "miou_from_confusion",
    "paired_bootstrap",
    "paired_bootstrap_confusions",
    "per_class_iou",
    "verdict",
]


def miou_from_confusion(confusion) -> np.ndarray:
    """mIoU of confusion matrices (..., C, C) (rows labels, columns predictions): the mean over
    classes with a non-empty union of TP / (row + column - TP) (docs/METHOD.md §3); NaN if none."""
    c = np.asarray(confusion, np.float64)
    tp = np.diagonal(c, axis1=-2, axis2=-1)
    union = c.sum(-1) + c.sum(-2) - tp
    present = union > 0
    iou = np.where(present, tp / np.where(present, union, 1.0), 0.0)
    n = present.sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, iou.sum(-1) / n, np.nan)


def per_class_iou(confusion) -> np.ndarray:
    """(..., C) IoU per class, NaN where the class's union is empty."""
    c = np.asarray(confusion, np.float64)
    tp = np.diagonal(c, axis1=-2, axis2=-1)
    union = c.sum(-1) + c.sum(-2) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / union, np.nan)


def _interval(samples: np.ndarray, level: float) -> tuple[float, float]:
    a = (1.0 - level) / 2.0
    lo, hi = np.quantile(samples, [a, 1.0 - a])
    return float(lo), float(hi)


def _check_level(level: float, num_resamples: int) -> None:
    if not 0.0 < float(level) < 1.0:
        raise ValueError(f"bootstrap: level must lie in (0, 1), got {level!r}")
    if int(num_resamples) < 100:
        raise ValueError(f"bootstrap: num_resamples must be >= 100, got {num_resamples!r}")


def bootstrap_mean(x, *, num_resamples: int = 10000, level: float = 0.95, seed: int = 0) -> dict:
    """Mean of x (n,) with a percentile bootstrap interval: ``{mean, lo, hi, half_width, n}``
    (half_width = (hi - lo) / 2). n = 1 gives the degenerate interval [x, x]. The one-group case
    of :func:`stratified_bootstrap_mean`."""
    out = stratified_bootstrap_mean([x], num_resamples=num_resamples, level=level, seed=seed)
    del out["groups"]
    return out


def stratified_bootstrap_mean(
    groups, *, num_resamples: int = 10000, level: float = 0.95, seed: int = 0
) -> dict:
    """Mean of the values of several groups pooled, x = concat(groups), with a bootstrap interval
    that resamples within each group (each group keeps its size): ``{mean, lo, hi, half_width, n,
    groups}``. For paired differences over the seeds of several benchmark draws, one group per
    draw, so each resample keeps every draw's weight. One group gives :func:`bootstrap_mean`'s
    interval for the same seed."""
    _check_level(level, num_resamples)
    xs = [np.asarray(g, np.float64).reshape(-1) for g in groups]
    xs = [x[np.isfinite(x)] for x in xs]
    xs = [x for x in xs if x.size]
    n = sum(x.size for x in xs)
    if n == 0:
        nan = float("nan")
        return {"mean": nan, "lo": nan, "hi": nan, "half_width": nan, "n": 0, "groups": 0}
    rng = np.random.default_rng(seed)
    R = int(num_resamples)
    total = np.zeros(R)
    for x in xs:
        total += x[rng.integers(0, x.size, (R, x.size))].sum(1)
    lo, hi = _interval(total / n, level)
    return {
        "mean": float(np.concatenate(xs).mean()),
        "lo": lo,
        "hi": hi,
        "half_width": (hi - lo) / 2,
        "n": int(n),
        "groups": len(xs),
    }


def paired_bootstrap(a, b, **kw) -> dict:
    """Mean paired difference mean(a - b) of per-seed scores a, b (S,) with the bootstrap interval
    over seeds (:func:`bootstrap_mean` of a - b). Pairs where either value is missing are dropped."""
    a, b = np.asarray(a, np.float64).reshape(-1), np.asarray(b, np.float64).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(
            f"paired_bootstrap: a {a.shape} and b {b.shape} must be paired (same length)"
        )
    return bootstrap_mean(a - b, **kw)


def paired_bootstrap_confusions(
    conf_a,
    conf_b,
    *,
    num_resamples: int = 2000,
    level: float = 0.95,
    seed: int = 0,
    resample_seeds: bool = True,
    resample_images: bool = True,
) -> dict:
    """Two-level paired bootstrap of mean_s [mIoU(sum_i A[s, i]) - mIoU(sum_i B[s, i])].

    conf_a, conf_b: per-image confusion matrices (S, I, C, C) of methods A and B (same seeds, same
    val images). Each resample draws S seeds and I images with replacement (images: one draw per
    resample, shared by A and B and by the seeds). Returns ``{mean, lo, hi, half_width, n_seeds,
    n_images}``; ``mean`` is the observed difference of the full-val mIoUs."""
    _check_level(level, num_resamples)
    a, b = np.asarray(conf_a, np.float64), np.asarray(conf_b, np.float64)
    if a.shape != b.shape or a.ndim != 4 or a.shape[-1] != a.shape[-2]:
        raise ValueError(
            f"paired_bootstrap_confusions: conf_a {a.shape} and conf_b {b.shape} must both be (S, I, C, C)"
        )
    S, I, C, _ = a.shape
    observed = float(np.mean(miou_from_confusion(a.sum(1)) - miou_from_confusion(b.sum(1))))
    rng = np.random.default_rng(seed)
    R = int(num_resamples)
    # Image weights: counts of each image in a resample (R, I); summed confusions by one matmul.
    if resample_images:
        w = np.stack([np.bincount(rng.integers(0, I, I), minlength=I) for _ in range(R)]).astype(
            np.float64
        )
    else:
        w = np.ones((R, I))
    fa = _resampled_sums(w, a)
    fb = _resampled_sums(w, b)
    d = miou_from_confusion(fa) - miou_from_confusion(fb)  # (R, S)
    if resample_seeds and S > 1:
        pick = rng.integers(0, S, (R, S))
        d = np.take_along_axis(d, pick, axis=1)
    lo, hi = _interval(d.mean(1), level)
    return {
        "mean": observed,
        "lo": lo,
        "hi": hi,
        "half_width": (hi - lo) / 2,
        "n_seeds": S,
        "n_images": I,
    }


def _resampled_sums(w: np.ndarray, conf: np.ndarray) -> np.ndarray:
    """(R, S, C, C): per resample r and seed s, sum_i w[r, i] conf[s, i] (one BLAS matmul per seed)."""
    S, I, C, _ = conf.shape
    out = np.matmul(w, conf.reshape(S, I, C * C))  # (S, R, C * C)
    return np.moveaxis(out, 0, 1).reshape(w.shape[0], S, C, C)


def verdict(interval: dict) -> str:
    """'higher' / 'lower' where the interval excludes 0, else 'no difference claimed'."""
    lo, hi = interval.get("lo"), interval.get("hi")
    if lo is None or hi is None or not (np.isfinite(lo) and np.isfinite(hi)):
        return "n/a"
    if interval.get("n", interval.get("n_seeds", 2)) < 2 and "n_images" not in interval:
        return "n/a (1 seed)"
    if lo > 0:
        return "higher"
    if hi < 0:
        return "lower"
    return "no difference claimed"


def bootstrap_miou(conf, *, num_resamples: int = 2000, level: float = 0.95, seed: int = 0) -> dict:
    """Mean over seeds of the val mIoU of one method, conf (S, I, C, C), with the two-level
    bootstrap interval (seeds and images, as in :func:`paired_bootstrap_confusions`)."""
    _check_level(level, num_resamples)
    a = np.asarray(conf, np.float64)
    if a.ndim != 4:
        raise ValueError(f"bootstrap_miou: conf must be (S, I, C, C), got {a.shape}")
    S, I, C, _ = a.shape
    rng = np.random.default_rng(seed)
    w = np.stack(
        [np.bincount(rng.integers(0, I, I), minlength=I) for _ in range(int(num_resamples))]
    ).astype(np.float64)
    m = miou_from_confusion(_resampled_sums(w, a))
    if S > 1:
        m = np.take_along_axis(m, rng.integers(0, S, m.shape), axis=1)
    lo, hi = _interval(m.mean(1), level)
    return {
        "mean": float(np.mean(miou_from_confusion(a.sum(1)))),
        "lo": lo,
        "hi": hi,
        "half_width": (hi - lo) / 2,
        "n_seeds": S,
        "n_images": I,
    }
