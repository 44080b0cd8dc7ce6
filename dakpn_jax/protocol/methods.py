"""Translator rows as data: ``config.translators`` name -> spec, built by a registry of kinds.

A protocol config lists its translators as plain data (configs/protocol.py)::

    c.translators.dakpn           = dict(kind="dakpn")                                   # configs/default.py + c.dakpn
    c.translators.dakpn_no_blur   = dict(kind="dakpn", overrides={"model": {"ablate": ("blur",)}})
    c.translators.dakpn_uniform   = dict(kind="dakpn", overrides={"model": {"param_size": (1, 1)}})
    c.translators.cut             = dict(kind="train", config="configs/cut.py", arg="cut-benchmark")
    c.translators.vsait           = dict(kind="train", config="configs/vsait.py", arg="benchmark")
    c.translators.fda             = dict(kind="control", control="fda", params={"beta": 0.01})

so adding a method is one line. Optional fields of every spec: ``n_real`` (the N values of its
segmenters; default ``config.side_n_real``, or ``config.n_real`` for ``config.headline`` rows),
``label`` (the name in the report).

Kinds (:data:`KINDS`, extend with :func:`register_kind`):

- ``dakpn``: configs/default.py at ``config.dakpn.variant`` + ``config.dakpn.overrides`` + the row's
  ``overrides``; trained. The spatially uniform DA-KPN (docs/METHOD.md §9) is ``model.param_size = (1, 1)``:
  the features are the image's class fractions (constant over the image) and the head predicts
  one theta per image, upsampled to a constant map.
- ``train``: any method config file (``config``, ``arg``, ``overrides``) whose method module has a
  ``make_translator`` (CycleGAN, CUT, FastCUT, VSAIT, ...); trained by the generic trainer.
- ``ceiling``: the family ceiling, an ORACLE fitted on paired views (``params``: ``fit_images``,
  ``steps``, ``noise``); no trainer stage. Label it as the oracle it is.
- ``checkpoint``: an official CycleGAN / CUT / FastCUT generator checkpoint (``arch``,
  ``generator_checkpoint``), imported by `dakpn_jax.models.torch_import`; no trainer stage, the same
  weights for every seed; omitted with its reason when no file is given.
- ``control``: a training-free control of `dakpn_jax.controls` (``control``, ``params``), with a
  pool of ``config.eval.control_pool`` real-train frames as references; no trainer stage.

A kind is ``build(pconfig, spec, seed) -> Translator``: either ``trained=True`` with the stage
config to train, or ``trained=False`` with ``make_fn(pconfig, seed) -> translate_fn``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from typing import Callable

import ml_collections
import numpy as np

from dakpn_jax import registry
from dakpn_jax.config_files import load_config_file


def override(config: ml_collections.ConfigDict, overrides) -> ml_collections.ConfigDict:
    """A copy of ``config`` with ``overrides`` (nested dicts recurse; other values replace)."""
    out = copy.deepcopy(config)
    with out.unlocked():
        for key, value in dict(overrides or {}).items():
            if (
                hasattr(value, "items")
                and key in out
                and isinstance(out[key], ml_collections.ConfigDict)
            ):
                out[key] = override(out[key], value)
            else:
                out[key] = (
                    value.to_dict() if isinstance(value, ml_collections.ConfigDict) else value
                )
    return out


def with_data(config, pconfig, **data_fields):
    """The stage config on the protocol's benchmark data (+ extra data fields)."""
    return override(config, {"data": {**pconfig.data.to_dict(), **data_fields}})


def _quiet(pconfig):
    """Stage fields the protocol sets on every trained stage: frequent progress lines (they drive
    the console's progress bar and go to the log file), no in-training evaluation (the protocol
    scores every stage itself, once)."""
    return dict(pconfig.get("stage_overrides", {}) or {})


# ----------------------------------------------------------------------------- translators


@dataclasses.dataclass
class Translator:
    name: str
    kind: str
    trained: bool
    config: ml_collections.ConfigDict | None = None  # stage config (trained kinds)
    make_fn: Callable | None = None  # (pconfig, seed) -> translate_fn (training-free)
    spec: dict = dataclasses.field(default_factory=dict)

    @property
    def uses_segmenter_features(self) -> bool:
        """Needs the protocol's feature segmenter: frozen-segmenter features and no weights file
        (``segmenter_weights``, e.g. the paper preset's FCN-ResNet50) that provides them."""
        return (
            self.trained
            and self.config.get("features", "onehot") == "segmenter"
            and not self.config.get("segmenter_weights", None)
        )


