"""The trained translator that export and ``load_translator`` use, against an independent
computation from the KPN's parameters, and the input pipeline's crop offsets against the full set
of legal offsets.

Translator: a DA-KPN ``tiny`` state whose linear head is given random weights (so every class has
its own theta), applied to an odd-sized frame (the parameter grid does not divide it, so cells cut
pixels) with an asymmetric label map. The reference builds the one-hot class fractions per
parameter cell in float64 NumPy from the pixel footprints (each cell of an (h, w) grid over an
(H, W) frame covers rows [i H / h, (i + 1) H / h), pixels cut by a border counted by their overlap),
applies the head (theta = f @ K + b) and then the public ``dakpn_jax.translate`` with the same
fixed noise field (``translation.noise_field``, the library's definition of that field). A feature
cell misplaced by one pixel, a transposed grid or a wrong noise field moves theta by about
|K| / (cell size) >= 0.02 at class borders, which moves the output by more than 1e-3.

Tolerance, derived: theta_ref and theta_lib differ only by float32 rounding of the area average and
of the dot product, |d theta| <= (C + 2) * eps32 * (max|f| * sum|K| + |b|) ~ 1e-5 here. ``translate``
is Lipschitz in theta with a constant below 10 (hsv_to_rgb: 6 per unit of hue times s, v <= 1;
saturation and value scale by at most |hsv| <= 1; the blur weights move by at most ~2 / sigma per px
of sigma with sigma >= 0.5; noise_scale multiplies |n| <= 5). So |d out| <= 1e-4 with margin.
"""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from configs import default as default_configs  # noqa: E402
import dakpn_jax as dk  # noqa: E402
from dakpn_jax import translation  # noqa: E402
from dakpn_jax.data import pipeline  # noqa: E402
from dakpn_jax.training import dakpn, dakpn_config  # noqa: E402

EPS32 = float(np.finfo(np.float32).eps)


def _area_weights_f64(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in): the overlap of input pixel p = [p, p + 1) with output cell
    [i n_in / n_out, (i + 1) n_in / n_out), divided by the cell's length n_in / n_out."""
    w = np.zeros((n_out, n_in))
    for i in range(n_out):
        lo, hi = i * n_in / n_out, (i + 1) * n_in / n_out
        for p in range(n_in):
            w[i, p] = max(0.0, min(hi, p + 1) - max(lo, p))
    return w / (n_in / n_out)


def _reference_theta(
    labels: np.ndarray, num_classes: int, grid, kernel: np.ndarray, bias: np.ndarray
):
    onehot = (labels[..., None] == np.arange(num_classes)).astype(np.float64)  # 255 -> all zeros
    ah, aw = (
        _area_weights_f64(labels.shape[1], grid[0]),
        _area_weights_f64(labels.shape[2], grid[1]),
    )
    feats = np.einsum("ip,jq,bpqc->bijc", ah, aw, onehot)
    return feats @ kernel + bias, feats


