"""Segmenter, segmentation method and folder source: references in NumPy float64, one trainer run."""

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import Mesh
from PIL import Image

from configs import segmentation as seg_configs
from dakpn_jax.data import procedural
from dakpn_jax.data.folder import FolderSource
from dakpn_jax.models.segmenter import make_segmenter
from dakpn_jax.training import segmentation as seg
from dakpn_jax.training import trainer
from conftest import METRIC_REL, assert_float64_equivalent, one_and_eight_device_steps_float64


def np_cross_entropy(logits, label):
    logits, label = np.asarray(logits, np.float64), np.asarray(label, np.int64)
    z = logits - logits.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    keep = label != 255
    return -np.take_along_axis(logp, np.where(keep, label, 0)[..., None], -1)[..., 0][keep].mean()


def np_confusion(pred, label, c):
    pred, label = np.asarray(pred, np.int64).ravel(), np.asarray(label, np.int64).ravel()
    keep = label != 255
    return np.bincount(label[keep] * c + pred[keep], minlength=c * c).reshape(c, c)


def write_folder(root, items):
    for sub in ("images", "labels"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    for i, it in enumerate(items):
        Image.fromarray(it["image"]).save(os.path.join(root, "images", f"f{i:03d}.png"))
        Image.fromarray(it["label"]).save(os.path.join(root, "labels", f"f{i:03d}.png"))


@pytest.mark.smoke
def test_unet_small_any_size_and_factory_errors():
    def run(x):  # abstract: no weights computed
        return make_segmenter("unet_small", 5, rngs=nnx.Rngs(0), features=(4, 8, 8))(x)

    assert jax.eval_shape(run, jnp.zeros((2, 33, 50, 3))).shape == (2, 33, 50, 5)
    with pytest.raises(ValueError, match="name"):
        make_segmenter("resnet", 5, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="num_classes"):
        make_segmenter("unet_small", 0, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="shape"):
        jax.eval_shape(run, jnp.zeros((2, 8, 8)))


def test_cross_entropy_and_schedules_match_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 5, 7, 4)).astype(np.float32) * 3
    label = rng.integers(0, 4, (2, 5, 7)).astype(np.uint8)
    label[0, :2] = 255
    loss, acc = seg.cross_entropy(jnp.asarray(logits), jnp.asarray(label))
    np.testing.assert_allclose(float(loss), np_cross_entropy(logits, label), rtol=1e-5)
    keep = label != 255
    np.testing.assert_allclose(float(acc), (logits.argmax(-1) == label)[keep].mean(), rtol=1e-6)

    c = seg_configs.get_config("tiny")
    c.num_train_steps, c.optim.lr, c.optim.warmup_steps, c.optim.end_lr_ratio = 110, 0.5, 10, 0.1
    for kind, ref in (
        ("poly", lambda t: 0.05 + 0.45 * (1 - t / 100) ** 0.9),
        ("cosine", lambda t: 0.05 + 0.45 * 0.5 * (1 + math.cos(math.pi * t / 100))),
    ):
        c.optim.schedule = kind
        s = seg.make_schedule(c)
        np.testing.assert_allclose(float(s(5)), 0.25, rtol=1e-6)  # linear warmup
        for step in (10, 40, 77, 110):
            np.testing.assert_allclose(float(s(step)), ref(step - 10), rtol=1e-5, atol=1e-7)


def test_lr_mult_scales_one_parameter_group():
    """Same gradients for two groups: with lr_mult {"head": 10} the head's AdamW update (decay
    included) is exactly 10 times what it is without, the other group's unchanged."""
    c = seg_configs.get_config("tiny")
    c.optim.update(name="adamw", weight_decay=0.1, schedule="constant", warmup_steps=0)
    params = {"body": {"w": jnp.full((2, 3), 0.5)}, "head": {"w": jnp.full((2, 3), 0.5)}}
    grads = {
        "body": {"w": jnp.arange(6.0).reshape(2, 3)},
        "head": {"w": jnp.arange(6.0).reshape(2, 3)},
    }
    plain = seg.make_optimizer(c)
    base, _ = plain.update(grads, plain.init(params), params)
    c.optim.lr_mult = {"head": 10.0}
    tx = seg.make_optimizer(c)
    upd, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(upd["head"]["w"], 10 * base["head"]["w"], rtol=1e-6)
    np.testing.assert_allclose(upd["body"]["w"], base["body"]["w"], rtol=1e-6)
    assert float(jnp.abs(base["head"]["w"]).min()) > 0
    c.optim.lr_mult = {"decoder": 10.0}
    with pytest.raises(ValueError, match=r"lr_mult names \['decoder'\]"):
        seg.make_optimizer(c).init(params)


