"""SegFormer (NNX) and its Hugging Face weight import.

The reference for the numbers is transformers' own SegformerForSemanticSegmentation, built offline
from a tiny random config (test-only extras torch + transformers; those tests skip without them).
The torch-free tests check the published parameter counts, shapes, input validation, training-mode
behaviour and the converter's errors.
"""

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from dakpn_jax.models import segformer as sf
from dakpn_jax.models import segformer_convert as conv

# A tiny 4-stage spec that still exercises every piece: sequence reduction 4 and 2, no reduction in
# the last stage, several heads, two blocks in one stage.
TINY_HF = dict(
    num_channels=3,
    num_encoder_blocks=4,
    depths=[1, 2, 1, 1],
    sr_ratios=[4, 2, 2, 1],
    hidden_sizes=[8, 16, 24, 32],
    num_attention_heads=[1, 2, 3, 4],
    mlp_ratios=[4, 4, 2, 4],
    patch_sizes=[7, 3, 3, 3],
    strides=[4, 2, 2, 2],
    decoder_hidden_size=16,
    num_labels=5,
)
TINY = sf.SegFormerSpec(
    hidden_sizes=(8, 16, 24, 32),
    depths=(1, 2, 1, 1),
    num_heads=(1, 2, 3, 4),
    sr_ratios=(4, 2, 2, 1),
    mlp_ratios=(4, 4, 2, 4),
    decoder_hidden_size=16,
)


IMAGENET_MEAN = (0.485, 0.456, 0.406)  # RGB, transformers' IMAGENET_DEFAULT_MEAN
IMAGENET_STD = (0.229, 0.224, 0.225)


def _images(shape, seed=0):
    return np.random.default_rng(seed).uniform(0.0, 1.0, shape).astype(np.float32)


# One jitted forward for every test: same model structure and input shape -> one compilation.
# (Eager NNX calls compile every op separately, which is far slower on a small CPU.)
_apply = jax.jit(lambda m, x: m(x))
_encode = jax.jit(lambda m, x: m.encode(x))
X_SHAPE = (2, 64, 96, 3)


def _model(num_classes=5, seed=0, spec=TINY):
    """A SegFormer with random values and no random-number compilation: its abstract structure
    filled from a NumPy generator (XLA's compile of dozens of threefry initialisers is the slowest
    part of this file otherwise). Positive BatchNorm variances; RNG streams get real keys."""
    graph, state = nnx.split(
        nnx.eval_shape(lambda: sf.SegFormer(spec, num_classes, rngs=nnx.Rngs(0)))
    )
    rng = np.random.default_rng(seed)

    def fill(s):
        if jax.dtypes.issubdtype(s.dtype, jax.dtypes.prng_key):
            return jax.random.key(seed)
        if not jnp.issubdtype(s.dtype, jnp.floating):
            return np.zeros(s.shape, s.dtype)
        return (0.2 * rng.normal(size=s.shape)).astype(s.dtype)

    state = jax.tree.map(fill, state)
    model = nnx.merge(graph, state)
    bn = model.decode_head.batch_norm
    bn.var[...] = jnp.asarray(0.5 + np.abs(rng.normal(size=bn.var.shape)), jnp.float32)
    return model


