"""Model score: does a translation keep the synthetic labels true? (semantic flipping, made measurable)

A segmenter trained on *labelled real* images (it knows what real sky, road, trees look like)
labels the translated synthetic images; its predictions are compared with the synthetic labels.
A label-preserving translator scores like a good real-domain segmenter on real images; a translator
that paints sky as trees lowers the sky IoU and puts mass on the (sky -> vegetation) cell of the
flip matrix. Score the untranslated synthetic images too: that is the segmenter's own domain gap.

For a confusion matrix N (rows = synthetic label c, columns = predicted class k, ignore label
excluded; ``evaluation.metrics.confusion_matrix``):

    IoU_c        = N_cc / (sum_k N_ck + sum_k N_kc - N_cc)         (classes with empty union skipped
    mIoU         = mean over classes with non-empty union            in the mean: ``metrics.mean_iou``)
    flip[c, k]   = N_ck / sum_k' N_ck'   (0 for a label absent from the data)
                   the fraction of class-c pixels that the real-domain segmenter calls k;
                   the diagonal is the per-class recall, off-diagonal mass is flipping.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dakpn_jax.evaluation import metrics

IGNORE_INDEX = 255


def predict_labels(segment_fn: Callable, images, label_shape: tuple[int, int]) -> jax.Array:
    """Class predictions (B, H, W) int32 from ``segment_fn(images)``, which returns either logits
    (B, H', W', C) at any stride (resized bilinearly to the label size, half-pixel centres, then
    argmax) or integer predictions (B, H, W)."""
    out = jnp.asarray(segment_fn(images))
    h, w = label_shape
    if out.ndim == 4:
        if out.shape[1:3] != (h, w):
            out = jax.image.resize(
                out, (out.shape[0], h, w, out.shape[3]), method="bilinear", antialias=False
            )
        return jnp.argmax(out, axis=-1).astype(jnp.int32)
    if out.ndim == 3 and out.shape[1:] == (h, w) and jnp.issubdtype(out.dtype, jnp.integer):
        return out.astype(jnp.int32)
    raise ValueError(
        f"model_score: segment_fn returned {out.shape} {out.dtype}; expected logits (B, H', W', C) "
        f"or integer predictions (B, {h}, {w})"
    )


def flip_matrix(confusion) -> np.ndarray:
    """Row-normalised confusion ``flip[c, k] = N_ck / sum_k N_ck`` (rows without pixels are 0). (C, C) float64."""
    n = np.asarray(confusion, np.float64)
    if n.ndim != 2 or n.shape[0] != n.shape[1]:
        raise ValueError(f"flip_matrix: confusion must be square (C, C), got {n.shape}")
    rows = n.sum(axis=1, keepdims=True)
    return np.divide(n, rows, out=np.zeros_like(n), where=rows > 0)


def top_flips(
    flip, k: int = 5, class_names: Sequence[str] | None = None, min_fraction: float = 0.0
) -> list:
    """The ``k`` largest off-diagonal cells: ``[(label, predicted, fraction), ...]`` (names if given)."""
    f = np.array(flip, np.float64)
    np.fill_diagonal(f, -1.0)
    order = np.argsort(f, axis=None)[::-1][:k]
    out = []
    for idx in order:
        c, j = np.unravel_index(idx, f.shape)
        if f[c, j] <= min_fraction:
            break
        name = (lambda i: class_names[i]) if class_names is not None else (lambda i: int(i))
        out.append((name(c), name(j), float(f[c, j])))
    return out


def _iou(confusion) -> tuple[float, np.ndarray]:
    res = metrics.mean_iou(jnp.asarray(confusion))
    if isinstance(res, dict):
        miou, per = res["miou"] if "miou" in res else res["mean_iou"], res["per_class_iou"]
    else:
        miou, per = res
    return float(miou), np.asarray(per, np.float64)


def model_score(
    segment_fn: Callable,
    images_and_labels,
    num_classes: int,
    *,
    translate_fn: Callable | None = None,
    class_names: Sequence[str] | None = None,
) -> dict:
    """Model score over an iterable of ``(images (B, H, W, 3) float [0, 1], labels (B, H, W) int)``.

    ``translate_fn`` (optional, [0,1] -> [0,1], same shape) is applied to the images first; None
    scores the untranslated images. Returns ``{"miou", "per_class_iou" (C,), "confusion" (C, C) int64,
    "flip" (C, C), "top_flips", "pixels"}``; classes absent from both labels and predictions have
    NaN IoU in ``per_class_iou`` if ``metrics.mean_iou`` reports them so."""
    conf = np.zeros((num_classes, num_classes), np.int64)
    for images, labels in images_and_labels:
        images = jnp.asarray(images, jnp.float32)
        labels = jnp.asarray(labels).astype(jnp.int32)
        if images.ndim != 4 or labels.shape != images.shape[:3]:
            raise ValueError(
                f"model_score: images {images.shape} and labels {labels.shape} must be "
                f"(B, H, W, 3) and (B, H, W)"
            )
        if translate_fn is not None:
            images = jnp.asarray(translate_fn(images), jnp.float32)
        pred = predict_labels(segment_fn, images, labels.shape[1:])
        conf += np.asarray(
            metrics.confusion_matrix(pred, labels, num_classes, ignore_index=IGNORE_INDEX), np.int64
        )
    miou, per = _iou(conf)
    flip = flip_matrix(conf)
    return {
        "miou": miou,
        "per_class_iou": per,
        "confusion": conf,
        "flip": flip,
        "top_flips": top_flips(flip, 5, class_names, min_fraction=0.0),
        "pixels": int(conf.sum()),
    }


def batches_from_source(
    source, *, batch_size: int = 8, max_images: int | None = None, image_key: str = "image"
):
    """Yield ``(images float32 [0,1], labels int32)`` batches from an image-label source (uint8
    items with ``image_key`` and ``"label"``, e.g. synthetic-train, or ``"synthetic"`` of paired-eval)."""
    n = len(source) if max_images is None else min(len(source), max_images)
    for start in range(0, n, batch_size):
        items = [source[i] for i in range(start, min(n, start + batch_size))]
        if image_key not in items[0] or "label" not in items[0]:
            raise ValueError(
                f"batches_from_source: items need '{image_key}' and 'label' (have {sorted(items[0])})"
            )
        yield (
            np.stack([it[image_key] for it in items]).astype(np.float32) / 255.0,
            np.stack([it["label"] for it in items]).astype(np.int32),
        )


def score_source(
    segment_fn: Callable,
    source,
    num_classes: int,
    *,
    translate_fn: Callable | None = None,
    batch_size: int = 8,
    max_images: int | None = None,
    image_key: str = "image",
    class_names: Sequence[str] | None = None,
) -> dict:
    """:func:`model_score` over a labelled source (see :func:`batches_from_source`)."""
    return model_score(
        segment_fn,
        batches_from_source(
            source, batch_size=batch_size, max_images=max_images, image_key=image_key
        ),
        num_classes,
        translate_fn=translate_fn,
        class_names=class_names,
    )
