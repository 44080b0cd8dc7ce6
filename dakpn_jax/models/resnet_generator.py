"""ResNet generator of CycleGAN / CUT (Zhu et al. 2017; Park et al. 2020), written for Flax NNX.

Architecture (``ngf`` = base filters F, ``n_down`` = 2, ``n_blocks`` = 9 by default)::

    reflect-pad 3, conv 7x7 (3 -> F), IN, ReLU
    n_down x down stage (F*2^i -> F*2^(i+1))
    n_blocks x residual block: x + IN(conv3x3(reflect-pad 1, ReLU(IN(conv3x3(reflect-pad 1, x)))))
    n_down x up stage (F*2^(n_down-i) -> F*2^(n_down-i-1))
    reflect-pad 3, conv 7x7 (F -> 3), tanh

Down and up stages, two forms (docs/METHOD.md §7):

- CycleGAN (``antialias=False``, ``antialias_up=False``; CUT's ``--no_antialias
  --no_antialias_up``): down = conv 3x3 stride 2 zero-pad 1, IN, ReLU; up = :class:`ConvTranspose2d`
  (PyTorch's ``ConvTranspose2d(k=3, stride=2, padding=1, output_padding=1)``: output 2H, input pixel
  i reaches output rows 2i-1, 2i, 2i+1), IN, ReLU.
- CUT's default, anti-aliased (``antialias=True``, ``antialias_up=True``): down = conv 3x3 stride 1
  zero-pad 1, IN, ReLU, :func:`blur_downsample` (reflect-pad 1, fixed 3x3 binomial [1,2,1]^T[1,2,1]/16,
  stride 2, per channel); up = :func:`blur_upsample` (x2, fixed 4x4 binomial [1,3,3,1]^T[1,3,3,1]/16 on
  the zero-dilated, replicate-padded input, i.e. ``y[2i] = (x[i-1] + 3 x[i]) / 4``,
  ``y[2i+1] = (3 x[i] + x[i+1]) / 4`` per axis with edge replication: bilinear x2 with half-pixel
  centres), conv 3x3 stride 1 zero-pad 1, IN, ReLU. Both forms have the same parameters
  (11,378,179 at the published size); the blur filters are constants, not parameters.

IN is instance normalisation without affine parameters and without running statistics (the
published ``InstanceNorm2d(affine=False)`` choice): every image is normalised by its own per-channel
mean and variance over (H, W), so data parallelism needs no cross-device statistics at all.

Initialisation (``init``): ``"normal"`` = N(0, gain^2) weights (CycleGAN's default, gain 0.02) or
``"xavier"`` = Xavier/Glorot normal, std = gain * sqrt(2 / (fan_in + fan_out)) (CUT's default, gain
0.02); zero biases in both.

Value range: the network works in [-1, 1] (tanh output), like the published models whose loss
weights (cycle 10, identity 0.5, L1) were tuned in that range. The library convention is [0, 1];
:func:`to_signed` / :func:`to_unit` convert, and the method modules apply them at the boundary.

Encoder taps for PatchNCE (CUT). CUT names feature layers by their index in the generator's
sequential layer list; with its default (anti-aliased) downsampling that list is
``[pad, conv, IN, ReLU, (conv, IN, ReLU, blurpool) x 2, resblock x n_blocks, ...]``, and a tap is
the output of that list entry, so layers 0, 4, 8, 12, 16 are: the reflection-padded input, the
first and second downsampling conv (before their norm) and residual blocks 1 and 5::

    0                      -> reflect_pad(x, 3)                             (B, H+6, W+6, C_in)
    4 * (i + 1), i < n_down -> output of down stage i's conv (before its norm)
                              antialias: (B, H/2^i, W/2^i, F*2^(i+1)); else (B, H/2^(i+1), W/2^(i+1), F*2^(i+1))
    4 * (n_down + 1) + k    -> output of residual block k (0-based)     (B, H/2^n_down, W/2^n_down, F*2^n_down)

With ``antialias=True`` this is exactly CUT's numbering. With ``antialias=False`` CUT's own list has
3 entries per down stage (no blur pool), so its indices would name other layers; we keep the
anti-aliased numbering for both forms (documented deviation for the non-default form).

Parameter layout: convs are ``nnx.Conv`` (kernel (kh, kw, in, out)); :class:`ConvTranspose2d` keeps
its kernel in PyTorch's orientation, ``kernel[h, w, i, o] = torch_weight[i, o, h, w]``
(``dakpn_jax.models.torch_import`` maps official checkpoints onto these modules).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

INITS = ("normal", "xavier")
_DN = ("NHWC", "HWIO", "NHWC")


def make_init(kind: str = "normal", gain: float = 0.02):
    """Kernel initialiser of the published baselines (biases are always zero).

    ``"normal"``: N(0, gain^2) (CycleGAN ``init_type=normal``). ``"xavier"``: N(0, s^2) with
    s = gain * sqrt(2 / (fan_in + fan_out)), fan = channels x kernel area (CUT ``init_type=xavier``,
    PyTorch's untruncated ``xavier_normal_``)."""
    if kind == "normal":
        return nnx.initializers.normal(gain)
    if kind == "xavier":
        return nnx.initializers.variance_scaling(gain**2, "fan_avg", "normal")
    raise ValueError(f"init={kind!r} must be one of {INITS}")


def to_signed(x: jax.Array) -> jax.Array:
    """[0, 1] -> [-1, 1]: ``2 x - 1``."""
    return 2.0 * x - 1.0


def to_unit(x: jax.Array) -> jax.Array:
    """[-1, 1] -> [0, 1]: ``(x + 1) / 2``."""
    return (x + 1.0) * 0.5


def instance_norm(x: jax.Array, eps: float = 1e-5) -> jax.Array:
    """Instance normalisation without affine parameters.

    ``y[b,h,w,c] = (x[b,h,w,c] - mu[b,c]) / sqrt(var[b,c] + eps)`` with mean and (biased) variance
    over (h, w) of each image and channel. x: (B, H, W, C).
    """
    mean = jnp.mean(x, axis=(1, 2), keepdims=True)
    var = jnp.var(x, axis=(1, 2), keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + eps)


def reflect_pad(x: jax.Array, p: int) -> jax.Array:
    """Reflection padding of ``p`` pixels on both spatial sides of (B, H, W, C) (needs H, W > p)."""
    return jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), mode="reflect")


