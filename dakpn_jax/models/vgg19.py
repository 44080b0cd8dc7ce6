"""VGG19 feature extractor (Simonyan and Zisserman 2015, configuration E) in Flax NNX, in the
layout of torchvision's ``vgg19().features``, plus an importer for local torchvision weights.

torchvision numbers the modules of ``features`` 0..36; the convolutions (3x3, zero pad 1, with
bias, each followed by a ReLU) sit at::

    block 1: 0 (3 -> 64), 2 (64 -> 64)                           max-pool 2x2 at 4
    block 2: 5 (64 -> 128), 7 (128 -> 128)                       max-pool at 9
    block 3: 10, 12, 14, 16 (-> 256)                             max-pool at 18
    block 4: 19, 21, 23, 25 (-> 512)                             max-pool at 27
    block 5: 28, 30, 32, 34 (-> 512)                             max-pool at 36

VSAIT (docs/METHOD.md §8) taps five layers, at strides 1, 2, 4, 8, 16::

    relu1_2 = ReLU after conv 2  (B, H,    W,    64)     relu2_2 = after conv 7   (B, H/2,  W/2,  128)
    relu3_2 = after conv 12      (B, H/4,  W/4,  256)    relu4_2 = after conv 21  (B, H/8,  W/8,  512)
    conv5_2 = conv 30, *before* its ReLU                 (B, H/16, W/16, 512)

so this module stops at conv 30 (conv 32 and 34 and the classifier are never evaluated; the
importer accepts and ignores their tensors). ``width`` scales every channel count (64 published;
smaller only for fast tests, and then no published weights fit). The network sees whatever the
caller gives it: VSAIT passes images in [-1, 1] without ImageNet mean/std (§8).

Weights: :func:`load_torchvision_state_dict` reads ``vgg19-dcbb9e9d.pth`` (torch's pickle; needs
torch) or a ``.safetensors`` file with the same tensor names (``features.<i>.weight`` (out, in, 3, 3)
and ``features.<i>.bias``), and :func:`params_from_state_dict` converts it to this module's pure
parameter dict, listing every missing, unexpected or mis-shaped tensor in one error.
"""

from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dakpn_jax.models import weight_files

# (torchvision index, in channels / 64, out channels / 64) of every conv up to conv5_2 (index 30).
CONVS = (
    (0, None, 1),
    (2, 1, 1),
    (5, 1, 2),
    (7, 2, 2),
    (10, 2, 4),
    (12, 4, 4),
    (14, 4, 4),
    (16, 4, 4),
    (19, 4, 8),
    (21, 8, 8),
    (23, 8, 8),
    (25, 8, 8),
    (28, 8, 8),
    (30, 8, 8),
)
ALL_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34)  # the full features
POOL_AFTER = (2, 7, 16, 25)  # conv indices followed by the 2x2 max-pool (4, 9, 18, 27)
TAPS = {"relu1_2": 2, "relu2_2": 7, "relu3_2": 12, "relu4_2": 21, "conv5_2": 30}
TAP_ORDER = ("relu1_2", "relu2_2", "relu3_2", "relu4_2", "conv5_2")
TAP_STRIDES = (1, 2, 4, 8, 16)


def tap_channels(width: int = 64) -> tuple[int, ...]:
    """Channels of the five taps: (64, 128, 256, 512, 512) at the published width."""
    return (width, 2 * width, 4 * width, 8 * width, 8 * width)


def max_pool_2x2(x: jax.Array) -> jax.Array:
    """2x2 max-pool, stride 2, no padding (torch ``MaxPool2d(2, 2)``: odd sizes drop the last row/col)."""
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")


class VGG19Features(nnx.Module):
    """VGG19 ``features`` up to conv5_2; ``__call__`` returns the five VSAIT taps.

    Args:
      width: channels of the first block (64 published); blocks have width x (1, 2, 4, 8, 8).
      rngs: initialisation keys (He-normal fan-out weights, zero biases, as torchvision initialises
        an untrained VGG; only used when no weights are imported).
    """

    def __init__(self, *, width: int = 64, rngs: nnx.Rngs):
        if width < 1:
            raise ValueError(f"VGG19Features: width={width} must be >= 1")
        self.width = width
        init = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")
        self.convs = nnx.List(
            [
                nnx.Conv(
                    3 if cin is None else cin * width,
                    cout * width,
                    (3, 3),
                    padding=((1, 1), (1, 1)),
                    kernel_init=init,
                    bias_init=nnx.initializers.zeros,
                    rngs=rngs,
                )
                for _, cin, cout in CONVS
            ]
        )

    def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
        """x (B, H, W, 3) -> {tap name: (B, H/s, W/s, C)} for the five taps (see module docstring)."""
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"VGG19Features: input must be (B, H, W, 3), got {x.shape}")
        out = {}
        h = x
        for (index, _, _), conv in zip(CONVS, self.convs):
            pre = conv(h)
            if index == TAPS["conv5_2"]:
                out["conv5_2"] = pre
                break
            h = jax.nn.relu(pre)
            for name, i in TAPS.items():
                if i == index:
                    out[name] = h
            if index in POOL_AFTER:
                h = max_pool_2x2(h)
        return out


