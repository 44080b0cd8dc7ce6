"""Import official PyTorch checkpoints of the CycleGAN / CUT networks into the NNX modules.

What it reads: a state dict as the official repositories save it (CycleGAN ``latest_net_G_A.pth``
/ ``latest_net_G_B.pth``, CUT / FastCUT ``latest_net_G.pth``; discriminators likewise), from

- ``.pth`` / ``.pt``: needs PyTorch (``torch.load(..., weights_only=True)``, CPU). torch is *not* a
  dependency of this package: without it a clear error says to convert the file, e.g. once on a
  machine with torch: ``safetensors.torch.save_file(torch.load(p), p + ".safetensors")``;
- ``.safetensors``: read with ``safetensors.numpy`` (no torch needed).

Key names. Both repositories build the generator as one ``nn.Sequential`` named ``model``, so the
state-dict keys are ``model.<index in the published layer list>.<weight|bias>``; residual blocks
hold their own ``nn.Sequential`` ``conv_block``. Derived from the published layer lists
(docs/METHOD.md §7), for ``n_down`` = 2 and ``n_blocks`` = B (9 published)::

    CycleGAN (resnet_9blocks)                    CUT (anti-aliased, its default)
    0 ReflectionPad2d(3)                         0 ReflectionPad2d(3)
    1 Conv2d 7x7 -> ngf           model.1        1 Conv2d 7x7 -> ngf            model.1
    2 IN, 3 ReLU                                 2 IN, 3 ReLU
    4 Conv2d s2, 5 IN, 6 ReLU     model.4        4 Conv2d s1, 5 IN, 6 ReLU      model.4
    7 Conv2d s2, 8 IN, 9 ReLU     model.7        7 Downsample (blur)            model.7.filt
    10 .. 9+B ResnetBlock         model.10..     8 Conv2d s1, 9 IN, 10 ReLU     model.8
    10+B ConvTranspose2d, IN, ReLU               11 Downsample                  model.11.filt
    13+B ConvTranspose2d, IN, ReLU               12 .. 11+B ResnetBlock         model.12..
    16+B ReflectionPad2d(3)                      12+B Upsample (blur)           model.{12+B}.filt
    17+B Conv2d 7x7 -> 3          model.{17+B}   13+B Conv2d s1, IN, ReLU       model.{13+B}
    18+B Tanh                                    16+B Upsample, 17+B Conv2d ... model.{16+B}.filt, model.{17+B}
                                                 20+B ReflectionPad2d(3), 21+B Conv2d 7x7 -> 3, 22+B Tanh

    ResnetBlock.conv_block: 0 ReflectionPad2d(1), 1 Conv2d, 2 IN, 3 ReLU, 4 ReflectionPad2d(1),
    5 Conv2d, 6 IN  (keys model.<i>.conv_block.1.*, .5.*; with ``use_dropout`` a Dropout sits at 4
    and the second conv is at 6: detected from the keys)

With B = 9: CycleGAN convs at 1, 4, 7, 10..18, 19, 22, 26; CUT at 1, 4, 8, 12..20, 22, 26, 30 and
the fixed blur filters at 7, 11 (``filt`` (C, 1, 3, 3) = [1,2,1]^T[1,2,1]/16) and 21, 25 (``filt``
(C, 1, 4, 4) = [1,3,3,1]^T[1,3,3,1]/16). Blur filters are checked, not imported (they are constants
here). InstanceNorm2d(affine=False) has no tensors; the ``running_mean`` / ``running_var`` /
``num_batches_tracked`` that checkpoints of old PyTorch versions carry at IN positions are ignored.
A ``module.`` prefix (DataParallel) is stripped. ``ngf``, ``n_blocks`` and the channel counts are
read from the tensors; ``n_down`` is the published 2 unless given.

The PatchGAN (``NLayerDiscriminator``, ``model.<i>``): CycleGAN convs at 0, 2, 5, 8, 11 (n_layers 3);
CUT's anti-aliased one at 0, 3, 7, 11, 14 with blur filters at 2, 6, 10.

Tensor layout: ``Conv2d.weight`` (O, I, kh, kw) -> NNX kernel (kh, kw, I, O);
``ConvTranspose2d.weight`` (I, O, kh, kw) -> ``ConvTranspose2d.kernel`` (kh, kw, I, O) (PyTorch
orientation, see ``models/resnet_generator``). Anything that does not fit raises
:class:`CheckpointMismatch` listing *every* missing, unexpected, mis-shaped or wrong-valued tensor.

Use: ``load_generator(path, "cut")`` -> NNX module; :func:`import_generator` -> (module kwargs,
pure-dict params); :func:`restore_for_export` -> (config, state) for ``dakpn_jax.export`` and the
method modules' ``make_translator``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from typing import Mapping

import numpy as np

from dakpn_jax.models import weight_files

ARCHS = ("cyclegan", "cut")
_IN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")
BLUR_DOWN = np.outer([1.0, 2.0, 1.0], [1.0, 2.0, 1.0]) / 16.0
BLUR_UP = np.outer([1.0, 3.0, 3.0, 1.0], [1.0, 3.0, 3.0, 1.0]) / 16.0


class CheckpointMismatch(ValueError):
    """A state dict that does not fit the network; the message lists every problem."""


# ----------------------------------------------------------------------------- reading files


def load_tensors(path: str) -> dict[str, np.ndarray]:
    """Tensors of a ``.pth``/``.pt`` (needs torch) or ``.safetensors`` file as float32/int numpy arrays."""
    return weight_files.read_tensors(path, what="torch_import: checkpoint file")


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ----------------------------------------------------------------------------- layouts


@dataclasses.dataclass(frozen=True)
class _Spec:
    """One expected tensor: where it goes (path in the NNX pure dict; None = a fixed constant to
    check), its PyTorch shape, how to convert it."""

    path: tuple | None
    shape: tuple
    kind: str  # "conv" | "convT" | "bias" | "filt"
    value: np.ndarray | None = None


def _conv(specs, key, path, cout, cin, k, transpose=False):
    shape = (cin, cout, k, k) if transpose else (cout, cin, k, k)
    specs[f"{key}.weight"] = _Spec(path + ("kernel",), shape, "convT" if transpose else "conv")
    specs[f"{key}.bias"] = _Spec(path + ("bias",), (cout,), "bias")


def _filt(specs, key, channels, filt):
    specs[f"{key}.filt"] = _Spec(None, (channels, 1) + filt.shape, "filt", filt)


def generator_layout(
    arch: str,
    *,
    ngf: int,
    n_blocks: int,
    n_down: int = 2,
    in_channels: int = 3,
    out_channels: int = 3,
    dropout: bool = False,
) -> tuple[dict[str, _Spec], set[str]]:
    """(expected tensors by key, keys of the IN positions) of the published ``model`` Sequential."""
    if arch not in ARCHS:
        raise ValueError(f"torch_import: arch={arch!r} must be one of {ARCHS}")
    aa = arch == "cut"
    specs: dict[str, _Spec] = {}
    norms: set[str] = set()
    _conv(specs, "model.1", ("stem",), ngf, in_channels, 7)
    norms.add("model.2")
    i = 4
    for d in range(n_down):
        cin, cout = ngf * 2**d, ngf * 2 ** (d + 1)
        _conv(specs, f"model.{i}", ("down", d), cout, cin, 3)
        norms.add(f"model.{i + 1}")
        if aa:
            _filt(specs, f"model.{i + 3}", cout, BLUR_DOWN)
        i += 4 if aa else 3
    c = ngf * 2**n_down
    second = 6 if dropout else 5
    for k in range(n_blocks):
        _conv(specs, f"model.{i}.conv_block.1", ("blocks", k, "conv1"), c, c, 3)
        _conv(specs, f"model.{i}.conv_block.{second}", ("blocks", k, "conv2"), c, c, 3)
        norms.update({f"model.{i}.conv_block.2", f"model.{i}.conv_block.{second + 1}"})
        i += 1
    for u in range(n_down):
        cin, cout = ngf * 2 ** (n_down - u), ngf * 2 ** (n_down - u - 1)
        if aa:
            _filt(specs, f"model.{i}", cin, BLUR_UP)
            _conv(specs, f"model.{i + 1}", ("up", u), cout, cin, 3)
            norms.add(f"model.{i + 2}")
            i += 4
        else:
            _conv(specs, f"model.{i}", ("up", u), cout, cin, 3, transpose=True)
            norms.add(f"model.{i + 1}")
            i += 3
    _conv(specs, f"model.{i + 1}", ("head",), out_channels, ngf, 7)  # model.i is ReflectionPad2d(3)
    return specs, norms


def discriminator_layout(
    arch: str, *, ndf: int, n_layers: int = 3, in_channels: int = 3
) -> tuple[dict[str, _Spec], set[str]]:
    """(expected tensors, IN keys) of the published PatchGAN ``model`` Sequential."""
    if arch not in ARCHS:
        raise ValueError(f"torch_import: arch={arch!r} must be one of {ARCHS}")
    aa = arch == "cut"
    m = lambda n: min(2**n, 8)
    specs: dict[str, _Spec] = {}
    norms: set[str] = set()
    _conv(specs, "model.0", ("convs", 0), ndf, in_channels, 4)
    i = 2
    if aa:
        _filt(specs, "model.2", ndf, BLUR_DOWN)
        i = 3
    for n in range(1, n_layers + 1):  # the strided stages, then the stride-1 one (n = n_layers)
        cin, cout = ndf * m(n - 1), ndf * m(n)
        _conv(specs, f"model.{i}", ("convs", n), cout, cin, 4)
        norms.add(f"model.{i + 1}")
        if aa and n < n_layers:
            _filt(specs, f"model.{i + 3}", cout, BLUR_DOWN)
            i += 4
        else:
            i += 3
    _conv(specs, f"model.{i}", ("out",), 1, ndf * m(n_layers), 4)
    return specs, norms


# ----------------------------------------------------------------------------- matching


def _strip_prefix(tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    if tensors and all(k.startswith("module.") for k in tensors):
        return {k[len("module.") :]: v for k, v in tensors.items()}
    return dict(tensors)


def _match(
    tensors: Mapping[str, np.ndarray], specs: dict[str, _Spec], norms: set[str], what: str
) -> dict:
    """Pure-dict params from ``tensors``; raises CheckpointMismatch listing every problem."""
    missing = [k for k in specs if k not in tensors]
    unexpected, shapes, values = [], [], []
    for k, v in tensors.items():
        if k not in specs:
            base, _, leaf = k.rpartition(".")
            if not (base in norms and leaf in _IN_BUFFERS):
                unexpected.append(f"{k} {tuple(np.shape(v))}")
            continue
        s = specs[k]
        if tuple(np.shape(v)) != s.shape:
            shapes.append(f"{k}: got {tuple(np.shape(v))}, expected {s.shape}")
        elif s.kind == "filt" and not np.allclose(np.asarray(v, np.float64), s.value, atol=1e-6):
            values.append(
                f"{k}: not the fixed blur filter {s.value[0].tolist()}... (a different anti-aliasing)"
            )
    if missing or unexpected or shapes or values:
        lines = [f"torch_import: the state dict does not fit {what}:"]
        for name, items in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("mis-shaped", shapes),
            ("wrong value", values),
        ):
            if items:
                lines.append(f"  {name} ({len(items)}): " + "; ".join(items))
        raise CheckpointMismatch("\n".join(lines))
    params: dict = {}
    for k, s in specs.items():
        if s.path is None:
            continue
        v = np.asarray(tensors[k], np.float32)
        if s.kind == "conv":
            v = v.transpose(2, 3, 1, 0)
        elif s.kind == "convT":
            v = v.transpose(2, 3, 0, 1)
        node = params
        for p in s.path[:-1]:
            node = node.setdefault(p, {})
        node[s.path[-1]] = v
    return params


def _block_indices(tensors) -> list[int]:
    return sorted(
        {
            int(m.group(1))
            for k in tensors
            for m in [re.match(r"model\.(\d+)\.conv_block\.", k)]
            if m
        }
    )


def infer_generator_size(tensors: Mapping[str, np.ndarray]) -> dict:
    """``ngf``, ``n_blocks``, ``in_channels``, ``out_channels``, ``dropout`` read from a state dict."""
    tensors = _strip_prefix(tensors)
    if "model.1.weight" not in tensors or np.ndim(tensors["model.1.weight"]) != 4:
        raise CheckpointMismatch(
            "torch_import: no 4-d 'model.1.weight' (the first conv of the published "
            f"ResNet generator); keys: {sorted(tensors)[:8]}..."
        )
    ngf, cin = np.shape(tensors["model.1.weight"])[:2]
    convs = [
        k for k in tensors if re.fullmatch(r"model\.\d+\.weight", k) and np.ndim(tensors[k]) == 4
    ]
    last = max(convs, key=lambda k: int(k.split(".")[1]))
    return dict(
        ngf=int(ngf),
        n_blocks=len(_block_indices(tensors)),
        in_channels=int(cin),
        out_channels=int(np.shape(tensors[last])[0]),
        dropout=any(re.match(r"model\.\d+\.conv_block\.6\.weight$", k) for k in tensors),
    )


def import_generator(source, arch: str, *, n_down: int = 2) -> tuple[dict, dict]:
    """(ResnetGenerator kwargs, pure-dict params) from a state dict or a checkpoint path.

    ``arch``: ``"cyclegan"`` (strided convs, transposed convs) or ``"cut"`` (CUT's anti-aliased
    default). The params fit ``nnx.merge(graphdef of ResnetGenerator(**kwargs), params)``."""
    name = source if isinstance(source, str) else "the state dict"
    tensors = _strip_prefix(load_tensors(source) if isinstance(source, str) else source)
    size = infer_generator_size(tensors)
    specs, norms = generator_layout(arch, n_down=n_down, **size)
    what = (
        f"the {arch} ResNet generator (ngf={size['ngf']}, n_blocks={size['n_blocks']}, n_down={n_down}) "
        f"in {name}"
    )
    params = _match(tensors, specs, norms, what)
    kwargs = dict(
        in_channels=size["in_channels"],
        out_channels=size["out_channels"],
        ngf=size["ngf"],
        n_blocks=size["n_blocks"],
        n_down=n_down,
        antialias=arch == "cut",
        antialias_up=arch == "cut",
    )
    return kwargs, params


def import_discriminator(source, arch: str, *, n_layers: int = 3) -> tuple[dict, dict]:
    """(NLayerDiscriminator kwargs, pure-dict params) from a state dict or checkpoint path."""
    name = source if isinstance(source, str) else "the state dict"
    tensors = _strip_prefix(load_tensors(source) if isinstance(source, str) else source)
    if "model.0.weight" not in tensors or np.ndim(tensors["model.0.weight"]) != 4:
        raise CheckpointMismatch(
            f"torch_import: no 4-d 'model.0.weight' (the PatchGAN's first conv) in {name}"
        )
    ndf, cin = (int(v) for v in np.shape(tensors["model.0.weight"])[:2])
    specs, norms = discriminator_layout(arch, ndf=ndf, n_layers=n_layers, in_channels=cin)
    params = _match(
        tensors, specs, norms, f"the {arch} PatchGAN (ndf={ndf}, n_layers={n_layers}) in {name}"
    )
    return dict(in_channels=cin, ndf=ndf, n_layers=n_layers, antialias=arch == "cut"), params


def _as_jax(params):
    import jax  # pylint: disable=import-outside-toplevel
    import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

    return jax.tree.map(jnp.asarray, params)


def load_generator(source, arch: str, *, n_down: int = 2):
    """The NNX :class:`ResnetGenerator` with the checkpoint's weights (input/output in [-1, 1])."""
    from flax import nnx  # pylint: disable=import-outside-toplevel
    from dakpn_jax.models.resnet_generator import ResnetGenerator  # pylint: disable=import-outside-toplevel

    kwargs, params = import_generator(source, arch, n_down=n_down)
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: ResnetGenerator(**kwargs, rngs=nnx.Rngs(0))))
    return nnx.merge(graphdef, _as_jax(params))