# --------------------------------------------------------------------------------------------------
# Against Hugging Face transformers (torch-only test extras)


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    """A tiny random SegformerForSemanticSegmentation with every tensor perturbed (so LayerNorm and
    BatchNorm parameters/statistics are not the trivial 1/0), saved as safetensors."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = transformers.SegformerForSemanticSegmentation(
        transformers.SegformerConfig(**TINY_HF)
    ).eval()
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                t.add_(0.1 * torch.randn_like(t))
                if name.endswith("running_var"):
                    t.abs_().add_(0.5)
    path = tmp_path_factory.mktemp("segformer_hf")
    model.save_pretrained(path, safe_serialization=True)
    return torch, transformers, model, path


def _hf_forward(torch, model, x):
    """HF outputs for images x (B, H, W, 3) in [0, 1] (normalised as its image processor does)."""
    # ImageNet constants as SegFormer's image processor has them (written here, not taken from the code
    # under test, so a wrong constant in dakpn_jax.models.segformer fails the comparison).
    mean, std = np.array(IMAGENET_MEAN, np.float32), np.array(IMAGENET_STD, np.float32)
    pix = torch.from_numpy(((x - mean) / std).transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
        return model(pixel_values=pix, output_hidden_states=True)


def _nhwc(t):
    return t.numpy().transpose(0, 2, 3, 1)


def _hf_logits(torch, model, x):
    return _nhwc(_hf_forward(torch, model, x).logits)


def test_logits_match_hugging_face(hf):
    torch, _, model, path = hf
    ours = conv.load_hf_segformer(path)
    assert ours.spec.hidden_sizes == (8, 16, 24, 32) and ours.num_classes == 5
    x = _images(X_SHAPE)
    want = _hf_logits(torch, model, x)
    got = _apply(ours, jnp.asarray(x))
    assert got.shape == want.shape == (2, 16, 24, 5)
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-4, rtol=1e-4)
    # 50 x 70 is not a multiple of 32: stage sizes follow the conv arithmetic (13x18, 7x9, 4x5,
    # 2x3) and the decoder resizes by non-integer factors.
    x = _images((1, 50, 70, 3), seed=1)
    want = _hf_logits(torch, model, x)
    got = _apply(ours, jnp.asarray(x))
    assert got.shape == want.shape == (1, 13, 18, 5)
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-4, rtol=1e-4)


def test_transformers5_names_and_torch_bin(hf, tmp_path):
    # The in-memory state dict of transformers 5 uses the new module names; the files the old ones.
    torch, _, model, _ = hf
    ours = _model(seed=1)
    report = conv.load_hf_weights(ours, {k: v.numpy() for k, v in model.state_dict().items()})
    assert not report["initialised"] and report["ignored"] == [
        "decode_head.batch_norm.num_batches_tracked"
    ]
    x = _images(X_SHAPE, seed=2)
    np.testing.assert_allclose(
        np.asarray(_apply(ours, jnp.asarray(x))), _hf_logits(torch, model, x), atol=1e-4, rtol=1e-4
    )

    torch.save(model.state_dict(), tmp_path / "weights.bin")
    from_bin = _model(seed=2)
    conv.load_hf_weights(from_bin, tmp_path / "weights.bin")
    jax.tree.map(
        np.testing.assert_array_equal, nnx.state(from_bin, nnx.Param), nnx.state(ours, nnx.Param)
    )


def test_encoder_only_import_from_mit_classifier(hf, tmp_path):
    # ImageNet MiT weights ship as SegformerForImageClassification: encoder + a classification head.
    torch, transformers, _, _ = hf
    torch.manual_seed(1)
    mit = transformers.SegformerForImageClassification(
        transformers.SegformerConfig(**{**TINY_HF, "num_labels": 7})
    ).eval()
    mit.save_pretrained(tmp_path, safe_serialization=True)
    ours = _model(seed=3)
    decoder_before = jax.tree.map(np.asarray, nnx.state(ours.decode_head, nnx.Param))
    report = conv.load_hf_weights(ours, tmp_path)
    assert report["ignored"] == ["classifier.bias", "classifier.weight"]
    assert report["initialised"] and all(
        n.startswith("decode_head.") for n in report["initialised"]
    )
    jax.tree.map(
        np.testing.assert_array_equal, decoder_before, nnx.state(ours.decode_head, nnx.Param)
    )
    x = _images(X_SHAPE, seed=4)
    want = [_nhwc(h) for h in _hf_forward(torch, mit.segformer, x).hidden_states]
    got = _encode(ours, jnp.asarray(x))
    assert len(got) == len(want) == 4
    for g, w in zip(got, want):
        np.testing.assert_allclose(np.asarray(g), w, atol=1e-4, rtol=1e-4)
    # The segmenter factory's `pretrained=` path, as the segmentation method builds its graphdef.
    abstract = nnx.eval_shape(
        lambda: conv.make_segformer(TINY, 19, rngs=nnx.Rngs(0), pretrained=str(tmp_path))
    )
    assert abstract.decode_head.classifier.kernel.shape == (16, 19)


def test_load_pretrained_other_class_count(hf):
    # Fine-tuning a 5-class segmenter checkpoint to 19 classes: all but the classifier imported.
    _, _, model, path = hf
    ours = _model(num_classes=19, seed=10)
    classifier = np.asarray(ours.decode_head.classifier.kernel[...])
    report = conv.load_pretrained(ours, path)
    assert report["initialised"] == ["decode_head.classifier.weight", "decode_head.classifier.bias"]
    np.testing.assert_array_equal(np.asarray(ours.decode_head.classifier.kernel[...]), classifier)
    fuse = model.state_dict()["decode_head.linear_fuse.weight"].numpy()  # (D, 4D, 1, 1)
    np.testing.assert_array_equal(
        np.asarray(ours.decode_head.linear_fuse.kernel[...]), fuse[:, :, 0, 0].T
    )


# --------------------------------------------------------------------------------------------------
# Torch-free checks


@pytest.mark.smoke
def test_published_parameter_counts():
    # SegFormer paper, Table 1 (ADE20K, 150 classes): B0 3.8M, B5 84.7M parameters. The blocks of a
    # stage are identical, so B5 (3, 6, 40, 3) = its (3, 6, 1, 3) version + 39 third-stage blocks
    # (tracing all 52 blocks would dominate this file's run time).
    def count(spec):
        model = nnx.eval_shape(lambda: sf.SegFormer(spec, 150, rngs=nnx.Rngs(0)))
        return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))

    assert round(count(sf.get_spec("b0")) / 1e6, 1) == 3.8
    b5 = sf.get_spec("segformer_b5")
    assert b5.depths == (3, 6, 40, 3)
    one, two = (count(dataclasses.replace(b5, depths=(3, 6, d, 3))) for d in (1, 2))
    assert round((one + 39 * (two - one)) / 1e6, 1) == 84.7


@pytest.mark.smoke
def test_shapes_strides_and_validation():
    model = nnx.eval_shape(
        lambda: sf.SegFormer("b0", 19, rngs=nnx.Rngs(0))
    )  # shapes only: no compile
    shape = lambda f, *a: jax.tree.map(lambda t: t.shape, nnx.eval_shape(f, *a))
    x = jax.ShapeDtypeStruct((1, 64, 128, 3), jnp.float32)
    assert shape(lambda m, x: m.encode(x), model, x) == [
        (1, 16, 32, 32),
        (1, 8, 16, 64),
        (1, 4, 8, 160),
        (1, 2, 4, 256),
    ]
    assert shape(lambda m, x: m(x), model, x) == (1, 16, 32, 19)
    with pytest.raises(ValueError, match=r"x has shape \(1, 64, 64\)"):
        model(jax.ShapeDtypeStruct((1, 64, 64), jnp.float32))
    with pytest.raises(ValueError, match=r"too small.*stage 0 is 4x8"):
        model(jax.ShapeDtypeStruct((1, 16, 32, 3), jnp.float32))
    with pytest.raises(ValueError, match="unknown variant='b9'"):
        sf.SegFormer("b9", 19, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="depths"):
        sf.SegFormerSpec(hidden_sizes=(8, 16), depths=(1,))
    with pytest.raises(ValueError, match="unknown spec fields"):
        sf.SegFormer("b0", 19, rngs=nnx.Rngs(0), depth=3)


def test_train_mode_dropout_and_global_batch_norm():
    # No stochastic depth here, so the decoder's BatchNorm input is the eval-mode fused feature.
    model = _model(
        spec=dataclasses.replace(TINY, drop_path_rate=0.0, classifier_dropout=0.5), seed=9
    )
    bn0 = model.decode_head.batch_norm
    mean0, var0 = np.asarray(bn0.mean[...], np.float64), np.asarray(bn0.var[...], np.float64)
    x = jnp.asarray(_images((8, 32, 32, 3), seed=3))
    graph, state = nnx.split(model)

    @jax.jit
    def train_forward(state, x):
        m = nnx.merge(graph, state)
        feats = m.encode(x)
        dh = m.decode_head
        ups = [
            sf._resize_bilinear(lin(f), *feats[0].shape[1:3]) for f, lin in zip(feats, dh.linear_c)
        ]
        fused = dh.linear_fuse(jnp.concatenate(ups[::-1], -1))
        y1, y2 = m(x, train=True), m(x, train=True)  # the dropout stream advances between calls
        return y1, y2, fused, nnx.state(m, nnx.BatchStat)

    y, y_again, fused, stats = train_forward(state, x)
    assert float(jnp.max(jnp.abs(y - y_again))) > 1e-3 and float(jnp.mean(y == y_again)) < 0.9
    # Training-mode BatchNorm statistics span the global batch: the same step on the batch sharded
    # over 8 devices gives the same outputs, and the running statistics move by PyTorch momentum
    # 0.1 towards the (biased) batch statistics, twice.
    mesh = Mesh(np.array(jax.devices()[:8]), ("data",))
    y8, _, _, stats8 = train_forward(state, jax.device_put(x, NamedSharding(mesh, P("data"))))
    np.testing.assert_allclose(np.asarray(y8), np.asarray(y), atol=1e-4)
    f = np.asarray(fused, np.float64).reshape(-1, fused.shape[-1])
    bn = stats["decode_head"]["batch_norm"]
    np.testing.assert_allclose(
        np.asarray(bn["mean"][...]), 0.81 * mean0 + 0.19 * f.mean(0), atol=1e-5
    )
    np.testing.assert_allclose(
        np.asarray(bn["var"][...]), 0.81 * var0 + 0.19 * f.var(0), atol=1e-5, rtol=1e-5
    )
    np.testing.assert_allclose(
        np.asarray(stats8["decode_head"]["batch_norm"]["mean"][...]),
        np.asarray(bn["mean"][...]),
        atol=1e-6,
    )


def test_stochastic_depth_drops_whole_samples():
    # Block in training mode: out = t + a * Attn(LN(t)) + b * MixFFN(LN(t + a * Attn(LN(t)))) with
    # a, b independently 0 (dropped, probability 0.5) or 1 / (1 - 0.5) = 2 per *sample*.
    blk = sf.Block(8, 2, 1, 2, 0.5, rngs=nnx.Rngs(0))
    graph, state = nnx.split(blk)

    @jax.jit
    def run(state, t):
        b = nnx.merge(graph, state)
        attn = b.attention(b.layer_norm_1(t))
        ffn = [b.mlp(b.layer_norm_2(t + a * attn)) for a in (0.0, 2.0)]
        return b(t, train=True), attn, ffn

    t = jnp.asarray(np.random.default_rng(0).normal(size=(64, 2, 3, 8)).astype(np.float32))
    out, attn, ffn = (
        np.asarray(v) if not isinstance(v, list) else [np.asarray(u) for u in v]
        for v in run(state, t)
    )
    res = out - np.asarray(t)
    seen = []
    for i in range(64):
        err = {
            (a, b): np.abs(res[i] - a * attn[i] - b * ffn[int(a > 0)][i]).max()
            for a in (0.0, 2.0)
            for b in (0.0, 2.0)
        }
        best = min(err, key=err.get)
        assert err[best] < 1e-5, (i, err)
        seen.append(best)
    kept_a = np.mean([a > 0 for a, _ in seen])
    kept_b = np.mean([b > 0 for _, b in seen])
    assert 0.25 < kept_a < 0.75 and 0.25 < kept_b < 0.75, (kept_a, kept_b)


def test_initialisation_statistics():
    # The library's own initialisation (the other tests fill values from NumPy): published MiT init.
    spec = sf.SegFormerSpec(
        hidden_sizes=(32,),
        depths=(1,),
        num_heads=(2,),
        sr_ratios=(2,),
        mlp_ratios=(4,),
        patch_sizes=(7,),
        strides=(4,),
        decoder_hidden_size=64,
    )
    m = sf.SegFormer(spec, 64, rngs=nnx.Rngs(0))
    std = lambda v: float(np.std(np.asarray(v[...], np.float64)))
    blk = m.encoder.block[0][0]
    w = np.asarray(blk.mlp.dense1.kernel[...])
    assert w.shape == (32, 128) and np.abs(w).max() <= 2 * 0.02 + 1e-7  # truncated at 2 std
    assert std(blk.mlp.dense1.kernel) == pytest.approx(
        0.02 * 0.8796, rel=0.06
    )  # std of N(0,1) cut at +-2
    assert std(m.encoder.patch_embeddings[0].proj.kernel) == pytest.approx(
        (2 / (49 * 32)) ** 0.5, rel=0.06
    )
    assert std(blk.mlp.dwconv.kernel) == pytest.approx((2 / 9) ** 0.5, rel=0.1)
    assert std(m.decode_head.classifier.kernel) == pytest.approx(0.01, rel=0.06)
    for v in (blk.layer_norm_1.scale, m.decode_head.batch_norm.scale, m.decode_head.batch_norm.var):
        np.testing.assert_array_equal(np.asarray(v[...]), 1.0)
    for v in (blk.mlp.dense1.bias, blk.attention.sr.bias, m.decode_head.batch_norm.mean):
        np.testing.assert_array_equal(np.asarray(v[...]), 0.0)


def _hf_style_tensors(model):
    """The model's tensors under their checkpoint names and layouts (to feed the converter)."""
    out = {}
    for name, var, kind, one_by_one in conv._entries(model):
        v = np.asarray(var[...])
        if kind is conv._linear_t:
            v = v.T[..., None, None] if one_by_one else v.T
        elif kind is conv._conv_t:
            v = v.transpose(3, 2, 0, 1)
        out["segformer." + name if name.startswith("encoder.") else name] = v
    return out