# ----------------------------------------------------------------------------- weights


def expected_shapes(width: int = 64) -> dict[str, tuple[int, ...]]:
    """torchvision tensor name -> shape, for the convs this module uses (up to features.30)."""
    shapes = {}
    for index, cin, cout in CONVS:
        i = 3 if cin is None else cin * width
        shapes[f"features.{index}.weight"] = (cout * width, i, 3, 3)
        shapes[f"features.{index}.bias"] = (cout * width,)
    return shapes


def _ignored(name: str) -> bool:
    # Tensors of a full torchvision vgg19 that these features never evaluate.
    if name.startswith("classifier."):
        return True
    parts = name.split(".")
    return (
        len(parts) == 3
        and parts[0] == "features"
        and parts[1].isdigit()
        and int(parts[1]) in (32, 34)
        and parts[2] in ("weight", "bias")
    )


def params_from_state_dict(
    state_dict: Mapping[str, np.ndarray], *, width: int = 64, source: str = "state dict"
) -> dict:
    """torchvision-layout tensors -> the pure parameter dict of :class:`VGG19Features`.

    Conv weights (out, in, kh, kw) become (kh, kw, in, out). Raises ``ValueError`` naming
    ``source`` and listing every missing, unexpected and mis-shaped tensor. A ``features.`` or
    ``module.`` prefix from a wrapped model is not guessed: names must match torchvision's.
    """
    want = expected_shapes(width)
    have = {k: np.asarray(v) for k, v in state_dict.items()}
    missing = sorted(set(want) - set(have), key=_natural)
    unexpected = sorted((k for k in have if k not in want and not _ignored(k)), key=_natural)
    misshaped = [
        f"{k}: {tuple(have[k].shape)} (expected {want[k]})"
        for k in sorted(want, key=_natural)
        if k in have and tuple(have[k].shape) != want[k]
    ]
    if missing or unexpected or misshaped:
        lines = [
            f"VGG19 weights from {source} do not match torchvision's vgg19 features "
            f"(width {width}):"
        ]
        if missing:
            lines.append(f"  missing ({len(missing)}): {', '.join(missing)}")
        if unexpected:
            lines.append(f"  unexpected ({len(unexpected)}): {', '.join(unexpected)}")
        if misshaped:
            lines.append(f"  mis-shaped ({len(misshaped)}): {'; '.join(misshaped)}")
        raise ValueError("\n".join(lines))
    convs = {}
    for j, (index, _, _) in enumerate(CONVS):
        w = have[f"features.{index}.weight"].astype(np.float32)
        b = have[f"features.{index}.bias"].astype(np.float32)
        convs[j] = {"kernel": jnp.asarray(np.transpose(w, (2, 3, 1, 0))), "bias": jnp.asarray(b)}
    return {"convs": convs}


def _natural(name: str):
    return [int(p) if p.isdigit() else p for p in name.split(".")]


def read_state_dict(path: str) -> dict[str, np.ndarray]:
    """Tensors of a local ``.pth``/``.pt`` (torch pickle; needs torch) or ``.safetensors`` file as numpy."""
    return weight_files.read_tensors(
        path,
        what="VGG19 weights file",
        hint="expected torchvision's vgg19-dcbb9e9d.pth or a .safetensors file with the same tensor names",
    )


def load_torchvision_state_dict(path: str, *, width: int = 64) -> dict:
    """The pure parameter dict of :class:`VGG19Features` from a local torchvision weights file."""
    return params_from_state_dict(read_state_dict(path), width=width, source=repr(path))


def random_params(seed: int, *, width: int = 64) -> dict:
    """Untrained weights as torchvision initialises VGG (He-normal, fan-out; zero biases), drawn
    with NumPy from ``seed`` (no per-shape jax compilations; for tests and smoke runs only)."""
    rng = np.random.default_rng(seed)
    convs = {}
    for j, (index, cin, cout) in enumerate(CONVS):
        i, o = 3 if cin is None else cin * width, cout * width
        w = rng.standard_normal((3, 3, i, o)) * np.sqrt(2.0 / (9 * o))
        convs[j] = {"kernel": jnp.asarray(w, jnp.float32), "bias": jnp.zeros((o,), jnp.float32)}
    return {"convs": convs}


def num_params(width: int = 64) -> int:
    """Parameters up to conv5_2 (15,304,768 at width 64; the full torchvision features: 20,024,384)."""
    return sum(int(np.prod(s)) for s in expected_shapes(width).values())
