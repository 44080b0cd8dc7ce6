"""The GAN baselines against PyTorch builds of their published networks (issue #12).

The references below are written here from the published layer lists (docs/METHOD.md §7): CycleGAN's
ResNet generator, CUT's anti-aliased variant and the 70x70 PatchGAN (plain and anti-aliased), as
``nn.Sequential``s named ``model`` so their ``state_dict()`` has the official key names. The same
weights go into the NNX modules through ``dakpn_jax.models.torch_import``; outputs must agree to
1e-4 in float32. torch is a test-only reference (skipped where it is not installed).
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
nn, F = torch.nn, torch.nn.functional

from dakpn_jax.models import torch_import  # noqa: E402
from dakpn_jax.models.gan_discriminator import NLayerDiscriminator  # noqa: E402
from dakpn_jax.models.resnet_generator import ConvTranspose2d, ResnetGenerator, make_init  # noqa: E402

TOL = 1e-4


# ----------------------------------------------------------------------------- PyTorch references


class BlurDown(nn.Module):
    """Anti-aliased stride 2: reflect-pad 1, per-channel [1,2,1]^T[1,2,1]/16, stride 2."""

    def __init__(self, c):
        super().__init__()
        f = torch.tensor([1.0, 2.0, 1.0])
        self.register_buffer("filt", (torch.outer(f, f) / 16.0)[None, None].repeat(c, 1, 1, 1))

    def forward(self, x):
        return F.conv2d(
            F.pad(x, (1, 1, 1, 1), mode="reflect"), self.filt, stride=2, groups=x.shape[1]
        )


class BlurUp(nn.Module):
    """Anti-aliased x2: replicate-pad 1, zero-insertion (transposed conv, stride 2) with the 4x4
    [1,3,3,1]^T[1,3,3,1]/16, padding 2, then one row/column cropped on each side (2H+2 -> 2H)."""

    def __init__(self, c):
        super().__init__()
        f = torch.tensor([1.0, 3.0, 3.0, 1.0])
        self.register_buffer("filt", (torch.outer(f, f) / 16.0)[None, None].repeat(c, 1, 1, 1))

    def forward(self, x):
        y = F.conv_transpose2d(
            F.pad(x, (1, 1, 1, 1), mode="replicate"),
            self.filt,
            stride=2,
            padding=2,
            groups=x.shape[1],
        )
        return y[:, :, 1:-1, 1:-1]


class ResBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(c, c, 3),
            nn.InstanceNorm2d(c),
            nn.ReLU(),
            nn.ReflectionPad2d(1),
            nn.Conv2d(c, c, 3),
            nn.InstanceNorm2d(c),
        )

    def forward(self, x):
        return x + self.conv_block(x)


class TorchGenerator(nn.Module):
    """docs/METHOD.md §7 ResNet generator; ``arch="cut"``: down = conv s1, IN, ReLU, blur-down;
    up = blur-up, conv 3x3 s1 pad 1, IN, ReLU."""

    def __init__(self, arch, ngf=64, n_blocks=9):
        super().__init__()
        L = [nn.ReflectionPad2d(3), nn.Conv2d(3, ngf, 7), nn.InstanceNorm2d(ngf), nn.ReLU()]
        for i in range(2):
            cin, cout = ngf * 2**i, ngf * 2 ** (i + 1)
            if arch == "cut":
                L += [
                    nn.Conv2d(cin, cout, 3, 1, 1),
                    nn.InstanceNorm2d(cout),
                    nn.ReLU(),
                    BlurDown(cout),
                ]
            else:
                L += [nn.Conv2d(cin, cout, 3, 2, 1), nn.InstanceNorm2d(cout), nn.ReLU()]
        L += [ResBlock(ngf * 4) for _ in range(n_blocks)]
        for i in range(2):
            cin, cout = ngf * 2 ** (2 - i), ngf * 2 ** (1 - i)
            if arch == "cut":
                L += [
                    BlurUp(cin),
                    nn.Conv2d(cin, cout, 3, 1, 1),
                    nn.InstanceNorm2d(cout),
                    nn.ReLU(),
                ]
            else:
                L += [
                    nn.ConvTranspose2d(cin, cout, 3, 2, 1, output_padding=1),
                    nn.InstanceNorm2d(cout),
                    nn.ReLU(),
                ]
        L += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, 3, 7), nn.Tanh()]
        self.model = nn.Sequential(*L)

    def forward(self, x):
        return self.model(x)

    def taps(self, x, layers):
        """CUT's encode_only: the output of every listed Sequential entry."""
        out = {}
        for i, layer in enumerate(self.model):
            x = layer(x)
            if i in layers:
                out[i] = x
        return [out[i] for i in layers]


