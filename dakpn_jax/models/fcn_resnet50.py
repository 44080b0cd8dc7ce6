"""FCN-ResNet50 (Long et al. 2015 on a dilated ResNet-50) in Flax NNX, in torchvision's layout, with
an importer for torchvision-layout weights (``.pth`` via torch when installed, or ``.safetensors``).

Written from the published layer list (torchvision ``fcn_resnet50``, not copied). Input
(B, H, W, 3) float32 in [0, 1]; ``normalize=True`` applies ImageNet mean/std first (torchvision's
preset transforms), ``normalize=False`` feeds the raw [0, 1] pixels (the authors' export script
runs the encoder so, docs/METHOD.md §6). NHWC throughout; convs have no bias unless stated::

    backbone (ResNet-50, replace_stride_with_dilation = [False, True, True]; output stride 8)
      conv1 7x7 s2 p3 (3 -> 64), bn1, ReLU, max-pool 3x3 s2 p1
      layer1: 3 bottlenecks, width  64, out  256, stride 1
      layer2: 4 bottlenecks, width 128, out  512, stride 2 (on the first block's 3x3 conv)
      layer3: 6 bottlenecks, width 256, out 1024, stride 1, dilation 2 (first block dilation 1)
      layer4: 3 bottlenecks, width 512, out 2048, stride 1, dilation 4 (first block dilation 2)
    bottleneck(width w, out 4w, stride s, dilation d):
      conv1 1x1 -> w, bn1, ReLU; conv2 3x3 stride s, dilation d, padding d -> w, bn2, ReLU;
      conv3 1x1 -> 4w, bn3; + identity (or downsample: 1x1 conv stride s -> 4w, BN); ReLU
    classifier (FCNHead): 3x3 p1 conv 2048 -> 512, BN, ReLU, Dropout(0.1), 1x1 conv 512 -> C (+bias)
    aux_classifier (optional, on layer3): 3x3 conv 1024 -> 256, BN, ReLU, Dropout(0.1), 1x1 256 -> C
    logits: bilinear upsampling to (H, W) (half-pixel centres, like align_corners=False)

BatchNorm: eps 1e-5, running averages with PyTorch's momentum 0.1 (flax momentum 0.9); ``train``
uses batch statistics and updates them, otherwise the running averages (a frozen encoder).

Weights. Parameter names follow torchvision's state dict (``backbone.layer1.0.conv1.weight``,
``classifier.4.bias``, ``aux_classifier.*``; OIHW kernels transposed to HWIO; BatchNorm
``weight, bias, running_mean, running_var`` -> ``scale, bias, mean, var``; ``num_batches_tracked``
ignored). :func:`load_state_dict` maps every tensor and raises ``ValueError`` listing the missing,
unexpected and shape-mismatched tensors; ``aux_classifier.*`` tensors are skipped (and reported)
for a model built without the aux head.

As a segmenter: ``make_segmenter("fcn_resnet50", C, rngs=..., weights=PATH, aux=False,
normalize=True)``; ``model(x, train)`` returns the main logits (the aux head's output is
:meth:`FCNResNet50.forward_with_aux`; the segmentation method trains the main head only).
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dakpn_jax.models import weight_files

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
LAYERS = ((64, 3, 1, False), (128, 4, 2, False), (256, 6, 2, True), (512, 3, 2, True))
"""(width, blocks, stride, dilate) of layer1..layer4: a dilated layer keeps stride 1, doubles the dilation."""
_KAIMING = nnx.initializers.variance_scaling(
    2.0, "fan_out", "normal"
)  # torchvision's ResNet conv init


def _conv(cin, cout, k, *, stride=1, dilation=1, bias=False, rngs):
    p = dilation * (k // 2)
    return nnx.Conv(
        cin,
        cout,
        (k, k),
        strides=(stride, stride),
        padding=((p, p), (p, p)),
        kernel_dilation=(dilation, dilation),
        use_bias=bias,
        kernel_init=_KAIMING,
        rngs=rngs,
    )


def _bn(c, *, rngs):
    return nnx.BatchNorm(c, momentum=0.9, epsilon=1e-5, use_fast_variance=False, rngs=rngs)


class Downsample(nnx.Module):
    """The shortcut projection: 1x1 conv (stride s) + BN (torchvision ``downsample.0`` / ``.1``)."""

    def __init__(self, cin, cout, stride, *, rngs):
        self.conv = _conv(cin, cout, 1, stride=stride, rngs=rngs)
        self.bn = _bn(cout, rngs=rngs)

    def __call__(self, x, train):
        return self.bn(self.conv(x), use_running_average=not train)


class Bottleneck(nnx.Module):
    """ResNet v1.5 bottleneck (stride on the 3x3 conv), see the module docstring."""

    def __init__(self, cin, width, *, stride=1, dilation=1, rngs):
        cout = 4 * width
        self.conv1, self.bn1 = _conv(cin, width, 1, rngs=rngs), _bn(width, rngs=rngs)
        self.conv2 = _conv(width, width, 3, stride=stride, dilation=dilation, rngs=rngs)
        self.bn2 = _bn(width, rngs=rngs)
        self.conv3, self.bn3 = _conv(width, cout, 1, rngs=rngs), _bn(cout, rngs=rngs)
        self.downsample = (
            Downsample(cin, cout, stride, rngs=rngs) if (stride != 1 or cin != cout) else None
        )

    def __call__(self, x, train):
        ra = not train
        h = jax.nn.relu(self.bn1(self.conv1(x), use_running_average=ra))
        h = jax.nn.relu(self.bn2(self.conv2(h), use_running_average=ra))
        h = self.bn3(self.conv3(h), use_running_average=ra)
        return jax.nn.relu(h + (x if self.downsample is None else self.downsample(x, train)))


class ResNet50Backbone(nnx.Module):
    """Dilated ResNet-50 (output stride 8): returns (layer3, layer4) features."""

    def __init__(self, *, rngs):
        self.conv1 = _conv(3, 64, 7, stride=2, rngs=rngs)
        self.bn1 = _bn(64, rngs=rngs)
        cin, dilation = 64, 1
        for i, (width, blocks, stride, dilate) in enumerate(LAYERS, 1):
            previous = dilation
            if dilate:
                dilation, stride = dilation * stride, 1
            layer = [Bottleneck(cin, width, stride=stride, dilation=previous, rngs=rngs)]
            layer += [
                Bottleneck(4 * width, width, dilation=dilation, rngs=rngs)
                for _ in range(blocks - 1)
            ]
            setattr(self, f"layer{i}", nnx.List(layer))
            cin = 4 * width

    def __call__(self, x, train):
        h = jax.nn.relu(self.bn1(self.conv1(x), use_running_average=not train))
        h = jax.lax.reduce_window(
            h, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1), ((0, 0), (1, 1), (1, 1), (0, 0))
        )
        for block in self.layer1:
            h = block(h, train)
        for block in self.layer2:
            h = block(h, train)
        for block in self.layer3:
            h = block(h, train)
        mid = h
        for block in self.layer4:
            h = block(h, train)
        return mid, h


class FCNHead(nnx.Module):
    """3x3 conv (cin -> cin / 4), BN, ReLU, Dropout, 1x1 conv (-> C, with bias)."""

    def __init__(self, cin, num_classes, *, dropout=0.1, rngs):
        inter = cin // 4
        self.conv = _conv(cin, inter, 3, rngs=rngs)
        self.bn = _bn(inter, rngs=rngs)
        self.dropout = nnx.Dropout(dropout, rngs=rngs)
        self.out = nnx.Conv(inter, num_classes, (1, 1), rngs=rngs)

    def __call__(self, x, train):
        h = jax.nn.relu(self.bn(self.conv(x), use_running_average=not train))
        return self.out(self.dropout(h, deterministic=not train))


class FCNResNet50(nnx.Module):
    """(B, H, W, 3) in [0, 1] -> logits (B, H, W, num_classes) (module docstring)."""

    def __init__(
        self,
        num_classes: int,
        *,
        aux: bool = False,
        normalize: bool = True,
        dropout: float = 0.1,
        rngs: nnx.Rngs,
    ):
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(
                f"FCNResNet50: num_classes must be a positive int, got {num_classes!r}"
            )
        self.num_classes, self.normalize = num_classes, bool(normalize)
        self.backbone = ResNet50Backbone(rngs=rngs)
        self.classifier = FCNHead(2048, num_classes, dropout=dropout, rngs=rngs)
        self.aux_classifier = (
            FCNHead(1024, num_classes, dropout=dropout, rngs=rngs) if aux else None
        )

    def forward_with_aux(self, x, train: bool = False):
        """(main logits, aux logits or None), both (B, H, W, C)."""
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"FCNResNet50: x must be (B, H, W, 3) images, got shape {x.shape}")
        b, h, w, _ = x.shape
        x = x.astype(jnp.float32)
        if self.normalize:
            x = (x - IMAGENET_MEAN) / IMAGENET_STD
        mid, feats = self.backbone(x, train)
        up = lambda z: jax.image.resize(z, (b, h, w, z.shape[-1]), "bilinear")
        aux = None if self.aux_classifier is None else up(self.aux_classifier(mid, train))
        return up(self.classifier(feats, train)), aux

    def __call__(self, x, train: bool = False):
        return self.forward_with_aux(x, train)[0]


# ----------------------------------------------------------------------------- weights


def torch_entries(model: FCNResNet50) -> dict[str, tuple[nnx.Variable, bool]]:
    """torchvision state-dict key -> (the model's variable, is a conv kernel), for every tensor."""
    out: dict[str, tuple[nnx.Variable, bool]] = {}

    def conv(prefix, c):
        out[prefix + ".weight"] = (c.kernel, True)
        if c.bias is not None:
            out[prefix + ".bias"] = (c.bias, False)

    def bn(prefix, b):
        for t, n in (
            ("weight", "scale"),
            ("bias", "bias"),
            ("running_mean", "mean"),
            ("running_var", "var"),
        ):
            out[f"{prefix}.{t}"] = (getattr(b, n), False)

    bb = model.backbone
    conv("backbone.conv1", bb.conv1)
    bn("backbone.bn1", bb.bn1)
    for i in range(1, len(LAYERS) + 1):
        for j, blk in enumerate(getattr(bb, f"layer{i}")):
            p = f"backbone.layer{i}.{j}"
            for k in (1, 2, 3):
                conv(f"{p}.conv{k}", getattr(blk, f"conv{k}"))
                bn(f"{p}.bn{k}", getattr(blk, f"bn{k}"))
            if blk.downsample is not None:
                conv(f"{p}.downsample.0", blk.downsample.conv)
                bn(f"{p}.downsample.1", blk.downsample.bn)
    for name in ("classifier", "aux_classifier"):
        head = getattr(model, name)
        if head is not None:  # torch Sequential indices: 0 conv, 1 BN, 2 ReLU, 3 Dropout, 4 conv
            conv(f"{name}.0", head.conv)
            bn(f"{name}.1", head.bn)
            conv(f"{name}.4", head.out)
    return out


def _torch_shape(var: nnx.Variable, is_kernel: bool) -> tuple[int, ...]:
    shape = tuple(var[...].shape)
    return (shape[3], shape[2], shape[0], shape[1]) if is_kernel else shape


def load_state_dict(
    model: FCNResNet50,
    state_dict: Mapping[str, Any],
    *,
    source: str = "state dict",
    load_classifier: bool = True,
) -> dict:
    """Copies a torchvision-layout state dict into ``model`` in place.

    ``load_classifier=False`` leaves ``classifier.4`` / ``aux_classifier.4`` (the class-count
    dependent 1x1 convs) at their initialisation and ignores those tensors (fine-tuning to another
    label set). Raises ValueError naming ``source`` and listing every missing, unexpected and
    shape-mismatched tensor. Returns ``{"loaded": [keys], "skipped": [keys]}``."""
    tensors = {
        str(k): np.asarray(v)
        for k, v in state_dict.items()
        if not str(k).endswith("num_batches_tracked")
    }
    entries = torch_entries(model)
    skipped = []
    if model.aux_classifier is None:
        skipped += sorted(k for k in tensors if k.startswith("aux_classifier."))
    if not load_classifier:
        drop = [k for k in entries if k.startswith(("classifier.4.", "aux_classifier.4."))]
        skipped += sorted(k for k in drop if k in tensors)
        for k in drop:
            entries.pop(k)
    for k in skipped:
        tensors.pop(k, None)
    missing = sorted(set(entries) - set(tensors))
    unexpected = sorted(set(tensors) - set(entries))
    mismatched = [
        f"{k}: file {tensors[k].shape} vs model {_torch_shape(*entries[k])}"
        for k in sorted(entries)
        if k in tensors and tuple(tensors[k].shape) != _torch_shape(*entries[k])
    ]
    if missing or unexpected or mismatched:
        parts = [
            f"{name} ({len(v)}): {v}"
            for name, v in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("mismatched", mismatched),
            )
            if v
        ]
        raise ValueError(
            f"{source}: not a torchvision fcn_resnet50 state dict for this model "
            f"(num_classes={model.num_classes}, aux={model.aux_classifier is not None}); "
            + "; ".join(parts)
        )
    for k, (var, is_kernel) in entries.items():
        value = tensors[k].astype(np.float32)
        var[...] = jnp.asarray(value.transpose(2, 3, 1, 0) if is_kernel else value)
    return {"loaded": sorted(entries), "skipped": skipped}


