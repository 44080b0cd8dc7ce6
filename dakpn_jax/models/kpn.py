"""The KPN head of DA-KPN (docs/METHOD.md §1 step 2), Flax NNX.

The head maps semantic features f (B, h, w, C) at the parameter resolution to the translation
parameters theta (B, h, w, 12) in the layout of :func:`dakpn_jax.translation.translate`::

    [hsv_scale(3), hsv_bias(3), sigma(3), noise_scale(3)]

``head="linear"`` (the paper): one 1x1 conv C -> 12 with zero weights and the identity-like bias
``[1,1,1, 0,0,0, s0,s0,s0, 0,0,0]`` (s0 = 1 px), so at initialisation every pixel gets the same
near-identity translation (a 1 px blur) whatever the features. With one-hot label features this is
a per-class 12-parameter translator whose class boundaries are blended by the area-resized labels.

``head="deep"`` (extension): two 3x3 conv + ReLU layers over [features, image resized to h x w]
followed by the same zero-initialised 1x1 output layer, so it starts at the same translation.

Blur parametrisation (``sigma_param``). The blur weights are ``w(i, j) = exp(-(i^2 + j^2) / (2
sigma^2))``; near sigma = 0 every off-centre weight is ``exp(-1 / (2 sigma^2))``, which is flat in
sigma (all derivatives vanish), so a sigma that drifts below ~0.3 px stops learning (docs/METHOD.md §5; at 0.25 px the centre
pixel's derivative in sigma is ~50 times smaller than in t below).

- ``"sigma"`` (paper): the head outputs sigma directly.
- ``"neighbour_weight"``: the head outputs t, the weight of a 4-neighbour relative to the centre,
  ``t = exp(-1 / (2 sigma^2))``, and sigma = sqrt(-1 / (2 log t)). The blurred pixel is then, to
  first order around t = 0, ``(c + t * sum(4 neighbours)) / (1 + 4 t)``: linear in t with slope
  ``sum(neighbours) - 4 c``, so the gradient survives at sigma -> 0. t is clipped to
  ``[t(sigma_min), t(sigma_max)]`` with a straight-through gradient (the value is clipped, the
  gradient passes as if it were not), so a t pushed outside the range can always come back.
  The bias starts at ``t(s0) = exp(-1/2) ~= 0.607`` for s0 = 1 px: the same initial translation.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

NUM_PARAMS = 12
HSV_SCALE, HSV_BIAS, SIGMA, NOISE_SCALE = slice(0, 3), slice(3, 6), slice(6, 9), slice(9, 12)
SIGMA_PARAMS = ("sigma", "neighbour_weight")
HEADS = ("linear", "deep")
SIGMA_MIN = (
    0.2  # px; t(0.2) = exp(-12.5) ~= 4e-6: the blur is an exact identity in float32 below it
)


def identity_params(sigma0: float = 1.0) -> np.ndarray:
    """The identity-like parameter vector ``[1,1,1, 0,0,0, s0,s0,s0, 0,0,0]`` (12,) float32."""
    return np.array([1, 1, 1, 0, 0, 0, sigma0, sigma0, sigma0, 0, 0, 0], np.float32)


def neighbour_weight(sigma):
    """``t = exp(-1 / (2 sigma^2))``: a 4-neighbour's blur weight relative to the centre."""
    return np.exp(-1.0 / (2.0 * np.square(sigma)))


def sigma_from_neighbour_weight(t: jax.Array, sigma_max: float) -> jax.Array:
    """Inverse of :func:`neighbour_weight`, t clipped to [t(SIGMA_MIN), t(sigma_max)] with a
    straight-through gradient: ``sigma = sqrt(-1 / (2 log t))``."""
    lo, hi = float(neighbour_weight(SIGMA_MIN)), float(neighbour_weight(sigma_max))
    t = t + jax.lax.stop_gradient(jnp.clip(t, lo, hi) - t)
    return jnp.sqrt(-1.0 / (2.0 * jnp.log(t)))


