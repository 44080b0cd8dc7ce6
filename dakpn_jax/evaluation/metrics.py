"""Segmentation metrics: confusion matrix and (mean) intersection over union.

For C classes, the confusion matrix N is (C, C) with

    N[c, k] = #{pixels p : label[p] = c and pred[p] = k},   label[p] != ignore_index,

rows are labels (ground truth), columns are predictions. Per class c:

    TP_c = N[c, c],   FN_c = sum_k N[c, k] - TP_c,   FP_c = sum_k N[k, c] - TP_c,
    IoU_c = TP_c / (TP_c + FP_c + FN_c) = TP_c / union_c,

and mIoU is the mean of IoU_c over the classes with a non-empty union (the Cityscapes convention:
a class that neither occurs in the labels nor is ever predicted does not enter the mean; counting it
as IoU 1, as some code does, inflates the score).

Accumulation over devices and hosts: N is a sum over pixels, so the confusion of a dataset is the sum
of the confusions of its batches/shards. Under `jax.jit` with a batch sharded over a mesh, XLA sums the
per-device partial counts itself (the result is one replicated (C, C) array on every host). Over many
batches, sum on the host in int64 (`np.asarray(conf, np.int64)`): jitted counts are int32 (x64 is off
by default), which is exact for fewer than 2**31 pixels per call but not for a whole large dataset.
"""

import jax
import jax.numpy as jnp
import numpy as np

IGNORE_INDEX = 255


def confusion_matrix(pred, label, num_classes: int, ignore_index: int = IGNORE_INDEX) -> jax.Array:
    """Confusion matrix of integer predictions against integer labels. Jittable.

    Args:
      pred: int array of any shape, e.g. (B, H, W): predicted class ids.
      label: int array of the same shape: label ids in [0, num_classes) or `ignore_index`.
      num_classes: C, a positive Python int (static under jit).
      ignore_index: label value excluded from the counts (default 255).

    Returns:
      (C, C) int32 (int64 when jax x64 is enabled), rows = labels, columns = predictions.
      Pixels whose label is `ignore_index` or outside [0, C), or whose prediction is outside [0, C),
      are not counted (under jit nothing can raise on data values, so out-of-range ids are dropped
      rather than silently wrapped into another class).
    """
    if (
        not isinstance(num_classes, (int, np.integer))
        or isinstance(num_classes, bool)
        or num_classes < 1
    ):
        raise ValueError(
            f"confusion_matrix: num_classes must be a positive int, got {num_classes!r}"
        )
    num_classes = int(num_classes)
    pred, label = jnp.asarray(pred), jnp.asarray(label)
    if pred.shape != label.shape:
        raise ValueError(f"confusion_matrix: pred shape {pred.shape} != label shape {label.shape}")
    for name, x in (("pred", pred), ("label", label)):
        if not jnp.issubdtype(x.dtype, jnp.integer):
            raise ValueError(
                f"confusion_matrix: {name} must be an integer array (class ids), got dtype {x.dtype}"
            )
    if pred.size >= 2**31:
        raise ValueError(
            f"confusion_matrix: {pred.size} pixels in one call overflow int32 counts; "
            "split the batch and sum the confusions on the host in int64"
        )
    count_dtype = jnp.int64 if jax.config.jax_enable_x64 else jnp.int32
    # int32 arithmetic: uint8 labels would overflow in label * C + pred.
    pred, label = pred.astype(jnp.int32).ravel(), label.astype(jnp.int32).ravel()
    valid = (
        (label != ignore_index)
        & (label >= 0)
        & (label < num_classes)
        & (pred >= 0)
        & (pred < num_classes)
    )
    index = jnp.where(valid, label * num_classes + pred, 0)
    # Scatter-add of the valid mask (a bincount); invalid pixels add 0 to bin 0.
    counts = (
        jnp.zeros((num_classes * num_classes,), count_dtype)
        .at[index]
        .add(valid.astype(count_dtype))
    )
    return counts.reshape(num_classes, num_classes)


def mean_iou(confusion) -> tuple[jax.Array, jax.Array]:
    """Mean IoU and per-class IoU of a (C, C) confusion matrix (rows labels, columns predictions).

    Jittable. The counts are converted to float32 before any arithmetic, so an int64 host-accumulated
    matrix is never truncated to int32.

    Returns:
      miou: float32 scalar, mean of IoU_c over the classes with union_c > 0 (NaN if there is none).
      per_class_iou: float32 (C,), IoU_c = N[c,c] / (row_c + col_c - N[c,c]); NaN where union_c = 0
        (the class never occurs in the labels and is never predicted).
    """
    if isinstance(confusion, np.ndarray) or not hasattr(confusion, "dtype"):
        confusion = np.asarray(confusion, np.float64)  # exact int64 -> float before jnp sees it
    conf = jnp.asarray(confusion).astype(jnp.float32)
    if conf.ndim != 2 or conf.shape[0] != conf.shape[1]:
        raise ValueError(
            f"mean_iou: confusion must be a square (C, C) matrix, got shape {conf.shape}"
        )
    tp = jnp.diagonal(conf)
    union = conf.sum(axis=0) + conf.sum(axis=1) - tp
    present = union > 0
    per_class = jnp.where(present, tp / jnp.where(present, union, 1.0), jnp.nan)
    count = present.sum()
    miou = jnp.where(
        count > 0, jnp.where(present, per_class, 0.0).sum() / jnp.maximum(count, 1), jnp.nan
    )
    return miou, per_class


def mean_iou_paper(confusion) -> tuple[jax.Array, jax.Array]:
    """The authors' ("paper-compatible") mean IoU: like :func:`mean_iou`, except that a class with
    an empty union (never labelled, never predicted) counts as IoU 1 instead of leaving the mean.

        miou_paper = (sum_{c: union_c > 0} IoU_c + #{c: union_c = 0}) / C

    This is what the authors' evaluation reports (docs/METHOD.md §6); it inflates the score whenever a
    class is absent (a split or a batch without trains scores a perfect "train"), so report it only
    beside the clean :func:`mean_iou`, labelled as such (``miou_paper`` in the metrics). The
    authors evaluate Cityscapes val at 720 x 720 input / 180 x 180 labels
    (configs/segformer_paper.py's eval resolution).

    Returns:
      miou_paper: float32 scalar (1 for an all-zero confusion).
      per_class_iou_paper: float32 (C,), IoU_c, 1 where union_c = 0.
    """
    _, per_class = mean_iou(confusion)
    per_class = jnp.where(jnp.isnan(per_class), 1.0, per_class)
    return per_class.mean(), per_class