def label_space(pconfig):
    """The protocol data's `dakpn_jax.data.label_space.LabelSpace` (classes of every stage)."""
    from dakpn_jax.data import label_space as spaces  # pylint: disable=import-outside-toplevel

    return spaces.for_data(pconfig.data)


def _with_classes(config, pconfig):
    """``config.model.num_classes`` set to the data's class count where the method has one (DA-KPN's
    features, segmenters): the label space travels with the data, not with the method config."""
    model = config.get("model", None)
    if model is None or "num_classes" not in model:
        return config
    return override(config, {"model": {"num_classes": label_space(pconfig).num_classes}})


ROLES = ("translator", "control", "segmenter")


def role_seed(pconfig, role: str, seed: int) -> int:
    """The seed the ``role`` component of run seed ``seed`` uses: ``config.fixed_seeds[role]`` when
    set (the component is pinned, e.g. for a variance decomposition), else ``seed``."""
    if role not in ROLES:
        raise ValueError(f"role_seed: role {role!r} is not one of {ROLES}")
    fixed = pconfig.fixed_seeds[role]
    return int(seed) if fixed is None else int(fixed)


def dakpn_config(pconfig, seed: int, extra=None) -> ml_collections.ConfigDict:
    c = load_config_file("configs/default.py", pconfig.dakpn.variant)
    c = override(with_data(c, pconfig), pconfig.dakpn.overrides)
    c = _with_classes(override(c, _quiet(pconfig)), pconfig)
    return override(c, {"seed": seed, **dict(extra or {})})


def _build_dakpn(pconfig, spec, seed):
    return dict(
        trained=True,
        config=dakpn_config(pconfig, role_seed(pconfig, "translator", seed), spec.get("overrides")),
    )


def _build_train(pconfig, spec, seed):
    if not spec.get("config"):
        raise ValueError(
            f"translator spec {spec}: kind 'train' needs 'config' (a config file path)"
        )
    c = load_config_file(spec["config"], spec.get("arg"))
    c = override(override(with_data(c, pconfig), _quiet(pconfig)), spec.get("overrides"))
    method = registry.REGISTRY.get(c.get("method"))
    if method is not None and not method.translator:
        raise ValueError(f"translator spec {spec}: method {c.method!r} offers no make_translator")
    # A method that cannot be what it claims without outside files (VSAIT without ImageNet VGG19
    # weights) is omitted, and the report says why, rather than reported with stand-ins.
    ok, why = method.is_available(c) if method is not None else (True, "")
    if not ok:
        return dict(omit=why)
    return dict(
        trained=True,
        config=override(
            _with_classes(c, pconfig), {"seed": role_seed(pconfig, "translator", seed)}
        ),
    )


def control_reference(pconfig) -> np.ndarray:
    """(P, H, W, 3) uint8: the first ``eval.control_pool`` real-train frames, the controls' pool of
    "random real training images"."""
    from dakpn_jax import controls  # pylint: disable=import-outside-toplevel

    return controls.reference_pool(pconfig.data, int(pconfig.eval.get("control_pool", 64)))


def _build_control(pconfig, spec, seed):
    from dakpn_jax import controls  # pylint: disable=import-outside-toplevel

    name = spec.get("control")
    if name not in controls.CONTROLS:
        raise ValueError(
            f"translator spec {spec}: 'control' must be one of {controls.CONTROLS}, got {name!r}"
        )
    params = dict(spec.get("params", {}) or {})
    params.setdefault("num_classes", label_space(pconfig).num_classes)  # per-class randomisation

    def make_fn(pc, s):
        ref = None if name == "randomize" else control_reference(pc)
        return controls.make_control(
            name, reference=ref, seed=role_seed(pc, "control", s), **params
        )

    return dict(trained=False, make_fn=make_fn)


def _build_checkpoint(pconfig, spec, seed):
    """An official CycleGAN / CUT / FastCUT generator checkpoint as a row (no trainer stage):
    ``generator_checkpoint`` (a ``latest_net_G_A.pth`` / ``latest_net_G.pth`` or a .safetensors
    copy) and ``arch`` (``cyclegan`` or ``cut``, FastCUT included), imported by
    `dakpn_jax.models.torch_import`. Omitted with its reason when no file is given. The same
    weights serve every seed: only the segmenters vary."""
    from dakpn_jax.models import torch_import  # pylint: disable=import-outside-toplevel

    del seed
    path, arch = spec.get("generator_checkpoint"), spec.get("arch")
    if arch not in torch_import.ARCHS:
        raise ValueError(
            f"translator spec {spec}: kind 'checkpoint' needs arch in {torch_import.ARCHS}, got {arch!r}"
        )
    if not path:
        return dict(
            omit=f"no official {arch} generator checkpoint given (generator_checkpoint=PATH)"
        )

    def make_fn(pc, s):
        del pc, s
        config, state = torch_import.restore_for_export(path, arch)
        return registry.method_module(config.method).make_translator(config, state)

    return dict(trained=False, make_fn=make_fn)