class TorchPatchGAN(nn.Module):
    """70x70 PatchGAN, 4x4 convs pad 1, IN, LeakyReLU 0.2; ``arch="cut"``: stride-2 convs become
    stride 1 followed (after norm and activation) by the blur-down."""

    def __init__(self, arch, ndf=64, n_layers=3):
        super().__init__()
        aa = arch == "cut"
        m = lambda n: min(2**n, 8)
        L = [nn.Conv2d(3, ndf, 4, 1 if aa else 2, 1), nn.LeakyReLU(0.2)] + (
            [BlurDown(ndf)] if aa else []
        )
        for n in range(1, n_layers):
            c = ndf * m(n)
            L += [
                nn.Conv2d(ndf * m(n - 1), c, 4, 1 if aa else 2, 1),
                nn.InstanceNorm2d(c),
                nn.LeakyReLU(0.2),
            ]
            L += [BlurDown(c)] if aa else []
        c = ndf * m(n_layers)
        L += [
            nn.Conv2d(ndf * m(n_layers - 1), c, 4, 1, 1),
            nn.InstanceNorm2d(c),
            nn.LeakyReLU(0.2),
            nn.Conv2d(c, 1, 4, 1, 1),
        ]
        self.model = nn.Sequential(*L)

    def forward(self, x):
        return self.model(x)


def _numpy_sd(module):
    return {k: v.detach().numpy() for k, v in module.state_dict().items()}


def _torch_run(module, x_nhwc):
    with torch.no_grad():
        return (
            module(torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2))))
            .numpy()
            .transpose(0, 2, 3, 1)
        )


def _count_torch(module):
    return sum(p.numel() for p in module.parameters())


def _count_nnx(module):
    return sum(int(np.prod(v.shape)) for v in jax.tree.leaves(nnx.state(module, nnx.Param)))


def _images(seed, n=2, h=32, w=32):
    return np.random.default_rng(seed).uniform(-1, 1, (n, h, w, 3)).astype(np.float32)


# ----------------------------------------------------------------------------- layers


def test_each_transposed_conv_equals_torch_conv_transpose2d():
    """Both up layers of the published generator (256 -> 128, 128 -> 64) against
    nn.ConvTranspose2d(k=3, stride=2, padding=1, output_padding=1) with the same weights."""
    g = nnx.eval_shape(lambda: ResnetGenerator(rngs=nnx.Rngs(0)))
    r = np.random.default_rng(0)
    for up in g.up:
        cin, cout = up.kernel.shape[2], up.kernel.shape[3]
        ref = nn.ConvTranspose2d(cin, cout, 3, stride=2, padding=1, output_padding=1)
        layer = ConvTranspose2d(cin, cout, kernel_init=make_init(), rngs=nnx.Rngs(0))
        w = ref.weight.detach().numpy()
        layer.kernel[...] = jnp.asarray(w.transpose(2, 3, 0, 1))
        layer.bias[...] = jnp.asarray(ref.bias.detach().numpy())
        x = r.standard_normal((2, 5, 7, cin)).astype(np.float32)
        want = _torch_run(ref, x)
        got = np.asarray(jax.jit(lambda v: layer(v))(x))
        assert got.shape == (2, 10, 14, cout) == want.shape
        np.testing.assert_allclose(got, want, atol=TOL, rtol=0)
    # Footprint (docs/METHOD.md §7): input pixel i reaches output rows 2i-1, 2i, 2i+1 and no others.
    one = ConvTranspose2d(1, 1, kernel_init=nnx.initializers.ones, rngs=nnx.Rngs(0))
    for i in range(4):
        x = np.zeros((1, 4, 1, 1), np.float32)
        x[0, i] = 1.0
        rows = np.nonzero(np.asarray(one(x))[0, :, 0, 0])[0]
        assert rows.tolist() == [v for v in (2 * i - 1, 2 * i, 2 * i + 1) if 0 <= v < 8]


# ----------------------------------------------------------------------------- whole networks