@pytest.mark.parametrize("frame", [(37, 53), (32, 64)])
def test_translator_matches_independent_computation_from_kpn_params(frame):
    config = default_configs.get_config("tiny")
    with config.unlocked():
        config.model.head = "linear"
        config.model.sigma_param = "sigma"
    state = dakpn.init_state(config, jax.random.key(0))
    kpn = state["params"]["kpn"]
    kleaf, bleaf = _kernel_and_bias(kpn)
    C = kleaf.shape[-2]
    r = np.random.default_rng(1)
    kernel = r.uniform(-0.3, 0.3, (C, 12))
    kernel[:, 6:9] = r.uniform(0.0, 0.5, (C, 3))  # sigma in [bias, bias + 0.5]: >= 0.5 px
    kernel[:, 9:12] = r.uniform(0.0, 0.05, (C, 3))  # noise scales of a few per cent
    bias = np.asarray(bleaf, np.float64)
    assert np.allclose(
        bias, [1, 1, 1, 0, 0, 0, 1, 1, 1, 0, 0, 0]
    )  # the paper's start, sigma0 = 1 px
    kpn = _with_kernel(kpn, kernel.reshape(kleaf.shape).astype(np.float32))
    state = {**state, "params": {**state["params"], "kpn": kpn}}

    H, W = frame
    yy, xx = np.mgrid[:H, :W]
    labels = ((3 * yy + 7 * xx + (yy * xx) // 5) % (C + 1)).astype(np.int32)[None]
    labels[labels == C] = 255  # some ignore pixels: no class, zero features
    labels = np.concatenate([labels, labels[:, ::-1, ::-1]])  # a second, rotated frame
    images = r.random((2, H, W, 3), dtype=np.float32)

    grid = dakpn_config.grid_for(config, H, W)
    theta, feats = _reference_theta(labels, C, grid, kernel, bias)
    noise = jnp.broadcast_to(
        translation.noise_field(
            config.model.noise_seed, H, W, base_size=dakpn_config.frame_size(config)
        ),
        (2, H, W, 3),
    )

    def translate_with(theta_ref):
        return np.asarray(
            dk.translate(
                jnp.asarray(images),
                jnp.asarray(theta_ref, jnp.float32),
                noise,
                kernel_size=config.model.kernel_size,
            )
        )

    want = translate_with(theta)
    d_theta = (
        (C + 2) * EPS32 * (np.abs(feats).max() * np.abs(kernel).sum(0).max() + np.abs(bias).max())
    )
    tol = 10 * d_theta + 4 * EPS32

    from dakpn_jax import export

    for fn in (dakpn.make_translator(config, state), export.make_translate_fn(config, state)):
        got = np.asarray(fn(jnp.asarray(images), jnp.asarray(labels)))
        err = float(np.max(np.abs(got - want)))
        assert err <= tol, (frame, err, tol)
    # The check has teeth: features shifted by one pixel give a clearly different translation.
    shifted, _ = _reference_theta(np.roll(labels, 1, axis=2), C, grid, kernel, bias)
    assert float(np.max(np.abs(translate_with(shifted) - want))) > 100 * tol


def test_untrained_translator_is_the_start_translation_at_every_compilation():
    """An untrained KPN (zero output kernel: theta = the bias everywhere) translates as the public
    ``translate`` does with that constant theta, at each of ten frame sizes (ten compilations).

    Regression: with the weights closed over as constants, jaxlib 0.10's XLA:CPU miscompiled the
    all-zero 1x1 convolution into reads of uninitialised memory in about half of the compilations
    (outputs all 0 / 1, 1e30 or NaN). Tolerance as in the test above with K = 0: 4 eps32."""
    config = default_configs.get_config("tiny")
    with config.unlocked():
        config.model.head = "linear"
        config.model.sigma_param = "sigma"  # the head's sigma outputs are sigma in px
    state = dakpn.init_state(config, jax.random.key(0))
    kernel, bias = _kernel_and_bias(state["params"]["kpn"])
    assert not np.any(np.asarray(kernel))  # the paper's start: a zero head
    fn = dakpn.make_translator(config, state)
    r = np.random.default_rng(2)
    for H, W in [
        (32, 64),
        (32, 48),
        (24, 64),
        (16, 32),
        (40, 40),
        (29, 61),
        (8, 8),
        (48, 16),
        (33, 35),
        (64, 32),
    ]:
        images = r.random((2, H, W, 3), dtype=np.float32)
        labels = r.integers(0, config.model.num_classes, (2, H, W)).astype(np.int32)
        h, w = dakpn_config.grid_for(config, H, W)
        theta = jnp.broadcast_to(jnp.asarray(bias, jnp.float32), (2, h, w, 12))
        noise = jnp.broadcast_to(
            translation.noise_field(
                config.model.noise_seed, H, W, base_size=dakpn_config.frame_size(config)
            ),
            (2, H, W, 3),
        )
        want = np.asarray(
            dk.translate(jnp.asarray(images), theta, noise, kernel_size=config.model.kernel_size)
        )
        got = np.asarray(fn(jnp.asarray(images), jnp.asarray(labels)))
        err = float(np.max(np.abs(got - want))) if np.all(np.isfinite(got)) else float("inf")
        assert err <= 4 * EPS32, ((H, W), err)


def _kernel_and_bias(kpn):
    leaves = {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_flatten_with_path(kpn)[0]}
    (kernel,) = [x for p, x in leaves.items() if p.endswith("['kernel']")]
    (bias,) = [x for p, x in leaves.items() if p.endswith("['bias']")]
    return kernel, bias


def _with_kernel(kpn, kernel):
    return jax.tree_util.tree_map_with_path(
        lambda p, x: jnp.asarray(kernel) if jax.tree_util.keystr(p).endswith("['kernel']") else x,
        kpn,
    )


# ----------------------------------------------------------------------------- crop offsets


class _CoordSource:
    """A (H, W) frame whose pixels encode their own row and column (image) and row * W + col (label)."""

    def __init__(self, n, H, W):
        self.n, self.H, self.W = n, H, W

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        y, x = np.mgrid[: self.H, : self.W]
        image = np.stack([y, x, np.full_like(y, i % 256)], -1).astype(np.uint8)
        return {"image": image, "label": (y * self.W + x).astype(np.uint8)}


@pytest.mark.parametrize("frame, crop", [((5, 7), (3, 4)), ((6, 6), (6, 2)), ((4, 9), (1, 9))])
def test_crop_offsets_cover_every_legal_offset_edges_included(frame, crop):
    """Over 60 draws per legal offset, the set of (top, left) offsets the pipeline produces is
    exactly {0..H-h} x {0..W-w}: the last rows and columns can be reached, nothing outside is."""
    (H, W), (h, w) = frame, crop
    legal = {(t, l) for t in range(H - h + 1) for l in range(W - w + 1)}
    n = 60 * len(legal)
    it = pipeline.make_pipeline(
        _CoordSource(n, H, W),
        batch_size=10,
        seed=3,
        crop_size=crop,
        random_flip=False,
        num_epochs=1,
        shuffle=False,
    )
    seen = set()
    for batch in it:
        code = np.round(batch["image"] * 255).astype(np.int64)
        for b in range(code.shape[0]):
            top, left = int(code[b, 0, 0, 0]), int(code[b, 0, 0, 1])
            # The window is the contiguous block at that offset, in image and label alike.
            np.testing.assert_array_equal(
                code[b, :, :, 0], top + np.arange(h)[:, None] + 0 * np.arange(w)
            )
            np.testing.assert_array_equal(
                code[b, :, :, 1], left + np.arange(w)[None, :] + 0 * np.arange(h)[:, None]
            )
            np.testing.assert_array_equal(
                batch["label"][b],
                ((top + np.arange(h))[:, None] * W + left + np.arange(w)[None, :]).astype(np.uint8),
            )
            seen.add((top, left))
    # (60 draws each: the chance that a reachable offset never shows is below 9 * (1 - 1/9)^540.)
    assert seen == legal, (sorted(legal - seen), sorted(seen - legal))
