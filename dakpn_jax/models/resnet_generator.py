"""ResNet generator of CycleGAN / CUT (Zhu et al. 2017; Park et al. 2020), written for Flax NNX.

Architecture (``ngf`` = base filters F, ``n_down`` = 2, ``n_blocks`` = 9 by default)::

    reflect-pad 3, conv 7x7 (3 -> F), IN, ReLU
    n_down x [conv 3x3 stride 2 zero-pad 1 (F*2^i -> F*2^(i+1)), IN, ReLU]
    n_blocks x residual block: x + IN(conv3x3(reflect-pad 1, ReLU(IN(conv3x3(reflect-pad 1, x)))))
    n_down x [transposed conv 3x3 stride 2 ('SAME': exactly 2x), IN, ReLU]
    reflect-pad 3, conv 7x7 (F -> 3), tanh

IN is instance normalisation without affine parameters and without running statistics (the
published ``InstanceNorm2d(affine=False)`` choice): every image is normalised by its own per-channel
mean and variance over (H, W), so data parallelism needs no cross-device statistics at all.

Value range: the network works in [-1, 1] (tanh output), like the published models whose loss
weights (cycle 10, identity 0.5, L1) were tuned in that range. The library convention is [0, 1];
:func:`to_signed` / :func:`to_unit` convert, and the method modules apply them at the boundary.

Encoder taps for PatchNCE (CUT). CUT names feature layers by their index in the generator's
sequential layer list; with its default (anti-aliased) downsampling that list is
``[pad, conv, IN, ReLU, (conv, IN, ReLU, blurpool) x 2, resblock x n_blocks, ...]``, so layers
0, 4, 8, 12, 16 are: the input image, the first downsampling stage, the second downsampling stage,
residual block 1 and residual block 5. We keep that *numbering* (it is what users pass), and map it
onto this network as::

    0                      -> the input image (B, H, W, 3) (CUT taps it after the reflection pad)
    4 * (i + 1), i < n_down -> output of downsampling conv i (before its norm) (B, H/2^(i+1), W/2^(i+1), F*2^(i+1))
    4 * (n_down + 1) + k    -> output of residual block k (0-based)     (B, H/2^n_down, W/2^n_down, F*2^n_down)

Deviation: downsampling is a plain stride-2 conv (the CycleGAN form, CUT's ``--no_antialias``),
not CUT's stride-1 conv + blur pool, so layer 4 is at half resolution rather than full.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

# N(0, 0.02) weights and zero biases: the published initialisation of both baselines.
_INIT = nnx.initializers.normal(0.02)


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


def _conv(cin, cout, k, *, rngs, stride=1, padding="VALID"):
    return nnx.Conv(cin, cout, (k, k), strides=(stride, stride), padding=padding,
                    kernel_init=_INIT, bias_init=nnx.initializers.zeros, rngs=rngs)


class ResnetBlock(nnx.Module):
    """``x + IN(conv(pad(ReLU(IN(conv(pad(x)))))))``, 3x3 convs with reflection padding, no dropout."""

    def __init__(self, channels: int, *, rngs: nnx.Rngs):
        self.conv1 = _conv(channels, channels, 3, rngs=rngs)
        self.conv2 = _conv(channels, channels, 3, rngs=rngs)

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
    """

    def __init__(self, in_channels: int = 3, out_channels: int = 3, *, ngf: int = 64,
                 n_blocks: int = 9, n_down: int = 2, rngs: nnx.Rngs):
        if ngf < 1 or n_blocks < 0 or n_down < 0:
            raise ValueError(f"ResnetGenerator: ngf={ngf}, n_blocks={n_blocks}, n_down={n_down} invalid")
        self.n_down, self.n_blocks = n_down, n_blocks
        self.stem = _conv(in_channels, ngf, 7, rngs=rngs)
        self.down = nnx.List([_conv(ngf * 2 ** i, ngf * 2 ** (i + 1), 3, stride=2, padding=((1, 1), (1, 1)), rngs=rngs)
                              for i in range(n_down)])
        c = ngf * 2 ** n_down
        self.blocks = nnx.List([ResnetBlock(c, rngs=rngs) for _ in range(n_blocks)])
        self.up = nnx.List([nnx.ConvTranspose(ngf * 2 ** (n_down - i), ngf * 2 ** (n_down - i - 1), (3, 3),
                                              strides=(2, 2), padding="SAME", kernel_init=_INIT,
                                              bias_init=nnx.initializers.zeros, rngs=rngs)
                            for i in range(n_down)])
        self.head = _conv(ngf, out_channels, 7, rngs=rngs)

    @property
    def num_layers(self) -> int:
        """Number of valid PatchNCE layer indices + 1 (the last tappable index is num_layers - 1)."""
        return 4 * (self.n_down + 1) + self.n_blocks

    def _check(self, x):
        f = 2 ** self.n_down
        if x.ndim != 4 or x.shape[1] % f or x.shape[2] % f or min(x.shape[1], x.shape[2]) <= 3 * f:
            raise ValueError(f"ResnetGenerator: input shape {x.shape} must be (B, H, W, C) with H, W "
                             f"divisible by {f} and > {3 * f}")

    def _tap_index(self, layers: Sequence[int]):
        for l in layers:
            ok = l == 0 or (l % 4 == 0 and 0 < l <= 4 * self.n_down) or (
                4 * (self.n_down + 1) <= l < self.num_layers)
            if not ok:
                raise ValueError(f"ResnetGenerator: nce layer {l} is not a tap of this generator "
                                 f"(n_down={self.n_down}, n_blocks={self.n_blocks}); valid: 0, "
                                 f"{[4 * (i + 1) for i in range(self.n_down)]}, "
                                 f"{4 * (self.n_down + 1)}..{self.num_layers - 1}")

    def __call__(self, x: jax.Array) -> jax.Array:
        """Translate (B, H, W, C_in) in [-1, 1] -> (B, H, W, C_out) in [-1, 1]."""
        self._check(x)
        h = jax.nn.relu(instance_norm(self.stem(reflect_pad(x, 3))))
        for conv in self.down:
            h = jax.nn.relu(instance_norm(conv(h)))
        for block in self.blocks:
            h = block(h)
        for conv in self.up:
            h = jax.nn.relu(instance_norm(conv(h)))
        return jnp.tanh(self.head(reflect_pad(h, 3)))

    def encode(self, x: jax.Array, layers: Sequence[int]) -> list[jax.Array]:
        """Encoder features at CUT layer indices ``layers`` (see module docstring), in that order.
        Runs the encoder only as far as the deepest requested layer."""
        self._check(x)
        layers = list(layers)
        self._tap_index(layers)
        feats = {0: x}
        last = max(layers) if layers else 0
        h = jax.nn.relu(instance_norm(self.stem(reflect_pad(x, 3))))
        for i, conv in enumerate(self.down):
            if 4 * (i + 1) > last:
                break
            pre = conv(h)
            feats[4 * (i + 1)] = pre
            h = jax.nn.relu(instance_norm(pre))
        base = 4 * (self.n_down + 1)
        for k, block in enumerate(self.blocks):
            if base + k > last:
                break
            h = block(h)
            feats[base + k] = h
        return [feats[l] for l in layers]