_CEILINGS: dict[str, object] = {}


def ceiling_fit_size(pconfig, spec) -> tuple[int, int]:
    """(paired scenes, L-BFGS steps) of a ceiling row's fit: ``params.fit_images`` (default
    ``eval.paired_images``) and ``params.steps`` (default 40)."""
    params = dict(spec.get("params", {}) or {})
    return int(params.get("fit_images", pconfig.eval.paired_images)), int(params.get("steps", 40))


def _build_ceiling(pconfig, spec, seed):
    """The family ceiling (``dakpn_jax.evaluation.family``): an ORACLE fitted by supervised MSE on
    the first ``params.fit_images`` (default ``eval.paired_images``) paired-eval scenes, in DA-KPN's
    family (the protocol's DA-KPN kernel size and parameter grid). A comparison row, never a method:
    it sees paired data no method may see. One fit per data and settings, whatever the seed (the fit
    is deterministic)."""
    from dakpn_jax.data import label_space as spaces  # pylint: disable=import-outside-toplevel
    from dakpn_jax.evaluation import family  # pylint: disable=import-outside-toplevel

    if not spaces.has_paired_view(pconfig.data):
        return dict(
            omit="the family ceiling is fitted on paired views, which this data does not have"
        )
    params = dict(spec.get("params", {}) or {})
    unknown = set(params) - {"fit_images", "steps", "noise"}
    if unknown:
        raise ValueError(
            f"translator spec {spec}: unknown ceiling params {sorted(unknown)} "
            "(fit_images, steps, noise)"
        )

    def make_fn(pc, s):
        del s
        m = dakpn_config(pc, 0).model
        n, steps = ceiling_fit_size(pc, spec)
        key = json.dumps(
            [
                pc.data.to_dict(),
                n,
                steps,
                int(m.kernel_size),
                list(m.param_size),
                int(m.num_classes),
            ],
            sort_keys=True,
            default=str,
        )
        if key not in _CEILINGS:
            pairs = family.load_pairs(pc.data, n)
            _CEILINGS[key] = family.fit_ceiling(
                pairs,
                num_classes=int(m.num_classes),
                grid=tuple(m.param_size),
                kernel_size=int(m.kernel_size),
                steps=steps,
            )
        return family.make_ceiling_translator(_CEILINGS[key], noise=params.get("noise", "none"))

    return dict(trained=False, make_fn=make_fn)


KINDS: dict[str, Callable] = {
    "dakpn": _build_dakpn,
    "train": _build_train,
    "control": _build_control,
    "ceiling": _build_ceiling,
    "checkpoint": _build_checkpoint,
}


def register_kind(name: str, build: Callable) -> None:
    """Adds a translator kind: ``build(pconfig, spec, seed) -> dict(trained=..., config=... |
    make_fn=...)``."""
    KINDS[name] = build


def _spec_dict(spec) -> dict:
    return spec.to_dict() if hasattr(spec, "to_dict") else dict(spec)


def build_translators(pconfig, seed: int, omitted: dict | None = None) -> dict[str, Translator]:
    """``config.translators`` -> {name: Translator} for one seed (spec order kept). A kind may
    decline a row (``{"omit": why}``, e.g. VSAIT without VGG19 weights): it is left out and
    ``omitted[name] = why`` records the reason for the report."""
    out = {}
    for name, spec in pconfig.translators.items():
        spec = _spec_dict(spec)
        kind = spec.get("kind")
        if kind not in KINDS:
            raise ValueError(
                f"config.translators.{name}.kind={kind!r} is unknown; expected one of {sorted(KINDS)}"
            )
        built = KINDS[kind](pconfig, spec, seed)
        if "omit" in built:
            if omitted is not None:
                omitted[name] = built["omit"]
            continue
        out[name] = Translator(name=name, kind=kind, spec=spec, **built)
    return out


