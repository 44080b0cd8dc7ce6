"""GAN baselines (CycleGAN, CUT, FastCUT): published architecture sizes, losses against float64
references, the in-state image pool, and per method a step test, an exact-resume test and a
data-parallel equivalence test (1 device vs 8 simulated devices); CUT/FastCUT's logged losses
recomputed in float64 from the merged modules; the GTA5 -> Cityscapes presets. (The networks
against PyTorch builds of the published layer lists: tests/test_gan_reference.py.)"""

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # configs/ lives at the repo root

from configs import cut as cut_configs
from configs import cyclegan as cyclegan_configs
from dakpn_jax.models.gan_discriminator import NLayerDiscriminator
from dakpn_jax.models.resnet_generator import ResnetGenerator
from dakpn_jax.training import cut, cyclegan, get_method
from dakpn_jax.training import gan_common as gc
from conftest import (
    FLOAT64_REL,
    METRIC_REL,
    assert_float64_equivalent,
    one_and_eight_device_steps_float64,
    two_domain_batch,
    two_train_steps,
)

METHODS = {
    "cyclegan": (cyclegan, lambda: cyclegan_configs.get_config("tiny")),
    "cut": (cut, lambda: cut_configs.get_config("cut-tiny")),
    "fastcut": (cut, lambda: cut_configs.get_config("fastcut-tiny")),
}


_batch = two_domain_batch

_CACHE = {}


def _setup(name):
    """(module, config, jitted step, states [s0, s1, s2], metrics [m1, m2]) per method: two
    single-device steps on _batch(0), _batch(1), computed once per session and shared by the
    step, resume and data-parallel tests (compiles and CPU steps are the cost)."""
    if name not in _CACHE:
        mod, cfg = METHODS[name]
        config = cfg()
        _CACHE[name] = (mod, config, *two_train_steps(mod, config))
    return _CACHE[name]


def _max_diff(a, b):
    return max(
        float(jnp.max(jnp.abs(jnp.asarray(x, jnp.float32) - jnp.asarray(y, jnp.float32))))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
    )


# ----------------------------------------------------------------------------- architecture


@pytest.mark.smoke
def test_published_parameter_counts_and_shapes():
    # Published CycleGAN printouts: ResNet-9 generator 11.378 M, 70x70 PatchGAN 2.765 M parameters.
    count = lambda m: sum(int(np.prod(v.shape)) for v in jax.tree.leaves(nnx.state(m)))
    g = nnx.eval_shape(lambda: ResnetGenerator(rngs=nnx.Rngs(0)))
    d = nnx.eval_shape(lambda: NLayerDiscriminator(rngs=nnx.Rngs(0)))
    assert count(g) == 11_378_179
    assert count(d) == 2_764_737
    x = jax.ShapeDtypeStruct((1, 256, 256, 3), jnp.float32)
    out = jax.eval_shape(lambda x: NLayerDiscriminator(rngs=nnx.Rngs(0))(x), x)
    assert out.shape == (1, 30, 30, 1)  # one score per 70x70 patch
    # Layer 0 is the reflection-padded input (CUT taps its layer list after ReflectionPad2d(3)).
    feats = jax.eval_shape(
        lambda x: ResnetGenerator(rngs=nnx.Rngs(0)).encode(x, (0, 4, 8, 12, 16)), x
    )
    assert [f.shape for f in feats] == [
        (1, 262, 262, 3),
        (1, 128, 128, 128),
        (1, 64, 64, 256),
        (1, 64, 64, 256),
        (1, 64, 64, 256),
    ]
    # CUT's anti-aliased network: conv s1 before the blur pool, so layer 4 is at full resolution.
    aa = lambda: ResnetGenerator(antialias=True, antialias_up=True, init="xavier", rngs=nnx.Rngs(0))
    assert count(nnx.eval_shape(aa)) == 11_378_179
    feats = jax.eval_shape(lambda x: aa().encode(x, (0, 4, 8, 12, 16)), x)
    assert [f.shape for f in feats] == [
        (1, 262, 262, 3),
        (1, 256, 256, 128),
        (1, 128, 128, 256),
        (1, 64, 64, 256),
        (1, 64, 64, 256),
    ]
    d_aa = lambda: NLayerDiscriminator(antialias=True, init="xavier", rngs=nnx.Rngs(0))
    assert count(nnx.eval_shape(d_aa)) == 2_764_737
    assert jax.eval_shape(lambda x: d_aa()(x), x).shape == (1, 30, 30, 1)
    small = ResnetGenerator(ngf=2, n_blocks=1, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="nce layer 10"):
        small.encode(jnp.zeros((1, 32, 32, 3)), (10,))
    with pytest.raises(ValueError, match="divisible"):
        small(jnp.zeros((1, 30, 30, 3)))


