"""The translation family's ceiling (an ORACLE that sees paired data) and paired-view diagnostics.

Why: DA-KPN can at best reach what its own family T(x; theta, n) (`dakpn_jax.translate`) expresses.
To say how much of that a training run realises, we fit theta directly, by supervised MSE against
the real rendering of the same scene, on the benchmark's paired view (evaluation-only data):

- ``mode="per_class"``: one theta per class, exactly the function class of DA-KPN's linear 1x1 head
  on one-hot label features (``theta_low = onehot_fractions(label) @ W + b`` on the parameter grid,
  sigma through the head's neighbour-weight parametrisation, `dakpn_jax.models.kpn`). It is a
  translator (:func:`make_ceiling_translator`, :func:`save_ceiling_run` + ``load_translator``).
- ``mode="per_pixel"``: a free theta per grid cell *per image*: the family's ceiling for those
  very pairs at that grid. It needs the real rendering of each frame, so it only yields a score.

This is never a method: it is labelled :data:`CEILING_LABEL` wherever it appears. The noise scale
is fixed at 0 in the fit (an independent noise field only adds to the paired MSE); ``noise_std``
records the per-class residual std after the fit (sensor noise plus texture and per-image exposure,
so an upper bound of the in-family noise), used by the ``noise="residual"`` translator.

Diagnostics (:func:`diagnose`) compare any translator with the real rendering and the ceiling:
paired PSNR, the fraction of the dB gap untranslated -> ceiling it closes, per-class mean colour
(RGB, and HSV of that mean colour) of translated / real / ceiling / untranslated images, and the
per-class learned blur sigma and noise scale next to the ceiling's. All statistics are float64 NumPy.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dakpn_jax import translation
from dakpn_jax.models import kpn as kpn_lib

CEILING_LABEL = "family ceiling (oracle, paired data)"
MODES = ("per_class", "per_pixel")
CEILING_FILE = "ceiling.npz"


# ----------------------------------------------------------------------------- data


def load_pairs(data_config, max_images: int, *, split: str = "paired-eval") -> dict:
    """The first ``max_images`` scenes of the paired view: ``{"synthetic", "real"}`` float32 (N, H, W, 3)
    in [0, 1] and ``"label"`` int32 (N, H, W). Evaluation-only data: training must never call this."""
    from dakpn_jax.data import sources  # pylint: disable=import-outside-toplevel

    source = sources.make_source(data_config, split)
    n = min(len(source), int(max_images))
    if n <= 0:
        raise ValueError(
            f"load_pairs: max_images={max_images} and {split} has {len(source)} scenes: need >= 1"
        )
    items = [source[i] for i in range(n)]
    return {
        "synthetic": np.stack([it["synthetic"] for it in items]).astype(np.float32) / 255.0,
        "real": np.stack([it["real"] for it in items]).astype(np.float32) / 255.0,
        "label": np.stack([it["label"] for it in items]).astype(np.int32),
    }


def _check_pairs(pairs: dict) -> tuple[int, int, int]:
    for k in ("synthetic", "real", "label"):
        if k not in pairs:
            raise ValueError(f"pairs: missing key '{k}' (have {sorted(pairs)})")
    x, r, y = (np.shape(pairs[k]) for k in ("synthetic", "real", "label"))
    if len(x) != 4 or x[-1] != 3 or r != x or y != x[:3]:
        raise ValueError(
            f"pairs: synthetic {x} and real {r} must be one (N, H, W, 3) shape and label {y} "
            "(N, H, W)"
        )
    return x[:3]


# ----------------------------------------------------------------------------- parametrisation


def raw_to_theta(raw: jax.Array, sigma_max: float) -> jax.Array:
    """Head-space parameters (..., 12) -> theta: the sigma entries are neighbour weights t (the
    parametrisation of `dakpn_jax.models.kpn`, whose gradient survives near sigma = 0)."""
    sigma = kpn_lib.sigma_from_neighbour_weight(raw[..., 6:9], sigma_max)
    return jnp.concatenate([raw[..., :6], sigma, raw[..., 9:]], axis=-1)


def identity_raw(sigma0: float = 1.0) -> np.ndarray:
    raw = kpn_lib.identity_params(sigma0)
    raw[6:9] = kpn_lib.neighbour_weight(sigma0)
    return raw


def class_theta_low(
    kernel, bias, labels, num_classes: int, grid: tuple[int, int], sigma_max: float
):
    """The linear head on one-hot fractions: (B, H, W) labels -> theta_low (B, h, w, 12)."""
    from dakpn_jax.training.dakpn_features import onehot_features  # pylint: disable=import-outside-toplevel

    feats = onehot_features(jnp.asarray(labels), num_classes, grid)
    return raw_to_theta(jnp.einsum("bhwc,cp->bhwp", feats, kernel) + bias, sigma_max)


# ----------------------------------------------------------------------------- the fit


@dataclasses.dataclass
class Ceiling:
    """A fitted ceiling. ``params``: per_class ``{"kernel": (C, 12), "bias": (12,)}`` (head space),
    per_pixel ``{"raw": (N, h, w, 12)}``. ``class_theta``: (C, 12) theta per class (per_class: the
    head's output on a pure cell of the class; per_pixel: the class-fraction-weighted mean over
    cells). ``noise_std`` (C, 3) residual std per class; ``psnr`` (N,) of the fit on its pairs."""

    mode: str
    num_classes: int
    grid: tuple[int, int]
    frame: tuple[int, int]
    kernel_size: int
    params: dict
    class_theta: np.ndarray
    noise_std: np.ndarray
    psnr: np.ndarray
    loss: float

    @property
    def sigma_max(self) -> float:
        return kpn_lib.default_sigma_max(self.kernel_size)

    def theta_low(self, labels) -> jax.Array:
        if self.mode != "per_class":
            raise ValueError(
                "Ceiling.theta_low: the per_pixel ceiling is tied to its own pairs (no translator)"
            )
        from dakpn_jax.training.dakpn_features import grid_for_frame  # pylint: disable=import-outside-toplevel

        grid = grid_for_frame(self.frame, self.grid, *np.shape(labels)[1:3])
        return class_theta_low(
            jnp.asarray(self.params["kernel"]),
            jnp.asarray(self.params["bias"]),
            labels,
            self.num_classes,
            grid,
            self.sigma_max,
        )


def _centre(p):
    """Fit coordinates -> head space: hsv_bias = b' - 0.5 hsv_scale. The fit optimises the affine
    about the middle of the [0, 1] range, ``s (v - 0.5) + b'``, where scale and bias are nearly
    uncorrelated (about 0 they are almost collinear for a class of one colour: a badly conditioned
    problem). A linear change of coordinates: the same function class, a better-posed optimisation."""
    return jax.tree.map(
        lambda a: jnp.concatenate([a[..., :3], a[..., 3:6] - 0.5 * a[..., :3], a[..., 6:]], -1), p
    )


def _uncentre(p):
    return jax.tree.map(
        lambda a: jnp.concatenate([a[..., :3], a[..., 3:6] + 0.5 * a[..., :3], a[..., 6:]], -1), p
    )


def _minimise(loss_fn, params, steps: int):
    """L-BFGS with a zoom line search (optax), jitted as one loop: the fit is a smooth, small,
    deterministic least-squares problem, where quasi-Newton converges in far fewer passes than Adam."""
    opt = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(loss_fn)

    def body(_, carry):
        p, s = carry
        value, grad = value_and_grad(p, state=s)
        updates, s = opt.update(grad, s, p, value=value, grad=grad, value_fn=loss_fn)
        return optax.apply_updates(p, updates), s

    return jax.jit(lambda p: jax.lax.fori_loop(0, steps, body, (p, opt.init(p)))[0])(params)


def fit_ceiling(
    pairs: dict,
    *,
    mode: str = "per_class",
    num_classes: int = 19,
    grid=(16, 32),
    kernel_size: int = 9,
    steps: int = 100,
) -> Ceiling:
    """Fits theta by least squares: min mean (T(x; theta, 0) - real)^2 over all pairs (module docstring).

    pairs: :func:`load_pairs`'s dict. grid: the parameter grid (h, w) at the pairs' frame size.
    kernel_size: the family's blur window (the DA-KPN config's ``model.kernel_size``).
    steps: L-BFGS iterations (each a few passes over all pairs)."""
    if mode not in MODES:
        raise ValueError(f"fit_ceiling: mode={mode!r} must be one of {MODES}")
    n, H, W = _check_pairs(pairs)
    grid = tuple(int(g) for g in grid)
    if len(grid) != 2 or min(grid) < 1 or grid[0] > H or grid[1] > W:
        raise ValueError(f"fit_ceiling: grid={grid} must be two ints in [1, frame {(H, W)}]")
    x, real = jnp.asarray(pairs["synthetic"]), jnp.asarray(pairs["real"])
    labels = jnp.asarray(pairs["label"])
    zero_noise = jnp.zeros((1, H, W, 3), jnp.float32)
    smax = kpn_lib.default_sigma_max(kernel_size)
    ident = jnp.asarray(identity_raw())

    if mode == "per_class":
        params = {"kernel": jnp.zeros((num_classes, 12), jnp.float32), "bias": ident}
        theta_of = lambda p: class_theta_low(
            p["kernel"], p["bias"], labels, num_classes, grid, smax
        )
    else:
        params = {"raw": jnp.broadcast_to(ident, (n,) + grid + (12,))}
        theta_of = lambda p: raw_to_theta(p["raw"], smax)
    # The noise scale is pinned to 0: it only adds variance to the paired error (module docstring).
    pin = jnp.asarray([1.0] * 9 + [0.0] * 3)
    fake_of = lambda p: translation.translate(
        x, theta_of(p) * pin, zero_noise, kernel_size=kernel_size
    )
    loss_fn = lambda q: jnp.mean(jnp.square(fake_of(_centre(q)) - real))
    params = _centre(_minimise(loss_fn, _uncentre(params), int(steps)))

    theta = theta_of(params) * pin
    fake = np.asarray(jnp.clip(fake_of(params), 0, 1), np.float64)
    mse = np.mean(np.square(fake - pairs["real"]), axis=(1, 2, 3))
    noise_std = class_residual_std(pairs["real"] - fake, pairs["label"], num_classes)
    if mode == "per_class":
        eye = jnp.eye(num_classes, dtype=jnp.float32)
        class_theta = np.asarray(raw_to_theta(eye @ params["kernel"] + params["bias"], smax))
    else:
        from dakpn_jax.training.dakpn_features import onehot_features  # pylint: disable=import-outside-toplevel

        class_theta = class_mean_params(theta, onehot_features(labels, num_classes, grid))
    # A class absent from the pairs got no data: its row is the untouched initialisation, not a fit.
    absent = np.bincount(np.asarray(pairs["label"]).reshape(-1), minlength=256)[:num_classes] == 0
    class_theta = np.where(absent[:, None], np.nan, np.asarray(class_theta, np.float64))
    return Ceiling(
        mode=mode,
        num_classes=num_classes,
        grid=grid,
        frame=(H, W),
        kernel_size=int(kernel_size),
        params={k: np.asarray(v) for k, v in params.items()},
        class_theta=class_theta,
        noise_std=noise_std,
        psnr=psnr_np(fake, pairs["real"]),
        loss=float(np.mean(mse)),
    )


def class_residual_std(residual: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, 3) float64 std of the residual per class and channel over all pixels (NaN: class absent)."""
    y = np.asarray(labels).reshape(-1)
    r = np.asarray(residual, np.float64).reshape(-1, 3)
    out = np.full((num_classes, 3), np.nan)
    for c in range(num_classes):
        if np.any(y == c):
            out[c] = r[y == c].std(axis=0)
    return out