# Fixed binomial filters of the anti-aliased stages (Zhang 2019 "blur pool", as CUT uses them).
_DOWN_1D = (1.0, 2.0, 1.0)  # / 4 per axis


def blur_downsample(x: jax.Array) -> jax.Array:
    """Anti-aliased stride-2 subsampling (blur pool): reflect-pad 1, then per channel the fixed 3x3
    filter ``[1,2,1]^T [1,2,1] / 16`` at stride 2::

        y[i, j] = sum_{a,b in 0..2} f[a] f[b] xp[2i + a, 2j + b],  f = (1, 2, 1) / 4,  xp = reflect_pad(x, 1)

    (B, H, W, C) -> (B, ceil(H/2), ceil(W/2), C)."""
    c = x.shape[-1]
    f = jnp.asarray(_DOWN_1D, x.dtype) / 4.0
    k = jnp.broadcast_to(jnp.outer(f, f)[:, :, None, None], (3, 3, 1, c))
    return jax.lax.conv_general_dilated(
        reflect_pad(x, 1), k, (2, 2), "VALID", dimension_numbers=_DN, feature_group_count=c
    )


def _upsample_axis(x: jax.Array, axis: int) -> jax.Array:
    n = x.shape[axis]
    first = jax.lax.slice_in_dim(x, 0, 1, axis=axis)
    last = jax.lax.slice_in_dim(x, n - 1, n, axis=axis)
    prev = jnp.concatenate([first, jax.lax.slice_in_dim(x, 0, n - 1, axis=axis)], axis=axis)
    nxt = jnp.concatenate([jax.lax.slice_in_dim(x, 1, n, axis=axis), last], axis=axis)
    even, odd = 0.25 * prev + 0.75 * x, 0.75 * x + 0.25 * nxt
    y = jnp.stack([even, odd], axis=axis + 1)
    return y.reshape(x.shape[:axis] + (2 * n,) + x.shape[axis + 1 :])


