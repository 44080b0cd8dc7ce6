"""DA-KPN's config: the allowed values of each switch, the checks, and the sizes derived from it.

configs/default.py (the benchmark) and configs/_dakpn_real.py (the real-data presets) list every
field with a comment. The authors' choices (docs/METHOD.md §6, the ``paper`` presets of
configs/gta5_cityscapes.py etc.; docs/PAPER.md lists every difference) are switches whose defaults
keep the project's path (`dakpn_jax.training.dakpn`):

  ===========================  ===============================  ===================================
  field                        default (project)                authors' code
  ===========================  ===============================  ===================================
  ``model.disc.arch``          ``"patchgan"`` (46 px, 3x3 head)  ``"nlayer"`` (70 x 70, 4x4 s1 head)
  ``model.disc.init``          ``"normal"`` N(0, 0.02)           ``"torch"`` (PyTorch default init)
  ``model.tile_grid``          ``"random"`` tile position       ``"aligned"``: a cell of the 8 x 8
                                                                grid of th x tw tiles (top-left
                                                                (i th, j tw), i, j ~ U{0..7})
  ``model.low_params``         ``"rescaled"`` (sigma, noise *s)  ``"unscaled"``: theta_low as is
  ``loss.real_low``            True: D sees resize(r)           False: no real low view (one real
                                                                term, two fake terms)
  ``loss.update_rule``         ``"alternating"``                ``"gradient_reversal"``
  ``segmenter_weights``        unset (workdir segmenter)        a torchvision-layout FCN-ResNet50
                                                                .pth / .safetensors, run on the
                                                                frame resized to
                                                                ``segmenter_input_size`` (96 x 160),
                                                                un-normalised
  ===========================  ===============================  ===================================
"""

from __future__ import annotations

from dakpn_jax.training.dakpn_features import grid_for_frame

LOSS_FORMS = ("saturating", "non_saturating", "lsgan", "hinge")
FEATURES = ("onehot", "segmenter")
NOISE = ("fixed", "fresh")
VIEWS = ("tile", "low")
SCHEDULES = ("constant", "cosine", "linear")
UPDATES = ("alternating", "gradient_reversal")
TILE_GRIDS = ("random", "aligned")
LOW_PARAMS = ("rescaled", "unscaled")
D_CONDITIONS = ("none", "segmenter")
"""``loss.d_condition``: what D sees next to the image (`dakpn_jax.training.dakpn_segmenter`,
"Conditioned D")."""
D_CONDITION_FAKE = ("labels", "segmenter")
D_CONDITION_PROBS = ("soft", "hard")
GRID_CELLS = 8
"""The aligned tile grid is GRID_CELLS x GRID_CELLS tiles of (H // 8, W // 8) (the authors' code)."""
ABLATIONS = ("affine", "blur", "noise")
"""Translation components ``config.model.ablate`` can switch off (docs/METHOD.md §1 step 8 ablations)."""


# The fields DA-KPN reads that a run config saved before the field existed (workdir/config.json of
# an older run) lacks, each with the value such a run trained with: the default the code assumed
# before configs/default.py listed the field. Nowhere else has the method a default for a field:
# configs/default.py and configs/_dakpn_real.py list every one, and the code reads config.<field>.
# A callable is a function of the saved config.
SAVED_CONFIG_DEFAULTS = {
    "features": "onehot",
    "segmenter_workdir": "",
    "segmenter_weights": "",
    "segmenter_normalize": True,
    "segmenter_input_size": None,
    "eval_images": 32,
    "eval_diagnostics": False,
    "eval_ceiling_steps": 40,
    "model.frame_size": None,
    "model.tile_size": None,
    "model.tile_grid": "random",
    "model.low_params": "rescaled",
    "model.ablate": (),
    "model.disc.arch": "patchgan",
    "model.disc.init": "normal",
    "loss.update_rule": "alternating",
    "loss.real_low": True,
    "loss.d_condition": "none",
    "loss.d_condition_fake": "labels",
    "loss.d_condition_probs": "hard",
    "optim.lr_D": lambda config: config.optim.lr,
    "optim.eps": 1e-8,
    "optim.schedule": "constant",
    "optim.warmup_steps": 0,
    "optim.kpn_lr_scale": (1.0, 1.0, 1.0),
}


def complete_saved_config(config):
    """Fills the fields of :data:`SAVED_CONFIG_DEFAULTS` that a saved run config lacks, in place,
    and returns it. The trainer calls it on every config it reads from a run directory
    (`dakpn_jax.training.trainer.load_config`: ``load_translator``, ``restore_state``, export), the
    one place where a config from an older version enters; configs built from configs/*.py have
    every field already."""
    with config.unlocked():
        for path, default in SAVED_CONFIG_DEFAULTS.items():
            *parents, name = path.split(".")
            node = config
            for p in parents:
                node = node[p]
            if name not in node:
                node[name] = default(config) if callable(default) else default
    return config


def _pair(value, name) -> tuple[int, int]:
    v = tuple(int(a) for a in value)
    if len(v) != 2 or min(v) < 1:
        raise ValueError(f"config.{name}={value!r} must be two positive ints (h, w)")
    return v