def class_mean_params(theta_low, feats) -> np.ndarray:
    """(C, 12) float64: each class's theta averaged over the grid cells of all images, weighted by the
    class's area fraction in the cell (NaN for absent classes). Works for any head."""
    t = np.asarray(theta_low, np.float64).reshape(-1, 12)
    f = np.asarray(feats, np.float64).reshape(t.shape[0], -1)
    w = f.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (f.T @ t) / w[:, None]


# ----------------------------------------------------------------------------- as a translator


def make_ceiling_translator(ceiling: Ceiling, *, noise: str = "none") -> Callable:
    """Jitted ``fn(images (B, H, W, 3), labels (B, H, W), rng=None) -> (B, H, W, 3)`` of a per-class
    ceiling. ``noise="none"``: noise scale 0 (the paired-MSE optimum); ``"residual"``: noise scale
    = the class's residual std, with fresh N(0, 1) noise per image from ``rng`` (the seeded field
    of seed 0 when rng is None)."""
    if ceiling.mode != "per_class":
        raise ValueError(
            f"make_ceiling_translator: mode={ceiling.mode!r}; only per_class is a translator"
        )
    if noise not in ("none", "residual"):
        raise ValueError(f"make_ceiling_translator: noise={noise!r} must be 'none' or 'residual'")
    from dakpn_jax.training.dakpn_features import onehot_features  # pylint: disable=import-outside-toplevel

    std = jnp.asarray(np.nan_to_num(ceiling.noise_std), jnp.float32)
    K, C = ceiling.kernel_size, ceiling.num_classes

    @jax.jit
    def fn(images, labels, rng=None):
        x = jnp.asarray(images, jnp.float32)
        theta = ceiling.theta_low(labels)
        B, H, W = x.shape[:3]
        if noise == "none":
            return translation.translate(
                x, theta.at[..., 9:].set(0.0), jnp.zeros((1, H, W, 3)), kernel_size=K
            )
        scale = onehot_features(jnp.asarray(labels), C, theta.shape[1:3]) @ std
        n = (
            translation.noise_field(0, H, W)
            if rng is None
            else translation.sample_noise(rng, B, H, W)
        )
        return translation.translate(x, theta.at[..., 9:].set(scale), n, kernel_size=K)

    return fn


