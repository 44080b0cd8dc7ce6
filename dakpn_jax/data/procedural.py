"""The embedded procedural syn2real benchmark: street scenes rendered by a "synthetic" and a "real" renderer.

GTA5 and Cityscapes cannot be downloaded here, so the project ships a small procedural stand-in that
exercises the whole protocol on a CPU. It is honest about being procedural: what it measures is whether
a method closes a *known* domain gap without flipping labels, not how it fares on real photographs.

Scenes. Every example is generated from ``(seed, split, index)`` alone (random access, no state):
a horizon and a vanishing point; a skyline of building and vegetation blocks against the sky; a road
trapezoid converging to the vanishing point with sidewalks on both sides and terrain beyond them; then
poles (some carrying a traffic sign), cars on the road and persons on the sidewalks, painted far to near
with sizes proportional to their distance below the horizon. Labels are Cityscapes train ids
(`dakpn_jax.data.labels`); the generated classes are `SUPPORTED_CLASSES`.

The synthetic renderer (game-like: clean, saturated, sharp). Every region gets its class's base colour
in HSV plus a small per-region jitter (hue +-0.02, saturation and value x U(0.85, 1.15)); cars and
persons get a random hue per instance; car windows are darker; the sky brightens towards the horizon.
No texture, no blur, no noise.

The real renderer (camera-like) starts from the same per-pixel HSV albedo and applies, in order:

  1. per-class HSV affine (inside the DA-KPN family): h' = h + dh (mod 1), s' = s * ss, v' = v * vs,
     with (base colour -> real colour) chosen so that classes move towards *other* classes' synthetic
     colours, the trap that makes source-only training fail:

     | class      | synthetic (h, s, v)  | dh     | ss   | vs   | real looks like            |
     | ---------- | -------------------- | ------ | ---- | ---- | -------------------------- |
     | road       | (0.72, 0.20, 0.50)   | -0.10  | 0.40 | 0.66 | synthetic pole (dark grey) |
     | sidewalk   | (0.92, 0.30, 0.78)   | -0.17  | 0.60 | 0.67 | synthetic road             |
     | building   | (0.07, 0.35, 0.62)   | +0.03  | 0.43 | 0.73 | synthetic pole (grey)      |
     | pole       | (0.60, 0.05, 0.40)   |  0.00  | 1.00 | 0.75 | darker grey                |
     | sign       | (0.14, 0.90, 0.95)   | -0.02  | 0.78 | 0.80 | synthetic terrain          |
     | vegetation | (0.32, 0.80, 0.60)   | -0.12  | 0.75 | 1.00 | synthetic terrain          |
     | terrain    | (0.20, 0.65, 0.75)   | -0.09  | 0.69 | 0.77 | synthetic building (brown) |
     | sky        | (0.57, 0.65, 0.95)   | +0.01  | 0.34 | 0.90 | pale grey, near sidewalk   |
     | person     | instance hue, 0.60, 0.55 |  0.00  | 0.70 | 0.75 | duller clothes         |
     | car        | instance hue, 0.75, 0.70 |  0.00  | 0.50 | 0.70 | duller paint           |

  2. per-image exposure v *= U(0.9, 1.1) and white balance rgb *= U(0.95, 1.05) per channel
     (outside a fixed per-class translator: it can only learn the mean);
  3. texture (outside the family): rgb *= 1 + a[class] * T, T a zero-mean luminance field of coarse
     blotches (8 px cells, bilinear) and fine grain (2 px cells), a = `_TEXTURE_AMPLITUDE`
     (vegetation 0.30, terrain 0.22, building 0.14, road 0.12, ...);
  4. vignetting rgb *= 1 - 0.25 r^2 (a per-pixel value scale: inside the family for a per-pixel
     translator, outside for a per-class one), r = distance from the centre, 1 at the corners;
  5. spatially varying blur (inside the family): Gaussian sigma(p) = (0.4 + 1.6 r^2) * H / 128 px,
     approximated by blending three separable blurs (0, sigma_max/2, sigma_max) with weights that
     give the blended point-spread function the variance sigma(p)^2;
  6. sensor noise (inside the family up to its signal dependence): Gaussian per pixel and channel with
     std sqrt(0.015^2 + 0.003 x), then clipping to [0, 1] and rounding to uint8.

Class-frequency shift (as between GTA5 and Cityscapes). The two domains draw layouts from different
priors (`_LAYOUT_PRIORS`): "real" has more vegetation blocks (p 0.55 vs 0.25), taller buildings (less
sky), more terrain, more persons and poles and fewer cars. A translator that can repaint regions is
tempted to flip classes to match these frequencies; DA-KPN cannot.

How big the gap is (tests/test_procedural.py, a per-pixel colour classifier with one Gaussian per
class, 12 scenes per split at 64 x 128, mIoU on real-val): trained on synthetic-train 0.03; trained on
the same synthetic scenes rendered with only the in-family part of the gap (steps 1, 4, 5, 6) 0.37;
trained on real 0.40. So colour alone cannot transfer, a per-pixel translator in the family can recover
most of it, and texture plus per-image exposure/white balance keep the rest out of reach.

Splits (`SPLITS`). ``synthetic-train`` (synthetic renderer, synthetic layouts, labelled);
``real-train`` (real renderer, real layouts, images only); ``real-train-labelled`` (the first
``num_real_labelled`` examples of real-train, with their labels); ``real-val`` (real, labelled, its own
scenes); ``paired-eval`` (synthetic layouts rendered by both renderers, for evaluation only: training
never sees pairs). Splits draw disjoint random streams.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from dakpn_jax.data import labels as L

NUM_CLASSES = L.NUM_CLASSES  # 19 Cityscapes train ids; the benchmark generates a subset of them.

SPLITS = ("synthetic-train", "real-train", "real-train-labelled", "real-val", "paired-eval")
# Fixed integers (not hash()) so streams are stable across processes and Python versions. real-train
# and real-train-labelled share a stream: labelled example i *is* real-train example i.
_SPLIT_STREAM = {
    "synthetic-train": 1,
    "real-train": 2,
    "real-train-labelled": 2,
    "real-val": 3,
    "paired-eval": 4,
}

SUPPORTED_CLASSES = (
    L.ROAD,
    L.SIDEWALK,
    L.BUILDING,
    L.POLE,
    L.TRAFFIC_SIGN,
    L.VEGETATION,
    L.TERRAIN,
    L.SKY,
    L.PERSON,
    L.CAR,
)
# Scene background that always exists: labelled ignore (255) when left out of `classes`. Every other
# supported class is simply not generated when left out.
_BACKGROUND = (L.ROAD, L.BUILDING, L.SKY)

MIN_SIZE, MAX_SIZE = 32, 4096


@dataclasses.dataclass(frozen=True)
class ProceduralConfig:
    """Size, seed and split sizes of the procedural benchmark.

    Attributes:
      seed: non-negative int; with (split, index) it fixes every example.
      height, width: frame size in pixels, each in [32, 4096]; default 128 x 256 (2:1 like Cityscapes).
      num_synthetic_train, num_real_train, num_real_val, num_paired_eval: split lengths.
      num_real_labelled: N, the labelled prefix of real-train (<= num_real_train).
      classes: train ids the scenes contain, a non-empty subset of `SUPPORTED_CLASSES`.
    """

    seed: int = 0
    height: int = 128
    width: int = 256
    num_synthetic_train: int = 2000
    num_real_train: int = 2000
    num_real_labelled: int = 100
    num_real_val: int = 200
    num_paired_eval: int = 100
    classes: tuple[int, ...] = SUPPORTED_CLASSES

    def __post_init__(self):
        for name in (
            "seed",
            "height",
            "width",
            "num_synthetic_train",
            "num_real_train",
            "num_real_labelled",
            "num_real_val",
            "num_paired_eval",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise ValueError(
                    f"ProceduralConfig.{name} must be a non-negative int, got {value!r}"
                )
        for name in ("height", "width"):
            value = getattr(self, name)
            if not MIN_SIZE <= value <= MAX_SIZE:
                raise ValueError(
                    f"ProceduralConfig.{name}={value} is impossible; expected {MIN_SIZE}..{MAX_SIZE}"
                )
        if self.num_real_labelled > self.num_real_train:
            raise ValueError(
                f"ProceduralConfig.num_real_labelled={self.num_real_labelled} exceeds "
                f"num_real_train={self.num_real_train}"
            )
        classes = tuple(int(c) for c in self.classes)
        if not classes:
            raise ValueError(
                f"ProceduralConfig.classes is empty; give at least one of {SUPPORTED_CLASSES}"
            )
        unknown = sorted(set(classes) - set(SUPPORTED_CLASSES))
        if unknown:
            raise ValueError(
                f"ProceduralConfig.classes has unsupported train ids {unknown}; "
                f"supported: {SUPPORTED_CLASSES}"
            )
        object.__setattr__(self, "classes", tuple(sorted(set(classes))))

    @classmethod
    def from_any(cls, config: Any) -> "ProceduralConfig":
        """A ProceduralConfig from itself, a ConfigDict/dict or any object with the same field names.

        Missing fields take their defaults; extra fields (e.g. ``name``) are ignored.
        """
        if isinstance(config, cls):
            return config
        if config is None:
            return cls()
        kwargs = {}
        for field in dataclasses.fields(cls):
            if isinstance(config, dict) or hasattr(config, "keys"):
                present = field.name in config
                value = config[field.name] if present else None
            else:
                present = hasattr(config, field.name)
                value = getattr(config, field.name, None)
            if present:
                kwargs[field.name] = tuple(value) if field.name == "classes" else value
        return cls(**kwargs)

    def split_length(self, split: str) -> int:
        _check_split(split)
        return {
            "synthetic-train": self.num_synthetic_train,
            "real-train": self.num_real_train,
            "real-train-labelled": self.num_real_labelled,
            "real-val": self.num_real_val,
            "paired-eval": self.num_paired_eval,
        }[split]


def _check_split(split):
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is unknown; expected one of {SPLITS}")


# ---------------------------------------------------------------------------------------------------
# Colours: synthetic base HSV per class and the real renderer's per-class HSV affine (dh, ss, vs).

_BASE_HSV = np.zeros((NUM_CLASSES, 3), np.float32)
_REAL_AFFINE = np.tile(np.array([0.0, 1.0, 1.0], np.float32), (NUM_CLASSES, 1))
_TEXTURE_AMPLITUDE = np.zeros((NUM_CLASSES,), np.float32)
for _c, _base, _affine, _tex in (
    (L.ROAD, (0.72, 0.20, 0.50), (-0.10, 0.40, 0.66), 0.12),
    (L.SIDEWALK, (0.92, 0.30, 0.78), (-0.17, 0.60, 0.67), 0.08),
    (L.BUILDING, (0.07, 0.35, 0.62), (0.03, 0.43, 0.73), 0.14),
    (L.POLE, (0.60, 0.05, 0.40), (0.00, 1.00, 0.75), 0.04),
    (L.TRAFFIC_SIGN, (0.14, 0.90, 0.95), (-0.02, 0.78, 0.80), 0.02),
    (L.VEGETATION, (0.32, 0.80, 0.60), (-0.12, 0.75, 1.00), 0.30),
    (L.TERRAIN, (0.20, 0.65, 0.75), (-0.09, 0.69, 0.77), 0.22),
    (L.SKY, (0.57, 0.65, 0.95), (0.01, 0.34, 0.90), 0.02),
    (L.PERSON, (0.00, 0.60, 0.55), (0.00, 0.70, 0.75), 0.06),  # hue set per instance
    (L.CAR, (0.00, 0.75, 0.70), (0.00, 0.50, 0.70), 0.04),  # hue set per instance
):
    _BASE_HSV[_c], _REAL_AFFINE[_c], _TEXTURE_AMPLITUDE[_c] = _base, _affine, _tex
for _a in (_BASE_HSV, _REAL_AFFINE, _TEXTURE_AMPLITUDE):
    _a.setflags(write=False)

# Real-renderer constants (documented in the module docstring).
EXPOSURE_RANGE = (0.9, 1.1)
WHITE_BALANCE_RANGE = (0.95, 1.05)
VIGNETTE = 0.25
BLUR_SIGMA = (0.4, 1.6)  # sigma = (a + b r^2) * H / 128 px
NOISE_READ, NOISE_SHOT = 0.015, 0.003  # std = sqrt(read^2 + shot * x)

# Layout priors: the class-frequency shift between the domains.
_LAYOUT_PRIORS = {
    "synthetic": dict(
        p_vegetation=0.25, skyline=(0.10, 0.35), p_terrain=0.25, cars=4.0, persons=1.0, poles=1.5
    ),
    "real": dict(
        p_vegetation=0.55, skyline=(0.22, 0.48), p_terrain=0.55, cars=2.0, persons=2.5, poles=3.0
    ),
}


def hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """HSV -> RGB, hue a fraction of a turn; (..., 3) float in [0, 1] -> same shape.

    rgb_c = v * (1 - s * clip(min(k_c, 4 - k_c), 0, 1)),  k_c = (n_c + 6 h) mod 6,  n = (5, 3, 1).
    """
    h, s, v = hsv[..., 0:1], hsv[..., 1:2], hsv[..., 2:3]
    k = (np.array([5.0, 3.0, 1.0], np.float32) + 6.0 * h) % 6.0
    return v * (1.0 - s * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0))


# ---------------------------------------------------------------------------------------------------
# Scene generation.


@dataclasses.dataclass
class Scene:
    """One generated scene: labels plus the synthetic renderer's HSV albedo, stored per region.

    Every pixel belongs to one painted region (a skyline block, the road, a car's cabin, ...); a region
    has one class and one HSV colour, except the sky whose colour also depends on the row.

    Attributes:
      label: uint8 (H, W) train ids (255 where a left-out background class would be).
      classes: uint8 (H, W) generating class of every pixel (the label before ignore-masking).
      region: uint8 (H, W) region index of every pixel; region 0 is the sky.
      region_class: uint8 (R,) class of every region.
      region_hsv: float32 (R, 3) synthetic HSV albedo of every region, in [0, 1].
      sky_hsv: float32 (H, 3) synthetic HSV of the sky per row (paler and brighter near the horizon).
    """

    label: np.ndarray
    classes: np.ndarray
    region: np.ndarray
    region_class: np.ndarray
    region_hsv: np.ndarray
    sky_hsv: np.ndarray


class _Canvas:
    """Paints regions far to near (later paints occlude earlier ones); a region = class + HSV jitter."""

    MAX_REGIONS = 256  # region ids are uint8

    def __init__(self, h, w):
        self.region = np.zeros((h, w), np.uint8)
        self.classes: list[int] = []
        # Per region (hue add, saturation mul, value mul), applied to the class base colour.
        self.jitters: list[np.ndarray] = []

    def paint(self, rows, cols, mask, cls, jitter):
        """Paints `mask` (bool, the shape of the rows x cols window) or the whole window when None."""
        if len(self.classes) == self.MAX_REGIONS:
            return  # a scene never gets near this; objects beyond it are simply not drawn
        rid = len(self.classes)
        self.classes.append(cls)
        self.jitters.append(jitter)
        view = self.region[rows, cols]
        if mask is None:
            view[...] = rid
        else:
            view[mask] = rid


def _jitter(rng, hue=None):
    """A region's (hue add, saturation mul, value mul); `hue` replaces the hue add for instances."""
    dh = rng.uniform(-0.02, 0.02) if hue is None else hue
    return np.array([dh, rng.uniform(0.85, 1.15), rng.uniform(0.85, 1.15)], np.float32)


def generate_scene(
    rng: np.random.Generator, height: int, width: int, domain: str, classes=SUPPORTED_CLASSES
) -> Scene:
    """Draws one street scene from the layout prior of `domain` ("synthetic" or "real")."""
    if domain not in _LAYOUT_PRIORS:
        raise ValueError(f"domain={domain!r} is unknown; expected one of {tuple(_LAYOUT_PRIORS)}")
    prior = _LAYOUT_PRIORS[domain]
    want = set(classes)
    H, W = height, width
    cv = _Canvas(H, W)
    ys = np.arange(H, dtype=np.float32)[:, None]
    xs = np.arange(W, dtype=np.float32)[None, :]

    horizon = H * rng.uniform(0.38, 0.50)
    vx = W * rng.uniform(0.35, 0.65)

    # Sky, then the skyline: blocks of building or vegetation with a per-column top.
    cv.paint(slice(None), slice(None), None, L.SKY, _jitter(rng))
    x0 = 0
    while x0 < W:
        bw = max(2, int(W * rng.uniform(0.06, 0.22)))
        cols = slice(x0, min(W, x0 + bw))
        n = cols.stop - cols.start
        top = horizon - H * rng.uniform(*prior["skyline"])
        if L.VEGETATION in want and rng.uniform() < prior["p_vegetation"]:
            # Tree crowns: a bumpy top from two random sinusoids.
            t = np.arange(n, dtype=np.float32)
            bump = 0.04 * H * np.sin(
                t * rng.uniform(0.2, 0.6) + rng.uniform(0, 6.3)
            ) + 0.02 * H * np.sin(t * rng.uniform(0.8, 1.5) + rng.uniform(0, 6.3))
            tops = top + bump
            cls = L.VEGETATION
        else:
            tops = np.full((n,), top, np.float32)
            cls = L.BUILDING
        # Facades and trees reach down to the ground; road, sidewalk and terrain overpaint them there.
        rows = slice(max(0, int(tops.min())), H)
        mask = ys[rows] >= tops[None, :]
        cv.paint(rows, cols, mask, cls, _jitter(rng))
        x0 += bw

    # Ground: terrain / sidewalk / road bands, edges on lines through the vanishing point.
    g0 = int(np.ceil(horizon))
    gy = ys[g0:] - horizon  # depth below the horizon, > 0
    depth_bottom = H - horizon
    left = vx - gy * (W * rng.uniform(0.25, 0.7) / depth_bottom)
    right = vx + gy * (W * rng.uniform(0.25, 0.7) / depth_bottom)
    walk = gy * (W * rng.uniform(0.10, 0.25) / depth_bottom) if L.SIDEWALK in want else 0.0 * gy
    ground = slice(g0, H), slice(None)
    for side, p_terrain in (("left", prior["p_terrain"]), ("right", prior["p_terrain"])):
        if L.TERRAIN in want and rng.uniform() < p_terrain:
            # Terrain beyond the sidewalk from a random distance on (a verge in front of the facades).
            start = horizon + depth_bottom * rng.uniform(0.0, 0.3)
            outer = xs < left - walk if side == "left" else xs > right + walk
            cv.paint(*ground, outer & (ys[g0:] >= start), L.TERRAIN, _jitter(rng))
    if L.SIDEWALK in want:
        cv.paint(*ground, (xs >= left - walk) & (xs < right + walk), L.SIDEWALK, _jitter(rng))
    cv.paint(*ground, (xs >= left) & (xs <= right), L.ROAD, _jitter(rng))

    # Objects as (bottom row, kind), painted far to near so nearer ones occlude.
    objects = []
    for kind, rate in (
        ("pole", prior["poles"]),
        ("car", prior["cars"]),
        ("person", prior["persons"]),
    ):
        wanted = {
            "pole": L.POLE in want or L.TRAFFIC_SIGN in want,
            "car": L.CAR in want,
            "person": L.PERSON in want,
        }[kind]
        if wanted:
            for _ in range(rng.poisson(rate)):
                far, near = (0.08, 0.75) if kind == "person" else (0.08, 1.0)
                objects.append((horizon + depth_bottom * rng.uniform(far, near) ** 0.7, kind))
    objects.sort(key=lambda o: o[0])

    def at(y):  # road edges and sidewalk width at row y
        d = y - horizon
        i = min(H - 1, max(g0, int(y))) - g0
        return float(left[i, 0]), float(right[i, 0]), float(walk[i, 0]), d

    for bottom, kind in objects:
        lx, rx, wk, d = at(bottom)
        if kind == "car":
            cw = max(3.0, (rx - lx) * rng.uniform(0.22, 0.35))
            ch = cw * rng.uniform(0.5, 0.65)
            cx = rng.uniform(lx + cw / 2, max(lx + cw / 2, rx - cw / 2))
            hue = rng.uniform()
            _box(
                cv,
                H,
                W,
                bottom - 0.55 * ch,
                bottom,
                cx - cw / 2,
                cx + cw / 2,
                L.CAR,
                _jitter(rng, hue),
            )
            # Cabin, with a darker window band (same label).
            _box(
                cv,
                H,
                W,
                bottom - ch,
                bottom - 0.55 * ch,
                cx - 0.35 * cw,
                cx + 0.35 * cw,
                L.CAR,
                _jitter(rng, hue),
            )
            win = _jitter(rng, hue) * np.array([1.0, 0.5, 0.45], np.float32)
            _box(
                cv,
                H,
                W,
                bottom - 0.92 * ch,
                bottom - 0.62 * ch,
                cx - 0.3 * cw,
                cx + 0.3 * cw,
                L.CAR,
                win,
            )
        else:
            # On a sidewalk (or just beside the road when there is none).
            side = rng.uniform() < 0.5
            cx = (
                (rng.uniform(lx - wk, lx) if side else rng.uniform(rx, rx + wk))
                if wk > 1
                else (lx - 1 if side else rx + 1)
            )
            if kind == "pole":
                ph = d * rng.uniform(2.0, 3.2)
                pw = max(1.0, 0.025 * d)
                if L.POLE in want:
                    _box(
                        cv,
                        H,
                        W,
                        bottom - ph,
                        bottom,
                        cx - pw / 2,
                        cx + pw / 2,
                        L.POLE,
                        _jitter(rng),
                    )
                if L.TRAFFIC_SIGN in want and rng.uniform() < 0.5:
                    s = max(2.0, 0.18 * d)
                    _box(
                        cv,
                        H,
                        W,
                        bottom - ph,
                        bottom - ph + s,
                        cx - s / 2,
                        cx + s / 2,
                        L.TRAFFIC_SIGN,
                        _jitter(rng),
                    )
            else:
                ph = d * rng.uniform(0.9, 1.2)
                pw = max(1.0, 0.3 * ph)
                jit = _jitter(rng, rng.uniform())
                _box(cv, H, W, bottom - 0.82 * ph, bottom, cx - pw / 2, cx + pw / 2, L.PERSON, jit)
                head = _jitter(rng, 0.06) * np.array([1.0, 0.6, 1.1], np.float32)  # skin tone
                _box(
                    cv,
                    H,
                    W,
                    bottom - ph,
                    bottom - 0.8 * ph,
                    cx - pw / 3,
                    cx + pw / 3,
                    L.PERSON,
                    head,
                )

    region_class = np.array(cv.classes, np.uint8)
    jit = np.stack(cv.jitters)
    base = _BASE_HSV[region_class]
    region_hsv = np.stack(
        [
            (base[:, 0] + jit[:, 0]) % 1.0,
            np.clip(base[:, 1] * jit[:, 1], 0.0, 1.0),
            np.clip(base[:, 2] * jit[:, 2], 0.0, 1.0),
        ],
        axis=-1,
    ).astype(np.float32)
    # Synthetic shading: the sky (region 0) pales and brightens towards the horizon.
    fade = np.clip(ys[:, 0] / max(horizon, 1.0), 0.0, 1.0)
    sky_hsv = np.stack(
        [
            np.full((H,), region_hsv[0, 0], np.float32),
            region_hsv[0, 1] * (1.0 - 0.35 * fade),
            np.minimum(1.0, region_hsv[0, 2] * (0.9 + 0.1 * fade)),
        ],
        axis=-1,
    )

    classes_map = region_class[cv.region]
    label = classes_map.copy()
    for c in _BACKGROUND:
        if c not in want:
            label[classes_map == c] = L.IGNORE_INDEX
    return Scene(
        label=label,
        classes=classes_map,
        region=cv.region,
        region_class=region_class,
        region_hsv=region_hsv,
        sky_hsv=sky_hsv.astype(np.float32),
    )


def _box(cv, H, W, top, bottom, x0, x1, cls, jitter):
    r0, r1 = max(0, int(round(top))), min(H, int(round(bottom)))
    c0, c1 = max(0, int(round(x0))), min(W, int(round(x1)))
    if r1 > r0 and c1 > c0:
        cv.paint(slice(r0, r1), slice(c0, c1), None, cls, jitter)


# ---------------------------------------------------------------------------------------------------
# Renderers.


def _paint_rgb(scene: Scene, region_hsv, sky_hsv):
    """Per-pixel RGB from per-region and per-sky-row HSV colours: convert the small tables, then gather."""
    rgb = hsv_to_rgb(region_hsv)[scene.region]
    sky_rgb = hsv_to_rgb(sky_hsv)
    sky_rows = int(np.any(scene.classes == L.SKY, axis=1).nonzero()[0].max(initial=-1)) + 1
    top = slice(0, sky_rows)
    rgb[top] = np.where((scene.classes[top] == L.SKY)[..., None], sky_rgb[top, None, :], rgb[top])
    return rgb


def _real_affine(hsv, classes, exposure):
    """Step 1 (+ exposure) on HSV colours (..., 3) of the given classes (...)."""
    affine = _REAL_AFFINE[classes]
    return np.stack(
        [
            (hsv[..., 0] + affine[..., 0]) % 1.0,
            np.clip(hsv[..., 1] * affine[..., 1], 0.0, 1.0),
            np.clip(hsv[..., 2] * affine[..., 2] * exposure, 0.0, 1.0),
        ],
        axis=-1,
    )


def render_synthetic(scene: Scene) -> np.ndarray:
    """The game-like rendering: the flat HSV albedo converted to RGB; uint8 (H, W, 3)."""
    return _to_uint8(_paint_rgb(scene, scene.region_hsv, scene.sky_hsv))


def render_real(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """The camera-like rendering of `scene` (steps 1-6 of the module docstring); uint8 (H, W, 3)."""
    H, W = scene.classes.shape
    cls = scene.classes
    exposure = rng.uniform(*EXPOSURE_RANGE)
    # The affine acts per pixel on the HSV albedo; the albedo is constant per region (per row for the
    # sky), so it is applied to those small tables.
    region_hsv = _real_affine(scene.region_hsv, scene.region_class, exposure)
    sky_hsv = _real_affine(scene.sky_hsv, np.full((H,), L.SKY, np.uint8), exposure)
    rgb = _paint_rgb(scene, region_hsv, sky_hsv)
    rgb *= rng.uniform(*WHITE_BALANCE_RANGE, size=3).astype(np.float32)

    # Texture: coarse blotches (8 px cells, bilinear) + fine grain (2 px cells), zero mean, unit-ish std.
    texture = 0.8 * _upsample_bilinear(
        rng.standard_normal((H // 8 + 2, W // 8 + 2), np.float32), H, W
    )
    fine = rng.standard_normal(((H + 1) // 2, (W + 1) // 2), np.float32)
    texture += 0.6 * np.repeat(np.repeat(fine, 2, axis=0), 2, axis=1)[:H, :W]
    r2 = _radius2(H, W)
    gain = (1.0 + _TEXTURE_AMPLITUDE[cls] * texture) * (1.0 - VIGNETTE * r2)
    rgb *= gain[..., None]

    sigma = (BLUR_SIGMA[0] + BLUR_SIGMA[1] * r2) * (H / 128.0)
    rgb = _varying_blur(rgb, sigma, (BLUR_SIGMA[0] + BLUR_SIGMA[1]) * (H / 128.0))

    # Sensor noise, std = sqrt(read^2 + shot * x); in place to avoid frame-sized temporaries.
    std = np.clip(rgb, 0.0, 1.0)
    std *= NOISE_SHOT
    std += NOISE_READ**2
    np.sqrt(std, out=std)
    noise = rng.standard_normal(rgb.shape, np.float32)
    noise *= std
    rgb += noise
    return _to_uint8(rgb)


def _to_uint8(x):
    """float [0, 1] -> uint8 with rounding; clobbers `x`."""
    np.clip(x, 0.0, 1.0, out=x)
    x *= 255.0
    x += 0.5
    return x.astype(np.uint8)


_RADIUS_CACHE: dict = {}


def _radius2(H, W):
    """Squared distance from the frame centre, normalised to 1 at the corners; (H, W) float32."""
    if (H, W) not in _RADIUS_CACHE:
        y = (np.arange(H, dtype=np.float32) + 0.5) / H * 2 - 1
        x = (np.arange(W, dtype=np.float32) + 0.5) / W * 2 - 1
        r2 = (y[:, None] ** 2 + x[None, :] ** 2) / 2.0
        r2.setflags(write=False)
        _RADIUS_CACHE[(H, W)] = r2
    return _RADIUS_CACHE[(H, W)]


def _upsample_bilinear(a, H, W):
    """Bilinear resize of a small (h, w) grid to (H, W), half-pixel centres, edge clamped."""
    h, w = a.shape

    def coords(n_out, n_in):
        c = np.clip(
            (np.arange(n_out, dtype=np.float32) + 0.5) * (n_in - 2) / n_out + 0.5, 0, n_in - 1
        )
        i0 = np.minimum(np.floor(c).astype(np.int64), n_in - 2)
        return i0, (c - i0).astype(np.float32)

    y0, fy = coords(H, h)
    x0, fx = coords(W, w)
    top = a[y0][:, x0] * (1 - fx) + a[y0][:, x0 + 1] * fx
    bot = a[y0 + 1][:, x0] * (1 - fx) + a[y0 + 1][:, x0 + 1] * fx
    return top * (1 - fy[:, None]) + bot * fy[:, None]


def _gaussian_blur(img, sigma):
    """Separable Gaussian blur with edge padding; img (H, W, C) float32, sigma in px (> 0).

    y[p] = sum_{|t| <= r} k[t] x[p + t] along each axis, k[t] ~ exp(-t^2 / (2 sigma^2)) summing to 1,
    r = ceil(3 sigma). The kernel is symmetric, so taps +-t share one multiply; all arithmetic writes
    into two scratch buffers, because fresh frame-sized temporaries cost more than the adds.
    """
    r = max(1, int(np.ceil(3.0 * sigma)))
    t = np.arange(0, r + 1, dtype=np.float32)
    k = np.exp(-(t**2) / (2.0 * sigma**2))
    k /= 2.0 * k.sum() - k[0]
    for axis in (0, 1):
        n = img.shape[axis]
        p = _edge_pad(img, r, axis)
        take = (lambda a: p[a : a + n]) if axis == 0 else (lambda a: p[:, a : a + n])  # pylint: disable=cell-var-from-loop
        out = np.multiply(take(r), k[0])
        tmp = np.empty_like(out)
        for i in range(1, r + 1):
            np.add(take(r - i), take(r + i), out=tmp)
            tmp *= k[i]
            out += tmp
        img = out
    return img


def _edge_pad(img, r, axis):
    """`np.pad(img, r, mode="edge")` along axis 0 or 1, without np.pad's per-call overhead."""
    if axis == 1:
        return _edge_pad(img.swapaxes(0, 1), r, 0).swapaxes(0, 1)
    n = img.shape[0]
    p = np.empty((n + 2 * r,) + img.shape[1:], img.dtype)
    p[r : r + n] = img
    p[:r] = img[:1]
    p[r + n :] = img[-1:]
    return p


_BLEND_CACHE: dict = {}


def _varying_blur(img, sigma, sigma_max):
    """Per-pixel blur: a blend of blurs at 0, s/2 and s (s = sigma_max) with the variance of sigma(p).

    With t = 2 sigma / s in [0, 2] the weights on (identity, blur s/2, blur s) are
    (1 - t^2, t^2, 0) for t <= 1 and (0, 1 - (t^2 - 1) / 3, (t^2 - 1) / 3) for t > 1, so the blended
    point-spread function has second moment sigma(p)^2 per axis. `sigma` (H, W) depends on the frame
    size only, so the weights are cached per size.
    """
    key = (img.shape[:2], float(sigma_max))
    if key not in _BLEND_CACHE:
        t2 = np.clip(sigma / sigma_max * 2.0, 0.0, 2.0)[..., None].astype(np.float32) ** 2
        w2 = np.maximum(0.0, (t2 - 1.0) / 3.0)
        w0 = np.maximum(0.0, 1.0 - t2)
        w = (w0, 1.0 - w0 - w2, w2)
        for a in w:
            a.setflags(write=False)
        _BLEND_CACHE[key] = w
    w0, w1, w2 = _BLEND_CACHE[key]
    out = img * w0
    blurred = _gaussian_blur(img, sigma_max / 2)
    blurred *= w1
    out += blurred
    blurred = _gaussian_blur(img, sigma_max)
    blurred *= w2
    out += blurred
    return out


# ---------------------------------------------------------------------------------------------------
# Random-access sources.


class ProceduralSource:
    """A grain random-access source over one split: `len(source)`, `source[i] -> dict of uint8 arrays`.

    Examples: ``{"image": (H, W, 3), "label": (H, W)}`` for synthetic-train, real-train-labelled and
    real-val; ``{"image"}`` for real-train; ``{"synthetic", "real", "label"}`` for paired-eval.
    """

    def __init__(self, split: str, config: Any = None):
        _check_split(split)
        self.split = split
        self.config = ProceduralConfig.from_any(config)
        self._len = self.config.split_length(split)

    def __len__(self) -> int:
        return self._len

    def __repr__(self):
        c = self.config
        return f"ProceduralSource(split={self.split!r}, len={self._len}, size={c.height}x{c.width}, seed={c.seed})"

    def __getitem__(self, index) -> dict[str, np.ndarray]:
        index = int(index)
        if not 0 <= index < self._len:
            raise IndexError(
                f"index {index} out of range for split {self.split!r} of length {self._len}"
            )
        if _RENDER_CACHE_LIMIT <= 0:
            return self._render(index)
        c = self.config  # an item depends on these fields only (not on the split lengths)
        key = (c.seed, c.height, c.width, c.classes, self.split, index)
        item = _RENDER_CACHE.get(key)
        if item is None:
            item = self._render(index)
            if len(_RENDER_CACHE) < _RENDER_CACHE_LIMIT:
                _RENDER_CACHE[key] = item
        return {k: v.copy() for k, v in item.items()}  # callers may write into what they get

    def _render(self, index: int) -> dict[str, np.ndarray]:
        c = self.config
        scene_seq, render_seq = np.random.SeedSequence(
            [c.seed, _SPLIT_STREAM[self.split], index]
        ).spawn(2)
        domain = "synthetic" if self.split in ("synthetic-train", "paired-eval") else "real"
        scene = generate_scene(
            np.random.default_rng(scene_seq), c.height, c.width, domain, c.classes
        )
        if self.split == "synthetic-train":
            return {"image": render_synthetic(scene), "label": scene.label}
        real = render_real(scene, np.random.default_rng(render_seq))
        if self.split == "real-train":
            return {"image": real}
        if self.split == "paired-eval":
            return {"synthetic": render_synthetic(scene), "real": real, "label": scene.label}
        return {"image": real, "label": scene.label}


_RENDER_CACHE: dict[tuple, dict[str, np.ndarray]] = {}
_RENDER_CACHE_LIMIT = 0


def set_render_cache(max_items: int) -> None:
    """Keep up to ``max_items`` rendered examples in memory (this process; 0, the default, turns
    the cache off and empties it). Real frames are the slow ones to render (docs/RESULTS.md, "Data"); a protocol run that
    reads the same splits in a dozen stages renders each example once (128 x 256: ~130 kB each)."""
    global _RENDER_CACHE_LIMIT
    if isinstance(max_items, bool) or not isinstance(max_items, (int, np.integer)) or max_items < 0:
        raise ValueError(
            f"set_render_cache: max_items must be a non-negative int, got {max_items!r}"
        )
    _RENDER_CACHE_LIMIT = int(max_items)
    if _RENDER_CACHE_LIMIT == 0:
        _RENDER_CACHE.clear()


def make_source(split: str, config: Any = None) -> ProceduralSource:
    """The random-access source of `split` (one of `SPLITS`); `config` a ProceduralConfig or ConfigDict."""
    return ProceduralSource(split, config)