@pytest.mark.parametrize("arch", ["cyclegan", "cut"])
def test_generator_equals_published_torch_network(arch):
    # Published size: the torch reference and the NNX module both have 11,378,179 parameters and
    # the reference's state dict imports (shapes and keys) without a forward pass.
    big = TorchGenerator(arch)
    assert _count_torch(big) == 11_378_179
    kwargs, _ = torch_import.import_generator(_numpy_sd(big), arch)
    assert (
        _count_nnx(nnx.eval_shape(lambda: ResnetGenerator(**kwargs, rngs=nnx.Rngs(0))))
        == 11_378_179
    )
    # Forward at a small width (9 blocks, the published key layout), PyTorch's default init.
    torch.manual_seed(0)
    ref = TorchGenerator(arch, ngf=8, n_blocks=9)
    g = torch_import.load_generator(_numpy_sd(ref), arch)
    assert g.antialias == g.antialias_up == (arch == "cut")
    x = _images(1)
    want = _torch_run(ref, x)
    got = np.asarray(jax.jit(lambda v: g(v))(x))
    assert float(np.std(want)) > 0.05  # not a saturated / constant output
    np.testing.assert_allclose(got, want, atol=TOL, rtol=0)
    if arch == "cut":
        # PatchNCE taps: CUT's layer ids index the published Sequential (0 = after the reflection pad).
        layers = (0, 4, 8, 12, 16)
        with torch.no_grad():
            want_f = [
                t.numpy().transpose(0, 2, 3, 1)
                for t in ref.taps(torch.from_numpy(x.transpose(0, 3, 1, 2)), layers)
            ]
        got_f = jax.jit(lambda v: g.encode(v, layers))(x)
        for l, a, b in zip(layers, got_f, want_f):
            assert a.shape == b.shape, (l, a.shape, b.shape)
            np.testing.assert_allclose(np.asarray(a), b, atol=TOL, rtol=0, err_msg=f"layer {l}")


@pytest.mark.parametrize("arch", ["cyclegan", "cut"])
def test_patchgan_equals_published_torch_network(arch):
    big = TorchPatchGAN(arch)
    assert _count_torch(big) == 2_764_737
    kwargs, _ = torch_import.import_discriminator(_numpy_sd(big), arch)
    assert (
        _count_nnx(nnx.eval_shape(lambda: NLayerDiscriminator(**kwargs, rngs=nnx.Rngs(0))))
        == 2_764_737
    )
    torch.manual_seed(1)
    ref = TorchPatchGAN(arch, ndf=8)
    d = torch_import.load_discriminator(_numpy_sd(ref), arch)
    x = _images(2, h=64, w=64)
    want = _torch_run(ref, x)
    got = np.asarray(jax.jit(lambda v: d(v))(x))
    assert got.shape == want.shape == (2, 6, 6, 1)
    np.testing.assert_allclose(got, want, atol=TOL, rtol=0)


# ----------------------------------------------------------------------------- label alignment


def _pass_through_state_dict(ngf=6, n_blocks=2):
    """Weights (published CycleGAN layout) that make the generator pass images constant on
    aligned 4x4 cells through up to a monotone per-channel map: every stage carries each colour
    channel c as the pair (relu(z_c), relu(-z_c)) (instance norm maps -z to -IN(z), so the pair
    survives IN + ReLU); convs take the centre tap; residual blocks are zero (identity); each
    transposed conv copies pixel i to output 2i and 2i+1 (taps 1 and 2 of ConvTranspose2d)."""
    ref = TorchGenerator("cyclegan", ngf=ngf, n_blocks=n_blocks)
    sd = {k: torch.zeros_like(v) for k, v in ref.state_dict().items()}
    for c in range(3):
        sd["model.1.weight"][c, c, 3, 3], sd["model.1.weight"][3 + c, c, 3, 3] = 1.0, -1.0
        for k in ("model.4.weight", "model.7.weight"):
            w = sd[k]
            w[c, c, 1, 1], w[c, 3 + c, 1, 1], w[3 + c, c, 1, 1], w[3 + c, 3 + c, 1, 1] = (
                1,
                -1,
                -1,
                1,
            )
        for k in (f"model.{10 + n_blocks}.weight", f"model.{13 + n_blocks}.weight"):
            w = sd[k]  # (in, out, kh, kw)
            for sign, (i, o) in (
                (1, (c, c)),
                (-1, (3 + c, c)),
                (-1, (c, 3 + c)),
                (1, (3 + c, 3 + c)),
            ):
                w[i, o, 1:, 1:] = sign
        w = sd[f"model.{17 + n_blocks}.weight"]
        w[c, c, 3, 3], w[c, 3 + c, 3, 3] = 1.0, -1.0
    ref.load_state_dict(sd)
    return ref


