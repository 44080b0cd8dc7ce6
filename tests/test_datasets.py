"""Real datasets (issue #7): miniature official layouts built here, prepared, read back exactly.

Each tree uses the dataset's real file-name pattern and label encoding (GTA5 palette PNGs and
split.mat, Cityscapes labelIds, SYNTHIA 16-bit RGB PNGs written with every PNG filter type,
Face Synthetics _seg.png, CelebAMask-HQ JPEGs plus per-part masks at half resolution).
"""

import json
import pickle
import os
import struct
import sys
import zlib

import numpy as np
import pytest
from PIL import Image

from dakpn_jax.data import (
    base,
    celebamask_hq,
    cityscapes,
    cityscapes_labels,
    face_synthetics,
    gta5,
    prepare,
    scan,
    sources,
    synthia,
)

H, W = 6, 10

# The 19 evaluated Cityscapes label ids, in train-id order (cityscapesScripts labels.py).
CITYSCAPES_EVAL_IDS = [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33]


def _cityscapes_ref(label_id):
    return CITYSCAPES_EVAL_IDS.index(label_id) if label_id in CITYSCAPES_EVAL_IDS else 255


def _ref_map(ids, fn):
    """Pixel-by-pixel reference mapping with a Python function (independent of the LUTs)."""
    return np.vectorize(fn, otypes=[np.uint8])(ids)


