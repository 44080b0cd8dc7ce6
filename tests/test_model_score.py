"""Model score and flip matrix (dakpn_jax/evaluation/model_score.py) against a float64 NumPy reference."""

import numpy as np
import pytest

from dakpn_jax.evaluation import model_score as ms

C = 5


def _reference(preds, labels, num_classes):
    """NumPy bincount confusion (255 ignored), IoU (NaN for empty union), mIoU, row-normalised flips."""
    p, y = np.concatenate([a.ravel() for a in preds]), np.concatenate([a.ravel() for a in labels])
    keep = y != 255
    conf = np.bincount(y[keep] * num_classes + p[keep], minlength=num_classes**2).reshape(
        num_classes, num_classes
    )
    conf = conf.astype(np.float64)
    tp = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
        rows = conf.sum(1, keepdims=True)
        flip = np.where(rows > 0, conf / rows, 0.0)
    return conf, iou, np.nanmean(iou), flip


def _colour_segmenter(images):
    """A stand-in 'real-domain segmenter': class = argmax over (R, G, B, 0.2, 0.1), as logits at
    half resolution (so the bilinear resize to the label size is exercised)."""
    x = np.asarray(images)[:, ::2, ::2]
    extra = np.broadcast_to(np.array([0.2, 0.1], np.float32), x.shape[:3] + (2,))
    return np.concatenate([x, extra], -1)


def _data(seed, n=3, h=8, w=12):
    r = np.random.default_rng(seed)
    images = r.random((n, h, w, 3)).astype(np.float32)
    labels = r.integers(0, 4, (n, h, w)).astype(np.int32)  # class 4 never labelled
    labels[:, 0, :3] = 255  # ignore pixels
    labels[:, 1, :] = 3  # class 3 labelled but never predicted (its IoU is 0)
    return images, labels


@pytest.mark.smoke
def test_model_score_matches_numpy_reference_with_translation_and_flips():
    batches = [_data(0), _data(1)]
    swap = lambda x: x[..., ::-1]  # a "translator" that repaints: red <-> blue, i.e. class 0 <-> 2
    for translate in (None, swap):
        got = ms.model_score(
            _colour_segmenter,
            batches,
            C,
            translate_fn=translate,
            class_names=[f"c{i}" for i in range(C)],
        )
        preds = []
        for images, _ in batches:
            x = images if translate is None else swap(images)
            # Reference prediction: nearest-to-centre 2x upsampling is not what bilinear does, so
            # recompute bilinear (half-pixel centres) in NumPy by hand for the half-res logits.
            preds.append(np.argmax(_bilinear_up2(_colour_segmenter(x)), -1))
        conf, iou, miou, flip = _reference(preds, [b[1] for b in batches], C)
        np.testing.assert_array_equal(got["confusion"], conf)
        np.testing.assert_allclose(got["per_class_iou"], iou, rtol=1e-6, equal_nan=True)
        np.testing.assert_allclose(got["miou"], miou, rtol=1e-6)
        np.testing.assert_allclose(got["flip"], flip, rtol=1e-12)
        assert got["pixels"] == int(sum((b[1] != 255).sum() for b in batches))
        off = flip.copy()
        np.fill_diagonal(off, -1)
        best = np.unravel_index(np.argmax(off), off.shape)
        assert got["top_flips"][0][:2] == (f"c{best[0]}", f"c{best[1]}")
        np.testing.assert_allclose(got["top_flips"][0][2], off[best])
    # Labels that the segmenter gets right on the untranslated images: the swap then sends class 0
    # to class 2 and back, which the flip matrix shows and the score punishes.
    faithful = []
    for images, labels in batches:
        labels = np.argmax(_bilinear_up2(_colour_segmenter(images)), -1).astype(np.int32)
        labels[:, 0, :3] = 255
        faithful.append((images, labels))
    plain = ms.model_score(_colour_segmenter, faithful, C)
    swapped = ms.model_score(_colour_segmenter, faithful, C, translate_fn=swap)
    assert plain["miou"] == 1.0 and plain["flip"][0, 2] == 0.0
    assert swapped["flip"][0, 2] > 0.5 and swapped["flip"][2, 0] > 0.5 and swapped["miou"] < 0.6


def _bilinear_up2(x):
    """2x bilinear upsampling with half-pixel centres and edge clamping (NumPy, float64)."""

    def up(a, axis):
        n = a.shape[axis]
        pos = (np.arange(2 * n) + 0.5) / 2 - 0.5
        lo = np.clip(np.floor(pos).astype(int), 0, n - 1)
        hi = np.clip(lo + 1, 0, n - 1)
        t = np.clip(pos - np.floor(pos), 0, 1)
        t = np.where(pos < 0, 0.0, t)
        shape = [1] * a.ndim
        shape[axis] = -1
        return np.take(a, lo, axis) * (1 - t.reshape(shape)) + np.take(a, hi, axis) * t.reshape(
            shape
        )

    return up(up(np.asarray(x, np.float64), 1), 2)


def test_flip_matrix_rows_and_integer_predictions():
    conf = np.array([[3, 1, 0], [0, 0, 0], [2, 0, 6]])
    np.testing.assert_allclose(ms.flip_matrix(conf), [[0.75, 0.25, 0], [0, 0, 0], [0.25, 0, 0.75]])
    assert sorted(ms.top_flips(ms.flip_matrix(conf), 5)) == [
        (0, 1, 0.25),
        (2, 0, 0.25),
    ]  # ties: any order
    with pytest.raises(ValueError, match="square"):
        ms.flip_matrix(np.zeros((2, 3)))
    # A segmenter that already returns class ids (B, H, W) is used as is.
    images, labels = _data(2)
    got = ms.model_score(lambda x: np.asarray(labels), [(images, labels)], C)
    assert got["miou"] == 1.0 and np.all(np.diag(got["flip"])[:4] == 1.0)


def test_sources_and_bad_input():
    images, labels = _data(3, n=5)
    source = [
        {"image": (im * 255).astype(np.uint8), "label": lb.astype(np.uint8)}
        for im, lb in zip(images, labels)
    ]
    batches = list(ms.batches_from_source(source, batch_size=2, max_images=3))
    assert [b[0].shape[0] for b in batches] == [2, 1]
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), labels[:3])
    score = ms.score_source(lambda x: np.asarray(labels[: len(x)]), source, C, batch_size=5)
    assert score["miou"] == 1.0
    with pytest.raises(ValueError, match="labels"):
        ms.model_score(_colour_segmenter, [(images, labels[:, :4])], C)
    with pytest.raises(ValueError, match="segment_fn returned"):
        ms.model_score(lambda x: np.zeros((5, 3)), [(images, labels)], C)
    with pytest.raises(ValueError, match="'label'"):
        list(ms.batches_from_source([{"image": source[0]["image"]}]))
