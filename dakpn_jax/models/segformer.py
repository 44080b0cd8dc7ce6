"""SegFormer (Xie et al., NeurIPS 2021): Mix Transformer (MiT-B0..B5) encoder + all-MLP decoder, in Flax NNX.

The paper's semantic encoder and downstream segmenter. Written from the published architecture; the
parameter layout mirrors the Hugging Face ``SegformerForSemanticSegmentation`` tensor names so that
:mod:`dakpn_jax.models.segformer_convert` can import local checkpoints one tensor at a time.

Shapes (NHWC throughout; ``C_i`` = ``spec.hidden_sizes[i]``, ``D`` = ``spec.decoder_hidden_size``)::

    x (B, H, W, 3) in [0, 1]  ->  (x - mean) / std                       ImageNet statistics, inside
    stage i = 0..3:
      overlapping patch embedding: conv k_i x k_i, stride s_i, zero pad k_i // 2, then LayerNorm
          (B, H_{i-1}, W_{i-1}, C_{i-1}) -> (B, H_i, W_i, C_i),  H_i = floor((H_{i-1} - 1) / s_i) + 1
      depth_i x block (pre-norm, stochastic depth on both residual branches):
          t = t + Attn(LN(t));   t = t + MixFFN(LN(t))
      LayerNorm
    decoder: f_i -> Linear(C_i -> D) -> bilinear resize to (H_0, W_0)         (half-pixel centres)
             concat [f_3, f_2, f_1, f_0] -> Linear(4D -> D, no bias) -> BatchNorm -> ReLU
             -> dropout -> Linear(D -> num_classes)
    logits (B, H_0, W_0, num_classes),  H_0 = ceil(H / 4): stride 4, the caller resizes to labels.

Efficient self-attention with sequence reduction ratio R: queries from all N = H_i W_i tokens,
keys/values from the R x R-strided conv of the token map (N / R^2 tokens) followed by LayerNorm;
``softmax(q k^T / sqrt(d)) v`` per head, then an output Linear. Cost O(N^2 / R^2) instead of O(N^2).

Mix-FFN: ``Linear(C -> 4C) -> depthwise 3x3 conv (zero pad 1) -> GELU (exact, erf) -> Linear(4C -> C)``;
the zero-padded depthwise conv leaks position information, so there is no position embedding and
any input size >= 32 px works (sequence reduction needs at least R x R tokens in every stage).

Every LayerNorm uses eps 1e-5 (PyTorch's default, which the published models were trained with).
The decoder BatchNorm uses eps 1e-5 and PyTorch momentum 0.1 (= flax momentum 0.9). In training
(``train=True``) under ``jax.jit`` with the batch sharded over a data mesh, its statistics span the
whole *global* batch (jit computes the mean over the logical array), i.e. SyncBN, as in the
published 8-GPU recipe. One small difference to PyTorch: the running variance is updated with the
biased batch variance (flax), not the unbiased one (factor n / (n - 1), n = B * H_0 * W_0 pixels).

Initialisation follows the published MiT: Linear weights truncated-normal(0.02) and zero bias,
convs normal(0, sqrt(2 / fan_out)) (fan_out = k * k * out / groups), LayerNorm/BatchNorm 1 and 0.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_LN_EPS = 1e-5
_LINEAR_INIT = nnx.initializers.truncated_normal(0.02)


@dataclasses.dataclass(frozen=True)
class SegFormerSpec:
    """Architecture hyper-parameters of one SegFormer (the Hugging Face ``SegformerConfig`` fields).

    All per-stage tuples have one entry per encoder stage (4 for every published variant).
    drop_path_rate: stochastic-depth rate of the last block; block k of K gets ``rate * k / (K - 1)``.
    classifier_dropout: dropout before the decoder's classifier.
    """

    hidden_sizes: tuple[int, ...]
    depths: tuple[int, ...]
    num_heads: tuple[int, ...] = (1, 2, 5, 8)
    sr_ratios: tuple[int, ...] = (8, 4, 2, 1)
    mlp_ratios: tuple[int, ...] = (4, 4, 4, 4)
    patch_sizes: tuple[int, ...] = (7, 3, 3, 3)
    strides: tuple[int, ...] = (4, 2, 2, 2)
    decoder_hidden_size: int = 256
    drop_path_rate: float = 0.1
    classifier_dropout: float = 0.1

    def __post_init__(self):
        n = len(self.hidden_sizes)
        for f in ("depths", "num_heads", "sr_ratios", "mlp_ratios", "patch_sizes", "strides"):
            v = getattr(self, f)
            if len(v) != n:
                raise ValueError(
                    f"SegFormerSpec.{f}={v} must have one entry per stage (len(hidden_sizes)={n})"
                )
            if any(int(e) < 1 for e in v) and f != "depths":
                raise ValueError(f"SegFormerSpec.{f}={v} must be positive")
        if n < 1 or any(d < 0 for d in self.depths):
            raise ValueError(
                f"SegFormerSpec: hidden_sizes={self.hidden_sizes}, depths={self.depths} invalid"
            )
        for c, h in zip(self.hidden_sizes, self.num_heads):
            if c % h:
                raise ValueError(f"SegFormerSpec: hidden size {c} not divisible by num_heads {h}")
        if not (0.0 <= self.drop_path_rate < 1.0 and 0.0 <= self.classifier_dropout < 1.0):
            raise ValueError(
                f"SegFormerSpec: drop_path_rate={self.drop_path_rate}, "
                f"classifier_dropout={self.classifier_dropout} must be in [0, 1)"
            )


_MIT_WIDE = (64, 128, 320, 512)
# MiT-B0..B5 (the published encoder table) with the decoder widths of the published segmenters.
SEGFORMER_VARIANTS: dict[str, SegFormerSpec] = {
    "segformer_b0": SegFormerSpec((32, 64, 160, 256), (2, 2, 2, 2), decoder_hidden_size=256),
    "segformer_b1": SegFormerSpec(_MIT_WIDE, (2, 2, 2, 2), decoder_hidden_size=256),
    "segformer_b2": SegFormerSpec(_MIT_WIDE, (3, 4, 6, 3), decoder_hidden_size=768),
    "segformer_b3": SegFormerSpec(_MIT_WIDE, (3, 4, 18, 3), decoder_hidden_size=768),
    "segformer_b4": SegFormerSpec(_MIT_WIDE, (3, 8, 27, 3), decoder_hidden_size=768),
    "segformer_b5": SegFormerSpec(_MIT_WIDE, (3, 6, 40, 3), decoder_hidden_size=768),
}


def get_spec(variant: str | SegFormerSpec) -> SegFormerSpec:
    """The spec of ``variant``: a :class:`SegFormerSpec`, a key of SEGFORMER_VARIANTS or its short
    form ``"b0"``..``"b5"``."""
    if isinstance(variant, SegFormerSpec):
        return variant
    name = variant if str(variant).startswith("segformer_") else f"segformer_{variant}"
    if name not in SEGFORMER_VARIANTS:
        raise ValueError(
            f"SegFormer: unknown variant={variant!r}; known: {sorted(SEGFORMER_VARIANTS)}"
        )
    return SEGFORMER_VARIANTS[name]


def _conv_init(k: int, cout: int, groups: int = 1):
    """normal(0, sqrt(2 / fan_out)), fan_out = k * k * cout / groups (the published MiT init)."""
    return nnx.initializers.normal((2.0 / (k * k * cout / groups)) ** 0.5)


def _linear(cin, cout, *, rngs, use_bias=True):
    return nnx.Linear(cin, cout, use_bias=use_bias, kernel_init=_LINEAR_INIT, rngs=rngs)


def _layer_norm(c, *, rngs):
    return nnx.LayerNorm(c, epsilon=_LN_EPS, rngs=rngs)


class OverlapPatchEmbed(nnx.Module):
    """Conv k x k, stride s, zero pad k // 2, then LayerNorm: (B, H, W, Cin) -> (B, H', W', C)."""

    def __init__(self, cin: int, cout: int, patch_size: int, stride: int, *, rngs: nnx.Rngs):
        p = patch_size // 2
        self.proj = nnx.Conv(
            cin,
            cout,
            (patch_size, patch_size),
            strides=(stride, stride),
            padding=((p, p), (p, p)),
            kernel_init=_conv_init(patch_size, cout),
            rngs=rngs,
        )
        self.layer_norm = _layer_norm(cout, rngs=rngs)

    def __call__(self, x):
        return self.layer_norm(self.proj(x))