def save_ceiling_run(workdir: str, ceiling: Ceiling, data_config, *, noise: str = "none") -> str:
    """``workdir/config.json`` (method "ceiling") + ``workdir/ceiling.npz``: then
    ``dakpn_jax.load_translator(workdir)`` (and export / the protocol) serve the ceiling."""
    import ml_collections  # pylint: disable=import-outside-toplevel
    from dakpn_jax.training import trainer  # pylint: disable=import-outside-toplevel

    if ceiling.mode != "per_class":
        raise ValueError("save_ceiling_run: only the per_class ceiling is a translator")
    workdir = os.path.abspath(os.fspath(workdir))
    os.makedirs(workdir, exist_ok=True)
    meta = {
        "mode": ceiling.mode,
        "num_classes": ceiling.num_classes,
        "grid": list(ceiling.grid),
        "frame": list(ceiling.frame),
        "kernel_size": ceiling.kernel_size,
        "loss": ceiling.loss,
        "noise": noise,
        "label": CEILING_LABEL,
    }
    config = ml_collections.ConfigDict({"method": "ceiling", "data": data_config, "ceiling": meta})
    np.savez(
        os.path.join(workdir, CEILING_FILE),
        class_theta=ceiling.class_theta,
        noise_std=ceiling.noise_std,
        psnr=ceiling.psnr,
        **ceiling.params,
    )
    trainer.save_config(config, workdir)
    return workdir