def test_converter_round_trip_and_errors():
    src = _model(seed=5)
    tensors = _hf_style_tensors(src)
    assert len(tensors) == len(conv._entries(src))
    dst = _model(seed=6)
    conv.load_hf_weights(dst, tensors)
    jax.tree.map(
        np.testing.assert_array_equal, nnx.state(dst, nnx.Param), nnx.state(src, nnx.Param)
    )
    jax.tree.map(
        np.testing.assert_array_equal, nnx.state(dst, nnx.BatchStat), nnx.state(src, nnx.BatchStat)
    )

    bad = dict(tensors)
    del bad["segformer.encoder.block.1.1.mlp.dense1.weight"]
    bad["decode_head.linear_c.0.proj.weight"] = np.zeros((16, 9), np.float32)
    bad["segformer.encoder.extra.weight"] = np.zeros(3, np.float32)
    fresh = _model(seed=7)
    before = np.asarray(fresh.encoder.layer_norm[0].scale[...])
    with pytest.raises(ValueError) as err:
        conv.load_hf_weights(fresh, bad)
    msg = str(err.value)
    assert "missing (1):\n    encoder.block.1.1.mlp.dense1.weight" in msg
    assert "unexpected (1):\n    encoder.extra.weight" in msg
    assert "decode_head.linear_c.0.proj.weight: checkpoint (16, 9), model expects (16, 8)" in msg
    np.testing.assert_array_equal(
        np.asarray(fresh.encoder.layer_norm[0].scale[...]), before
    )  # untouched

    # A different class count: refused unless the classifier is skipped (and left initialised).
    other = _model(num_classes=19, seed=8)
    with pytest.raises(
        ValueError, match=r"decode_head.classifier.weight: checkpoint \(5, 16, 1, 1\)"
    ):
        conv.load_hf_weights(other, tensors)
    report = conv.load_hf_weights(other, tensors, skip=("decode_head.classifier",))
    assert report["initialised"] == ["decode_head.classifier.weight", "decode_head.classifier.bias"]


