"""Segmentation networks behind one factory, `make_segmenter(name, num_classes, *, rngs, **kwargs)`.

Interface shared by every segmenter (docs/ARCHITECTURE.md): ``model(x, train=False)`` maps float32
images in [0, 1], (B, H, W, 3), to class logits (B, H / s, W / s, num_classes) for a model stride s;
the caller resizes logits bilinearly to the label size. Input normalisation is the model's own.

- ``"unet_small"``: a compact U-Net (Ronneberger et al. 2015) for CPU runs, stride 1.
- ``"segformer_b0"`` .. ``"segformer_b5"``: delegated (lazily) to `dakpn_jax.models.segformer`.
- ``"fcn_resnet50"``: torchvision-layout FCN-ResNet50, stride 8 upsampled to the input
  (`dakpn_jax.models.fcn_resnet50`); kwargs ``weights`` (a torchvision-layout .pth / .safetensors
  file), ``load_classifier`` (False: keep the class-count dependent 1x1 convs at init), ``aux``,
  ``normalize`` (ImageNet mean/std, default True), ``dropout``.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

SEGFORMER_NAMES = tuple(f"segformer_b{i}" for i in range(6))
NAMES = ("unet_small",) + SEGFORMER_NAMES + ("fcn_resnet50",)


def _groups(channels: int) -> int:
    """GroupNorm groups: up to 8 with at least 2 channels each (1 group for tiny widths)."""
    for g in (8, 4, 2):
        if channels % g == 0 and channels // g >= 2:
            return g
    return 1


class ConvBlock(nnx.Module):
    """Two (3x3 conv -> GroupNorm -> ReLU) layers: (B, H, W, c_in) -> (B, H, W, c_out).

    GroupNorm rather than BatchNorm: no batch statistics, so the result is the same for any batch
    size and device count, and the state holds parameters only.
    """

    def __init__(self, c_in: int, c_out: int, *, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(c_in, c_out, (3, 3), padding="SAME", use_bias=False, rngs=rngs)
        self.norm1 = nnx.GroupNorm(c_out, num_groups=_groups(c_out), rngs=rngs)
        self.conv2 = nnx.Conv(c_out, c_out, (3, 3), padding="SAME", use_bias=False, rngs=rngs)
        self.norm2 = nnx.GroupNorm(c_out, num_groups=_groups(c_out), rngs=rngs)

    def __call__(self, x):
        x = jax.nn.relu(self.norm1(self.conv1(x)))
        return jax.nn.relu(self.norm2(self.conv2(x)))


class UNetSmall(nnx.Module):
    """Compact U-Net: L levels with widths ``features`` (F_0 .. F_{L-1}), stride-1 logits.

    Encoder level l: ConvBlock(F_{l-1} -> F_l), then 2x2 max pooling (except the last level).
    Decoder level l (from L-2 down to 0): nearest 2x upsampling, concatenation with the encoder's
    level-l features, ConvBlock(F_{l+1} + F_l -> F_l). Head: 1x1 conv F_0 -> num_classes.
    Input x in [0, 1] is mapped to [-1, 1]. Any H, W: the input is edge-padded to a multiple of
    s 2^(L-1) and the logits are cropped back, so the output is (B, H, W, num_classes).

    ``input_stride`` s >= 1: the U-Net runs on the input averaged over s x s blocks
    (B, H/s, W/s, 3), and its logits are upsampled bilinearly back to (B, H, W, num_classes) (as
    FCN and DeepLab upsample theirs). s = 2 costs about a quarter of s = 1 per image.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        features: Sequence[int] = (16, 32, 64, 128),
        input_stride: int = 1,
        rngs: nnx.Rngs,
    ):
        features = tuple(int(f) for f in features)
        if not features or min(features) < 1:
            raise ValueError(
                f"UNetSmall: features must be a non-empty sequence of positive ints, got {features}"
            )
        if isinstance(input_stride, bool) or int(input_stride) != input_stride or input_stride < 1:
            raise ValueError(f"UNetSmall: input_stride must be an int >= 1, got {input_stride!r}")
        self.num_classes = num_classes
        self.levels = len(features)
        self.input_stride = int(input_stride)
        self.down = nnx.List(
            [
                ConvBlock(c_in, c_out, rngs=rngs)
                for c_in, c_out in zip((3,) + features[:-1], features)
            ]
        )
        self.up = nnx.List(
            [
                ConvBlock(features[l + 1] + features[l], features[l], rngs=rngs)
                for l in reversed(range(self.levels - 1))
            ]
        )
        self.head = nnx.Conv(features[0], num_classes, (1, 1), rngs=rngs)

    def __call__(self, x, train: bool = False):
        del train  # no dropout / batch statistics
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"UNetSmall: x must be (B, H, W, 3) images, got shape {x.shape}")
        b, h, w, _ = x.shape
        s = self.input_stride
        m = s * 2 ** (self.levels - 1)
        ph, pw = -h % m, -w % m
        x = jnp.pad(
            x.astype(jnp.float32) * 2.0 - 1.0, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="edge"
        )
        if s > 1:
            x = nnx.avg_pool(x, (s, s), strides=(s, s))
        skips = []
        for l, block in enumerate(self.down):
            x = block(x)
            if l < self.levels - 1:
                skips.append(x)
                x = nnx.max_pool(x, (2, 2), strides=(2, 2))
        for block in self.up:
            skip = skips.pop()
            x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
            x = block(jnp.concatenate([x, skip], axis=-1))
        logits = self.head(x)
        if s > 1:
            hp, wp = h + ph, w + pw
            logits = jax.image.resize(logits, (b, hp, wp, logits.shape[-1]), "bilinear")
        return logits[:, :h, :w, :]


def make_segmenter(name: str, num_classes: int, *, rngs: nnx.Rngs, **kwargs) -> nnx.Module:
    """A segmenter by name (see module docstring); ``kwargs`` go to the model's constructor."""
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"make_segmenter: num_classes must be a positive int, got {num_classes!r}")
    if name == "unet_small":
        return UNetSmall(num_classes, rngs=rngs, **kwargs)
    if name in SEGFORMER_NAMES:
        from dakpn_jax.models import segformer_convert  # pylint: disable=import-outside-toplevel

        return segformer_convert.make_segformer(name, num_classes, rngs=rngs, **kwargs)
    if name == "fcn_resnet50":
        from dakpn_jax.models import fcn_resnet50  # pylint: disable=import-outside-toplevel

        kwargs = dict(kwargs)
        weights, load_classifier = (
            kwargs.pop("weights", None),
            bool(kwargs.pop("load_classifier", True)),
        )
        model = fcn_resnet50.FCNResNet50(num_classes, rngs=rngs, **kwargs)
        if weights:
            fcn_resnet50.load_state_dict(
                model,
                fcn_resnet50.read_state_dict(weights),
                source=str(weights),
                load_classifier=load_classifier,
            )
        return model
    raise ValueError(f"make_segmenter: name={name!r} is unknown; expected one of {NAMES}")