def load_discriminator(source, arch: str, *, n_layers: int = 3):
    """The NNX :class:`NLayerDiscriminator` with the checkpoint's weights."""
    from flax import nnx  # pylint: disable=import-outside-toplevel
    from dakpn_jax.models.gan_discriminator import NLayerDiscriminator  # pylint: disable=import-outside-toplevel

    kwargs, params = import_discriminator(source, arch, n_layers=n_layers)
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: NLayerDiscriminator(**kwargs, rngs=nnx.Rngs(0))))
    return nnx.merge(graphdef, _as_jax(params))


def restore_for_export(path: str, arch: str):
    """(config, state) that the method modules' ``make_translator`` (and ``dakpn_jax.export``)
    accept, for a generator checkpoint file: CycleGAN's G_A slot (synthetic -> real) or CUT's G.

    The config carries the network fields and ``imported_from`` = {path, sha256, arch}, so export
    manifests name the weights; it has no ``data`` (translate a folder dataset)."""
    import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
    import ml_collections  # pylint: disable=import-outside-toplevel

    if arch not in ARCHS:
        raise ValueError(f"torch_import: arch={arch!r} must be one of {ARCHS}")
    kwargs, params = import_generator(path, arch)
    if (kwargs["in_channels"], kwargs["out_channels"]) != (3, 3):
        raise CheckpointMismatch(
            f"torch_import: {path!r} maps {kwargs['in_channels']} -> "
            f"{kwargs['out_channels']} channels; translation needs RGB -> RGB"
        )
    c = ml_collections.ConfigDict()
    c.method = arch
    c.model = ml_collections.ConfigDict(
        dict(
            ngf=kwargs["ngf"],
            n_blocks=kwargs["n_blocks"],
            n_down=kwargs["n_down"],
            ndf=64,
            n_layers_d=3,
            antialias=kwargs["antialias"],
            antialias_up=kwargs["antialias_up"],
            antialias_d=arch == "cut",
            init="xavier" if arch == "cut" else "normal",
            init_gain=0.02,
        )
    )
    c.imported_from = ml_collections.ConfigDict(
        dict(path=os.path.abspath(path), sha256=file_sha256(path), arch=arch)
    )
    slot = "G_A" if arch == "cyclegan" else "G"
    state = {"params": {slot: _as_jax(params)}, "step": jnp.zeros((), jnp.int32)}
    return c, state