def blur_upsample(x: jax.Array) -> jax.Array:
    """Anti-aliased x2 upsampling: the zero-dilated, replicate-padded input filtered per channel by
    the fixed 4x4 ``[1,3,3,1]^T [1,3,3,1] / 16`` (gain 4 = stride^2). Per axis, with edge
    replication (x[-1] = x[0], x[n] = x[n-1])::

        y[2i] = (x[i-1] + 3 x[i]) / 4,   y[2i+1] = (3 x[i] + x[i+1]) / 4

    i.e. bilinear x2 with half-pixel centres. (B, H, W, C) -> (B, 2H, 2W, C). Separable, so the
    two axes are done one after the other (the 2-D replicate padding factorises the same way)."""
    return _upsample_axis(_upsample_axis(x, 1), 2)


class ConvTranspose2d(nnx.Module):
    """PyTorch's ``ConvTranspose2d(cin, cout, kernel_size=3, stride=2, padding=1, output_padding=1)``.

    With the PyTorch-oriented kernel ``w[h, w, i, o]`` (= ``torch_weight[i, o, h, w]``)::

        y[b, u, v, o] = bias[o] + sum_{i, s, t, c} x[b, s, t, c] w[u + 1 - 2s, v + 1 - 2t, c, o]

    over the taps with 0 <= u + 1 - 2s < 3: input pixel s reaches output rows 2s - 1, 2s, 2s + 1
    and the output is (B, 2H, 2W, cout). Computed as a stride-1 correlation of the 2x zero-dilated
    input, padded (k-1-p, k-1-p+output_padding) = (1, 2) per axis, with the spatially flipped
    kernel. (Flax's ``ConvTranspose(padding="SAME")`` pads (2, 1) instead: the same footprint one
    pixel later, which is the bug of issue #12.)
    """

    padding = ((1, 2), (1, 2))  # (low, high) on the dilated input; PyTorch p=1, output_padding=1

    def __init__(self, cin: int, cout: int, *, kernel_init, rngs: nnx.Rngs):
        self.kernel = nnx.Param(kernel_init(rngs.params(), (3, 3, cin, cout), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((cout,), jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel[...][::-1, ::-1].astype(x.dtype)
        y = jax.lax.conv_general_dilated(
            x, k, (1, 1), self.padding, lhs_dilation=(2, 2), dimension_numbers=_DN
        )
        return y + self.bias[...].astype(x.dtype)


def _conv(cin, cout, k, *, init, rngs, stride=1, padding="VALID"):
    return nnx.Conv(
        cin,
        cout,
        (k, k),
        strides=(stride, stride),
        padding=padding,
        kernel_init=init,
        bias_init=nnx.initializers.zeros,
        rngs=rngs,
    )


class ResnetBlock(nnx.Module):
    """``x + IN(conv(pad(ReLU(IN(conv(pad(x)))))))``, 3x3 convs with reflection padding, no dropout."""

    def __init__(self, channels: int, *, rngs: nnx.Rngs, init=None):
        init = init or make_init()
        self.conv1 = _conv(channels, channels, 3, init=init, rngs=rngs)
        self.conv2 = _conv(channels, channels, 3, init=init, rngs=rngs)

    def __call__(self, x):
        h = jax.nn.relu(instance_norm(self.conv1(reflect_pad(x, 1))))
        return x + instance_norm(self.conv2(reflect_pad(h, 1)))


class ResnetGenerator(nnx.Module):
    """CycleGAN/CUT ResNet generator. Input and output in [-1, 1], (B, H, W, in_channels) ->
    (B, H, W, out_channels); H and W must be divisible by 2^n_down and larger than 3 * 2^n_down
    (the reflection pads need it).

    Args:
      in_channels, out_channels: image channels (3).
      ngf: base filters (64 published).
      n_blocks: residual blocks (9 published for 256 px crops, 6 for 128 px).
      n_down: downsampling stages (2 published).
      antialias, antialias_up: CUT's anti-aliased down / up stages (module docstring); False, False
        is CycleGAN's network.
      init, init_gain: kernel initialisation (:func:`make_init`).
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        *,
        ngf: int = 64,
        n_blocks: int = 9,
        n_down: int = 2,
        antialias: bool = False,
        antialias_up: bool = False,
        init: str = "normal",
        init_gain: float = 0.02,
        rngs: nnx.Rngs,
    ):
        if ngf < 1 or n_blocks < 0 or n_down < 0:
            raise ValueError(
                f"ResnetGenerator: ngf={ngf}, n_blocks={n_blocks}, n_down={n_down} invalid"
            )
        kinit = make_init(init, init_gain)
        self.n_down, self.n_blocks = n_down, n_blocks
        self.antialias, self.antialias_up = bool(antialias), bool(antialias_up)
        self.stem = _conv(in_channels, ngf, 7, init=kinit, rngs=rngs)
        s_down = 1 if self.antialias else 2
        self.down = nnx.List(
            [
                _conv(
                    ngf * 2**i,
                    ngf * 2 ** (i + 1),
                    3,
                    stride=s_down,
                    padding=((1, 1), (1, 1)),
                    init=kinit,
                    rngs=rngs,
                )
                for i in range(n_down)
            ]
        )
        c = ngf * 2**n_down
        self.blocks = nnx.List([ResnetBlock(c, init=kinit, rngs=rngs) for _ in range(n_blocks)])
        chans = [(ngf * 2 ** (n_down - i), ngf * 2 ** (n_down - i - 1)) for i in range(n_down)]
        if self.antialias_up:
            self.up = nnx.List(
                [
                    _conv(ci, co, 3, padding=((1, 1), (1, 1)), init=kinit, rngs=rngs)
                    for ci, co in chans
                ]
            )
        else:
            self.up = nnx.List(
                [ConvTranspose2d(ci, co, kernel_init=kinit, rngs=rngs) for ci, co in chans]
            )
        self.head = _conv(ngf, out_channels, 7, init=kinit, rngs=rngs)

    @property
    def num_layers(self) -> int:
        """Number of valid PatchNCE layer indices + 1 (the last tappable index is num_layers - 1)."""
        return 4 * (self.n_down + 1) + self.n_blocks

    def _check(self, x):
        f = 2**self.n_down
        if x.ndim != 4 or x.shape[1] % f or x.shape[2] % f or min(x.shape[1], x.shape[2]) <= 3 * f:
            raise ValueError(
                f"ResnetGenerator: input shape {x.shape} must be (B, H, W, C) with H, W "
                f"divisible by {f} and > {3 * f}"
            )

    def _tap_index(self, layers: Sequence[int]):
        for l in layers:
            ok = (
                l == 0
                or (l % 4 == 0 and 0 < l <= 4 * self.n_down)
                or (4 * (self.n_down + 1) <= l < self.num_layers)
            )
            if not ok:
                raise ValueError(
                    f"ResnetGenerator: nce layer {l} is not a tap of this generator "
                    f"(n_down={self.n_down}, n_blocks={self.n_blocks}); valid: 0, "
                    f"{[4 * (i + 1) for i in range(self.n_down)]}, "
                    f"{4 * (self.n_down + 1)}..{self.num_layers - 1}"
                )

    def _down(self, i, h):
        """Down stage i: returns (conv output before its norm, stage output)."""
        pre = self.down[i](h)
        out = jax.nn.relu(instance_norm(pre))
        return pre, (blur_downsample(out) if self.antialias else out)

    def _up(self, i, h):
        if self.antialias_up:
            h = blur_upsample(h)
        return jax.nn.relu(instance_norm(self.up[i](h)))

    def __call__(self, x: jax.Array) -> jax.Array:
        """Translate (B, H, W, C_in) in [-1, 1] -> (B, H, W, C_out) in [-1, 1]."""
        self._check(x)
        h = jax.nn.relu(instance_norm(self.stem(reflect_pad(x, 3))))
        for i in range(self.n_down):
            h = self._down(i, h)[1]
        for block in self.blocks:
            h = block(h)
        for i in range(self.n_down):
            h = self._up(i, h)
        return jnp.tanh(self.head(reflect_pad(h, 3)))

    def encode(self, x: jax.Array, layers: Sequence[int]) -> list[jax.Array]:
        """Encoder features at CUT layer indices ``layers`` (see module docstring), in that order.
        Runs the encoder only as far as the deepest requested layer."""
        self._check(x)
        layers = list(layers)
        self._tap_index(layers)
        padded = reflect_pad(x, 3)
        feats = {0: padded}
        last = max(layers) if layers else 0
        h = jax.nn.relu(instance_norm(self.stem(padded)))
        for i in range(self.n_down):
            if 4 * (i + 1) > last:
                break
            feats[4 * (i + 1)], h = self._down(i, h)
        base = 4 * (self.n_down + 1)
        for k, block in enumerate(self.blocks):
            if base + k > last:
                break
            h = block(h)
            feats[base + k] = h
        return [feats[l] for l in layers]