def test_config_and_file_errors(tmp_path):
    spec, n = conv.spec_from_hf_config({**TINY_HF, "model_type": "segformer"})
    assert spec == TINY and n == 5
    with pytest.raises(ValueError, match="model_type='vit'"):
        conv.spec_from_hf_config({"model_type": "vit"})
    with pytest.raises(ValueError, match="holds none of model.safetensors"):
        conv.read_checkpoint(tmp_path)
    with pytest.raises(ValueError, match="does not exist"):
        conv.read_checkpoint(os.path.join(tmp_path, "nope.safetensors"))
    (tmp_path / "w.npz").write_bytes(b"")
    with pytest.raises(ValueError, match="w.npz.*expected a .pth"):
        conv.read_checkpoint(tmp_path / "w.npz")


def _load_config(name):
    import importlib.util

    path = os.path.join(os.path.dirname(__file__), "..", "configs", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"_test_configs_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_paper_recipe_config():
    from dakpn_jax.training import segmentation

    cfg = _load_config("segformer")
    c = cfg.get_config()
    assert c.method == "segmentation" and c.model.name == "segformer_b5" and c.batch_size == 8
    assert (c.optim.name, c.optim.lr, c.optim.weight_decay, c.optim.poly_power) == (
        "adamw",
        6e-5,
        0.01,
        1.0,
    )
    assert c.num_train_steps == 50 * c.data.num_synthetic_train // 8
    schedule = segmentation.make_schedule(c)  # linear decay 6e-5 -> 0
    for step in (0, c.num_train_steps // 4, c.num_train_steps // 2):
        assert float(schedule(step)) == pytest.approx(
            6e-5 * (1 - step / c.num_train_steps), rel=1e-5
        )
    assert cfg.get_config("b0").model.name == "segformer_b0"
    with pytest.raises(ValueError, match="unknown variant 'b7'"):
        cfg.get_config("b7")
    # The segmentation method builds the tiny variant's SegFormer (abstractly) from these fields.
    tiny = cfg.get_config("tiny")
    model = nnx.eval_shape(lambda: segmentation.build_model(tiny, nnx.Rngs(0)))
    assert (
        isinstance(model, sf.SegFormer)
        and model.spec.drop_path_rate == 0.0
        and model.num_classes == 19
    )
