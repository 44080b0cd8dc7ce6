"""DA-KPN's PatchGAN discriminator and its pix2pixHD-style pyramid (docs/METHOD.md §1 step 5), Flax NNX.

PatchGAN (``ndf`` = 64, ``n_layers`` = 3 in the paper), 4x4 convs with stride 2 and zero padding 1::

    conv s2 (3 -> ndf), LeakyReLU 0.2                                  (no norm on the first layer)
    for n in 1..n_layers-1: conv s2 (ndf*m(n-1) -> ndf*m(n)), norm, LeakyReLU 0.2   m(n) = min(2^n, 8)
                                                                       (no conv bias before a norm)
    conv 3x3 s1 'same' (-> 1)                                          raw logits, no sigmoid

An (B, H, W, 3) input gives (B, H / 2^n_layers, W / 2^n_layers, 1) logits (H, W divisible by
2^n_layers). The output layer is a 3x3 'same' conv rather than pix2pix's two extra 4x4 stride-1
convs so that the paper's small H/8 x W/8 tiles (16 x 32 on the 128 x 256 benchmark) still give a
score map; each cell's receptive field is 46 px for n_layers = 3.

Normalisation (``norm``), with a learnable per-channel scale and bias:

- ``"batch"`` (paper): mean and variance per channel over (B, H, W) of the current call. No running
  averages are kept: the discriminator is only ever used in training mode, where BatchNorm uses
  the batch statistics too. Under the trainer's data parallelism (``jax.jit`` over global arrays
  sharded on the ``"data"`` mesh axis) the reduction over B is a reduction over the *global*
  batch (XLA inserts the cross-device all-reduce), so the statistics span the global batch and
  1 device and N devices compute the same function. Real and fake images are separate calls,
  hence separate statistics, as in the paper's code.
- ``"instance"``: per image and channel over (H, W); no cross-device reduction at all.
- ``"none"``.

:class:`PatchGANPyramid` (pix2pixHD): ``num_D`` independent PatchGANs, the k-th one judging the input
average-pooled k times (3x3 window, stride 2, padding 1, padded cells excluded from the average).
``num_D = 1`` is the paper's single discriminator.

:class:`NLayerPatchGAN` (``arch="nlayer"``, the authors' code, docs/METHOD.md §6): pix2pix's NLayer
PatchGAN with a 70 x 70 receptive field, 4x4 kernels, zero padding 1::

    conv s2 (3 -> ndf) + bias, LeakyReLU 0.2                                  (no norm)
    conv s2 (ndf -> 2 ndf), BN, LeakyReLU 0.2; conv s2 (2 ndf -> 4 ndf), BN, LeakyReLU 0.2
    conv s1 (4 ndf -> 8 ndf), BN, LeakyReLU 0.2
    conv s1 (8 ndf -> 1) + bias                                                raw logits

(n_layers = 3, ndf = 64; no conv bias in front of a BatchNorm, as pix2pix). A (B, H, W, 3) input
gives (B, H/8 - 2, W/8 - 2, 1) logits (H, W divisible by 8; floor otherwise). ``init="torch"``:
PyTorch's default Conv2d init, weight and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with
fan_in = c_in * 4 * 4 (kaiming-uniform with a = sqrt(5)); BatchNorm scale 1, bias 0.
``init="normal"``: N(0, 0.02) weights (pix2pix's ``init_weights``), zero biases.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

NORMS = ("batch", "instance", "none")
ARCHS = ("patchgan", "nlayer")
INITS = ("normal", "torch")
_INIT = nnx.initializers.normal(0.02)
# PyTorch's Conv2d default: kaiming_uniform(a=sqrt(5)) = U(-b, b), b = sqrt(6 / ((1 + 5) fan_in)).
_TORCH_KERNEL_INIT = nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def _torch_bias_init(fan_in: int):
    """PyTorch's Conv2d default bias init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / float(fan_in) ** 0.5
    return lambda key, shape, dtype=jnp.float32: jax.random.uniform(
        key, shape, dtype, -bound, bound
    )