def resolved_configs(pconfig) -> dict:
    """``{"segmenter": dict, <row>: dict}``: the stage configs the protocol's config files resolve to
    (the downstream segmenter's, without its train sources, and each trained translator row's),
    seeds set to 0. The protocol config names config files (configs/default.py,
    configs/segmentation.py, configs/cyclegan.py, ...) whose contents its hash does not cover; the
    records keep these resolved configs' hashes, so a changed file is caught (`records`)."""
    out = {"segmenter": segmenter_config(pconfig, pconfig.segmentation, 0, []).to_dict()}
    for name, t in build_translators(pconfig, 0).items():
        if t.trained:
            out[name] = override(t.config, {"seed": 0}).to_dict()
    return out


def n_values(pconfig, name: str) -> tuple[int, ...]:
    """The N values of a row's segmenters (see module docstring); N < 0 means all real-train
    images (:func:`real_train_count`), so a config can say "all" without knowing the count."""
    if name == "source_only" or name in tuple(pconfig.get("headline", ("source_only", "dakpn"))):
        default = pconfig.n_real
    else:
        default = pconfig.get("side_n_real", pconfig.n_real)
    spec = pconfig.translators.get(name) if name in pconfig.translators else None
    ns = spec.get("n_real", None) if spec is not None else None
    out = [
        int(n) if int(n) >= 0 else real_train_count(pconfig)
        for n in (default if ns is None else ns)
    ]
    return tuple(dict.fromkeys(out))  # "all" may equal a listed N on small data: one segmenter each


_COUNTS: dict[str, int] = {}


def _count(pconfig, split: str) -> int:
    """Images of a split of the protocol's data (real folders are listed and scanned once per
    process; the procedural benchmark's counts are config fields)."""
    import json  # pylint: disable=import-outside-toplevel

    d = pconfig.data
    if d.get("name", "procedural") == "procedural":
        field = {
            "synthetic-train": "num_synthetic_train",
            "real-train": "num_real_train",
            "real-val": "num_real_val",
            "paired-eval": "num_paired_eval",
        }[split]
        return int(d[field])
    key = json.dumps([split, d.to_dict()], sort_keys=True, default=str)
    if key not in _COUNTS:
        from dakpn_jax.data import sources  # pylint: disable=import-outside-toplevel

        _COUNTS[key] = len(sources.make_source(d, split))
    return _COUNTS[key]


def real_train_count(pconfig) -> int:
    """Real-train images: the oracle's N and what N = "all" (-1) stands for."""
    return _count(pconfig, "real-train")


def synthetic_train_count(pconfig) -> int:
    return _count(pconfig, "synthetic-train")


# ----------------------------------------------------------------------------- segmenters


def segmenter_config(pconfig, spec, seed: int, train_sources: list, **data_fields):
    """A downstream (or feature) segmenter's stage config: ``spec.config`` (default
    configs/segmentation.py) at ``spec.variant`` + ``spec.overrides``; ``spec.model``, when given,
    replaces the whole model field (e.g. FCN-ResNet50 instead of a SegFormer, whose kwargs differ);
    ``model.num_classes`` from the data's label space."""
    c = load_config_file(spec.get("config", None) or "configs/segmentation.py", spec.variant)
    c = override(with_data(c, pconfig, **data_fields), spec.overrides)
    if spec.get("model", None):
        with c.unlocked():
            c.model = ml_collections.ConfigDict(_spec_dict(spec.model))
    c = _with_classes(override(c, _quiet(pconfig)), pconfig)
    c = override(c, {"seed": seed})
    with c.unlocked():
        c.data.train_sources = train_sources
        c.data.eval_split = "real-val"
    return c


def feature_segmenter_spec(pconfig):
    """The feature segmenter's spec: ``config.feature_segmenter``, or ``config.segmentation`` itself
    when it says ``same_as_segmentation=True`` (one weights flag for both, real-data configs)."""
    spec = pconfig.feature_segmenter
    return pconfig.segmentation if spec.get("same_as_segmentation", False) else spec


def segmenter_sources(pconfig, base: dict, n: int) -> tuple[list, dict]:
    """Train sources ``base`` (+ N real labels as ``real_fraction`` of each batch) and data fields."""
    if n <= 0:
        return [base], {}
    f = float(pconfig.real_fraction)
    if not 0.0 < f < 1.0:
        raise ValueError(f"config.real_fraction={f} must lie in (0, 1)")
    return (
        [
            {**base, "weight": 1.0 - f},
            {"kind": "split", "split": "real-train-labelled", "weight": f},
        ],
        {"num_real_labelled": int(n)},
    )