def test_mixed_source_weights_and_concatenation():
    a = [
        {"image": np.full((2, 2, 3), i, np.uint8), "label": np.zeros((2, 2), np.uint8), "extra": 0}
        for i in range(10)
    ]
    b = [
        {"image": np.full((2, 2, 3), 100 + i, np.uint8), "label": np.ones((2, 2), np.uint8)}
        for i in range(2)
    ]
    mix = seg.MixedSource([a, b], [1.0, 1.0], seed=0)
    ids = [int(mix[i]["image"][0, 0, 0]) for i in range(len(mix))]
    assert len(mix) == 20 and set(mix[0]) == {"image", "label"}
    assert sorted(i for i in ids if i < 100) == list(range(10))
    assert sorted(i for i in ids if i >= 100) == [100] * 5 + [101] * 5  # small source repeats
    cat = seg.MixedSource([a, b], [10, 2], seed=1)
    assert sorted(int(cat[i]["image"][0, 0, 0]) for i in range(len(cat))) == list(range(10)) + [
        100,
        101,
    ]
    with pytest.raises(ValueError, match="weights"):
        seg.MixedSource([a, b], [1.0, 0.0])
    c = seg_configs.get_config("tiny")
    c.data.train_sources = [{"kind": "split", "split": "real-train"}]
    with pytest.raises(ValueError, match=r"train_sources\[0\].*no 'label'"):
        seg.make_train_source(c)
    c.data.train_sources = [
        {"kind": "split", "split": "synthetic-train", "weight": 1.0},
        {"kind": "split", "split": "real-train-labelled"},
    ]
    with pytest.raises(ValueError, match="weight"):
        seg.make_train_source(c)
    c.data.num_real_labelled = 0  # N = 0 real labels: the empty source is dropped
    c.data.train_sources = [
        {"kind": "split", "split": "synthetic-train"},
        {"kind": "split", "split": "real-train-labelled"},
    ]
    assert len(seg.make_train_source(c)) == c.data.num_synthetic_train