_EPS = 1e-5


class Norm(nnx.Module):
    """Batch / instance / no normalisation with a learnable per-channel affine map (see module doc)."""

    def __init__(self, features: int, kind: str):
        if kind not in NORMS:
            raise ValueError(f"Norm: norm={kind!r} must be one of {NORMS}")
        self.kind = kind
        if kind != "none":
            self.scale = nnx.Param(jnp.ones((features,), jnp.float32))
            self.bias = nnx.Param(jnp.zeros((features,), jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.kind == "none":
            return x
        axes = (0, 1, 2) if self.kind == "batch" else (1, 2)
        mean = jnp.mean(x, axis=axes, keepdims=True)
        var = jnp.mean(jnp.square(x - mean), axis=axes, keepdims=True)
        return (x - mean) * jax.lax.rsqrt(var + _EPS) * self.scale[...] + self.bias[...]


class PatchGAN(nnx.Module):
    """(B, H, W, in_channels) in [0, 1] -> (B, H / 2^n_layers, W / 2^n_layers, 1) logits."""

    def __init__(
        self,
        in_channels: int = 3,
        *,
        ndf: int = 64,
        n_layers: int = 3,
        norm: str = "batch",
        rngs: nnx.Rngs,
    ):
        if n_layers < 1 or ndf < 1:
            raise ValueError(f"PatchGAN: ndf={ndf} and n_layers={n_layers} must be >= 1")
        if norm not in NORMS:
            raise ValueError(f"PatchGAN: norm={norm!r} must be one of {NORMS}")
        m = lambda n: min(2**n, 8)
        chans = [in_channels] + [ndf * m(n) for n in range(n_layers)]
        # No conv bias in front of a norm: the norm removes it, so its gradient is 0 up to round-off,
        # which Adam would blow up into lr-sized random steps (and break 1-vs-N-device equality).
        self.convs = nnx.List(
            [
                nnx.Conv(
                    chans[i],
                    chans[i + 1],
                    (4, 4),
                    strides=(2, 2),
                    padding=((1, 1), (1, 1)),
                    use_bias=(i == 0 or norm == "none"),
                    kernel_init=_INIT,
                    rngs=rngs,
                )
                for i in range(n_layers)
            ]
        )
        self.norms = nnx.List([Norm(chans[i + 1], norm) for i in range(1, n_layers)])
        self.out = nnx.Conv(chans[-1], 1, (3, 3), padding="SAME", kernel_init=_INIT, rngs=rngs)
        self.n_layers = n_layers

    def __call__(self, x: jax.Array) -> jax.Array:
        if x.ndim != 4:
            raise ValueError(f"PatchGAN: input must be (B, H, W, C), got {x.shape}")
        min_size = 2**self.n_layers
        if min(x.shape[1], x.shape[2]) < min_size:
            raise ValueError(
                f"PatchGAN: input {x.shape} too small for n_layers={self.n_layers}; "
                f"H and W must be >= {min_size}"
            )
        h = jax.nn.leaky_relu(self.convs[0](x), 0.2)
        for conv, norm in zip(self.convs[1:], self.norms):
            h = jax.nn.leaky_relu(norm(conv(h)), 0.2)
        return self.out(h)


def downsample(x: jax.Array) -> jax.Array:
    """pix2pixHD's pyramid step: 3x3 average pool, stride 2, padding 1, padded cells not counted.
    (B, H, W, C) -> (B, ceil(H/2), ceil(W/2), C)."""
    pool = lambda v: jax.lax.reduce_window(
        v, 0.0, jax.lax.add, (1, 3, 3, 1), (1, 2, 2, 1), ((0, 0), (1, 1), (1, 1), (0, 0))
    )
    return pool(x) / pool(jnp.ones_like(x[..., :1]))


class NLayerPatchGAN(nnx.Module):
    """The authors' 70 x 70 NLayer PatchGAN (module docstring): (B, H, W, C) -> (B, H/8-2, W/8-2, 1)."""

    def __init__(
        self,
        in_channels: int = 3,
        *,
        ndf: int = 64,
        n_layers: int = 3,
        norm: str = "batch",
        init: str = "torch",
        rngs: nnx.Rngs,
    ):
        if n_layers < 1 or ndf < 1:
            raise ValueError(f"NLayerPatchGAN: ndf={ndf} and n_layers={n_layers} must be >= 1")
        if norm not in NORMS:
            raise ValueError(f"NLayerPatchGAN: norm={norm!r} must be one of {NORMS}")
        if init not in INITS:
            raise ValueError(f"NLayerPatchGAN: init={init!r} must be one of {INITS}")
        m = lambda n: min(2**n, 8)
        chans = [in_channels] + [ndf * m(n) for n in range(n_layers + 1)] + [1]
        strides = [2] * n_layers + [1, 1]

        def conv(i):
            cin, cout = chans[i], chans[i + 1]
            normed = 0 < i < len(strides) - 1 and norm != "none"
            if init == "torch":
                kw = dict(kernel_init=_TORCH_KERNEL_INIT, bias_init=_torch_bias_init(cin * 16))
            else:
                kw = dict(kernel_init=_INIT, bias_init=nnx.initializers.zeros)
            return nnx.Conv(
                cin,
                cout,
                (4, 4),
                strides=(strides[i],) * 2,
                padding=((1, 1), (1, 1)),
                use_bias=not normed,
                rngs=rngs,
                **kw,
            )

        self.convs = nnx.List([conv(i) for i in range(len(strides))])
        self.norms = nnx.List([Norm(chans[i + 1], norm) for i in range(1, len(strides) - 1)])
        self.n_layers = n_layers

    def __call__(self, x: jax.Array) -> jax.Array:
        if x.ndim != 4:
            raise ValueError(f"NLayerPatchGAN: input must be (B, H, W, C), got {x.shape}")
        min_size = 2 ** (self.n_layers + 2)
        if min(x.shape[1], x.shape[2]) < min_size:
            raise ValueError(
                f"NLayerPatchGAN: input {x.shape} too small for n_layers={self.n_layers}; "
                f"H and W must be >= {min_size}"
            )
        h = jax.nn.leaky_relu(self.convs[0](x), 0.2)
        for conv, norm in zip(self.convs[1:-1], self.norms):
            h = jax.nn.leaky_relu(norm(conv(h)), 0.2)
        return self.convs[-1](h)


class PatchGANPyramid(nnx.Module):
    """``num_D`` PatchGANs on ``x, down(x), down(down(x)), ...``: returns a list of logit maps.

    ``arch="patchgan"`` (default): :class:`PatchGAN`; ``"nlayer"``: :class:`NLayerPatchGAN` (the
    authors' 70 x 70 D, ``init`` selects its initialisation)."""

    def __init__(
        self,
        in_channels: int = 3,
        *,
        num_D: int = 1,
        ndf: int = 64,
        n_layers: int = 3,
        norm: str = "batch",
        arch: str = "patchgan",
        init: str = "normal",
        rngs: nnx.Rngs,
    ):
        if num_D < 1:
            raise ValueError(f"PatchGANPyramid: num_D={num_D} must be >= 1")
        if arch not in ARCHS:
            raise ValueError(f"PatchGANPyramid: arch={arch!r} must be one of {ARCHS}")
        if arch == "patchgan":
            build = lambda: PatchGAN(in_channels, ndf=ndf, n_layers=n_layers, norm=norm, rngs=rngs)
        else:
            build = lambda: NLayerPatchGAN(
                in_channels, ndf=ndf, n_layers=n_layers, norm=norm, init=init, rngs=rngs
            )
        self.discs = nnx.List([build() for _ in range(num_D)])

    def __call__(self, x: jax.Array) -> list[jax.Array]:
        out = []
        for k, d in enumerate(self.discs):
            if k:
                x = downsample(x)
            out.append(d(x))
        return out
