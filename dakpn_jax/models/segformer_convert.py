"""Import local Hugging Face SegFormer / MiT checkpoints into :class:`~dakpn_jax.models.segformer.SegFormer`.

Accepted files (nothing is downloaded):
- a ``save_pretrained`` directory: ``model.safetensors``, a sharded ``model.safetensors.index.json``,
  or ``pytorch_model.bin`` (the latter only when torch is installed); ``config.json`` beside it lets
  :func:`load_hf_segformer` build the matching model;
- a single ``.safetensors`` file (read with the ``safetensors`` numpy API) or ``.bin``/``.pt`` file.

Checkpoint kinds: ``SegformerForSemanticSegmentation`` (``segformer.`` encoder + ``decode_head.``),
``SegformerModel`` (encoder tensors without prefix) and ``SegformerForImageClassification`` (the
ImageNet MiT-B0..B5 weights: encoder + a ``classifier.`` head, which is ignored). Both the tensor names
written by transformers 4.x (and by 5.x ``save_pretrained``) and the 5.x module names
(``stages.i.blocks.j.attention.q_proj`` ...) are accepted.

Layout changes: Linear ``(out, in)`` -> ``(in, out)``; Conv2d ``(out, in/groups, kh, kw)`` ->
``(kh, kw, in/groups, out)``; 1x1 Conv2d ``(out, in, 1, 1)`` -> Linear ``(in, out)``; LayerNorm and
BatchNorm ``weight`` -> ``scale``; BatchNorm ``running_mean/var`` -> ``mean/var``.
"""

from __future__ import annotations

import json
import os
import re
from typing import Callable, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dakpn_jax.models.segformer import SegFormer, SegFormerSpec
from dakpn_jax.models import weight_files

# transformers 5.x module names -> the 4.x tensor names (the names of every published checkpoint).
_V5_TO_V4 = [
    (r"stages\.(\d+)\.patch_embeddings\.", r"encoder.patch_embeddings.\1."),
    (r"stages\.(\d+)\.blocks\.", r"encoder.block.\1."),
    (r"stages\.(\d+)\.layer_norm\.", r"encoder.layer_norm.\1."),
    (r"attention\.q_proj\.", "attention.self.query."),
    (r"attention\.k_proj\.", "attention.self.key."),
    (r"attention\.v_proj\.", "attention.self.value."),
    (r"attention\.sequence_reduction\.sequence_reduction\.", "attention.self.sr."),
    (r"attention\.sequence_reduction\.layer_norm\.", "attention.self.layer_norm."),
    (r"attention\.o_proj\.", "attention.output.dense."),
    (r"mlp\.fc1\.", "mlp.dense1."),
    (r"mlp\.fc2\.", "mlp.dense2."),
    (r"layernorm_before\.", "layer_norm_1."),
    (r"layernorm_after\.", "layer_norm_2."),
    (r"decode_head\.linear_projections\.", "decode_head.linear_c."),
]
# Tensors that carry no model information or belong to a head this model does not have.
_IGNORED = re.compile(r"(.*num_batches_tracked$)|(^classifier\.(weight|bias)$)")


def canonical_name(key: str) -> str:
    """A checkpoint tensor name in the 4.x layout without the ``segformer.`` prefix, e.g.
    ``encoder.block.0.1.attention.self.query.weight`` or ``decode_head.linear_fuse.weight``."""
    for prefix in ("segformer.", "model."):
        if key.startswith(prefix):
            key = key[len(prefix) :]
    for pat, rep in _V5_TO_V4:
        key = re.sub(pat, rep, key)
    return key


# --------------------------------------------------------------------------------------------------
# Reading files