def test_folder_source_matches_by_stem_and_names_bad_files(tmp_path):
    items = [
        procedural.make_source("real-val", {"height": 32, "width": 64, "num_real_val": 2})[i]
        for i in range(2)
    ]
    write_folder(str(tmp_path / "ds"), items)
    src = FolderSource(str(tmp_path / "ds" / "images"), str(tmp_path / "ds" / "labels"))
    assert src.stems == ["f000", "f001"]
    np.testing.assert_array_equal(src[1]["label"], items[1]["label"])
    np.testing.assert_array_equal(src[1]["image"], items[1]["image"])
    os.remove(tmp_path / "ds" / "labels" / "f001.png")
    with pytest.raises(ValueError, match="f001"):
        FolderSource(str(tmp_path / "ds" / "images"), str(tmp_path / "ds" / "labels"))
    Image.fromarray(items[1]["label"][:16]).save(tmp_path / "ds" / "labels" / "f001.png")
    with pytest.raises(ValueError, match="f001.png.*16"):
        FolderSource(str(tmp_path / "ds" / "images"), str(tmp_path / "ds" / "labels"))[1]
    (tmp_path / "ds" / "images" / "f000.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="f000.png"):
        FolderSource(str(tmp_path / "ds" / "images"))[0]


def test_step_is_device_count_invariant_and_loss_is_the_reference():
    c = seg_configs.get_config("tiny")
    src = procedural.make_source("synthetic-train", c.data)
    items = [src[i] for i in range(8)]
    batch = {
        "image": np.stack([x["image"] for x in items]).astype(np.float32) / 255.0,
        "label": np.stack([x["label"] for x in items]),
    }
    batch["label"][:, :4] = 255
    # Eager init: its per-op kernels are compiled once per process and shared with the next test
    # (a jitted init is one large XLA program that compiles slowly on CPU).
    state = seg.init_state(c, jax.random.key(0))
    logits = jax.jit(seg.make_apply_fn(c))(
        {"params": state["params"], "model_state": state["model_state"]}, batch["image"]
    )
    ((s1, s8, m1, m8),) = one_and_eight_device_steps_float64(
        seg.make_train_step, c, [state], [batch]
    )
    # The loss against the float64 reference from the float32 logits: the float64 step's logits
    # differ from them by float32 rounding of the network (relative ~1e-6, loss ~2).
    np.testing.assert_allclose(
        float(m1["loss"]), np_cross_entropy(logits, batch["label"]), rtol=1e-4
    )
    # 1 device against 8, in float64: FLOAT64_REL of each network's scale (tests/conftest.py).
    np.testing.assert_allclose(float(m8["loss"]), float(m1["loss"]), rtol=METRIC_REL)
    assert_float64_equivalent(s1, s8)
    assert int(s8["step"]) == 1


def test_train_evaluate_and_load_segmenter_on_a_source_mix(tmp_path):
    c = seg_configs.get_config("tiny")
    folder = str(tmp_path / "translated")
    write_folder(folder, [procedural.make_source("synthetic-train", c.data)[i] for i in range(4)])
    c.data.train_sources = [
        {"kind": "split", "split": "synthetic-train", "weight": 3.0},
        {"kind": "folder", "root": folder, "weight": 1.0},
        {"kind": "split", "split": "real-train-labelled", "weight": 1.0},
    ]
    c.num_train_steps, c.log_every_steps, c.checkpoint_every_steps, c.eval_every_steps = (
        24,
        4,
        24,
        24,
    )
    workdir = str(tmp_path / "run")
    final = trainer.train_and_evaluate(c, workdir)
    assert np.isfinite(final["loss"]) and 0.0 <= final["eval/miou"] <= 1.0 and final["step"] == 24
    apply_fn, params = seg.load_segmenter(workdir)
    val = procedural.make_source("real-val", c.data)
    images = np.stack([val[i]["image"] for i in range(8)]).astype(np.float32) / 255.0
    labels = np.stack([val[i]["label"] for i in range(8)])
    apply_jit = jax.jit(apply_fn)
    logits = apply_jit(params, images)
    assert logits.shape == (8, 32, 64, 19)
    conf = np_confusion(np.asarray(logits).argmax(-1), labels, 19)
    res = seg.evaluate_segmenter(
        apply_fn, params, val, 19, batch_size=3, max_images=8
    )  # padded batches
    np.testing.assert_array_equal(res["confusion"], conf)
    tp = np.diag(conf).astype(np.float64)
    union = conf.sum(0) + conf.sum(1) - tp
    np.testing.assert_allclose(res["miou"], np.mean(tp[union > 0] / union[union > 0]), rtol=1e-5)
    np.testing.assert_allclose(final["eval/miou"], res["miou"], rtol=1e-5)
    # Training lowered the loss on real-val (a domain it saw 4 labels of) against the initial model.
    train_src = seg.make_train_source(c)
    first_state = seg.init_state(c, jax.random.key(c.seed))
    fresh = apply_jit(
        {"params": first_state["params"], "model_state": first_state["model_state"]}, images
    )
    loss_fresh = np_cross_entropy(fresh, labels)
    loss_trained = np_cross_entropy(logits, labels)
    assert loss_trained < 0.8 * loss_fresh, (loss_fresh, loss_trained)
    assert len(train_src) == max(math.ceil(32 / 0.6), math.ceil(4 / 0.2), math.ceil(4 / 0.2))


def test_segformer_state_is_checkpointable_and_its_step_traces():
    # SegFormer keeps dropout / drop-path RNG streams and BatchNorm statistics inside the module: the
    # state must hold only the statistics (typed keys cannot be checkpointed) and the step must trace.
    c = seg_configs.get_config("tiny")
    c.model.name, c.model.kwargs = "segformer_b0", {}
    mesh = Mesh(np.array(jax.devices()), ("data",))
    state = trainer.abstract_state(seg, c, mesh)  # raises on typed PRNG keys in the state
    assert set(state["model_state"]) == {"decode_head"}
    batch = {
        "image": jax.ShapeDtypeStruct((2, 32, 64, 3), jnp.float32),
        "label": jax.ShapeDtypeStruct((2, 32, 64), jnp.uint8),
    }
    new, metrics = jax.eval_shape(seg.make_train_step(c), state, batch)
    assert jax.tree.structure(new) == jax.tree.structure(state) and metrics["loss"].shape == ()


def test_weight_averaging_is_the_float64_recursion_and_is_what_gets_scored(tmp_path):
    """ema_decay = d: after k steps the averaged weights are e_k = d e_{k-1} + (1 - d) p_k from
    e_0 = p_0 (recomputed in float64 from the trained weights of each step); the trained weights
    follow the same path as without averaging; load_segmenter and evaluate score e, not p."""
    c = seg_configs.get_config("tiny")
    d = 0.75
    plain = seg.init_state(c, jax.random.key(0))
    c.ema_decay = d
    state = seg.init_state(c, jax.random.key(0))
    step_plain = jax.jit(seg.make_train_step(seg_configs.get_config("tiny")))
    step = jax.jit(seg.make_train_step(c))
    src = procedural.make_source("synthetic-train", c.data)
    want = jax.tree.map(lambda a: np.asarray(a, np.float64), state["params"])
    for k in range(4):
        batch = {
            "image": np.stack([src[4 * k + i]["image"] for i in range(4)]).astype(np.float32)
            / 255.0,
            "label": np.stack([src[4 * k + i]["label"] for i in range(4)]),
        }
        plain, _ = step_plain(plain, batch)
        state, _ = step(state, batch)
        want = jax.tree.map(
            lambda e, p: d * e + (1 - d) * np.asarray(p, np.float64), want, state["params"]
        )
    eps = float(np.finfo(np.float32).eps)
    for (path, got), w, p, q in zip(
        jax.tree_util.tree_leaves_with_path(state["ema_params"]),
        jax.tree.leaves(want),
        jax.tree.leaves(state["params"]),
        jax.tree.leaves(plain["params"]),
    ):
        # each of the 4 updates rounds twice in float32, relative to the running magnitude
        bound = 4 * 3 * eps * (np.abs(w).max() + 1e-30)
        assert np.max(np.abs(np.asarray(got, np.float64) - w)) <= bound, jax.tree_util.keystr(path)
        np.testing.assert_allclose(np.asarray(p), np.asarray(q), rtol=0, atol=1e-6)
    assert not np.allclose(
        np.asarray(jax.tree.leaves(state["ema_params"])[0]),
        np.asarray(jax.tree.leaves(state["params"])[0]),
    )  # e differs from p: the test has teeth
    scored = seg.scoring_params(state)
    assert scored["params"] is state["ema_params"]
    assert seg.scoring_params(plain)["params"] is plain["params"]
    with pytest.raises(ValueError, match="ema_decay"):
        c.ema_decay = 1.0
        seg.init_state(c, jax.random.key(0))


def test_flip_averaged_logits_are_mirror_equivariant_with_sided_classes_swapped(monkeypatch):
    """eval_flip: apply(mirror x) = mirror(apply(x)) with the sided classes' channels swapped (a
    property the plain network does not have), and the mean of the two views' logits."""
    c = seg_configs.get_config("tiny")
    state = seg.init_state(c, jax.random.key(3))
    params = seg.scoring_params(state)
    x = np.random.default_rng(0).random((2, 32, 64, 3), dtype=np.float32)
    plain = seg.make_apply_fn(c)
    z, zm = np.asarray(plain(params, x)), np.asarray(plain(params, x[:, :, ::-1]))
    assert np.max(np.abs(zm - z[:, :, ::-1])) > 1e-3  # the plain network is not equivariant
    lut = np.arange(256, dtype=np.uint8)
    lut[[1, 2]] = [2, 1]  # classes 1 and 2 as an l_X / r_X pair
    monkeypatch.setattr(seg, "_flip_label_map", lambda config: lut)
    c.eval_flip = True
    tta = seg.make_apply_fn(c)
    t, tm = np.asarray(tta(params, x)), np.asarray(tta(params, x[:, :, ::-1]))
    perm = np.arange(19)
    perm[[1, 2]] = [2, 1]
    scale = np.abs(t).max()
    np.testing.assert_allclose(
        tm, t[:, :, ::-1][..., perm], rtol=0, atol=8 * np.finfo(np.float32).eps * scale
    )
    want = 0.5 * (z.astype(np.float64) + zm[:, :, ::-1][..., perm])
    np.testing.assert_allclose(t, want, rtol=0, atol=8 * np.finfo(np.float32).eps * scale)