def _save(path, array, mode=None, palette=False):
    """PNG via PIL; palette=True writes a palette PNG whose indices are `array` (GTA5 labels)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if palette:
        im = Image.frombytes("P", array.shape[::-1], np.ascontiguousarray(array).tobytes())
        im.putpalette(np.random.default_rng(0).integers(0, 256, 768).astype(np.uint8).tobytes())
    else:
        im = Image.fromarray(array, mode) if mode else Image.fromarray(array)
    im.save(path)


def png16(path, arr):
    """Writes uint16 (H, W, 3) as a 16-bit RGB PNG, cycling filter types 0..4 row by row."""
    h, w, _ = arr.shape
    data = arr.astype(">u2").view(np.uint8).reshape(h, w * 6).astype(np.int32)
    bpp, rows = 6, []
    for y in range(h):
        x = data[y]
        up = data[y - 1] if y else np.zeros_like(x)
        left = np.concatenate([np.zeros(bpp, np.int32), x[:-bpp]])
        ul = np.concatenate([np.zeros(bpp, np.int32), up[:-bpp]])
        p = left + up - ul
        pa, pb, pc = abs(p - left), abs(p - up), abs(p - ul)
        paeth = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, ul))
        ftype = y % 5
        pred = [0 * x, left, up, (left + up) // 2, paeth][ftype]
        rows.append(bytes([ftype]) + ((x - pred) % 256).astype(np.uint8).tobytes())

    def chunk(tag, payload):
        return (
            struct.pack(">I", len(payload))
            + tag
            + payload
            + struct.pack(">I", zlib.crc32(tag + payload) & 0xFFFFFFFF)
        )

    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(
            b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"".join(rows)))
            + chunk(b"IEND", b"")
        )


def _rgb(rng, h=H, w=W):
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


# --------------------------------------------------------------------------- miniature trees
# Each returns (root, {split: [(key, image uint8, reference label uint8)]}).


def make_gta5(root, rng):
    import scipy.io

    out, ids = {}, {"train": [1, 3], "validation": [2], "test": [4]}
    for split, frames in ids.items():
        out[split] = []
        for i in frames:
            image, raw = _rgb(rng), rng.integers(0, 34, (H, W), dtype=np.uint8)
            _save(f"{root}/images/{i:05d}.png", image)
            _save(f"{root}/labels/{i:05d}.png", raw, palette=True)
            out[split].append((f"{i:05d}", image, _ref_map(raw, _cityscapes_ref)))
    scipy.io.savemat(
        f"{root}/split.mat",
        {"trainIds": np.array([[1], [3]]), "valIds": np.array([[2]]), "testIds": np.array([[4]])},
    )
    return out


def make_cityscapes(root, rng):
    out = {}
    for split, folder, cities in (
        ("train", "train", ("aachen", "bochum")),
        ("validation", "val", ("lindau",)),
    ):
        out[split] = []
        for city in cities:
            for frame in (19, 20):
                stem = f"{city}_000000_{frame:06d}"
                image, raw = _rgb(rng), rng.integers(0, 34, (H, W), dtype=np.uint8)
                _save(f"{root}/leftImg8bit/{folder}/{city}/{stem}_leftImg8bit.png", image)
                _save(f"{root}/gtFine/{folder}/{city}/{stem}_gtFine_labelIds.png", raw, "L")
                out[split].append((stem, image, _ref_map(raw, _cityscapes_ref)))
    return out


SYNTHIA_REF = {
    1: 10,
    2: 2,
    3: 0,
    4: 1,
    5: 4,
    6: 8,
    7: 5,
    8: 13,
    9: 7,
    10: 11,
    11: 18,
    12: 17,
    15: 6,
    16: 9,
    17: 12,
    18: 14,
    19: 15,
    20: 16,
    21: 3,
}  # by class name; rest -> 255


def make_synthia(root, rng):
    out = {"train": []}
    for i in range(3):
        image = _rgb(rng)
        gt = np.stack(
            [
                rng.integers(0, 23, (H, W)),
                rng.integers(0, 60000, (H, W)),
                rng.integers(0, 60000, (H, W)),
            ],
            -1,
        ).astype(np.uint16)
        _save(f"{root}/RGB/{i:07d}.png", image)
        png16(f"{root}/GT/LABELS/{i:07d}.png", gt)
        out["train"].append(
            (f"{i:07d}", image, _ref_map(gt[..., 0], lambda v: SYNTHIA_REF.get(v, 255)))
        )
    return out


FACE_REF = {
    0: 0,
    1: 1,
    2: 2,
    3: 5,
    4: 4,
    5: 7,
    6: 6,
    7: 9,
    8: 8,
    9: 10,
    10: 11,
    11: 12,
    12: 17,
    13: 13,
    14: 13,
    15: 18,
    16: 3,
    17: 14,
}  # FACEWEAR 18 and IGNORE 255 -> 255


def make_face_synthetics(root, rng):
    out = {"train": []}
    for i in range(3):
        image = _rgb(rng)
        raw = rng.choice(np.array(list(range(19)) + [255], np.uint8), (H, W))
        _save(f"{root}/{i:06d}.png", image)
        _save(f"{root}/{i:06d}_seg.png", raw, "L")
        with open(f"{root}/{i:06d}_ldmks.txt", "w") as f:
            f.write("0 0\n")
        out["train"].append((f"{i:06d}", image, _ref_map(raw, lambda v: FACE_REF.get(v, 255))))
    return out


CELEBA_PARTITION = {11: 0, 5: 1, 7: 2, 2: 0}  # CelebA file number -> 0 train, 1 val, 2 test


def make_celebamask_hq(root, rng, n=4):
    """Images 2x the 4 x 5 masks; partition: 0, 3 train, 1 val, 2 test (through the mapping)."""
    parts = celebamask_hq.PARTS
    os.makedirs(f"{root}/CelebA-HQ-img", exist_ok=True)
    with open(f"{root}/CelebA-HQ-to-CelebA-mapping.txt", "w") as f:
        f.write("idx         orig_idx        orig_file\n")
        for i, orig in enumerate((11, 5, 7, 2)[:n]):
            f.write(f"{i}           {orig - 1}          {orig:06d}.jpg\n")
    with open(f"{root}/list_eval_partition.txt", "w") as f:
        for orig in range(1, 13):
            f.write(f"{orig:06d}.jpg {CELEBA_PARTITION.get(orig, 0)}\n")
    out = {"train": [], "validation": [], "test": []}
    for i, split in enumerate(("train", "validation", "test", "train")[:n]):
        Image.fromarray(_rgb(rng, 8, 10)).save(f"{root}/CelebA-HQ-img/{i}.jpg", quality=90)
        image = np.asarray(Image.open(f"{root}/CelebA-HQ-img/{i}.jpg").convert("RGB"))
        ref = np.zeros((4, 5), np.uint8)
        for k, part in enumerate(parts):
            if rng.random() < 0.3:
                continue  # absent part: no file
            mask = (rng.random((4, 5)) < 0.4).astype(np.uint8) * 255
            path = f"{root}/CelebAMask-HQ-mask-anno/{i // 2000}/{i:05d}_{part}.png"
            _save(
                path, mask if k % 2 else np.stack([mask] * 3, -1)
            )  # grey and 3-channel masks occur
            ref[mask != 0] = k + 1  # later parts overwrite earlier ones
        out[split].append((str(i), image, ref.repeat(2, 0).repeat(2, 1)))
    return out


TREES = {
    "gta5": (gta5, make_gta5),
    "cityscapes": (cityscapes, make_cityscapes),
    "synthia": (synthia, make_synthia),
    "face_synthetics": (face_synthetics, make_face_synthetics),
    "celebamask_hq": (celebamask_hq, make_celebamask_hq),
}


def _check(source, expected):
    assert len(source) == len(expected)
    for i, (_, image, label) in enumerate(expected):
        ex = source[i]
        assert ex["image"].dtype == np.uint8 and ex["label"].dtype == np.uint8
        np.testing.assert_array_equal(ex["image"], image)
        np.testing.assert_array_equal(ex["label"], label)


# --------------------------------------------------------------------------- tables


@pytest.mark.smoke
def test_cityscapes_table_matches_official_ids():
    lut = cityscapes_labels.LABEL_ID_TO_TRAIN_ID
    for lid in range(256):
        assert lut[lid] == (_cityscapes_ref(lid) if lid <= 33 else -1), lid
    assert cityscapes_labels.TRAIN_NAMES[:3] == ("road", "sidewalk", "building")
    assert (
        cityscapes_labels.TRAIN_NAMES[-1] == "bicycle" and len(cityscapes_labels.TRAIN_NAMES) == 19
    )
    kept = cityscapes_labels.PROTOCOLS["synthia13"]
    names = [cityscapes_labels.TRAIN_NAMES[t] for t in kept]
    assert (
        len(cityscapes_labels.PROTOCOLS["synthia16"]) == 16
        and "wall" not in names
        and "terrain" not in names
    )
    lut13 = cityscapes_labels.protocol_lut(kept)
    for t in range(256):
        assert lut13[t] == (kept.index(t) if t in kept else 255)
    assert face_synthetics.FACE_SYNTHETICS_TO_CELEBAMASK[18] == 255  # FACEWEAR: no counterpart
    for fid, target in FACE_REF.items():
        assert face_synthetics.FACE_SYNTHETICS_TO_CELEBAMASK[fid] == target


def test_synthia_16bit_png_all_filters(tmp_path):
    rng = np.random.default_rng(1)
    arr = rng.integers(0, 65536, (11, 7, 3)).astype(np.uint16)
    arr[0, 0, 0] = 3  # a small id: Pillow alone would read 0 here
    png16(str(tmp_path / "x.png"), arr)
    np.testing.assert_array_equal(synthia.read_class_ids(str(tmp_path / "x.png")), arr[..., 0])
    assert np.asarray(Image.open(tmp_path / "x.png"))[0, 0, 0] == 0  # why read_class_ids exists


# --------------------------------------------------------------------------- prepare + read back


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=pytest.mark.smoke) if n == "synthia" else n for n in sorted(TREES)],
)
def test_prepare_and_read_back_exactly(tmp_path, name):
    module, make = TREES[name]
    manual, data_dir = str(tmp_path / "manual"), str(tmp_path / "tfds")
    expected = make(manual, np.random.default_rng(0))
    path = prepare.prepare(name, manual, data_dir, progress=False)
    assert path == os.path.join(data_dir, f"dakpn_{name}", "1.0.0")
    for split in module.SPLITS:
        _check(sources.PreparedSource(module, data_dir, split), expected[split])
        _check(sources.DirectSource(module, manual, split), expected[split])
        keys = [ex["key"].decode() for ex in prepare.open_prepared(data_dir, name, split)]
        assert keys == [k for k, _, _ in expected[split]]  # listing order kept
    assert "tensorflow" not in sys.modules  # TFDS without TensorFlow


def test_make_source_real_splits_protocols_and_resize(tmp_path):
    rng = np.random.default_rng(2)
    syn = make_synthia(str(tmp_path / "synthia"), rng)
    real = make_cityscapes(str(tmp_path / "cityscapes"), rng)
    data_dir = str(tmp_path / "tfds")
    prepare.prepare("cityscapes", str(tmp_path / "cityscapes"), data_dir, progress=False)
    cfg = sources.preset("synthia_cityscapes", data_dir)
    cfg.synthetic_dir = str(
        tmp_path / "synthia"
    )  # direct folder for one side, prepared for the other
    cfg.real_size = None
    cfg.num_real_labelled = 3
    kept = cityscapes_labels.PROTOCOLS["synthia16"]
    to16 = lambda lab: _ref_map(lab, lambda t: kept.index(t) if t in kept else 255)
    assert sources.num_classes(cfg) == 16
    names = sources.class_names(cfg)
    assert len(names) == 16 and names[3] == "wall" and names[9] == "sky" and "terrain" not in names
    _check(
        sources.make_source(cfg, "synthetic-train"), [(k, im, to16(l)) for k, im, l in syn["train"]]
    )
    _check(
        sources.make_source(cfg, "real-val"), [(k, im, to16(l)) for k, im, l in real["validation"]]
    )
    labelled = sources.make_source(cfg, "real-train-labelled")  # indices floor(i * 4 / 3) = 0, 1, 2
    _check(labelled, [(k, im, to16(l)) for k, im, l in real["train"][:3]])
    unlabelled = sources.make_source(cfg, "real-train")
    assert len(unlabelled) == 4 and set(unlabelled[3]) == {"image"}
    cfg.num_real_labelled = 2  # floor(i * 4 / 2) = 0, 2: spread over the list
    np.testing.assert_array_equal(
        sources.make_source(cfg, "real-train-labelled")[1]["image"], real["train"][2][1]
    )
    cfg.real_size, cfg.real_val_size = (4, 8), (3, 5)
    assert sources.make_source(cfg, "real-train")[0]["image"].shape == (4, 8, 3)
    ex = sources.make_source(cfg, "real-val")[0]
    _, image, label = real["validation"][0]
    np.testing.assert_array_equal(
        ex["image"], np.asarray(Image.fromarray(image).resize((5, 3), Image.BILINEAR))
    )
    np.testing.assert_array_equal(
        ex["label"], np.asarray(Image.fromarray(to16(label)).resize((5, 3), Image.NEAREST))
    )
    # Sources cross process boundaries in grain workers: they must pickle.
    for split in ("real-val", "synthetic-train"):
        src = sources.make_source(cfg, split)
        np.testing.assert_array_equal(pickle.loads(pickle.dumps(src))[1]["label"], src[1]["label"])
    from dakpn_jax.data import pipeline

    batch = next(
        iter(
            pipeline.make_pipeline(
                sources.make_source(cfg, "real-val"), batch_size=2, seed=0, crop_size=(2, 4)
            )
        )
    )
    assert batch["image"].shape == (2, 2, 4, 3) and batch["image"].dtype == np.float32
    assert batch["label"].shape == (2, 2, 4) and batch["label"].dtype == np.uint8
    with pytest.raises(ValueError, match="paired-eval"):
        sources.make_source(cfg, "paired-eval")
    cfg.num_real_labelled = 5
    with pytest.raises(ValueError, match="num_real_labelled"):
        sources.make_source(cfg, "real-train-labelled")
    cfg.label_protocol = "faces18"
    with pytest.raises(ValueError, match="label_protocol"):
        sources.make_source(cfg, "real-val")
    with pytest.raises(ValueError, match="data_dir"):
        sources.make_source(sources.preset("gta5_cityscapes", str(tmp_path / "empty")), "real-val")


def test_faces_protocol_ignores_background(tmp_path):
    rng = np.random.default_rng(3)
    syn = make_face_synthetics(str(tmp_path / "fs"), rng)
    make_celebamask_hq(str(tmp_path / "cm"), rng)
    cfg = sources.preset("faces")
    cfg.update(
        synthetic_dir=str(tmp_path / "fs"),
        real_dir=str(tmp_path / "cm"),
        synthetic_size=None,
        real_size=None,
    )
    assert sources.num_classes(cfg) == 18
    assert sources.class_names(cfg)[0] == "skin" and sources.class_names(cfg)[-1] == "cloth"
    ex = sources.make_source(cfg, "synthetic-train")[0]
    ref = syn["train"][0][2]
    np.testing.assert_array_equal(
        ex["label"], np.where(ref == 0, 255, np.where(ref == 255, 255, ref - 1))
    )


# --------------------------------------------------------------------------- bad input


def _corrupt(name, manual, case):
    """Applies one defect to a fresh tree; returns the file name the error must mention."""
    files = {
        "gta5": ("images/00003.png", "labels/00003.png"),
        "cityscapes": (
            "leftImg8bit/train/bochum/bochum_000000_000020_leftImg8bit.png",
            "gtFine/train/bochum/bochum_000000_000020_gtFine_labelIds.png",
        ),
        "synthia": ("RGB/0000001.png", "GT/LABELS/0000001.png"),
        "face_synthetics": ("000001.png", "000001_seg.png"),
        "celebamask_hq": ("CelebA-HQ-img/3.jpg", None),
    }[name]
    image, label = (os.path.join(manual, f) if f else None for f in files)
    if case == "missing_label":
        if name == "celebamask_hq":
            for f in os.listdir(f"{manual}/CelebAMask-HQ-mask-anno/0"):
                if f.startswith("00003_"):
                    os.remove(f"{manual}/CelebAMask-HQ-mask-anno/0/{f}")
            return "00003_"
        os.remove(label)
        return os.path.basename(label)
    if case == "missing_image":
        os.remove(image)
        return os.path.basename(image)
    if case == "truncated":
        data = open(image, "rb").read()
        open(image, "wb").write(data[: len(data) // 2])
        return os.path.basename(image)
    if case == "truncated_label":
        if name == "celebamask_hq":
            label = (
                f"{manual}/CelebAMask-HQ-mask-anno/0/"
                + sorted(
                    f
                    for f in os.listdir(f"{manual}/CelebAMask-HQ-mask-anno/0")
                    if f.startswith("00003_")
                )[0]
            )
        data = open(label, "rb").read()
        open(label, "wb").write(data[: len(data) // 2])
        return os.path.basename(label)
    if case == "size_mismatch":
        Image.fromarray(np.zeros((H + 1 if name != "celebamask_hq" else 9, W, 3), np.uint8)).save(
            image, format="JPEG" if image.endswith(".jpg") else "PNG"
        )
        return "00003_" if name == "celebamask_hq" else os.path.basename(label)
    if case == "unknown_id":
        if name == "synthia":
            png16(label, np.full((H, W, 3), 300, np.uint16))
        elif name == "celebamask_hq":
            return None
        else:
            _save(label, np.full((H, W), 200, np.uint8), "L")
        return os.path.basename(label)
    raise AssertionError(case)


CASES = (
    "missing_label",
    "missing_image",
    "truncated",
    "truncated_label",
    "size_mismatch",
    "unknown_id",
)


@pytest.mark.parametrize("name", sorted(TREES))
def test_bad_input_raises_naming_the_file(tmp_path, name):
    module, make = TREES[name]
    for case in CASES:
        manual = str(tmp_path / case)
        make(manual, np.random.default_rng(0))
        needle = _corrupt(name, manual, case)
        if needle is None:
            continue  # CelebAMask-HQ masks are binary: any value is a valid mask
        split = "train"
        with pytest.raises(ValueError, match=needle):
            source = sources.DirectSource(module, manual, split)
            for i in range(len(source)):
                source[i]
    with pytest.raises(ValueError, match="folder"):
        prepare.prepare(
            name, str(tmp_path / "does_not_exist"), str(tmp_path / "tfds"), progress=False
        )
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="is missing"):
        module.list_examples(
            str(empty / "sub") if name == "face_synthetics" else str(empty), "train"
        )


def test_prepare_raises_or_skips_and_reports(tmp_path, monkeypatch):
    monkeypatch.setattr(
        prepare, "EXAMPLES_PER_SHARD", 1
    )  # several shards, one left empty by the skip
    manual = str(tmp_path / "gta5")
    expected = make_gta5(manual, np.random.default_rng(4))
    _corrupt("gta5", manual, "truncated")  # frame 00003 (train)
    with pytest.raises(ValueError, match="00003.png"):
        prepare.prepare("gta5", manual, str(tmp_path / "a"), progress=False)
    assert not prepare.is_prepared(
        str(tmp_path / "a"), "gta5"
    )  # a failed run leaves nothing usable
    path = prepare.prepare("gta5", manual, str(tmp_path / "b"), on_error="skip", progress=False)
    _check(sources.PreparedSource(gta5, str(tmp_path / "b"), "train"), expected["train"][:1])
    _check(
        sources.PreparedSource(gta5, str(tmp_path / "b"), "validation+test"),
        expected["validation"] + expected["test"],
    )
    skipped = json.load(open(os.path.join(path, "skipped.json")))
    assert [(s["split"], s["key"]) for s in skipped] == [("train", "00003")]
    assert "truncated" in skipped[0]["reason"]


def test_prepare_cli(tmp_path, capsys):
    manual = str(tmp_path / "fs")
    make_face_synthetics(manual, np.random.default_rng(5))
    prepare.main(
        [
            "--dataset=face_synthetics",
            f"--manual_dir={manual}",
            f"--data_dir={tmp_path / 'tfds'}",
            "--num_workers=2",
        ]
    )  # worker processes: same records, same order
    assert "'train': 3" in capsys.readouterr().out
    prepare.prepare("face_synthetics", manual, str(tmp_path / "serial"), progress=False)
    assert len(sources.PreparedSource(face_synthetics, str(tmp_path / "tfds"), "train")) == 3
    for a, b in zip(
        sources.PreparedSource(face_synthetics, str(tmp_path / "tfds"), "train"),
        sources.PreparedSource(face_synthetics, str(tmp_path / "serial"), "train"),
    ):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])
    with pytest.raises(ValueError, match="not prepared"):
        sources.PreparedSource(gta5, str(tmp_path / "tfds"), "train")


def test_procedural_passthrough():
    from dakpn_jax.data import procedural

    cfg = dict(
        name="procedural",
        seed=3,
        height=32,
        width=64,
        num_synthetic_train=2,
        num_real_train=2,
        num_real_labelled=1,
        num_real_val=2,
        num_paired_eval=1,
    )
    import ml_collections

    cfg = ml_collections.ConfigDict(cfg)
    assert sources.num_classes(cfg) == procedural.NUM_CLASSES == 19
    ours, theirs = (
        sources.make_source(cfg, "real-val")[1],
        procedural.make_source("real-val", cfg)[1],
    )
    assert set(ours) == set(theirs) == {"image", "label"}
    for k in ours:
        np.testing.assert_array_equal(ours[k], theirs[k])
    with pytest.raises(ValueError, match="split='nope'"):
        sources.make_source(cfg, "nope")


# --------------------------------------------------------------------------- direct reads: the scan


def _gta5_config(synthetic_dir, on_error="raise"):
    """configs/segmentation.py:tiny on GTA5 read straight from its folder (no prepare)."""
    import importlib.util

    path = os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "segmentation.py"
    )
    spec = importlib.util.spec_from_file_location("_seg_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config("tiny")
    c.data = sources.preset("gta5_cityscapes")
    c.data.update(synthetic_dir=synthetic_dir, real_size=None, on_error=on_error)
    c.data.train_sources = ({"kind": "split", "split": "synthetic-train"},)
    c.data.eval_split = "real-val"
    c.crop_size, c.batch_size, c.num_train_steps = (4, 8), 8, 2
    c.eval_every_steps, c.checkpoint_every_steps, c.log_every_steps = 0, 2, 1
    return c


def test_direct_read_scan_finds_a_mismatched_gta5_frame_before_the_first_step(
    tmp_path, monkeypatch
):
    """A GTA5 frame whose label size differs from its image (the real set has such frames), read
    straight from the official layout: on_error=raise stops before any step, naming the file;
    on_error=skip drops exactly that frame, like prepare --on_error=skip, with identical pixels."""
    from dakpn_jax.training import trainer

    manual = str(tmp_path / "gta5")
    expected = make_gta5(manual, np.random.default_rng(6))
    needle = _corrupt(
        "gta5", manual, "size_mismatch"
    )  # image 00003 is now (H + 1, W); its label (H, W)
    assert needle == "00003.png"
    reads = []
    monkeypatch.setattr(
        base, "read_image", lambda p, _orig=base.read_image: reads.append(p) or _orig(p)
    )
    cfg = _gta5_config(manual)
    with pytest.raises(
        ValueError, match=r"labels/00003\.png: label size \(6, 10\).*\(7, 10\).*before training"
    ):
        sources.make_source(cfg.data, "synthetic-train")
    assert reads == []  # found from the headers, before anything was decoded
    workdir = tmp_path / "run"
    with pytest.raises(ValueError, match="00003.png"):
        trainer.train_and_evaluate(cfg, str(workdir))
    assert not (workdir / "checkpoints").exists() or not os.listdir(
        workdir / "checkpoints"
    )  # no step ran

    # Skip: the same frames as prepare --on_error=skip keeps, pixel for pixel, in the same order.
    src = sources.make_source(_gta5_config(manual, "skip").data, "synthetic-train")
    direct = src._base
    assert direct.keys == [
        "00001",
        "00002",
        "00004",
    ]  # train [1, 3] + validation [2] + test [4], 3 dropped
    assert [(s, k) for s, k, _ in direct.skipped] == [("train", "00003")]
    prepared = tmp_path / "tfds"
    prepare.prepare("gta5", manual, str(prepared), on_error="skip", progress=False)
    skipped = json.load(
        open(os.path.join(prepare.dataset_dir(str(prepared), "gta5"), "skipped.json"))
    )
    assert [(s["split"], s["key"]) for s in skipped] == [("train", "00003")]
    from_prepared = sources.PreparedSource(gta5, str(prepared), "train+validation+test")
    assert len(src) == len(from_prepared) == 3
    want = [
        e for e in expected["train"] + expected["validation"] + expected["test"] if e[0] != "00003"
    ]
    lut = cityscapes_labels.protocol_lut(cityscapes_labels.PROTOCOLS["cityscapes19"])
    for i, (key, image, label) in enumerate(want):
        np.testing.assert_array_equal(src[i]["image"], image)
        np.testing.assert_array_equal(src[i]["label"], lut[label])
        np.testing.assert_array_equal(from_prepared[i]["image"], image)
        np.testing.assert_array_equal(from_prepared[i]["label"], label)
    # Every process builds the same list (the scan is deterministic): a fresh scan agrees.
    scan._SCAN_CACHE.clear()
    again = sources.make_source(_gta5_config(manual, "skip").data, "synthetic-train")
    assert again._base.keys == direct.keys


def test_direct_read_scan_catches_truncation_and_orphans(tmp_path):
    """Header scan: a PNG cut short (its IEND chunk gone) and an image without its label are found
    at construction, with the on_error policy."""
    for case, needle in (
        ("truncated", "00003.png"),
        ("missing_label", "00003.png"),
        ("missing_image", "00003.png"),
    ):
        manual = str(tmp_path / case)
        make_gta5(manual, np.random.default_rng(7))
        _corrupt("gta5", manual, case)
        with pytest.raises(ValueError, match=needle):
            sources.DirectSource(gta5, manual, "train")
        src = sources.DirectSource(gta5, manual, "train", on_error="skip")
        assert src.keys == ["00001"] and len(src.skipped) == 1
    with pytest.raises(ValueError, match="on_error"):
        sources.DirectSource(gta5, manual, "train", on_error="ignore")
