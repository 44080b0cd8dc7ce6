"""70x70 PatchGAN discriminator of CycleGAN / CUT (Isola et al. 2017), Flax NNX.

Layers (``ndf`` = 64, ``n_layers`` = 3 published), all 4x4 kernels with zero padding 1::

    conv s2 (3 -> ndf), LeakyReLU 0.2                                    (no norm on the first layer)
    for n in 1..n_layers-1: conv s2 (ndf*m(n-1) -> ndf*m(n)), IN, LeakyReLU 0.2   with m(n) = min(2^n, 8)
    conv s1 (ndf*m(n_layers-1) -> ndf*m(n_layers)), IN, LeakyReLU 0.2
    conv s1 (-> 1)                                                        raw score map, no sigmoid

With n_layers = 3 every output cell sees a 70 x 70 input patch. A (B, H, W, 3) input gives
(B, H/8 - 2, W/8 - 2, 1) scores (for H, W divisible by 8). IN = instance norm without affine
parameters (per image statistics, so no cross-device reduction under data parallelism).

CUT's default, anti-aliased form (``antialias=True``; docs/METHOD.md §7): every stride-2 conv above
becomes a stride-1 conv (same 4x4 kernel, zero pad 1) followed, after its norm and LeakyReLU, by
the fixed blur pool ``resnet_generator.blur_downsample`` (reflect-pad 1, [1,2,1]^T[1,2,1]/16,
stride 2)::

    conv s1, LReLU, blur-pool;  (conv s1, IN, LReLU, blur-pool) x (n_layers - 1);  conv s1, IN, LReLU;  conv s1

A 256 x 256 input still gives 30 x 30 scores; the parameters are the same (2,764,737 published).
``init``/``init_gain``: ``resnet_generator.make_init`` (CycleGAN N(0, 0.02); CUT Xavier gain 0.02).

Why not ``models/patchgan.py`` (DA-KPN's): that one follows the DA-KPN paper (BatchNorm, its own
multi-scale use); the baselines must match *their* published discriminator, instance norm included.
"""

from __future__ import annotations

import jax
from flax import nnx

from dakpn_jax.models.resnet_generator import blur_downsample, instance_norm, make_init


class NLayerDiscriminator(nnx.Module):
    """PatchGAN: (B, H, W, in_channels) in [-1, 1] -> (B, h, w, 1) real/fake scores (logits)."""

    def __init__(
        self,
        in_channels: int = 3,
        *,
        ndf: int = 64,
        n_layers: int = 3,
        antialias: bool = False,
        init: str = "normal",
        init_gain: float = 0.02,
        rngs: nnx.Rngs,
    ):
        if n_layers < 1 or ndf < 1:
            raise ValueError(f"NLayerDiscriminator: ndf={ndf}, n_layers={n_layers} invalid")
        m = lambda n: min(2**n, 8)
        kinit = make_init(init, init_gain)
        self.antialias = bool(antialias)
        s2 = 1 if self.antialias else 2

        def conv(cin, cout, stride):
            return nnx.Conv(
                cin,
                cout,
                (4, 4),
                strides=(stride, stride),
                padding=((1, 1), (1, 1)),
                kernel_init=kinit,
                bias_init=nnx.initializers.zeros,
                rngs=rngs,
            )

        convs = [conv(in_channels, ndf, s2)]
        convs += [conv(ndf * m(n - 1), ndf * m(n), s2) for n in range(1, n_layers)]
        convs.append(conv(ndf * m(n_layers - 1), ndf * m(n_layers), 1))
        self.convs = nnx.List(convs)
        self.out = conv(ndf * m(n_layers), 1, 1)
        self.n_layers = n_layers

    def __call__(self, x: jax.Array) -> jax.Array:
        if x.ndim != 4:
            raise ValueError(f"NLayerDiscriminator: input must be (B, H, W, C), got {x.shape}")
        min_size = 2 ** (self.n_layers + 2)
        if min(x.shape[1], x.shape[2]) < min_size:
            raise ValueError(
                f"NLayerDiscriminator: input {x.shape} too small for n_layers="
                f"{self.n_layers}; H and W must be >= {min_size}"
            )
        h = x
        for i, conv in enumerate(self.convs):
            h = conv(h)
            if i > 0:  # the first layer has no norm (published architecture)
                h = instance_norm(h)
            h = jax.nn.leaky_relu(h, 0.2)
            if self.antialias and i < self.n_layers:  # the n_layers strided stages, not the s1 one
                h = blur_downsample(h)
        return self.out(h)