def load_ceiling(workdir: str, config=None) -> Ceiling:
    """The ceiling saved by :func:`save_ceiling_run` (``config``: its config.json, read when None)."""
    if config is None:
        from dakpn_jax.training import trainer  # pylint: disable=import-outside-toplevel

        config = trainer.load_config(workdir)
    m = config.ceiling
    path = os.path.join(workdir, CEILING_FILE)
    if not os.path.exists(path):
        raise ValueError(f"load_ceiling: {workdir!r} has no {CEILING_FILE} (not a ceiling run?)")
    z = np.load(path)
    return Ceiling(
        mode=m.mode,
        num_classes=int(m.num_classes),
        grid=tuple(m.grid),
        frame=tuple(m.frame),
        kernel_size=int(m.kernel_size),
        params={"kernel": z["kernel"], "bias": z["bias"]},
        class_theta=z["class_theta"],
        noise_std=z["noise_std"],
        psnr=z["psnr"],
        loss=float(m.loss),
    )


# ----------------------------------------------------------------------------- diagnostics


def psnr_np(x, y) -> np.ndarray:
    """(N,) float64 PSNR in dB of images in [0, 1]."""
    d = np.asarray(x, np.float64) - np.asarray(y, np.float64)
    return 10.0 * np.log10(1.0 / np.mean(np.square(d), axis=(1, 2, 3)))