def read_checkpoint(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """All tensors of a local checkpoint (file or ``save_pretrained`` directory) as numpy arrays."""
    path = os.fspath(path)
    if os.path.isdir(path):
        for name in ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin"):
            if os.path.exists(os.path.join(path, name)):
                return read_checkpoint(os.path.join(path, name))
        raise ValueError(
            f"checkpoint directory {path!r} holds none of model.safetensors, "
            "model.safetensors.index.json, pytorch_model.bin"
        )
    if path.endswith(".index.json"):
        if not os.path.isfile(path):
            raise weight_files.WeightFileMissing(f"checkpoint index {path!r} does not exist")
        with open(path) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        out = {}
        for shard in shards:
            out.update(
                weight_files.read_tensors(
                    os.path.join(os.path.dirname(path), shard), what="checkpoint shard"
                )
            )
        return out
    return weight_files.read_tensors(
        path, what="checkpoint", hint="a file or a save_pretrained directory"
    )


def spec_from_hf_config(config: Mapping | str | os.PathLike) -> tuple[SegFormerSpec, int]:
    """(SegFormerSpec, num_labels) from a Hugging Face ``SegformerConfig`` dict or its config.json
    (a file, or the directory holding it)."""
    if not isinstance(config, Mapping):
        p = os.fspath(config)
        p = os.path.join(p, "config.json") if os.path.isdir(p) else p
        if not os.path.exists(p):
            raise ValueError(f"config {p!r} does not exist")
        with open(p) as f:
            config = json.load(f)
    if config.get("model_type", "segformer") != "segformer":
        raise ValueError(f"config: model_type={config.get('model_type')!r} is not 'segformer'")
    if config.get("num_channels", 3) != 3 or config.get("hidden_act", "gelu") != "gelu":
        raise ValueError(
            f"config: num_channels={config.get('num_channels')}, "
            f"hidden_act={config.get('hidden_act')!r} unsupported (3, 'gelu')"
        )
    if config.get("reshape_last_stage", True) is False:
        raise ValueError("config: reshape_last_stage=False is unsupported")
    t = lambda k, d: tuple(int(v) for v in config.get(k, d))
    spec = SegFormerSpec(
        hidden_sizes=t("hidden_sizes", (32, 64, 160, 256)),
        depths=t("depths", (2, 2, 2, 2)),
        num_heads=t("num_attention_heads", (1, 2, 5, 8)),
        sr_ratios=t("sr_ratios", (8, 4, 2, 1)),
        mlp_ratios=t("mlp_ratios", (4, 4, 4, 4)),
        patch_sizes=t("patch_sizes", (7, 3, 3, 3)),
        strides=t("strides", (4, 2, 2, 2)),
        decoder_hidden_size=int(config.get("decoder_hidden_size", 256)),
        drop_path_rate=float(config.get("drop_path_rate", 0.1)),
        classifier_dropout=float(config.get("classifier_dropout_prob", 0.1)),
    )
    labels = config.get("id2label")
    num_labels = len(labels) if labels else int(config.get("num_labels", 2))
    return spec, num_labels


# --------------------------------------------------------------------------------------------------
# The name map


def _linear_t(w):  # (out, in) or 1x1 conv (out, in, 1, 1) -> (in, out)
    return w.reshape(w.shape[0], -1).T


def _conv_t(w):  # (out, in/g, kh, kw) -> (kh, kw, in/g, out)
    return w.transpose(2, 3, 1, 0)


def _same(w):
    return w


def _inverse_shape(
    kind: Callable, shape: tuple[int, ...], one_by_one: bool = False
) -> tuple[int, ...]:
    """The checkpoint shape that ``kind`` maps onto the model shape ``shape``."""
    if kind is _linear_t:
        return (shape[1], shape[0], 1, 1) if one_by_one else (shape[1], shape[0])
    if kind is _conv_t:
        return (shape[3], shape[2], shape[0], shape[1])
    return tuple(shape)


def _entries(model: SegFormer):
    """(checkpoint name, model Variable, transform, 1x1-conv flag) for every tensor of the model."""
    out = []

    def linear(name, mod, one_by_one=False):
        out.append((f"{name}.weight", mod.kernel, _linear_t, one_by_one))
        if mod.bias is not None:
            out.append((f"{name}.bias", mod.bias, _same, False))

    def conv(name, mod):
        out.append((f"{name}.weight", mod.kernel, _conv_t, False))
        out.append((f"{name}.bias", mod.bias, _same, False))

    def norm(name, mod):
        out.append((f"{name}.weight", mod.scale, _same, False))
        out.append((f"{name}.bias", mod.bias, _same, False))

    enc = model.encoder
    for i, embed in enumerate(enc.patch_embeddings):
        conv(f"encoder.patch_embeddings.{i}.proj", embed.proj)
        norm(f"encoder.patch_embeddings.{i}.layer_norm", embed.layer_norm)
    for i, blocks in enumerate(enc.block):
        for j, blk in enumerate(blocks):
            p = f"encoder.block.{i}.{j}"
            norm(f"{p}.layer_norm_1", blk.layer_norm_1)
            att = blk.attention
            for hf, mod in (("query", att.query), ("key", att.key), ("value", att.value)):
                linear(f"{p}.attention.self.{hf}", mod)
            if att.sr is not None:
                conv(f"{p}.attention.self.sr", att.sr)
                norm(f"{p}.attention.self.layer_norm", att.sr_norm)
            linear(f"{p}.attention.output.dense", att.proj)
            norm(f"{p}.layer_norm_2", blk.layer_norm_2)
            linear(f"{p}.mlp.dense1", blk.mlp.dense1)
            conv(f"{p}.mlp.dwconv.dwconv", blk.mlp.dwconv)
            linear(f"{p}.mlp.dense2", blk.mlp.dense2)
    for i, ln in enumerate(enc.layer_norm):
        norm(f"encoder.layer_norm.{i}", ln)
    dec = model.decode_head
    for i, lin in enumerate(dec.linear_c):
        linear(f"decode_head.linear_c.{i}.proj", lin)
    linear("decode_head.linear_fuse", dec.linear_fuse, one_by_one=True)
    bn = dec.batch_norm
    norm("decode_head.batch_norm", bn)
    out.append(("decode_head.batch_norm.running_mean", bn.mean, _same, False))
    out.append(("decode_head.batch_norm.running_var", bn.var, _same, False))
    linear("decode_head.classifier", dec.classifier, one_by_one=True)
    return out


def _listing(items: list[str], limit: int = 20) -> str:
    more = f"\n    ... and {len(items) - limit} more" if len(items) > limit else ""
    return "".join(f"\n    {s}" for s in items[:limit]) + more


def load_hf_weights(
    model: SegFormer,
    checkpoint: str | os.PathLike | Mapping[str, np.ndarray],
    *,
    encoder_only: bool = False,
    skip: Iterable[str] = (),
) -> dict[str, list[str]]:
    """Copy a Hugging Face SegFormer/MiT checkpoint into ``model`` in place.

    Args:
      model: the target; its architecture must match the checkpoint's (build it with
        :func:`spec_from_hf_config` or :func:`load_hf_segformer`).
      checkpoint: a path accepted by :func:`read_checkpoint`, or a ``{name: array}`` dict.
      encoder_only: import the encoder only and leave the decoder as initialised (the usual start
        from ImageNet MiT weights). Checkpoints without any ``decode_head.`` tensor (MiT / SegformerModel)
        are imported this way automatically.
      skip: name prefixes (canonical names, e.g. ``"decode_head.classifier"`` to change the class count
        of a fine-tuned checkpoint) left as initialised and ignored in the checkpoint.

    Returns:
      ``{"loaded": [...], "initialised": [...], "ignored": [...]}`` canonical tensor names.

    Raises:
      ValueError listing every missing, unexpected and shape-mismatched tensor (nothing is written then).
    """
    raw = checkpoint if isinstance(checkpoint, Mapping) else read_checkpoint(checkpoint)
    tensors, ignored = {}, []
    for k, v in raw.items():
        name = canonical_name(k)
        if _IGNORED.match(name):
            ignored.append(name)
        elif name in tensors:
            raise ValueError(f"checkpoint: tensors {k!r} and another name both map to {name!r}")
        else:
            tensors[name] = np.asarray(v)
    skip = tuple(skip)
    with_decoder = not encoder_only and any(n.startswith("decode_head.") for n in tensors)
    wanted = lambda n: (with_decoder or not n.startswith("decode_head.")) and not n.startswith(skip)

    entries = _entries(model)
    known = {e[0] for e in entries}
    missing, mismatched, plan, initialised = [], [], [], []
    for name, var, kind, one_by_one in entries:
        if not wanted(name):
            initialised.append(name)
            continue
        if name not in tensors:
            missing.append(name)
            continue
        expect = _inverse_shape(kind, tuple(var.shape), one_by_one)
        got = tensors[name]
        if one_by_one and got.ndim == 2:  # a Linear-stored 1x1 conv
            expect = expect[:2]
        if tuple(got.shape) != expect:
            mismatched.append(f"{name}: checkpoint {tuple(got.shape)}, model expects {expect}")
            continue
        plan.append((name, var, kind(got)))
    unexpected = []
    for name in sorted(tensors):
        if name in known and not wanted(name):
            ignored.append(name)
        elif name not in known:
            unexpected.append(name)
    if missing or unexpected or mismatched:
        raise ValueError(
            f"checkpoint does not match SegFormer(hidden_sizes={model.spec.hidden_sizes}, depths="
            f"{model.spec.depths}, num_classes={model.num_classes}"
            f"{', encoder only' if not with_decoder else ''}):"
            f"\n  missing ({len(missing)}):{_listing(missing)}"
            f"\n  unexpected ({len(unexpected)}):{_listing(unexpected)}"
            f"\n  shape mismatch ({len(mismatched)}):{_listing(mismatched)}"
        )
    for name, var, value in plan:
        var.set_value(jnp.asarray(value, dtype=var.dtype))
    return {"loaded": [p[0] for p in plan], "initialised": initialised, "ignored": sorted(ignored)}


def load_pretrained(
    model: SegFormer, checkpoint: str | os.PathLike | Mapping[str, np.ndarray]
) -> dict[str, list[str]]:
    """Start-of-training import: the encoder always, the decoder when the checkpoint has one, and
    its classifier only when its class count equals the model's (otherwise left as initialised, the
    usual fine-tuning from ADE20K/Cityscapes models to another label set). Returns the report of
    :func:`load_hf_weights`."""
    tensors = checkpoint if isinstance(checkpoint, Mapping) else read_checkpoint(checkpoint)
    classifier = {canonical_name(k): v for k, v in tensors.items()}.get(
        "decode_head.classifier.weight"
    )
    skip = ()
    if classifier is not None and classifier.shape[0] != model.num_classes:
        skip = ("decode_head.classifier",)
    return load_hf_weights(model, tensors, skip=skip)


def make_segformer(
    name: str, num_classes: int, *, rngs: nnx.Rngs, pretrained: str | None = None, **overrides
) -> SegFormer:
    """Factory used by ``models.segmenter.make_segmenter`` for ``"segformer_b0"``..``"segformer_b5"``.

    ``pretrained``: a local Hugging Face SegFormer/MiT checkpoint (file or ``save_pretrained``
    directory) imported with :func:`load_pretrained`: the encoder always, the decoder when the
    checkpoint has one, its classifier only when the class count matches. This is how a config asks
    for ImageNet MiT weights (``config.model.kwargs.pretrained``). It lives here, not in `segformer`,
    because it needs the importer and the importer needs the model.
    """
    model = SegFormer(name, num_classes, rngs=rngs, **overrides)
    if pretrained:
        load_pretrained(model, pretrained)
    return model


def load_hf_segformer(
    path: str | os.PathLike,
    *,
    num_classes: int | None = None,
    rngs: nnx.Rngs | None = None,
    encoder_only: bool = False,
    **overrides,
) -> SegFormer:
    """Build a SegFormer from a ``save_pretrained`` directory (config.json + weights) and load it.

    ``num_classes`` different from the checkpoint's label count re-initialises the classifier
    (``decode_head.classifier``); ``overrides`` replace SegFormerSpec fields that hold no weights
    (e.g. ``drop_path_rate``). ``rngs`` (default ``nnx.Rngs(0)``) initialises what the checkpoint
    does not hold and seeds the dropout streams.
    """
    spec, num_labels = spec_from_hf_config(path)
    num_classes = num_labels if num_classes is None else int(num_classes)
    rngs = rngs or nnx.Rngs(0)
    skip = ("decode_head.classifier",) if num_classes != num_labels else ()
    tensors = read_checkpoint(path)
    build = lambda r: SegFormer(spec, num_classes, rngs=r, **overrides)
    if (
        encoder_only
        or skip
        or not any(canonical_name(k).startswith("decode_head.") for k in tensors)
    ):
        model = build(rngs)  # some tensors stay as initialised
    else:
        # Every weight comes from the checkpoint: build the structure abstractly (random
        # initialisation of a large model is slow to compile and would be overwritten anyway) and
        # give only the dropout streams real keys.
        model = nnx.eval_shape(lambda: build(nnx.Rngs(0)))
        streams = nnx.state(model, nnx.RngState)
        keys = iter(jax.random.split(rngs.params(), len(jax.tree.leaves(streams))))
        nnx.update(
            model,
            jax.tree.map(
                lambda s: (
                    next(keys)
                    if jax.dtypes.issubdtype(s.dtype, jax.dtypes.prng_key)
                    else jnp.zeros(s.shape, s.dtype)
                ),
                streams,
            ),
        )
    load_hf_weights(model, tensors, encoder_only=encoder_only, skip=skip)
    return model
