"""DA-KPN's uses of a frozen segmenter: the KPN's features and the conditioned discriminator's maps.

Features (docs/METHOD.md §1 step 1): ``config.features = "onehot"`` (the benchmark default) is the
one-hot label area-resized to the parameter grid (`dakpn_jax.training.dakpn_features`; ignore pixels
contribute zeros); ``"segmenter"`` is the class logits of a frozen segmenter, loaded with
:func:`load_segmenter` from ``config.segmenter_workdir`` or ``config.segmenter_weights`` (or given
to ``make_train_step(config, segmenter=...)``). Its params are constants closed over by the step,
outside the state, and its logits pass through ``stop_gradient``: they never change.

Conditioned D (``config.loss.d_condition = "segmenter"``; default ``"none"``: D sees RGB only, the
paper): D sees ``concat(view, s)``, s a (C-channel) semantic map of the same pixels that the KPN
cannot change. Its optimal logit is then log p_r(s) / p_f(s) + log p_r(x | s) / p_f(x | s), and
only the second term depends on x: a D that separates the domains by class frequencies (real scenes
have other class proportions than synthetic ones, which the translation family cannot change) no
longer pulls the KPN into recolouring classes. Fake side (``loss.d_condition_fake``): ``"labels"``,
the synthetic labels one-hot, or ``"segmenter"``, the frozen segmenter on the untranslated synthetic
frame (the same map function on both sides). Real side: the frozen segmenter (the one the features
use, ``segmenter_workdir`` / ``segmenter_weights``) on the real frame. ``loss.d_condition_probs``:
``"soft"`` (softmax) or ``"hard"`` (one-hot argmax) segmenter maps; hard maps make s the same kind of
object on both sides with ``"labels"`` (one-hot), so D cannot tell the domains apart by the maps'
confidence alone. The map of the full frame is cropped at the tile's own position (the synthetic
tile's for the fakes, the real tile's for the real one) and area-resized to ``low_size`` for the low
view; it passes through ``stop_gradient`` and the segmenter's params are constants of the step.
Works with both update rules; R1 is the gradient w.r.t. the image channels only.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from dakpn_jax.training.dakpn_config import _pair, low_size
from dakpn_jax.training.dakpn_features import area_resize, onehot_features
from dakpn_jax.training.dakpn_losses import _crop


def load_segmenter(config):
    """``(apply_fn, params)`` of the frozen segmenter: ``config.segmenter_weights`` (a
    torchvision-layout FCN-ResNet50 file, :func:`dakpn_jax.models.fcn_resnet50.load_frozen`) when
    set, else the segmentation run in ``config.segmenter_workdir``."""
    weights = config.segmenter_weights
    if weights:
        from dakpn_jax.models import fcn_resnet50  # pylint: disable=import-outside-toplevel

        return fcn_resnet50.load_frozen(
            weights, config.model.num_classes, normalize=bool(config.segmenter_normalize)
        )
    from dakpn_jax.training import segmentation  # only needed for segmenter features

    return segmentation.load_segmenter(config.segmenter_workdir)


def make_feature_fn(config, segmenter=None) -> Callable:
    """``features(images (B,H,W,3), labels (B,H,W), size) -> (B, h, w, C)`` for ``config.features``.

    Segmenter features are ``stop_gradient(apply_fn(params, images))`` resized by area; the params
    are constants of the returned closure, never part of the trained state."""
    kind = config.features
    C = config.model.num_classes
    if kind == "onehot":
        return lambda images, labels, size: onehot_features(labels, C, size)
    apply_fn, seg_params = segmenter if segmenter is not None else load_segmenter(config)
    in_size = config.segmenter_input_size

    def features(images, labels, size):
        del labels
        if in_size:  # the authors' export script: the frame resized to 96 x 160 first
            images = jax.image.resize(
                images,
                (images.shape[0], *_pair(in_size, "segmenter_input_size"), 3),
                method="linear",
                antialias=True,
            )
        logits = jax.lax.stop_gradient(apply_fn(seg_params, images).astype(jnp.float32))
        if logits.shape[-1] != C:
            raise ValueError(
                f"segmenter logits have {logits.shape[-1]} classes, config.model.num_classes={C}"
            )
        return area_resize(logits, size)

    return features


def make_segmenter_probs(config, segmenter) -> Callable:
    """``probs(images (B, H, W, 3)) -> (B, H, W, C)``: the frozen segmenter's class probabilities
    at the frame size, ``stop_gradient(softmax(logits))`` (``loss.d_condition_probs = "soft"``) or
    the one-hot of its argmax (``"hard"``). With ``segmenter_input_size`` the segmenter sees the
    frame resized to it (as for the features) and its logits are resized back (linear) first."""
    apply_fn, seg_params = segmenter
    C = config.model.num_classes
    in_size = config.segmenter_input_size
    hard = config.loss.d_condition_probs == "hard"

    def probs(images):
        B, H, W, _ = images.shape
        x = images
        if in_size:
            x = jax.image.resize(
                x, (B, *_pair(in_size, "segmenter_input_size"), 3), method="linear", antialias=True
            )
        logits = apply_fn(seg_params, x).astype(jnp.float32)
        if logits.shape[-1] != C:
            raise ValueError(
                f"segmenter logits have {logits.shape[-1]} classes, config.model.num_classes={C}"
            )
        if logits.shape[1:3] != (H, W):
            logits = jax.image.resize(logits, (B, H, W, C), method="linear")
        p = (
            jax.nn.one_hot(jnp.argmax(logits, axis=-1), C, dtype=jnp.float32)
            if hard
            else jax.nn.softmax(logits)
        )
        return jax.lax.stop_gradient(p)

    return probs


def make_condition_fn(config, segmenter=None) -> Callable | None:
    """None for ``loss.d_condition = "none"``; else ``conditions(x, y, r, dv) -> {"fake": {view: s},
    "real": {view: s}}``, the semantic maps D sees next to each view (module docstring,
    "Conditioned D"): per frame a (B, H, W, C) map, cropped at the view's tile position (``dv["pos"]``
    for the fakes, ``dv["real_pos"]`` for the real tile) or area-resized to ``low_size``. Fake side:
    the synthetic labels one-hot (``loss.d_condition_fake = "labels"``, ignore pixels all zero) or
    the segmenter on the *untranslated* synthetic frame (``"segmenter"``); real side: the segmenter
    on the real frame. Nothing here depends on the KPN: the maps are constants for both players."""
    if config.loss.d_condition == "none":
        return None
    l = config.loss
    C = config.model.num_classes
    probs = make_segmenter_probs(
        config, segmenter if segmenter is not None else load_segmenter(config)
    )
    low = low_size(config)
    views = tuple(l.d_inputs)

    def conditions(x, y, r, dv):
        tile = dv["tile"]
        if l.d_condition_fake == "labels":
            s_fake = jax.nn.one_hot(y.astype(jnp.int32), C, dtype=jnp.float32)  # 255 -> zeros
        else:
            s_fake = probs(x)
        s_real = probs(r)
        out = {
            "fake": {"tile": _crop(s_fake, dv["pos"], tile)},
            "real": {"tile": _crop(s_real, dv["real_pos"], tile)},
        }
        if "low" in views:
            out["fake"]["low"] = area_resize(s_fake, low)
            if "low" in dv["reals"]:
                out["real"]["low"] = area_resize(s_real, low)
        return out

    return conditions