class KPNHead(nnx.Module):
    """features (B, h, w, C) [+ image (B, h, w, 3) for ``head="deep"``] -> theta (B, h, w, 12).

    Args:
      in_features: C, the number of feature channels (classes for one-hot / segmenter logits).
      head: ``"linear"`` (paper: one 1x1 conv) or ``"deep"`` (3x3 conv net over features + image).
      hidden: channels of the deep head.
      sigma0: initial blur sigma in pixels (paper: 1).
      sigma_param: ``"sigma"`` or ``"neighbour_weight"`` (see the module docstring).
      sigma_max: upper clip of sigma in pixels for ``"neighbour_weight"`` (the kernel radius is
        a natural choice; beyond it the window truncates the Gaussian anyway).
    """

    def __init__(
        self,
        in_features: int,
        *,
        head: str = "linear",
        hidden: int = 32,
        sigma0: float = 1.0,
        sigma_param: str = "sigma",
        sigma_max: float = 12.0,
        rngs: nnx.Rngs,
    ):
        if head not in HEADS:
            raise ValueError(f"KPNHead: head={head!r} must be one of {HEADS}")
        if sigma_param not in SIGMA_PARAMS:
            raise ValueError(f"KPNHead: sigma_param={sigma_param!r} must be one of {SIGMA_PARAMS}")
        if in_features < 1 or hidden < 1:
            raise ValueError(f"KPNHead: in_features={in_features} and hidden={hidden} must be >= 1")
        if not SIGMA_MIN < sigma0 < sigma_max:
            raise ValueError(
                f"KPNHead: sigma0={sigma0} must lie in ({SIGMA_MIN}, sigma_max={sigma_max})"
            )
        self.in_features, self.head, self.sigma_param, self.sigma_max = (
            in_features,
            head,
            sigma_param,
            sigma_max,
        )
        bias = identity_params(sigma0)
        if sigma_param == "neighbour_weight":
            bias[SIGMA] = neighbour_weight(sigma0)
        out_in = in_features
        if head == "deep":
            conv3 = lambda i, o: nnx.Conv(i, o, (3, 3), padding="SAME", rngs=rngs)
            self.conv1 = conv3(in_features + 3, hidden)
            self.conv2 = conv3(hidden, hidden)
            out_in = hidden
        # Zero weights + identity-like bias: the translation starts the same for every pixel.
        self.out = nnx.Conv(
            out_in,
            NUM_PARAMS,
            (1, 1),
            kernel_init=nnx.initializers.zeros,
            bias_init=lambda key, shape, dtype=jnp.float32: jnp.asarray(bias, dtype),
            rngs=rngs,
        )

    def __call__(self, features: jax.Array, image: jax.Array | None = None) -> jax.Array:
        if features.ndim != 4 or features.shape[-1] != self.in_features:
            raise ValueError(
                f"KPNHead: features must be (B, h, w, {self.in_features}), got {features.shape}"
            )
        h = features.astype(jnp.float32)
        if self.head == "deep":
            if image is None or image.shape[:3] != features.shape[:3] or image.shape[-1] != 3:
                raise ValueError(
                    f"KPNHead(head='deep'): image must be (B, h, w, 3) matching features "
                    f"{features.shape}, got {None if image is None else image.shape}"
                )
            h = jnp.concatenate([h, image.astype(jnp.float32)], axis=-1)
            h = jax.nn.relu(self.conv2(jax.nn.relu(self.conv1(h))))
        raw = self.out(h)
        if self.sigma_param == "sigma":
            return raw
        sigma = sigma_from_neighbour_weight(raw[..., SIGMA], self.sigma_max)
        return jnp.concatenate([raw[..., :6], sigma, raw[..., 9:]], axis=-1)


def default_sigma_max(kernel_size: int) -> float:
    """The kernel radius (K - 1) / 2, at least 1.5 px."""
    return max(1.5, (kernel_size - 1) / 2)


__all__ = [
    "KPNHead",
    "identity_params",
    "neighbour_weight",
    "sigma_from_neighbour_weight",
    "NUM_PARAMS",
    "default_sigma_max",
]