def frame_size(config) -> tuple[int, int]:
    """The training frame size (H, W) that ``param_size`` refers to: ``config.model.frame_size``,
    else ``(config.data.height, config.data.width)`` (the procedural benchmark)."""
    fs = config.model.frame_size
    if fs:
        return _pair(fs, "model.frame_size")
    if "height" in config.data and "width" in config.data:  # the procedural benchmark's fields
        return int(config.data.height), int(config.data.width)
    raise ValueError("config.model.frame_size is needed when config.data has no height/width")


def param_size(config) -> tuple[int, int]:
    return _pair(config.model.param_size, "model.param_size")


def tile_size(config, frame: tuple[int, int] | None = None) -> tuple[int, int]:
    """``config.model.tile_size``, default (H // 8, W // 8) of the (training) frame."""
    H, W = frame or frame_size(config)
    ts = config.model.tile_size
    th, tw = _pair(ts, "model.tile_size") if ts else (H // 8, W // 8)
    if th > H or tw > W:
        raise ValueError(f"config.model.tile_size=({th}, {tw}) exceeds the frame ({H}, {W})")
    return th, tw


def low_size(config) -> tuple[int, int]:
    return _pair(config.model.low_size, "model.low_size")


def grid_for(config, height: int, width: int) -> tuple[int, int]:
    """Parameter grid for a (height, width) frame: ``param_size`` scaled with the frame size."""
    return grid_for_frame(frame_size(config), param_size(config), height, width)


def ablation_of(config) -> tuple[str, ...]:
    """``config.model.ablate`` validated against ``ABLATIONS`` (empty: the full method)."""
    ablate = tuple(config.model.ablate or ())
    if set(ablate) - set(ABLATIONS):
        raise ValueError(f"config.model.ablate={ablate!r}: each entry must be one of {ABLATIONS}")
    return ablate


def needs_segmenter(config) -> bool:
    """True when the step uses the frozen segmenter: segmenter features or the conditioned D."""
    return config.features == "segmenter" or config.loss.d_condition == "segmenter"


def check_config(config) -> None:
    """ValueError naming the field when a switch has a value outside its enumeration, or two
    switches do not fit together."""
    m, l = config.model, config.loss
    checks = [
        ("features", config.features, FEATURES),
        ("loss.form", l.form, LOSS_FORMS),
        ("model.noise", m.noise, NOISE),
        ("optim.schedule", config.optim.schedule, SCHEDULES),
        ("loss.update_rule", l.update_rule, UPDATES),
        ("model.tile_grid", m.tile_grid, TILE_GRIDS),
        ("model.low_params", m.low_params, LOW_PARAMS),
        ("loss.d_condition", l.d_condition, D_CONDITIONS),
        ("loss.d_condition_fake", l.d_condition_fake, D_CONDITION_FAKE),
        ("loss.d_condition_probs", l.d_condition_probs, D_CONDITION_PROBS),
    ]
    for name, value, allowed in checks:
        if value not in allowed:
            raise ValueError(f"config.{name}={value!r} must be one of {allowed}")
    views = tuple(l.d_inputs)
    if not views or set(views) - set(VIEWS):
        raise ValueError(f"config.loss.d_inputs={views!r} must be a non-empty subset of {VIEWS}")
    if m.kernel_size < 1 or m.kernel_size % 2 == 0:
        raise ValueError(f"config.model.kernel_size={m.kernel_size} must be a positive odd int")
    ablation_of(config)
    for name, used in (
        ("features", config.features == "segmenter"),
        ("loss.d_condition", l.d_condition == "segmenter"),
    ):
        if used and not config.segmenter_workdir and not config.segmenter_weights:
            raise ValueError(
                f"config.{name}='segmenter' needs config.segmenter_workdir (a segmentation run) or "
                "config.segmenter_weights (a torchvision-layout FCN-ResNet50 .pth / .safetensors)"
            )
    if l.update_rule == "gradient_reversal":
        if l.form != "saturating" or float(l.r1) > 0:
            raise ValueError(
                f"config.loss.update_rule='gradient_reversal' is the saturating minimax objective: it "
                f"needs loss.form='saturating' (got {l.form!r}) and loss.r1=0 (got {l.r1})"
            )
    cw = tuple(l.get("class_weights", ()) or ())
    if cw:
        nc = int(config.model.num_classes)
        if len(cw) != nc or not all(float(w) >= 0 for w in cw) or not any(float(w) > 0 for w in cw):
            raise ValueError(
                f"config.loss.class_weights: {len(cw)} weights; needs one non-negative weight per "
                f"class (model.num_classes={nc}), not all zero"
            )
        if l.update_rule != "alternating":
            raise ValueError(
                "config.loss.class_weights needs loss.update_rule='alternating' (the gradient "
                "reversal rule is the authors' unweighted objective)"
            )
    if not l.real_low and "tile" not in views:
        raise ValueError(
            "config.loss.real_low=False needs 'tile' in loss.d_inputs (D needs a real view)"
        )
