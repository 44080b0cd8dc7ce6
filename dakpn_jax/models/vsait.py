"""VSAIT's networks (Theiss et al., ECCV 2022: vector-symbolic architectures for unpaired
translation), written from docs/METHOD.md §8 in Flax NNX: the blur-pooled ResNet generator, the
hypervector map, the mapping network M and the per-cell hypervector discriminator.

Hypervector map (one 4096-d real vector per non-overlapping 16 x 16 cell of an image). A frozen
VGG19 (``models/vgg19.py``) sees the image in [-1, 1]; its taps relu1_2, relu2_2, relu3_2, relu4_2
and the pre-ReLU conv5_2 have strides 1, 2, 4, 8, 16, so cell p = (r, c) covers the block
``[16r:16r+16, 16c:16c+16]`` of relu1_2, ``[8r:8r+8, 8c:8c+8]`` of relu2_2, ..., the single pixel
(r, c) of conv5_2. Each block is flattened in (row, column, channel) order and the five blocks are
concatenated in tap order::

    f_p = [vec(relu1_2 block), vec(relu2_2 block), ..., vec(conv5_2 block)]   (31,232 values at
          16*16*64 + 8*8*128 + 4*4*256 + 2*2*512 + 1*1*512, the published widths)
    h_p[j] = <R_j, f_p> / (||f_p|| ||R_j|| + 1e-5),     j = 0..D-1 (D = 4096)

with R (D, 31,232) a fixed matrix of standard normal entries (rows are random Gaussian
directions; not binarised). The flattening order is ours (§8 does not fix it; with a random R any
fixed order gives the same distribution of maps).

Binding and unbinding are the element-wise product. M(v) = tanh(W2 relu(W1 v + b1) + b2) per cell
(1x1 convs = Dense on the last axis, D -> D -> D), W2 = 0 and b2 = 1 at init, so M starts at
tanh(1) everywhere. The discriminator is per cell: D -> 1024 -> 1024 -> 1, LeakyReLU 0.2, no norm.

Generator (§8): ResNet encoder-decoder, 64 base filters, 9 residual blocks::

    reflect-pad 3, conv 7x7 (3 -> F), IN, ReLU
    2 x [conv 3x3 stride 1 zero-pad 1 (F 2^i -> F 2^(i+1)), IN, ReLU, blur-down]
    9 x residual block (reflect-pad 1, conv 3x3, IN, ReLU, reflect-pad 1, conv 3x3, IN, add)
    2 x [blur-up, conv 3x3 zero-pad 1 (F 2^(n-i) -> F 2^(n-i-1)), IN, ReLU]
    reflect-pad 3, conv 7x7 (F -> 3), tanh

    blur-down: depthwise 3x3 Gaussian (sigma 1, normalised), zero pad 1, stride 2: H -> H/2.
    blur-up:   zero-dilate x2 (x[i] at 2i), depthwise 4x4 Gaussian (taps at +-0.5, +-1.5 px,
               sigma 1, normalised, times 4 = the inverse density of the dilated grid): H -> 2H.
               Borders: the input is edge-padded by one pixel before dilation (our reading; §8
               does not name the border), so output 2i = (w_a x[i-1] + w_b x[i]) * 2 per axis with
               (w_a, w_b) the outer and inner 1-D taps, and output 2i+1 = (w_b x[i] + w_a x[i+1]) * 2:
               the half-pixel-aligned, border-preserving interpolation.

The order conv -> IN -> ReLU -> blur in the downsampling stage and blur -> conv -> IN -> ReLU in the
upsampling stage is the anti-aliased CUT layout (docs/METHOD.md §7); IN is instance norm without affine
parameters (per image, so data parallelism needs no cross-device statistics). Init: Xavier-normal
with gain 0.2 and zero biases for G (§8); M's W1 and the discriminator use the same initialiser
(§8 does not name theirs), M's W2 = 0, b2 = 1.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dakpn_jax.models import vgg19
from dakpn_jax.models.resnet_generator import instance_norm, reflect_pad

CELL = 16
DIM = 4096
_EPS = 1e-5


def xavier_normal(gain: float = 0.2):
    """Xavier (Glorot) normal: std = gain * sqrt(2 / (fan_in + fan_out)); fans include the kernel area."""
    return nnx.initializers.variance_scaling(gain * gain, "fan_avg", "normal")


# ----------------------------------------------------------------------------- fixed blurs


def gaussian_taps(n: int, sigma: float = 1.0) -> np.ndarray:
    """Normalised 1-D Gaussian of ``n`` taps centred on the middle (half-integer offsets for even n)."""
    x = np.arange(n, dtype=np.float64) - (n - 1) / 2
    w = np.exp(-x * x / (2 * sigma * sigma))
    return w / w.sum()


def _depthwise(
    x: jax.Array, taps: np.ndarray, *, stride: int = 1, padding, lhs_dilation=(1, 1)
) -> jax.Array:
    c = x.shape[-1]
    k = np.outer(taps, taps).astype(np.float32)
    kernel = jnp.asarray(np.broadcast_to(k[:, :, None, None], k.shape + (1, c)))  # HWIO, groups = C
    return jax.lax.conv_general_dilated(
        x,
        kernel.astype(x.dtype),
        (stride, stride),
        padding,
        lhs_dilation=lhs_dilation,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=c,
    )


def blur_down(x: jax.Array) -> jax.Array:
    """3x3 Gaussian blur (sigma 1), zero pad 1, stride 2: (B, H, W, C) -> (B, ceil(H/2), ceil(W/2), C)."""
    return _depthwise(x, gaussian_taps(3), stride=2, padding=((1, 1), (1, 1)))


def blur_up(x: jax.Array) -> jax.Array:
    """x2 upsampling: edge pad 1, zero-dilate, 4x4 Gaussian (sigma 1) x 4: (B, H, W, C) -> (B, 2H, 2W, C)."""
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    return _depthwise(xp, gaussian_taps(4) * 2.0, padding=((0, 0), (0, 0)), lhs_dilation=(2, 2))


# ----------------------------------------------------------------------------- generator


def _conv(cin, cout, k, *, rngs, padding="VALID", gain=0.2):
    return nnx.Conv(
        cin,
        cout,
        (k, k),
        padding=padding,
        kernel_init=xavier_normal(gain),
        bias_init=nnx.initializers.zeros,
        rngs=rngs,
    )


class _ResBlock(nnx.Module):
    def __init__(self, c: int, *, gain: float, rngs: nnx.Rngs):
        self.conv1 = _conv(c, c, 3, rngs=rngs, gain=gain)
        self.conv2 = _conv(c, c, 3, rngs=rngs, gain=gain)

    def __call__(self, x):
        h = jax.nn.relu(instance_norm(self.conv1(reflect_pad(x, 1))))
        return x + instance_norm(self.conv2(reflect_pad(h, 1)))


class VSAITGenerator(nnx.Module):
    """(B, H, W, 3) in [-1, 1] -> (B, H, W, 3) in [-1, 1]; H, W divisible by f = 2^n_down and
    >= max(2 f, 4) (the bottleneck's reflection pad needs 2 pixels there, the stem's pad 4).

    Args: ngf (64 published), n_blocks (9), n_down (2), gain of the Xavier-normal init (0.2).
    """

    def __init__(
        self,
        *,
        ngf: int = 64,
        n_blocks: int = 9,
        n_down: int = 2,
        gain: float = 0.2,
        rngs: nnx.Rngs,
    ):
        if ngf < 1 or n_blocks < 0 or n_down < 0:
            raise ValueError(
                f"VSAITGenerator: ngf={ngf}, n_blocks={n_blocks}, n_down={n_down} invalid"
            )
        self.n_down = n_down
        pad1 = ((1, 1), (1, 1))
        self.stem = _conv(3, ngf, 7, rngs=rngs, gain=gain)
        self.down = nnx.List(
            [
                _conv(ngf * 2**i, ngf * 2 ** (i + 1), 3, padding=pad1, rngs=rngs, gain=gain)
                for i in range(n_down)
            ]
        )
        c = ngf * 2**n_down
        self.blocks = nnx.List([_ResBlock(c, gain=gain, rngs=rngs) for _ in range(n_blocks)])
        self.up = nnx.List(
            [
                _conv(
                    ngf * 2 ** (n_down - i),
                    ngf * 2 ** (n_down - i - 1),
                    3,
                    padding=pad1,
                    rngs=rngs,
                    gain=gain,
                )
                for i in range(n_down)
            ]
        )
        self.head = _conv(ngf, 3, 7, rngs=rngs, gain=gain)

    def __call__(self, x: jax.Array) -> jax.Array:
        f = 2**self.n_down
        if (
            x.ndim != 4
            or x.shape[-1] != 3
            or x.shape[1] % f
            or x.shape[2] % f
            or min(x.shape[1:3]) < max(2 * f, 4)
        ):
            raise ValueError(
                f"VSAITGenerator: input shape {x.shape} must be (B, H, W, 3) with H, W "
                f"divisible by {f} and >= {max(2 * f, 4)}"
            )
        h = jax.nn.relu(instance_norm(self.stem(reflect_pad(x, 3))))
        for conv in self.down:
            h = blur_down(jax.nn.relu(instance_norm(conv(h))))
        for block in self.blocks:
            h = block(h)
        for conv in self.up:
            h = jax.nn.relu(instance_norm(conv(blur_up(h))))
        return jnp.tanh(self.head(reflect_pad(h, 3)))


# ----------------------------------------------------------------------------- hypervectors


def feature_dim(vgg_width: int = 64) -> int:
    """Length of f_p: sum over taps of (16 / stride)^2 * channels (31,232 at the published width)."""
    return sum(
        (CELL // s) ** 2 * c for s, c in zip(vgg19.TAP_STRIDES, vgg19.tap_channels(vgg_width))
    )


def cell_features(taps: dict) -> jax.Array:
    """The five VGG taps -> per-cell feature vectors f (B, H/16, W/16, F) (module docstring order)."""
    x0 = taps[vgg19.TAP_ORDER[0]]
    b, h, w = x0.shape[:3]
    if h % CELL or w % CELL:
        raise ValueError(
            f"hypervectors: image size {h} x {w} must be divisible by the cell size {CELL}"
        )
    hc, wc = h // CELL, w // CELL
    parts = []
    for name, s in zip(vgg19.TAP_ORDER, vgg19.TAP_STRIDES):
        t = taps[name]
        k = CELL // s
        if t.shape[1:3] != (hc * k, wc * k):
            raise ValueError(
                f"hypervectors: tap {name} has size {t.shape[1:3]}, expected {(hc * k, wc * k)}"
            )
        c = t.shape[-1]
        t = t.reshape(b, hc, k, wc, k, c).transpose(0, 1, 3, 2, 4, 5)
        parts.append(t.reshape(b, hc, wc, k * k * c))
    return jnp.concatenate(parts, axis=-1)


def projection(key: jax.Array, dim: int, feat_dim: int) -> jax.Array:
    """R: (dim, feat_dim) standard normal from a raw uint32[2] (or typed) key; regenerated, never trained."""
    if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.wrap_key_data(key)
    return jax.random.normal(key, (dim, feat_dim), jnp.float32)


def project(f: jax.Array, r: jax.Array) -> jax.Array:
    """h[..., j] = <R_j, f> / (||f|| ||R_j|| + 1e-5): f (..., F), R (D, F) -> (..., D)."""
    if f.shape[-1] != r.shape[1]:
        raise ValueError(
            f"hypervectors: features have {f.shape[-1]} values per cell, projection {r.shape}"
        )
    r = jax.lax.stop_gradient(r)
    r_norm = jnp.sqrt(jnp.sum(r * r, axis=1))  # (D,)
    # max(., tiny) keeps the gradient of the norm finite at f = 0 (value unchanged otherwise).
    f_norm = jnp.sqrt(jnp.maximum(jnp.sum(f * f, axis=-1, keepdims=True), 1e-30))  # (..., 1)
    return jnp.einsum("...f,df->...d", f, r) / (f_norm * r_norm + _EPS)


def hypervectors(vgg: nnx.Module, images: jax.Array, r: jax.Array) -> jax.Array:
    """Images (B, H, W, 3) in [-1, 1] -> hypervectors (B, H/16, W/16, D)."""
    return project(cell_features(vgg(images)), r)


# ----------------------------------------------------------------------------- M and D


class MappingNetwork(nnx.Module):
    """M(v) = tanh(W2 relu(W1 v + b1) + b2) on the last axis; W2 = 0, b2 = 1 at init."""

    def __init__(self, dim: int = DIM, *, gain: float = 0.2, rngs: nnx.Rngs):
        self.l1 = nnx.Linear(
            dim, dim, kernel_init=xavier_normal(gain), bias_init=nnx.initializers.zeros, rngs=rngs
        )
        self.l2 = nnx.Linear(
            dim, dim, kernel_init=nnx.initializers.zeros, bias_init=nnx.initializers.ones, rngs=rngs
        )

    def __call__(self, v: jax.Array) -> jax.Array:
        return jnp.tanh(self.l2(jax.nn.relu(self.l1(v))))


class HypervectorDiscriminator(nnx.Module):
    """Per-cell score: (..., D) -> (..., 1); D -> hidden -> hidden -> 1, LeakyReLU 0.2, no norm."""

    def __init__(self, dim: int = DIM, hidden: int = 1024, *, gain: float = 0.2, rngs: nnx.Rngs):
        lin = lambda i, o: nnx.Linear(
            i, o, kernel_init=xavier_normal(gain), bias_init=nnx.initializers.zeros, rngs=rngs
        )
        self.l1, self.l2, self.l3 = lin(dim, hidden), lin(hidden, hidden), lin(hidden, 1)

    def __call__(self, h: jax.Array) -> jax.Array:
        a = jax.nn.leaky_relu(self.l1(h), 0.2)
        a = jax.nn.leaky_relu(self.l2(a), 0.2)
        return self.l3(a)


def num_params(module: nnx.Module) -> int:
    return sum(int(math.prod(x.shape)) for x in jax.tree.leaves(nnx.state(module, nnx.Param)))
