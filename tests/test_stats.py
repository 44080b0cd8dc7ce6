"""The protocol's statistics (dakpn_jax/protocol/stats.py): paired bootstrap intervals on synthetic
data with a known difference, and mIoU from confusion matrices against a direct computation."""

import numpy as np
import pytest

from dakpn_jax.protocol import stats


def _synthetic_seeds(rng, n_seeds, delta, shared_sd=0.05, own_sd=0.01):
    """Per-seed scores of a baseline and of a method that is delta better; the seed effect (shared
    by both, the pairing) is much larger than each method's own noise."""
    seed_effect = rng.normal(0.4, shared_sd, n_seeds)
    b = seed_effect + rng.normal(0, own_sd, n_seeds)
    a = seed_effect + delta + rng.normal(0, own_sd, n_seeds)
    return a, b


def test_paired_bootstrap_covers_a_known_difference():
    rng = np.random.default_rng(0)
    delta, reps, covered = 0.02, 200, 0
    for r in range(reps):
        a, b = _synthetic_seeds(rng, 20, delta)
        ci = stats.paired_bootstrap(a, b, num_resamples=1000, seed=r)
        covered += ci["lo"] <= delta <= ci["hi"]
        assert ci["lo"] <= ci["mean"] <= ci["hi"]
    # Nominal 95%; the percentile bootstrap with 20 pairs runs a little under it.
    assert 0.88 <= covered / reps <= 0.99