def _cell_image(seed, n=2, h=32, w=48, cell=4):
    r = np.random.default_rng(seed)
    cells = r.uniform(-0.9, 0.9, (n, h // cell, w // cell, 3)).astype(np.float32)
    return np.repeat(np.repeat(cells, cell, axis=1), cell, axis=2)


def _edges(x, axis):
    """Where the image changes between neighbours along `axis` (any channel), boolean."""
    return np.any(np.abs(np.diff(x, axis=axis)) > 1e-3, axis=-1)


def displacement(ref, out, axis, max_shift=4):
    """The shift s (|s| <= max_shift) with out[.., i + s, ..] best matching ref[.., i, ..] (highest
    correlation over the interior): how far `out`'s content moved from `ref`'s along `axis`. (Edge
    maps alone cannot say it: a 4 px cell grid is 4-periodic.)"""
    n = ref.shape[axis]
    inner = np.arange(max_shift, n - max_shift)
    corr = lambda s: np.corrcoef(
        np.take(ref, inner, axis=axis).ravel(), np.take(out, inner + s, axis=axis).ravel()
    )[0, 1]
    return max(range(-max_shift, max_shift + 1), key=corr)


def test_label_alignment_pass_through_generator_keeps_every_edge():
    ref = _pass_through_state_dict()
    x = _cell_image(0)
    want = _torch_run(ref, x)
    g = torch_import.load_generator(_numpy_sd(ref), "cyclegan")
    got = np.asarray(g(x))
    np.testing.assert_allclose(got, want, atol=TOL, rtol=0)
    for axis in (1, 2):
        # The published network with these weights is a pass-through: same edges as the input
        # (every 4 px cell boundary), and the NNX one has exactly the same edge map.
        assert np.array_equal(_edges(want, axis), _edges(x, axis))
        assert np.array_equal(_edges(got, axis), _edges(x, axis)), f"edges moved along axis {axis}"
    # Negative control = the code before issue #12: Flax's ConvTranspose(padding="SAME") pads the
    # dilated input (2, 1) instead of (1, 2); with the same weights every edge moves by 3 px
    # (1 px at half resolution -> 2 px, plus 1 px) down and right. This test fails on that code.
    for up in g.up:
        up.padding = ((2, 1), (2, 1))
    old = np.asarray(g(x))
    assert not np.array_equal(_edges(old, 1), _edges(x, 1))
    assert (displacement(want, old, 1), displacement(want, old, 2)) == (3, 3)
    assert (displacement(want, got, 1), displacement(want, got, 2)) == (0, 0)


# ----------------------------------------------------------------------------- checkpoint import


@pytest.mark.parametrize("arch", ["cyclegan", "cut"])
def test_torch_saved_checkpoint_imports_and_reproduces_torch(arch, tmp_path):
    torch.manual_seed(2)
    ref = TorchGenerator(arch, ngf=4, n_blocks=3)
    x = _images(3)
    want = _torch_run(ref, x)
    pth = str(tmp_path / ("latest_net_G_A.pth" if arch == "cyclegan" else "latest_net_G.pth"))
    torch.save(ref.state_dict(), pth)
    g = torch_import.load_generator(pth, arch)
    np.testing.assert_allclose(np.asarray(g(x)), want, atol=TOL, rtol=0)
    # The same tensors as safetensors (no torch needed to read them), with a DataParallel prefix
    # and the InstanceNorm running-stat buffers that checkpoints of old PyTorch versions carry.
    from safetensors.numpy import save_file

    sd = {"module." + k: v for k, v in _numpy_sd(ref).items()}
    sd["module.model.2.running_mean"] = np.zeros(4, np.float32)
    sd["module.model.2.num_batches_tracked"] = np.zeros((), np.int64)
    st = str(tmp_path / "g.safetensors")
    save_file(sd, st)
    np.testing.assert_allclose(
        np.asarray(torch_import.load_generator(st, arch)(x)), want, atol=TOL, rtol=0
    )
    # (config, state) for export / make_translator: translates [0, 1] images like the torch net.
    from dakpn_jax.training import get_method

    config, state = torch_import.restore_for_export(pth, arch)
    fn = get_method(config.method).make_translator(config, state)
    u = (x + 1) / 2
    np.testing.assert_allclose(np.asarray(fn(u, None)), (want + 1) / 2, atol=TOL, rtol=0)
    assert config.imported_from.sha256 == torch_import.file_sha256(pth)


def test_import_error_lists_every_problem(tmp_path):
    sd = _numpy_sd(TorchGenerator("cyclegan", ngf=4, n_blocks=2))
    del sd["model.4.bias"]  # missing
    sd["model.7.weight"] = sd["model.7.weight"][:, :3]  # mis-shaped
    sd["model.99.weight"] = np.zeros((1,), np.float32)  # unexpected
    with pytest.raises(torch_import.CheckpointMismatch) as e:
        torch_import.import_generator(sd, "cyclegan")
    msg = str(e.value)
    assert (
        "missing (1): model.4.bias" in msg
        and "model.7.weight: got (16, 3, 3, 3), expected (16, 8, 3, 3)" in msg
    )
    assert "unexpected (1): model.99.weight" in msg
    # A CUT checkpoint is not a CycleGAN one: every layer after the first stage is reported.
    with pytest.raises(
        torch_import.CheckpointMismatch, match="(?s)missing .*unexpected .*model.7.filt"
    ):
        torch_import.import_generator(
            _numpy_sd(TorchGenerator("cut", ngf=4, n_blocks=2)), "cyclegan"
        )
    bad = _numpy_sd(TorchGenerator("cut", ngf=4, n_blocks=2))
    bad["model.7.filt"] = np.ones_like(bad["model.7.filt"]) / 9
    with pytest.raises(torch_import.CheckpointMismatch, match="(?s)wrong value .*model.7.filt"):
        torch_import.import_generator(bad, "cut")
    with pytest.raises(ValueError, match="expected a .pth"):
        p = tmp_path / "g.npz"
        p.write_bytes(b"x")
        torch_import.load_tensors(str(p))
    with pytest.raises(FileNotFoundError, match="absent.pth.*does not exist"):
        torch_import.load_tensors(os.path.join(str(tmp_path), "absent.pth"))


def test_export_translates_a_folder_with_an_official_checkpoint(tmp_path):
    from PIL import Image

    from dakpn_jax import export

    torch.manual_seed(3)
    ref = TorchGenerator("cut", ngf=4, n_blocks=2)
    pth = str(tmp_path / "latest_net_G.pth")
    torch.save(ref.state_dict(), pth)
    root = tmp_path / "folder"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    r = np.random.default_rng(0)
    imgs = r.integers(0, 256, (2, 20, 28, 3), dtype=np.uint8)
    for i, im in enumerate(imgs):
        Image.fromarray(im).save(root / "images" / f"f{i}.png")
        Image.fromarray(np.full((20, 28), i, np.uint8)).save(root / "labels" / f"f{i}.png")
    out = str(tmp_path / "out")
    m = export.export_translated(
        pth,
        out,
        input_dir=str(root),
        batch_size=2,
        progress=False,
        restored=torch_import.restore_for_export(pth, "cut"),
    )
    assert m["complete"] and m["count"] == 2 and m["method"] == "cut"
    # Reference: the torch network on the whole frame (20 x 28, multiples of the stride 4), in
    # [0, 1], rounded to uint8 (1 level of slack for values at a rounding boundary).
    x = imgs.astype(np.float32) / 255.0 * 2 - 1
    want = (_torch_run(ref, x) + 1) / 2
    for i in range(2):
        got = np.asarray(Image.open(os.path.join(out, "images", f"f{i}.png")))
        assert np.max(np.abs(got.astype(np.int32) - export.to_uint8(want[i]).astype(np.int32))) <= 1


def test_protocol_row_from_an_official_checkpoint(tmp_path):
    """The protocol's ``checkpoint`` kind: an official generator file is a row without a trainer
    stage, translating as the torch network does; no file given: the row is omitted with its reason;
    a missing file stops the preflight with one message naming the field."""
    from configs import protocol as protocol_configs
    from dakpn_jax.protocol import methods, preflight

    torch.manual_seed(4)
    ref = TorchGenerator("cut", ngf=4, n_blocks=2)
    pth = str(tmp_path / "latest_net_G.pth")
    torch.save(ref.state_dict(), pth)
    pconfig = protocol_configs.get_config("tiny")
    pconfig.translators = {
        "dakpn": {"kind": "dakpn"},
        "cut_official": {"kind": "checkpoint", "arch": "cut", "generator_checkpoint": pth},
        "cyclegan_official": {"kind": "checkpoint", "arch": "cyclegan", "generator_checkpoint": ""},
    }
    omitted = {}
    ts = methods.build_translators(pconfig, 1, omitted=omitted)
    assert set(ts) == {"dakpn", "cut_official"} and not ts["cut_official"].trained
    assert "no official cyclegan generator checkpoint" in omitted["cyclegan_official"]
    x = _images(5)
    fn = ts["cut_official"].make_fn(pconfig, 1)
    want = (_torch_run(ref, x) + 1) / 2
    np.testing.assert_allclose(np.asarray(fn((x + 1) / 2, None)), want, atol=TOL, rtol=0)
    pconfig.translators.cut_official.generator_checkpoint = str(tmp_path / "absent.pth")
    with pytest.raises(
        ValueError,
        match=r"config\.translators\.cut_official\.generator_checkpoint=.*absent\.pth.*no such",
    ):
        preflight.check_weights(pconfig)
