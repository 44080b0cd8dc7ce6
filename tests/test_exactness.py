"""Exact answers where they exist (issue #19): the trained DA-KPN translator with a non-zero KPN,
area resizing at non-divisible sizes, the export's uint8 rounding, the augmentation's crop offsets
and flips, padded evaluation batches, and the PatchGAN / U-Net forward passes composed by hand.
Every reference is float64 NumPy written from the spec."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import default
from dakpn_jax import export, translation
from dakpn_jax.data import pipeline, procedural
from dakpn_jax.models import patchgan
from dakpn_jax.models.segmenter import UNetSmall
from dakpn_jax.training import dakpn, segmentation, dakpn_features
from conftest import values_around_half_levels


# ----------------------------------------------------------------------------- NumPy layers


def random_module(build, seed):
    """The module with every parameter drawn at random (norm scales around 1), built without
    running its initialisers (eager initialisers compile one kernel each: seconds on CPU)."""
    graphdef, abstract = nnx.split(nnx.eval_shape(build))
    rng = np.random.default_rng(seed)
    pure = nnx.to_pure_dict(abstract)
    fill = lambda path, a: jnp.asarray(
        (1.0 if path[-1].key == "scale" else 0.0) + 0.3 * rng.normal(size=a.shape), jnp.float32
    )
    pure = jax.tree_util.tree_map_with_path(fill, pure)
    nnx.replace_by_pure_dict(abstract, pure)
    return nnx.merge(graphdef, abstract), pure


def np_conv(x, w, b=None, stride=1, pad=0):
    """NHWC cross-correlation (what nnx.Conv / torch Conv2d compute), zero padding, float64."""
    x = np.pad(np.asarray(x, np.float64), ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    w = np.asarray(w, np.float64)
    kh, kw = w.shape[:2]
    Ho, Wo = (x.shape[1] - kh) // stride + 1, (x.shape[2] - kw) // stride + 1
    out = np.zeros((x.shape[0], Ho, Wo, w.shape[3]))
    for i in range(kh):
        for j in range(kw):
            patch = x[
                :, i : i + stride * (Ho - 1) + 1 : stride, j : j + stride * (Wo - 1) + 1 : stride
            ]
            out += patch @ w[i, j]
    return out if b is None else out + np.asarray(b, np.float64)


def lrelu(x):
    return np.where(x > 0, x, 0.2 * x)


def np_area(x, size):
    """Area resize by definition: cell (i, j) = mean of the input over [i H/h, (i+1) H/h) x
    [j W/w, (j+1) W/w), pixel p covering [p, p + 1), integrated exactly."""
    B, H, W, C = x.shape
    h, w = size

    def weights(n, m):
        out = np.zeros((m, n))
        for i in range(m):
            lo, hi = i * n / m, (i + 1) * n / m
            for p in range(n):
                out[i, p] = max(0.0, min(hi, p + 1) - max(lo, p)) / (hi - lo)
        return out

    return np.einsum("ip,jq,bpqc->bijc", weights(H, h), weights(W, w), np.asarray(x, np.float64))


# ----------------------------------------------------------------------------- translator


@pytest.mark.parametrize("size", [(5, 7), (13, 6), (4, 24)])
def test_area_resize_matches_exact_area_average(size):
    x = np.random.default_rng(0).random((2, 16, 24, 3))
    got = np.asarray(dakpn_features.area_resize(jnp.asarray(x, jnp.float32), size))
    np.testing.assert_allclose(got, np_area(x, size), atol=1e-6)


def test_make_translator_at_another_frame_size_with_a_nonzero_kpn():
    """make_translator on 48 x 80 frames (training: 32 x 64, grid 8 x 16 -> 12 x 20 here) equals
    translate() on theta built in NumPy: one-hot labels averaged over 4 x 4 cells, the 1x1 conv,
    sigma decoded from the neighbour weight, and the fixed field drawn at the training size."""
    c = default.get_config("tiny")
    C, K = c.model.num_classes, c.model.kernel_size
    rng = np.random.default_rng(1)
    kernel = rng.normal(size=(C, 12)) * 0.1
    kernel[:, 6:9] *= 0.3
    bias = np.array([1.0, 0.95, 1.05, 0.01, 0.0, -0.02, 0.55, 0.6, 0.65, 0.04, 0.05, 0.06])
    # make_translator reads only the KPN head's params (a linear head: one 1x1 conv).
    state = {
        "params": {
            "kpn": {
                "out": {
                    "kernel": jnp.asarray(kernel[None, None], jnp.float32),
                    "bias": jnp.asarray(bias, jnp.float32),
                }
            }
        }
    }
    cfg = procedural.ProceduralConfig.from_any(c.data)
    cfg = procedural.ProceduralConfig(**{**cfg.__dict__, "height": 48, "width": 80})
    src = procedural.make_source("synthetic-train", cfg)
    x = np.stack([src[i]["image"] for i in range(2)]).astype(np.float32) / 255
    y = np.stack([src[i]["label"] for i in range(2)])
    y[0, :5, :7] = 255  # ignore pixels: zero features

    onehot = (y[..., None] == np.arange(C)).astype(np.float64)
    feats = onehot.reshape(2, 12, 4, 20, 4, C).mean(axis=(2, 4))
    raw = feats @ kernel + bias
    lo, hi = (
        np.exp(-1 / (2 * 0.2**2)),
        np.exp(-1 / (2 * 2.0**2)),
    )  # t clipped to sigma in [0.2, (K-1)/2]
    theta = raw.copy()
    theta[..., 6:9] = np.sqrt(-1 / (2 * np.log(np.clip(raw[..., 6:9], lo, hi))))
    noise = translation.noise_field(c.model.noise_seed, 48, 80, base_size=(32, 64))
    want = translation.translate(
        jnp.asarray(x), jnp.asarray(theta, jnp.float32), noise, kernel_size=K
    )
    got = dakpn.make_translator(c, state)(jnp.asarray(x), jnp.asarray(y))
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-5)
    assert np.abs(np.asarray(got) - x).mean() > 0.01  # the translation is far from the identity


# ----------------------------------------------------------------------------- export


def test_to_uint8_rounds_exactly_near_every_half_level():
    """round(clip(x) * 255) computed exactly: float32 values a few ulps around every k + 1/2 and
    outside [0, 1]."""
    vals = values_around_half_levels(below=8, count=16)
    x = np.array(vals + [-0.3, 0.0, 1.0, 1.7, 0.5], np.float32)
    want = np.floor(
        np.clip(x.astype(np.float64), 0, 1) * 255 + 0.5
    )  # ties only at 0.5 -> 127.5 -> 128
    got = export.to_uint8(x)
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, want.astype(np.uint8))


# ----------------------------------------------------------------------------- augmentation


def test_crops_reach_every_offset_and_flip_half_the_time():
    H, W, h, w, n = 9, 13, 4, 6, 4000
    yy, xx = np.mgrid[:H, :W]
    example = {
        "image": np.stack([yy * 20, xx * 15, yy * 0], -1).astype(np.uint8),
        "label": (yy * W + xx).astype(np.uint8),
    }
    fn = pipeline.AugmentFn(seed=11, crop_size=(h, w), random_flip=True)
    counts, flips = np.zeros((H - h + 1, W - w + 1), int), 0
    for i in range(n):
        out = fn(i, example)
        lab = out["label"].astype(int)
        rows, cols = lab // W, lab % W
        flip = cols[0, 0] > cols[0, -1]
        flips += flip
        counts[rows.min(), cols.min()] += 1
        assert (out["image"][..., 0] == rows * 20).all() and (
            out["image"][..., 1] == cols * 15
        ).all()
    assert (counts > 0).all(), counts  # offsets 0..H-h x 0..W-w, bottom and right edges included
    expected = n / counts.size
    assert counts.min() > 0.5 * expected and counts.max() < 1.6 * expected, counts
    assert abs(flips / n - 0.5) < 4 * np.sqrt(0.25 / n), flips / n  # 4 sigma


# ----------------------------------------------------------------------------- evaluation


def test_padded_evaluation_batches_match_a_numpy_confusion_matrix():
    """5 images, 2 devices x batch 2: the last batch is padded; the pads must not count."""
    c = default.get_config("tiny")
    src = procedural.make_source("real-val", c.data)
    C = 19
    w = np.random.default_rng(0).normal(size=(3, C)).astype(np.float32)
    apply_fn = lambda params, images: jnp.einsum("bhwc,ck->bhwk", images, params["w"])
    res = segmentation.evaluate_segmenter(
        apply_fn,
        {"w": jnp.asarray(w)},
        src,
        C,
        batch_size=2,
        max_images=5,
        devices=jax.devices()[:2],
    )
    want = np.zeros((C, C), np.int64)
    for i in range(5):
        x, y = src[i]["image"].astype(np.float64) / 255, src[i]["label"].astype(np.int64)
        pred = np.argmax(x @ w.astype(np.float64), -1)
        keep = y != 255
        np.add.at(want, (y[keep], pred[keep]), 1)
    np.testing.assert_array_equal(res["confusion"], want)
    assert want.sum() > 0


# ----------------------------------------------------------------------------- networks


def test_patchgan_forward_is_the_composition_of_its_layers():
    d, p = random_module(
        lambda: patchgan.PatchGAN(3, ndf=4, n_layers=3, norm="batch", rngs=nnx.Rngs(0)), 0
    )
    rng = np.random.default_rng(0)
    x = rng.random((2, 16, 24, 3)).astype(np.float32)

    def bn(h, q):
        m, v = h.mean((0, 1, 2)), h.var((0, 1, 2))
        return (h - m) / np.sqrt(v + 1e-5) * np.asarray(q["scale"]) + np.asarray(q["bias"])

    cv = p["convs"]
    h = lrelu(np_conv(x, cv[0]["kernel"], cv[0]["bias"], stride=2, pad=1))
    h = lrelu(bn(np_conv(h, cv[1]["kernel"], stride=2, pad=1), p["norms"][0]))
    h = lrelu(bn(np_conv(h, cv[2]["kernel"], stride=2, pad=1), p["norms"][1]))
    want = np_conv(h, p["out"]["kernel"], p["out"]["bias"], pad=1)
    got = np.asarray(jax.jit(lambda v: d(v))(jnp.asarray(x)))
    assert got.shape == (2, 2, 3, 1)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-4)


def np_unet_two_levels(h0, p):
    """float64 NumPy UNetSmall(features=(4, 8)) on an already padded, [-1, 1]-mapped input:
    blocks of (3x3 conv, GroupNorm, ReLU) x 2, 2x2 max pool, nearest 2x upsampling, skip
    concatenation, 1x1 head."""

    def gn(h, q, groups, eps=1e-6):  # flax GroupNorm default epsilon
        b, H, W, ch = h.shape
        g = h.reshape(b, H, W, groups, ch // groups)
        mu, var = g.mean((1, 2, 4), keepdims=True), g.var((1, 2, 4), keepdims=True)
        return ((g - mu) / np.sqrt(var + eps)).reshape(h.shape) * np.asarray(
            q["scale"]
        ) + np.asarray(q["bias"])

    def block(h, q, groups):
        h = np.maximum(gn(np_conv(h, q["conv1"]["kernel"], pad=1), q["norm1"], groups), 0)
        return np.maximum(gn(np_conv(h, q["conv2"]["kernel"], pad=1), q["norm2"], groups), 0)

    b, H, W, _ = h0.shape
    s0 = block(h0, p["down"][0], 2)  # 4 channels: 2 groups of 2
    pooled = s0.reshape(b, H // 2, 2, W // 2, 2, 4).max(axis=(2, 4))
    h1 = block(pooled, p["down"][1], 4)  # 8 channels: 4 groups of 2
    up = h1.repeat(2, axis=1).repeat(2, axis=2)
    h2 = block(np.concatenate([up, s0], -1), p["up"][0], 2)
    return np_conv(h2, p["head"]["kernel"], p["head"]["bias"])


def test_unet_forward_is_the_composition_of_its_layers():
    """Two levels (4, 8 filters) on a 7 x 9 input: edge-pad to 8 x 10, [-1, 1], the two-level
    U-Net, crop back."""
    m, p = random_module(lambda: UNetSmall(3, features=(4, 8), rngs=nnx.Rngs(0)), 2)
    rng = np.random.default_rng(2)
    x = rng.random((2, 7, 9, 3)).astype(np.float32)
    h0 = np.pad(x.astype(np.float64) * 2 - 1, ((0, 0), (0, 1), (0, 1), (0, 0)), mode="edge")
    want = np_unet_two_levels(h0, p)[:, :7, :9]
    got = np.asarray(jax.jit(lambda v: m(v))(jnp.asarray(x)))
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


def np_upsample2_bilinear(z):
    """2x bilinear upsampling with half-pixel centres (output i samples input (i + 0.5) / 2 - 0.5,
    clamped at the edges), float64, over axes 1 and 2 of (B, H, W, C)."""
    for axis in (1, 2):
        n = z.shape[axis]
        src = (np.arange(2 * n) + 0.5) / 2 - 0.5
        i0 = np.floor(src).astype(int)
        t = src - i0
        lo, hi = np.clip(i0, 0, n - 1), np.clip(i0 + 1, 0, n - 1)
        shape = [1] * z.ndim
        shape[axis] = 2 * n
        t = t.reshape(shape)
        z = np.take(z, lo, axis=axis) * (1 - t) + np.take(z, hi, axis=axis) * t
    return z


def test_unet_input_stride_pools_the_input_and_upsamples_the_logits():
    """input_stride 2 on a 7 x 9 input: edge-pad to 8 x 12 (a multiple of 2 x 2^(L-1)), [-1, 1],
    2 x 2 average pooling to 4 x 6, the same two-level U-Net, bilinear 2x upsampling of the
    logits, crop back to 7 x 9. Same parameters as input_stride 1 (the stride adds none)."""
    m, p = random_module(lambda: UNetSmall(3, features=(4, 8), input_stride=2, rngs=nnx.Rngs(0)), 2)
    rng = np.random.default_rng(3)
    x = rng.random((2, 7, 9, 3)).astype(np.float32)
    h0 = np.pad(x.astype(np.float64) * 2 - 1, ((0, 0), (0, 1), (0, 3), (0, 0)), mode="edge")
    pooled = h0.reshape(2, 4, 2, 6, 2, 3).mean(axis=(2, 4))
    want = np_upsample2_bilinear(np_unet_two_levels(pooled, p))[:, :7, :9]
    got = np.asarray(jax.jit(lambda v: m(v))(jnp.asarray(x)))
    assert got.shape == (2, 7, 9, 3)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="input_stride"):
            UNetSmall(3, features=(4, 8), input_stride=bad, rngs=nnx.Rngs(0))