class EfficientSelfAttention(nnx.Module):
    """Multi-head self-attention with keys/values from an R x R-strided conv of the token map.

    (B, H, W, C) -> (B, H, W, C). With R > 1 the keys/values come from
    ``LN(conv_RxR_stride_R(t))`` of shape (B, floor(H/R), floor(W/R), C).
    """

    def __init__(self, dim: int, num_heads: int, sr_ratio: int, *, rngs: nnx.Rngs):
        self.num_heads, self.sr_ratio = num_heads, sr_ratio
        self.query = _linear(dim, dim, rngs=rngs)
        self.key = _linear(dim, dim, rngs=rngs)
        self.value = _linear(dim, dim, rngs=rngs)
        if sr_ratio > 1:
            self.sr = nnx.Conv(
                dim,
                dim,
                (sr_ratio, sr_ratio),
                strides=(sr_ratio, sr_ratio),
                padding="VALID",
                kernel_init=_conv_init(sr_ratio, dim),
                rngs=rngs,
            )
            self.sr_norm = _layer_norm(dim, rngs=rngs)
        else:
            self.sr = self.sr_norm = None
        self.proj = _linear(dim, dim, rngs=rngs)

    def __call__(self, x):
        b, h, w, c = x.shape
        kv = x if self.sr is None else self.sr_norm(self.sr(x))
        heads = lambda t: t.reshape(b, -1, self.num_heads, c // self.num_heads)  # (B, T, heads, d)
        out = jax.nn.dot_product_attention(
            heads(self.query(x)), heads(self.key(kv)), heads(self.value(kv))
        )
        return self.proj(out.reshape(b, h, w, c))


class MixFFN(nnx.Module):
    """``Linear(C -> hidden) -> depthwise conv 3x3 -> GELU -> Linear(hidden -> C)`` on (B, H, W, C)."""

    def __init__(self, dim: int, hidden: int, *, rngs: nnx.Rngs):
        self.dense1 = _linear(dim, hidden, rngs=rngs)
        self.dwconv = nnx.Conv(
            hidden,
            hidden,
            (3, 3),
            padding=((1, 1), (1, 1)),
            feature_group_count=hidden,
            kernel_init=_conv_init(3, hidden, groups=hidden),
            rngs=rngs,
        )
        self.dense2 = _linear(hidden, dim, rngs=rngs)

    def __call__(self, x):
        return self.dense2(jax.nn.gelu(self.dwconv(self.dense1(x)), approximate=False))


class Block(nnx.Module):
    """Pre-norm transformer block: ``t + DropPath(Attn(LN(t)))``, then ``t + DropPath(MixFFN(LN(t)))``.

    DropPath (stochastic depth) zeroes a whole sample's residual branch with probability ``drop_path``
    and scales the kept ones by 1 / (1 - drop_path): a Dropout whose mask is shared over (H, W, C).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        sr_ratio: int,
        mlp_ratio: int,
        drop_path: float,
        *,
        rngs: nnx.Rngs,
    ):
        self.layer_norm_1 = _layer_norm(dim, rngs=rngs)
        self.attention = EfficientSelfAttention(dim, num_heads, sr_ratio, rngs=rngs)
        self.layer_norm_2 = _layer_norm(dim, rngs=rngs)
        self.mlp = MixFFN(dim, dim * mlp_ratio, rngs=rngs)
        self.drop_path = nnx.Dropout(drop_path, broadcast_dims=(1, 2, 3), rngs=rngs)

    def __call__(self, x, *, train: bool):
        x = x + self.drop_path(self.attention(self.layer_norm_1(x)), deterministic=not train)
        return x + self.drop_path(self.mlp(self.layer_norm_2(x)), deterministic=not train)


class MixTransformer(nnx.Module):
    """The MiT encoder: (B, H, W, 3) normalised pixels -> per-stage features [(B, H_i, W_i, C_i)]."""

    def __init__(self, spec: SegFormerSpec, in_channels: int = 3, *, rngs: nnx.Rngs):
        self.spec = spec
        total = sum(spec.depths)
        rates = [spec.drop_path_rate * k / max(total - 1, 1) for k in range(total)]
        cins = (in_channels,) + tuple(spec.hidden_sizes[:-1])
        self.patch_embeddings = nnx.List(
            [
                OverlapPatchEmbed(cin, c, k, s, rngs=rngs)
                for cin, c, k, s in zip(cins, spec.hidden_sizes, spec.patch_sizes, spec.strides)
            ]
        )
        blocks, start = [], 0
        for i, depth in enumerate(spec.depths):
            blocks.append(
                nnx.List(
                    [
                        Block(
                            spec.hidden_sizes[i],
                            spec.num_heads[i],
                            spec.sr_ratios[i],
                            spec.mlp_ratios[i],
                            rates[start + j],
                            rngs=rngs,
                        )
                        for j in range(depth)
                    ]
                )
            )
            start += depth
        self.block = nnx.List(blocks)
        self.layer_norm = nnx.List([_layer_norm(c, rngs=rngs) for c in spec.hidden_sizes])

    def __call__(self, x, *, train: bool = False) -> list[jax.Array]:
        feats = []
        for embed, blocks, norm in zip(self.patch_embeddings, self.block, self.layer_norm):
            x = embed(x)
            for blk in blocks:
                x = blk(x, train=train)
            x = norm(x)
            feats.append(x)
        return feats


def _resize_bilinear(x, height: int, width: int):
    """Bilinear resize of (B, h, w, C) with half-pixel centres (PyTorch ``align_corners=False``)."""
    if x.shape[1:3] == (height, width):
        return x
    # Upsampling only here, where antialiasing has no effect; say so for clarity.
    return jax.image.resize(x, (x.shape[0], height, width, x.shape[3]), "linear", antialias=False)


class AllMLPDecoder(nnx.Module):
    """The all-MLP head: per-stage Linear to D, upsample to stage 0, fuse, classify."""

    def __init__(self, spec: SegFormerSpec, num_classes: int, *, rngs: nnx.Rngs):
        d = spec.decoder_hidden_size
        n = len(spec.hidden_sizes)
        self.linear_c = nnx.List([_linear(c, d, rngs=rngs) for c in spec.hidden_sizes])
        # 1x1 convs are Linears over the channel axis.
        self.linear_fuse = nnx.Linear(
            n * d, d, use_bias=False, kernel_init=_conv_init(1, d), rngs=rngs
        )
        self.batch_norm = nnx.BatchNorm(d, momentum=0.9, epsilon=1e-5, rngs=rngs)
        self.dropout = nnx.Dropout(spec.classifier_dropout, rngs=rngs)
        self.classifier = nnx.Linear(
            d, num_classes, kernel_init=nnx.initializers.normal(0.01), rngs=rngs
        )

    def __call__(self, feats: Sequence[jax.Array], *, train: bool = False):
        h0, w0 = feats[0].shape[1:3]
        ups = [_resize_bilinear(lin(f), h0, w0) for f, lin in zip(feats, self.linear_c)]
        x = self.linear_fuse(jnp.concatenate(ups[::-1], axis=-1))  # deepest stage first
        x = jax.nn.relu(self.batch_norm(x, use_running_average=not train))
        return self.classifier(self.dropout(x, deterministic=not train))


class SegFormer(nnx.Module):
    """SegFormer segmenter: float32 images in [0, 1] (B, H, W, 3) -> logits (B, ceil(H/4), ceil(W/4), C).

    Args:
      variant: ``"segformer_b0"``..``"segformer_b5"`` (or ``"b0"``..``"b5"``), or a :class:`SegFormerSpec`.
      num_classes: decoder output classes.
      rngs: parameter init; its ``dropout`` stream (or default) drives stochastic depth and dropout
        when ``train=True``.
      **overrides: SegFormerSpec fields replacing the variant's (e.g. ``drop_path_rate=0.0``).
    """

    def __init__(
        self, variant: str | SegFormerSpec, num_classes: int, *, rngs: nnx.Rngs, **overrides
    ):
        spec = get_spec(variant)
        if overrides:
            bad = set(overrides) - {f.name for f in dataclasses.fields(SegFormerSpec)}
            if bad:
                raise ValueError(f"SegFormer: unknown spec fields {sorted(bad)}")
            spec = dataclasses.replace(spec, **overrides)
        if int(num_classes) < 1:
            raise ValueError(f"SegFormer: num_classes={num_classes} must be >= 1")
        self.spec, self.num_classes = spec, int(num_classes)
        self.encoder = MixTransformer(spec, rngs=rngs)
        self.decode_head = AllMLPDecoder(spec, self.num_classes, rngs=rngs)

    def _check(self, x):
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(
                f"SegFormer: x has shape {x.shape}; expected (B, H, W, 3) float in [0, 1]"
            )
        h, w = x.shape[1:3]
        for i, (s, r) in enumerate(zip(self.spec.strides, self.spec.sr_ratios)):
            h, w = (h - 1) // s + 1, (w - 1) // s + 1
            if min(h, w) < r:
                raise ValueError(
                    f"SegFormer: x spatial size {x.shape[1:3]} too small: stage {i} is "
                    f"{h}x{w} tokens, fewer than its sequence-reduction ratio {r} per side"
                )

    def encode(self, x: jax.Array, *, train: bool = False) -> list[jax.Array]:
        """Encoder features of images x (B, H, W, 3) in [0, 1]: [(B, H_i, W_i, C_i)] for each stage
        (strides 4, 8, 16, 32 for the published variants)."""
        self._check(x)
        mean = jnp.asarray(IMAGENET_MEAN, x.dtype)
        std = jnp.asarray(IMAGENET_STD, x.dtype)
        return self.encoder((x - mean) / std, train=train)

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Logits (B, H_0, W_0, num_classes) at stride 4 of images x (B, H, W, 3) in [0, 1]."""
        return self.decode_head(self.encode(x, train=train), train=train)