def gap_fraction(psnr: float, untranslated: float, ceiling: float) -> float:
    """Share of the dB gap untranslated -> ceiling closed: (psnr - u) / (ceiling - u)."""
    if not ceiling > untranslated:
        raise ValueError(
            f"gap_fraction: ceiling {ceiling:.3f} dB must exceed untranslated {untranslated:.3f} dB"
        )
    return (psnr - untranslated) / (ceiling - untranslated)


def class_mean_colours(images, labels, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(C, 3) float64 mean RGB per class over all pixels of all images (NaN: absent), counts (C,)."""
    y = np.asarray(labels).reshape(-1).astype(np.int64)
    x = np.asarray(images, np.float64).reshape(-1, 3)
    keep = y < num_classes
    counts = np.bincount(y[keep], minlength=num_classes).astype(np.float64)
    sums = np.stack(
        [np.bincount(y[keep], weights=x[keep, c], minlength=num_classes) for c in range(3)], -1
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / counts[:, None], counts


def hsv_of(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) float64 HSV (hue in turns, the conventions of `dakpn_jax.rgb_to_hsv`) of mean colours
    (NaN rows stay NaN). The HSV of the mean RGB,
    not the mean of per-pixel HSV: hue is circular and its pixel mean would be meaningless."""
    rgb = np.asarray(rgb, np.float64)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    v = rgb.max(axis=-1)
    c = v - rgb.min(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        s = np.where(v > 0, c / v, 0.0)
        h = np.where(v == r, (g - b) / c, np.where(v == g, (b - r) / c + 2, (r - g) / c + 4))
    h = np.where(c > 0, np.mod(h / 6.0, 1.0), 0.0)
    out = np.stack([h, s, v], axis=-1)
    return np.where(np.isfinite(rgb).all(axis=-1, keepdims=True), out, np.nan)


def diagnose(
    translate_fn: Callable,
    pairs: dict,
    num_classes: int,
    *,
    ceiling_fn: Callable | None = None,
    class_params: np.ndarray | None = None,
    ceiling: Ceiling | None = None,
    batch_size: int = 16,
    noise_free_fn: Callable | None = None,
) -> dict:
    """Paired-view diagnostics of ``translate_fn(images, labels) -> images`` (module docstring).

    ``ceiling_fn``: the ceiling's translator (default: from ``ceiling``); ``class_params``: (C, 12)
    per-class theta of the diagnosed translator (:func:`class_mean_params`), if it has one.
    Returns ``{"psnr", "psnr_untranslated", "psnr_ceiling", "gap_fraction", "classes": {c: {...}}}``;
    each class entry has ``count``, ``rgb`` and ``hsv`` of translated / real / ceiling / untranslated,
    ``dist`` (L2 RGB distance to real) of translated / ceiling / untranslated, and ``sigma`` /
    ``noise`` (channel means: |noise scale|; for the ceiling its residual std) where known.

    ``noise_free_fn``: the same translator with its noise scale at 0. Adds ``psnr_noise_free`` and
    ``gap_fraction_noise_free``: the ceiling is noise-free (noise independent of the real
    rendering's only adds to the paired error), so a translator that rightly adds sensor noise is
    compared like for like by its deterministic part."""
    n = _check_pairs(pairs)[0]
    if ceiling_fn is None and ceiling is not None:
        ceiling_fn = make_ceiling_translator(ceiling)
    imgs = {"real": pairs["real"], "untranslated": pairs["synthetic"]}
    for name, fn in (
        ("translated", translate_fn),
        ("ceiling", ceiling_fn),
        ("noise_free", noise_free_fn),
    ):
        if fn is None:
            continue
        out = [
            np.asarray(
                fn(pairs["synthetic"][i : i + batch_size], pairs["label"][i : i + batch_size])
            )
            for i in range(0, n, batch_size)
        ]
        imgs[name] = np.clip(np.concatenate(out), 0.0, 1.0)
    res = {
        f"psnr{'' if k == 'translated' else '_' + k}": float(np.mean(psnr_np(v, pairs["real"])))
        for k, v in imgs.items()
        if k != "real"
    }
    if "psnr_ceiling" in res:
        for k in ("", "_noise_free"):
            if f"psnr{k}" in res:
                res[f"gap_fraction{k}"] = gap_fraction(
                    res[f"psnr{k}"], res["psnr_untranslated"], res["psnr_ceiling"]
                )
    imgs.pop("noise_free", None)
    means = {k: class_mean_colours(v, pairs["label"], num_classes) for k, v in imgs.items()}
    counts = means["real"][1]
    params = {
        "translated": class_params,
        "ceiling": None if ceiling is None else ceiling.class_theta,
    }
    classes = {}
    for c in np.flatnonzero(counts > 0):
        e = {
            "count": int(counts[c]),
            "rgb": {k: m[0][c] for k, m in means.items()},
            "dist": {
                k: float(np.linalg.norm(m[0][c] - means["real"][0][c]))
                for k, m in means.items()
                if k != "real"
            },
        }
        e["hsv"] = {k: hsv_of(v[None])[0] for k, v in e["rgb"].items()}
        for k, p in params.items():
            if p is not None:
                e.setdefault("sigma", {})[k] = float(np.mean(p[c, 6:9]))
                # The ceiling's noise scale is pinned to 0 by the fit; its residual std stands in.
                e.setdefault("noise", {})[k] = float(
                    np.mean(np.abs(p[c, 9:12]) if k == "translated" else ceiling.noise_std[c])
                )
        classes[int(c)] = e
    res["classes"] = classes
    return res


def colour_regressions(diag: dict) -> list[int]:
    """Classes whose translated mean colour is further from real than the untranslated one."""
    return [
        c for c, e in diag["classes"].items() if e["dist"]["translated"] > e["dist"]["untranslated"]
    ]


def scalars(diag: dict, class_names=None) -> dict[str, float]:
    """Flat float scalars for TensorBoard: psnr_ceiling, gap_fraction, and per class
    ``colour_dist/<name>``, ``hue/<name>``, ``sigma/<name>``, ``noise/<name>`` of the translation."""
    name = (lambda c: class_names[c].replace(" ", "_")) if class_names is not None else str
    out = {
        k: float(v)
        for k, v in diag.items()
        if k
        in (
            "psnr_ceiling",
            "gap_fraction",
            "psnr_untranslated",
            "psnr_noise_free",
            "gap_fraction_noise_free",
        )
    }
    out["colour_regressions"] = float(len(colour_regressions(diag)))
    for c, e in diag["classes"].items():
        if "translated" not in e["dist"]:
            continue
        out[f"colour_dist/{name(c)}"] = e["dist"]["translated"]
        out[f"hue/{name(c)}"] = float(e["hsv"]["translated"][0])
        for k in ("sigma", "noise"):
            if k in e and "translated" in e[k]:
                out[f"{k}/{name(c)}"] = e[k]["translated"]
    return out


def ceiling_summary(ceiling: Ceiling) -> str:
    return json.dumps(
        {
            "label": CEILING_LABEL,
            "mode": ceiling.mode,
            "psnr": float(np.mean(ceiling.psnr)),
            "grid": list(ceiling.grid),
            "kernel_size": ceiling.kernel_size,
        }
    )


def format_report(diag: dict, class_names=None) -> str:
    """A plain-text table of :func:`diagnose`'s result (what experiments/dakpn_diagnostics.py prints)."""
    name = (lambda c: class_names[c]) if class_names is not None else str
    lines = [
        f"paired PSNR {diag['psnr']:.2f} dB | untranslated {diag['psnr_untranslated']:.2f} dB"
        + (
            f" | {CEILING_LABEL} {diag['psnr_ceiling']:.2f} dB | fraction of the gap closed "
            f"{100 * diag['gap_fraction']:.1f}%"
            if "gap_fraction" in diag
            else ""
        )
    ]
    if "gap_fraction_noise_free" in diag:
        lines.append(
            f"noise-free part (noise scale 0): paired PSNR {diag['psnr_noise_free']:.2f} dB | fraction of "
            f"the gap closed {100 * diag['gap_fraction_noise_free']:.1f}%"
        )
    regress = colour_regressions(diag)
    lines.append(
        "classes whose mean colour ends further from real than untranslated: "
        + (", ".join(name(c) for c in regress) or "none")
    )
    kinds = [
        k
        for k in ("translated", "real", "ceiling", "untranslated")
        if k in next(iter(diag["classes"].values()))["rgb"]
    ]
    lines.append("")
    lines.append(
        f"{'class':<14} {'pixels':>8} " + " ".join(f"{k + ' rgb | hsv':<44}" for k in kinds)
    )
    for c, e in diag["classes"].items():
        cells = []
        for k in kinds:
            rgb, hsv = e["rgb"][k], e["hsv"][k]
            d = f" d={e['dist'][k]:.3f}" if k in e["dist"] else ""
            cells.append(
                f"{'(' + ' '.join(f'{v:.2f}' for v in rgb) + ')'} | "
                f"{'(' + ' '.join(f'{v:.2f}' for v in hsv) + ')'}{d}".ljust(44)
            )
        lines.append(f"{name(c):<14} {e['count']:>8} " + " ".join(cells))
    if any("sigma" in e for e in diag["classes"].values()):
        lines.append("")
        lines.append(
            f"{'class':<14} {'sigma (px)':>11} {'ceiling':>8} {'|noise|':>8} {'ceil. residual std':>18}"
        )
        for c, e in diag["classes"].items():
            g = lambda kind, k: f"{e[kind][k]:.3f}" if kind in e and k in e[kind] else "-"
            lines.append(
                f"{name(c):<14} {g('sigma', 'translated'):>11} {g('sigma', 'ceiling'):>8} "
                f"{g('noise', 'translated'):>8} {g('noise', 'ceiling'):>18}"
            )
    return "\n".join(lines)


def cached_ceiling(directory: str, config, images: int) -> Ceiling | None:
    """The per-class ceiling for a DA-KPN ``config`` on its first ``images`` paired-eval scenes, kept
    in ``directory`` (a ceiling run): loaded when it holds one fitted on the same data, grid and
    kernel, else fitted (``config.eval_ceiling_steps`` L-BFGS steps) and saved. None when
    ``directory`` is empty (the caller fits)."""
    if not directory:
        return None
    m = config.model
    want = {
        "data": config.data.to_dict(),
        "images": int(images),
        "grid": list(m.param_size),
        "kernel_size": int(m.kernel_size),
        "num_classes": int(m.num_classes),
        "steps": int(config.get("eval_ceiling_steps", 40)),
    }
    tag = os.path.join(directory, "fit.json")
    if os.path.exists(tag):
        with open(tag) as f:
            if json.load(f) == json.loads(json.dumps(want)):
                return load_ceiling(directory)
    ceiling = fit_ceiling(
        load_pairs(config.data, images),
        num_classes=want["num_classes"],
        grid=tuple(want["grid"]),
        kernel_size=want["kernel_size"],
        steps=want["steps"],
    )
    save_ceiling_run(directory, ceiling, config.data)
    with open(tag, "w") as f:
        json.dump(want, f)
    return ceiling