def read_state_dict(path: str) -> dict[str, np.ndarray]:
    """Tensors of a ``.safetensors`` file, or of a torch-saved ``.pth`` / ``.pt`` state dict (needs
    torch; a checkpoint dict holding ``"model"`` or ``"state_dict"`` is unwrapped)."""
    return weight_files.read_tensors(path, what="FCN-ResNet50 weights file")


def from_pretrained(
    path: str,
    num_classes: int,
    *,
    aux: bool | None = None,
    normalize: bool = True,
    load_classifier: bool = True,
    rngs: nnx.Rngs | None = None,
) -> FCNResNet50:
    """An FCNResNet50 with the weights of ``path``; ``aux=None``: built with the aux head iff the
    file has ``aux_classifier.*`` tensors."""
    tensors = read_state_dict(path)
    if aux is None:
        aux = any(k.startswith("aux_classifier.") for k in tensors)
    model = FCNResNet50(num_classes, aux=aux, normalize=normalize, rngs=rngs or nnx.Rngs(0))
    load_state_dict(model, tensors, source=path, load_classifier=load_classifier)
    return model


def load_frozen(path: str, num_classes: int, *, normalize: bool = True):
    """``(apply_fn, params)`` of a frozen FCN-ResNet50 (eval mode: running BatchNorm statistics, no
    dropout), the pair DA-KPN's segmenter features take: ``apply_fn(params, images (B, H, W, 3) in
    [0, 1]) -> logits (B, H, W, num_classes)``, pure and jittable."""
    model = from_pretrained(path, num_classes, aux=False, normalize=normalize)
    graphdef, state = nnx.split(model)

    def apply_fn(params, images):
        return nnx.merge(graphdef, params)(images, train=False)

    return apply_fn, state


__all__ = [
    "FCNResNet50",
    "load_state_dict",
    "read_state_dict",
    "from_pretrained",
    "load_frozen",
    "torch_entries",
]
