"""Confusion matrix and (m)IoU against a plain NumPy bincount / float64 reference."""

import jax
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from dakpn_jax.evaluation import metrics


def np_confusion(pred, label, c, ignore=255):
    pred, label = np.asarray(pred, np.int64).ravel(), np.asarray(label, np.int64).ravel()
    keep = (label != ignore) & (label >= 0) & (label < c)
    return np.bincount(label[keep] * c + pred[keep], minlength=c * c).reshape(c, c)


def np_iou(conf):
    conf = np.asarray(conf, np.float64)
    tp = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - tp
    per = np.full(len(tp), np.nan)
    per[union > 0] = tp[union > 0] / union[union > 0]
    return np.nanmean(per), per


def random_case(rng, shape, c, ignore_frac=0.2, absent=()):
    label = rng.integers(0, c, shape)
    pred = np.where(rng.random(shape) < 0.6, label, rng.integers(0, c, shape))
    for a in absent:  # class never labelled and never predicted
        label[label == a] = (a + 1) % c
        pred[pred == a] = (a + 1) % c
    label[rng.random(shape) < ignore_frac] = 255
    return pred.astype(np.int32), label.astype(np.uint8)


@pytest.mark.smoke
def test_confusion_and_iou_match_numpy_with_ignore_and_absent_classes():
    rng = np.random.default_rng(0)
    c = 7
    pred, label = random_case(rng, (3, 16, 24), c, absent=(2, 5))
    conf = jax.jit(metrics.confusion_matrix, static_argnums=2)(pred, label, c)
    ref = np_confusion(pred, label, c)
    np.testing.assert_array_equal(np.asarray(conf), ref)
    assert int(conf.sum()) == int((label != 255).sum())
    miou, per = jax.jit(metrics.mean_iou)(conf)
    ref_miou, ref_per = np_iou(ref)
    np.testing.assert_allclose(np.asarray(per), ref_per, rtol=1e-6)  # NaN positions must match too
    assert (
        np.isnan(np.asarray(per)[[2, 5]]).all()
        and not np.isnan(np.asarray(per)[[0, 1, 3, 4, 6]]).any()
    )
    np.testing.assert_allclose(float(miou), ref_miou, rtol=1e-6)


def test_iou_hand_example_and_predicted_only_class():
    # labels: class 0 x3, class 1 x1; predictions: 0,0,1 for the class-0 pixels, 2 for the class-1 pixel.
    label = np.array([0, 0, 0, 1, 255])
    pred = np.array([0, 0, 1, 2, 2])
    conf = np.asarray(metrics.confusion_matrix(pred, label, 4))
    np.testing.assert_array_equal(conf, [[2, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    miou, per = metrics.mean_iou(conf)
    # IoU_0 = 2/3; IoU_1 = 0/(1+1) = 0; IoU_2 = 0/1 = 0 (predicted only: union 1, counts); class 3 absent.
    np.testing.assert_allclose(np.asarray(per)[:3], [2 / 3, 0.0, 0.0], rtol=1e-6)
    assert np.isnan(np.asarray(per)[3])
    np.testing.assert_allclose(float(miou), (2 / 3) / 3, rtol=1e-6)
    assert np.isnan(float(metrics.mean_iou(np.zeros((3, 3), np.int64))[0]))


def test_out_of_range_ids_are_dropped_not_wrapped():
    conf = np.asarray(metrics.confusion_matrix(np.array([0, 5, 1, -1]), np.array([9, 0, 1, 1]), 3))
    np.testing.assert_array_equal(conf, [[0, 0, 0], [0, 1, 0], [0, 0, 0]])


def test_eight_device_sharded_accumulation_equals_numpy():
    assert jax.device_count() == 8
    rng = np.random.default_rng(1)
    c = 19
    mesh = Mesh(np.array(jax.devices()), ("data",))
    spec = NamedSharding(mesh, P("data"))
    fn = jax.jit(
        lambda p, l: metrics.confusion_matrix(p, l, c), out_shardings=NamedSharding(mesh, P())
    )
    total = np.zeros((c, c), np.int64)
    preds, labels = [], []
    for _ in range(3):  # three batches summed on the host in int64
        pred, label = random_case(rng, (16, 8, 12), c, absent=(17,))
        preds.append(pred), labels.append(label)
        conf = fn(jax.device_put(pred, spec), jax.device_put(label, spec))
        assert conf.sharding.is_fully_replicated
        total += np.asarray(conf, np.int64)
    ref = np_confusion(np.stack(preds), np.stack(labels), c)
    np.testing.assert_array_equal(total, ref)
    np.testing.assert_allclose(np.asarray(metrics.mean_iou(total)[1]), np_iou(ref)[1], rtol=1e-6)


def test_int64_host_totals_are_not_truncated():
    conf = np.array([[3, 1], [0, 4]], np.int64) * (2**33)  # entries far above int32
    _, per = metrics.mean_iou(conf)
    np.testing.assert_allclose(np.asarray(per), [3 / 4, 4 / 5], rtol=1e-6)


def test_bad_input_raises():
    with pytest.raises(ValueError, match="shape"):
        metrics.confusion_matrix(np.zeros((2, 3), np.int32), np.zeros((2, 4), np.int32), 3)
    with pytest.raises(ValueError, match="num_classes"):
        metrics.confusion_matrix(np.zeros(3, np.int32), np.zeros(3, np.int32), 0)
    with pytest.raises(ValueError, match="pred must be an integer"):
        metrics.confusion_matrix(np.zeros(3, np.float32), np.zeros(3, np.int32), 3)
    with pytest.raises(ValueError, match="square"):
        metrics.mean_iou(np.zeros((3, 4)))