def test_generator_taps_match_forward_pass():
    g = ResnetGenerator(ngf=4, n_blocks=3, rngs=nnx.Rngs(0))
    x = jax.random.uniform(jax.random.key(0), (2, 32, 32, 3), minval=-1, maxval=1)
    f0, f4, f8, f12, f14 = jax.jit(lambda x: g.encode(x, (0, 4, 8, 12, 14)))(x)
    from dakpn_jax.models.resnet_generator import instance_norm, reflect_pad

    np.testing.assert_array_equal(
        f0, np.pad(np.asarray(x), ((0, 0), (3, 3), (3, 3), (0, 0)), mode="reflect")
    )

    # Rebuild the taps by hand from the public pieces.
    @jax.jit
    def by_hand(x):
        h = jax.nn.relu(instance_norm(g.stem(reflect_pad(x, 3))))
        d0 = g.down[0](h)
        d1 = g.down[1](jax.nn.relu(instance_norm(d0)))
        r0 = g.blocks[0](jax.nn.relu(instance_norm(d1)))
        return d0, d1, r0, g.blocks[2](g.blocks[1](r0))

    for got, want in zip((f4, f8, f12, f14), by_hand(x)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    y = jax.jit(lambda x: g(x))(x)
    assert y.shape == x.shape and float(jnp.max(jnp.abs(y))) <= 1.0


# ----------------------------------------------------------------------------- losses, schedule, pool


def test_lsgan_schedule_and_patch_nce_against_float64():
    r = np.random.default_rng(0)
    pred = r.standard_normal((2, 5, 5, 1)).astype(np.float32)
    np.testing.assert_allclose(
        gc.lsgan_loss(pred, True), np.mean((pred.astype(np.float64) - 1) ** 2), rtol=1e-6
    )
    np.testing.assert_allclose(
        gc.lsgan_loss(pred, False), np.mean(pred.astype(np.float64) ** 2), rtol=1e-6
    )

    s = gc.linear_decay_schedule(2e-4, 10, 20)
    for step, want in [(0, 2e-4), (10, 2e-4), (15, 1.5e-4), (20, 1e-4), (30, 0.0), (99, 0.0)]:
        np.testing.assert_allclose(float(s(step)), want, atol=1e-12)

    # PatchNCE: cross-entropy over [positive, same-image negatives with the positive's slot masked].
    q = r.standard_normal((2, 6, 4))
    q /= np.linalg.norm(q, axis=-1, keepdims=True)
    k = r.standard_normal((2, 6, 4))
    k /= np.linalg.norm(k, axis=-1, keepdims=True)
    tau, want = 0.07, []
    for b in range(2):
        for i in range(6):
            logits = [q[b, i] @ k[b, i]] + [
                q[b, i] @ k[b, j] if j != i else -10.0 for j in range(6)
            ]
            logits = np.array(logits) / tau
            want.append(-(logits[0] - np.log(np.sum(np.exp(logits - logits.max()))) - logits.max()))
    got = cut.patch_nce_loss(jnp.asarray(q, jnp.float32), jnp.asarray(k, jnp.float32), tau)
    np.testing.assert_allclose(float(got), np.mean(want), rtol=1e-4)
    # Gradient flows only through q (k is the stop-gradient key).
    gk = jax.grad(lambda k_: cut.patch_nce_loss(jnp.asarray(q, jnp.float32), k_, tau))(
        jnp.asarray(k, jnp.float32)
    )
    assert float(jnp.max(jnp.abs(gk))) == 0.0


@pytest.mark.smoke
def test_image_pool_semantics():
    n, shape = 4, (2, 2, 1)
    pool = gc.pool_init(n, shape)
    ids = lambda imgs: [int(v) for v in np.asarray(imgs)[:, 0, 0, 0]]
    query = jax.jit(gc.pool_query)
    key = jax.random.key_data(jax.random.key(0))
    # Filling: the first n images are stored and returned unchanged.
    first = jnp.arange(1.0, 4.0)[:, None, None, None] * jnp.ones((3,) + shape)
    pool, out = query(pool, first, key)
    assert ids(out) == [1, 2, 3] and int(pool["count"]) == 3
    pool, out = query(pool, 4.0 * jnp.ones((1,) + shape), key)
    assert (
        ids(out) == [4] and sorted(ids(pool["images"])) == [1, 2, 3, 4] and int(pool["count"]) == 4
    )
    # Once full: each output is the new image or a stored one, and nothing is lost or duplicated:
    # multiset(pool_before + inputs) == multiset(pool_after + outputs).
    swaps, total, nxt = 0, 0, 5
    for t in range(40):
        before = ids(pool["images"][: int(pool["count"])])
        batch = jnp.arange(nxt, nxt + 5.0)[:, None, None, None] * jnp.ones((5,) + shape)
        nxt += 5
        pool, out = query(pool, batch, jax.random.key_data(jax.random.key(t + 1)))
        after, outs = ids(pool["images"]), ids(out)
        assert sorted(before + ids(batch)) == sorted(after + outs)
        assert int(pool["count"]) == n
        swaps += sum(o != i for o, i in zip(outs, ids(batch)))
        total += 5
    assert 0.35 < swaps / total < 0.65  # published: return a stored image with probability 1/2
    with pytest.raises(ValueError, match="pool images"):
        gc.pool_query(pool, jnp.zeros((1, 3, 3, 1)), key)
    empty = gc.pool_init(0, shape)
    assert gc.pool_query(empty, first, key)[1] is first


# ----------------------------------------------------------------------------- per method


@pytest.mark.parametrize("name", list(METHODS))
def test_step_losses_finite_and_every_network_changes(name):
    mod, config, step, (state, new, _), (metrics, metrics2) = _setup(name)
    assert get_method(config.method) is mod  # the trainer finds the module from the config
    for k, v in list(metrics.items()) + list(
        metrics2.items()
    ):  # step 2 too: NaN gradients show there
        assert v.shape == () and np.isfinite(float(v)), (k, v)
    assert set(new["params"]) == (
        {"G_A", "G_B", "D_A", "D_B"} if name == "cyclegan" else {"G", "D", "F"}
    )
    for net in new["params"]:
        assert _max_diff(new["params"][net], state["params"][net]) > 0, net
    assert int(new["step"]) == 1 and not np.array_equal(new["rng"], state["rng"])
    if name == "cyclegan":
        assert (
            int(new["pool"]["A"]["count"]) == config.loss.pool_size
        )  # 8 fakes into a 4-image pool
        assert metrics["loss_identity"] > 0 and metrics["loss_cycle"] > 0
    else:
        assert metrics["loss_nce"] > 0
        assert (float(metrics["loss_nce_idt"]) > 0) == (name == "cut")
    # The shared translator contract: whole frames of any size (here 18 x 30, not a multiple of the
    # generator's stride 4), labels ignored, output in [0, 1].
    fn = mod.make_translator(config, new)
    x = jnp.asarray(_batch(1)["synthetic"][:2])
    y = fn(x[:, :18, :30], jnp.zeros((2, 18, 30), jnp.int32))
    assert y.shape == (2, 18, 30, 3) and float(jnp.min(y)) >= 0 and float(jnp.max(y)) <= 1
    # Reference, eagerly: the generator on the frame edge-padded to 20 x 32, cropped back.
    gd, g = (
        (cyclegan.graphdefs(config)["G"], new["params"]["G_A"])
        if name == "cyclegan"
        else (cut.graphdefs(config)["G"], new["params"]["G"])
    )
    padded = jnp.pad(x[:, :18, :30], ((0, 0), (0, 2), (0, 2), (0, 0)), mode="edge")
    direct = (gc.merge(gd, g)(2 * padded - 1) + 1) / 2
    np.testing.assert_allclose(y, direct[:, :18, :30], atol=1e-5)
    with pytest.raises(ValueError, match="real"):
        step(state, {"synthetic": _batch(0)["synthetic"]})


# FastCUT is CUT's train step with other settings (no identity NCE, a flip drawn from the replicated
# state rng): its losses and objective are checked by the CUT tests parametrised with "fastcut"
# above and below; resume and sharding run the same code as CUT's, so they are checked on CUT and
# CycleGAN only (about a minute less of the suite).
MECHANICS = [m for m in METHODS if m != "fastcut"]


@pytest.mark.parametrize("name", MECHANICS)
def test_resume_is_exact(name, tmp_path):
    import orbax.checkpoint as ocp

    mod, config, step, (_, s1, s2), (_, m2) = _setup(name)
    # Interrupted run: checkpoint after step 1, restore into an abstract template, take step 2;
    # it must equal the uninterrupted run bit for bit.
    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save(tmp_path / "ckpt", s1)
        ckpt.wait_until_finished()
        template = jax.eval_shape(lambda: mod.init_state(config, jax.random.key(99)))
        r = ckpt.restore(tmp_path / "ckpt", template)
    r, m_resumed = step(r, _batch(1))
    assert _max_diff(s2, r) == 0.0  # pool, rng, Adam moments and weights all identical
    assert all(float(m2[k]) == float(m_resumed[k]) for k in m2)


@pytest.mark.parametrize("name", MECHANICS)
def test_data_parallel_matches_single_device(name):
    """The trainer's layout: state replicated, global batch sharded over a 1-D "data" mesh of 8
    devices; each step must match the single-device step, in float64, within FLOAT64_REL of each
    network's scale (tests/conftest.py; in float32 the summation order is processor-dependent
    round-off, which Adam amplifies on near-zero gradients).

    Every step starts from the same state: chaining sharded steps would also compare GAN dynamics,
    and this tiny network amplifies round-off (measured: a 1e-8 perturbation of its weights moves
    the next step's Adam moments by ~1e-3), which says nothing about the sharding. Step 2 starts
    from a full image pool and non-zero Adam moments."""
    mod, config, _, states, _ = _setup(name)
    assert len(jax.devices()) >= 8
    for s1, s8, m1, m8 in one_and_eight_device_steps_float64(
        mod.make_train_step, config, states[:2], [_batch(0), _batch(1)]
    ):
        assert_float64_equivalent(s1, s8)
        for k in m1:
            np.testing.assert_allclose(m8[k], m1[k], rtol=METRIC_REL, atol=FLOAT64_REL, err_msg=k)


# ----------------------------------------------------------------------------- CUT objective, recomputed


def _nce_float64(q, k, tau):
    """PatchNCE of one layer in float64: q, k (B, P, D); CE over [q.k_i, q.k_j (j != i, -10 on
    the diagonal)] / tau, class 0, mean over (b, i)."""
    pos = np.sum(q * k, axis=-1, keepdims=True)
    neg = np.einsum("bpd,bqd->bpq", q, k)
    neg[:, np.arange(q.shape[1]), np.arange(q.shape[1])] = -10.0
    logits = np.concatenate([pos, neg], axis=-1) / tau
    mx = logits.max(axis=-1, keepdims=True)
    lse = mx[..., 0] + np.log(np.sum(np.exp(logits - mx), axis=-1))
    return float(np.mean(lse - logits[..., 0]))


def _mlp_float64(f_params, layer, v):
    """F_l by hand: h = W2 relu(W1 v + b1) + b2, then h / (||h|| + 1e-7)."""
    l1, l2 = f_params["mlps"][layer][0], f_params["mlps"][layer][1]
    w = lambda p: np.asarray(p, np.float64)
    h = np.maximum(v @ w(l1["kernel"]) + w(l1["bias"]), 0.0) @ w(l2["kernel"]) + w(l2["bias"])
    return h / (np.linalg.norm(h, axis=-1, keepdims=True) + 1e-7)


@pytest.mark.parametrize("name", ["cut", "fastcut"])
def test_cut_objective_recomputed_from_merged_modules(name):
    """Every logged loss of one CUT / FastCUT step, recomputed with plain numpy (float64) from the
    merged G, D, F: the GAN terms with their roles (D: real b -> 1, fake G(a) -> 0, at D's
    pre-update weights; G: fake -> 1 against the *updated* D), PatchNCE with query = features of the
    translation (flipped back for FastCUT's flipped steps), key = features of the source, the
    identity NCE on b (CUT), and the weights. Then the direction of the D update on that batch."""
    mod, config, step, _, _ = _setup(name)  # the compiled tiny step (no extra compile)
    fast = name == "fastcut"
    n = config.nce
    # A state whose step flips (FastCUT) - the key protocol: rng -> (flip, keys a, b, next).
    for seed in range(2, 40):
        state = mod.init_state(config, jax.random.key(seed))
        k_flip, k_a, k_b, _ = gc.split_key(state["rng"], 4)
        flipped = fast and bool(jax.random.uniform(jax.random.wrap_key_data(k_flip)) < 0.5)
        if flipped == fast:
            break
    # D's output bias at 0.5 (it starts at 0): real scores must then rise, fake ones fall.
    state["params"]["D"]["out"]["bias"] = jnp.full_like(state["params"]["D"]["out"]["bias"], 0.5)
    batch = _batch(3)
    new, m = step(state, batch)
    gd = cut.graphdefs(config)
    G0, F0 = gc.merge(gd["G"], state["params"]["G"]), state["params"]["F"]
    D0, D1 = gc.merge(gd["D"], state["params"]["D"]), gc.merge(gd["D"], new["params"]["D"])
    a, b = 2 * batch["synthetic"] - 1, 2 * batch["real"] - 1
    nb = a.shape[0]
    inp = np.concatenate([a, b]) if n.nce_idt else a
    inp = inp[:, :, ::-1] if flipped else inp
    out = np.asarray(G0(jnp.asarray(inp)))
    fake, idt = out[:nb], out[nb:]
    f64 = lambda x: np.asarray(x, np.float64)
    d0_real, d0_fake = f64(D0(jnp.asarray(b))), f64(D0(jnp.asarray(fake)))
    d1_real, d1_fake = f64(D1(jnp.asarray(b))), f64(D1(jnp.asarray(fake)))
    want = {"loss_D_real": np.mean((d0_real - 1) ** 2), "loss_D_fake": np.mean(d0_fake**2)}
    want["loss_D"] = 0.5 * (want["loss_D_real"] + want["loss_D_fake"])
    want["loss_G_gan"] = np.mean((d1_fake - 1) ** 2)

    def nce(src, tgt, key, flip_back=True):
        fq = [f64(f) for f in G0.encode(jnp.asarray(tgt), n.layers)]
        if flipped and flip_back:
            fq = [f[:, :, ::-1] for f in fq]
        fk = [f64(f) for f in G0.encode(jnp.asarray(src), n.layers)]
        total = 0.0
        for l, (q, k, kk) in enumerate(zip(fq, fk, gc.split_key(key, len(n.layers)))):
            bb, h, w, c = q.shape
            ids = np.asarray(jax.random.permutation(jax.random.wrap_key_data(kk), h * w))[
                : min(n.num_patches, h * w)
            ]
            qs = _mlp_float64(F0, l, q.reshape(bb, h * w, c)[:, ids])
            ks = _mlp_float64(F0, l, k.reshape(bb, h * w, c)[:, ids])
            total += _nce_float64(qs, ks, n.tau)
        return total / len(n.layers)

    want["loss_nce"] = nce(a, fake, k_a)
    want["loss_nce_idt"] = nce(b, idt, k_b) if n.nce_idt else 0.0
    nce_term = (want["loss_nce"] + want["loss_nce_idt"]) / 2 if n.nce_idt else want["loss_nce"]
    want["loss_G"] = config.loss.lambda_gan * want["loss_G_gan"] + n.lambda_nce * nce_term
    assert set(m) == set(want) | {"lr"}
    for k, v in want.items():
        np.testing.assert_allclose(float(m[k]), v, rtol=2e-4, atol=1e-6, err_msg=k)
    # The checks can tell the alternatives apart: G against the pre-update D, or (FastCUT) no
    # flip-back of the query features, would give other numbers.
    err_d1 = abs(want["loss_G_gan"] - float(m["loss_G_gan"]))
    err_d0 = abs(np.mean((d0_fake - 1) ** 2) - float(m["loss_G_gan"]))
    assert err_d1 < 0.05 * err_d0, (err_d1, err_d0)
    if fast:
        assert abs(nce(a, fake, k_a, flip_back=False) - float(m["loss_nce"])) > 1e-3
    # Direction of the D update on this batch: reals scored higher, the real-fake margin wider,
    # D's loss down. (Not "fakes lower" in absolute terms: one Adam step moves all scores in
    # common where D cannot yet tell the two apart - measured here, fakes +7e-5, reals +1.9e-3.)
    assert d1_real.mean() > d0_real.mean()
    assert d1_real.mean() - d1_fake.mean() > d0_real.mean() - d0_fake.mean()
    assert 0.5 * (np.mean((d1_real - 1) ** 2) + np.mean(d1_fake**2)) < want["loss_D"]


@pytest.mark.smoke
def test_gta5_cityscapes_presets():
    """docs/METHOD.md §6: the CycleGAN authors' GTA5 -> Cityscapes settings (scale width 1024, 360 crops,
    identity weight 1, 10 + 10 epochs of 24,966 frames at batch 1); CUT keeps its defaults."""
    c = cyclegan_configs.get_config("gta5_cityscapes")
    assert c.data.synthetic_size == (int(1024 * 1052 / 1914), 1024) and c.data.real_size == (
        512,
        1024,
    )
    assert tuple(c.crop_size) == (360, 360) and c.batch_size == 1 and c.loss.lambda_identity == 1.0
    assert (
        c.optim.constant_steps == c.optim.decay_steps == 10 * 24966
        and c.num_train_steps == 20 * 24966
    )
    assert c.data.data_dir is None
    c.data.data_dir = "/data/tfds"  # a placeholder: settable (from flags too), typed
    with pytest.raises(TypeError):
        c.data.real_dir = 3
    for method, (const, decay) in (("cut", (10, 10)), ("fastcut", (15, 5))):
        k = cut_configs.get_config(f"{method}-gta5_cityscapes")
        d = cut_configs.get_config(method)
        assert (
            k.model == d.model and k.nce == d.nce and k.model.antialias and k.model.init == "xavier"
        )
        assert (k.optim.constant_steps, k.optim.decay_steps) == (const * 24966, decay * 24966)
        assert tuple(k.crop_size) == (360, 360) and k.data.synthetic_size == c.data.synthetic_size