def test_paired_bootstrap_excludes_zero_for_a_large_difference_and_not_for_none():
    rng = np.random.default_rng(1)
    a, b = _synthetic_seeds(rng, 5, 0.05)
    ci = stats.paired_bootstrap(a, b)
    assert ci["lo"] > 0 and stats.verdict(ci) == "higher"
    assert stats.verdict(stats.paired_bootstrap(b, a)) == "lower"
    # Unpaired, the seed effect (sd 0.05) would swamp the same difference: pairing is what makes it visible.
    assert ci["half_width"] < 0.02
    includes = 0
    for r in range(100):
        a, b = _synthetic_seeds(rng, 5, 0.0)
        ci = stats.paired_bootstrap(a, b, num_resamples=500, seed=r)
        includes += ci["lo"] <= 0 <= ci["hi"]
    assert includes >= 80  # 5 pairs: a percentile interval is narrow, still mostly covers 0
    ci = stats.paired_bootstrap(b, b)
    assert ci["lo"] == ci["hi"] == 0 and stats.verdict(ci) == "no difference claimed"
    with pytest.raises(ValueError, match="paired"):
        stats.paired_bootstrap([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="level"):
        stats.bootstrap_mean([1, 2], level=1.5)


def _miou_direct(conf):
    """mIoU of one (C, C) matrix, classes with an empty union skipped (docs/METHOD.md §3), written out."""
    ious = []
    for c in range(conf.shape[0]):
        tp = conf[c, c]
        union = conf[c, :].sum() + conf[:, c].sum() - tp
        if union > 0:
            ious.append(tp / union)
    return np.mean(ious)


def _confusions(rng, n_seeds, n_images, C, correct_extra=0):
    """Per-image confusions (S, I, C, C): mostly correct pixels; `correct_extra` pixels per image
    moved from an error cell to the diagonal."""
    conf = rng.integers(0, 30, (n_seeds, n_images, C, C))
    idx = np.arange(C)
    conf[..., idx, idx] += rng.integers(100, 300, (n_seeds, n_images, C))
    conf[..., 3, :] = 0  # class 3 never labelled ...
    conf[..., :, 3] = 0  # ... nor predicted: skipped
    return conf


def test_miou_from_confusion_matches_a_direct_computation():
    rng = np.random.default_rng(2)
    conf = _confusions(rng, 2, 3, 6)
    got = stats.miou_from_confusion(conf)
    for s in range(2):
        for i in range(3):
            np.testing.assert_allclose(got[s, i], _miou_direct(conf[s, i]), rtol=1e-12)
    assert np.isnan(stats.miou_from_confusion(np.zeros((4, 4))))
    assert np.isnan(stats.per_class_iou(conf[0, 0])[3])


def test_two_level_bootstrap_on_confusions_with_a_known_difference():
    rng = np.random.default_rng(3)
    S, I, C = 5, 40, 6
    b = _confusions(rng, S, I, C)
    a = b.copy()
    # Method A fixes 20 errors per image of class 0 predicted as 1: a known gain.
    a[..., 0, 1] -= np.minimum(a[..., 0, 1], 20)
    a[..., 0, 0] += b[..., 0, 1] - a[..., 0, 1]
    want = np.mean([_miou_direct(a[s].sum(0)) - _miou_direct(b[s].sum(0)) for s in range(S)])
    ci = stats.paired_bootstrap_confusions(a, b, num_resamples=500)
    np.testing.assert_allclose(ci["mean"], want, rtol=1e-12)
    assert want > 0 and ci["lo"] > 0 and ci["lo"] <= want <= ci["hi"]
    assert stats.verdict(ci) == "higher" and ci["n_seeds"] == S and ci["n_images"] == I
    same = stats.paired_bootstrap_confusions(b, b, num_resamples=200)
    assert same["lo"] == same["hi"] == 0.0 and stats.verdict(same) == "no difference claimed"
    # Two unrelated methods with the same per-image noise: the interval straddles 0.
    c = _confusions(np.random.default_rng(4), S, I, C)
    mixed = stats.paired_bootstrap_confusions(b, c, num_resamples=500)
    assert mixed["lo"] < mixed["mean"] < mixed["hi"]
    one = stats.bootstrap_miou(b[:1], num_resamples=200)  # one seed: the image bootstrap alone
    assert one["lo"] < _miou_direct(b[0].sum(0)) < one["hi"]
    with pytest.raises(ValueError, match="S, I, C, C"):
        stats.paired_bootstrap_confusions(a[0], b[0])


def test_stratified_bootstrap_keeps_each_groups_weight_and_covers_a_known_mean():
    """Groups of very different means (three benchmark draws): resampling within each group keeps
    every draw's weight, so the interval is about the within-group spread only; a plain bootstrap
    of the pooled values mixes the groups' offsets in and is wider. Coverage of the true pooled
    mean is near nominal; one group gives bootstrap_mean's interval for the same seed."""
    rng = np.random.default_rng(0)
    offsets, sd, n, reps, covered = (0.0, 5.0, 10.0), 1.0, 5, 200, 0
    for r in range(reps):
        groups = [o + rng.normal(0, sd, n) for o in offsets]
        ci = stats.stratified_bootstrap_mean(groups, num_resamples=1000, seed=r)
        covered += ci["lo"] <= np.mean(offsets) <= ci["hi"]
        assert ci["lo"] <= ci["mean"] <= ci["hi"] and ci["n"] == 15 and ci["groups"] == 3
        np.testing.assert_allclose(ci["mean"], np.mean(np.concatenate(groups)), rtol=1e-12)
    assert 0.85 <= covered / reps <= 0.99
    groups = [o + rng.normal(0, sd, n) for o in offsets]
    strat = stats.stratified_bootstrap_mean(groups, num_resamples=2000)
    plain = stats.bootstrap_mean(np.concatenate(groups), num_resamples=2000)
    # Within-group sd 1 over 15 values: half-width about 1.96 / sqrt(15) = 0.51; the pooled
    # values' sd is about 4.2 (the offsets), so the plain interval is several times wider.
    assert strat["half_width"] < 0.75 < 1.5 < plain["half_width"]
    one = rng.normal(0, 1, 7)
    a = stats.stratified_bootstrap_mean([one], num_resamples=500, seed=3)
    b = stats.bootstrap_mean(one, num_resamples=500, seed=3)
    assert (a["lo"], a["hi"], a["mean"]) == (b["lo"], b["hi"], b["mean"])
