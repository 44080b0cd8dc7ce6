"""Issue 15: the authors' (``paper``) and the ``clean`` presets, the l_/r_ flip swap, the
paper-compatible mIoU. References: hand-made label maps and confusion matrices."""
import importlib.util
import os

import jax
import numpy as np
import pytest

from dakpn_jax.data import celebamask_hq, cityscapes_labels, pipeline, sources
from dakpn_jax.evaluation import metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(name, arg=None):
    spec = importlib.util.spec_from_file_location(f"_cfg_{name}", os.path.join(ROOT, "configs", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


# ----------------------------------------------------------------------------- flips

class _ListSource:
    def __init__(self, items, flip_label_map=None):
        self.items, self.flip_label_map = items, flip_label_map

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return dict(self.items[i])


def _flipped_batches(source, n, **kw):
    """(original items, pipeline outputs) of a seeded unshuffled flip-only pipeline."""
    it = pipeline.make_pipeline(source, batch_size=1, seed=0, shuffle=False, num_epochs=1, random_flip=True, **kw)
    return [next(it) for _ in range(n)]


def test_face_flip_swaps_every_left_right_pair():
    names = sources.class_names(sources.preset("faces"))  # faces18: the 18 CelebAMask-HQ parts
    idx = {n: i for i, n in enumerate(names)}
    pairs = [("l_eye", "r_eye"), ("l_brow", "r_brow"), ("l_ear", "r_ear")]
    rng = np.random.default_rng(0)
    H, W = 6, 10
    items = []
    for _ in range(8):
        label = rng.integers(0, len(names), (H, W)).astype(np.uint8)
        label[0, 0] = 255
        items.append({"image": rng.integers(0, 256, (H, W, 3), dtype=np.uint8), "label": label})
    lut = pipeline.flip_label_map(names)
    out = _flipped_batches(_ListSource(items, lut), len(items))
    flipped = 0
    for item, b in zip(items, out):
        img, lab = np.asarray(b["image"][0]), np.asarray(b["label"][0])
        if np.allclose(img, item["image"] / 255.0):
            np.testing.assert_array_equal(lab, item["label"])  # not flipped: unchanged
            continue
        flipped += 1
        np.testing.assert_allclose(img, item["image"][:, ::-1] / 255.0)
        for left, right in pairs:  # pixels that held l_X hold r_X at the mirrored position, and back
            ys, xs = np.nonzero(item["label"] == idx[left])
            assert len(ys) and np.all(lab[ys, W - 1 - xs] == idx[right])
            ys, xs = np.nonzero(item["label"] == idx[right])
            assert np.all(lab[ys, W - 1 - xs] == idx[left])
        sided = {idx[n] for p in pairs for n in p}
        keep = ~np.isin(item["label"][:, ::-1], list(sided))
        np.testing.assert_array_equal(lab[keep], item["label"][:, ::-1][keep])  # l_lip, skin, 255 stay
    assert 0 < flipped < len(items)
    assert lut[idx["l_lip"]] == idx["l_lip"] and lut[idx["u_lip"]] == idx["u_lip"]  # lower lip is no side
    # The same table from the full 19-class list (faces19) swaps its own ids.
    full = pipeline.flip_label_map(celebamask_hq.CLASSES)
    assert full[celebamask_hq.CLASSES.index("l_eye")] == celebamask_hq.CLASSES.index("r_eye")


def test_street_flip_keeps_classes():
    names = cityscapes_labels.TRAIN_NAMES
    np.testing.assert_array_equal(pipeline.flip_label_map(names), np.arange(256))
    rng = np.random.default_rng(1)
    items = [{"image": rng.integers(0, 256, (4, 8, 3), dtype=np.uint8),
              "label": rng.integers(0, 19, (4, 8)).astype(np.uint8)} for _ in range(6)]
    out = _flipped_batches(_ListSource(items), len(items),
                           flip_label_map=pipeline.flip_label_map(names))
    n = 0
    for item, b in zip(items, out):
        if not np.allclose(np.asarray(b["image"][0]), item["image"] / 255.0):
            n += 1
            np.testing.assert_array_equal(np.asarray(b["label"][0]), item["label"][:, ::-1])
    assert n > 0


def test_make_source_sets_the_swap_for_faces_only(tmp_path):
    test_datasets = pytest.importorskip("test_datasets")
    rng = np.random.default_rng(0)
    test_datasets.make_face_synthetics(tmp_path / "fs", rng)
    test_datasets.make_cityscapes(tmp_path / "cs", rng)
    test_datasets.make_gta5(tmp_path / "g", rng)
    faces = sources.preset("faces")
    faces.update(synthetic_dir=str(tmp_path / "fs"), synthetic_size=None)
    lut = sources.make_source(faces, "synthetic-train").flip_label_map
    names = sources.class_names(faces)
    assert lut[names.index("l_eye")] == names.index("r_eye")
    street = sources.preset("gta5_cityscapes")
    street.update(synthetic_dir=str(tmp_path / "g"), real_dir=str(tmp_path / "cs"))
    assert sources.make_source(street, "synthetic-train").flip_label_map is None


# ----------------------------------------------------------------------------- paper mIoU

def test_mean_iou_paper_counts_empty_classes_as_one():
    # 4 classes: class 0 IoU 8 / (8 + 2 + 0) = 0.8; class 1 IoU 5 / (5 + 0 + 2) = 5/7;
    # class 2 never labelled, predicted once -> IoU 0; class 3 empty (union 0).
    conf = np.array([[8, 0, 2, 0],
                     [0, 5, 0, 0],
                     [0, 0, 0, 0],
                     [0, 0, 0, 0]])
    conf[1, 2] = 0
    conf[0, 2] = 1
    conf[0, 1] = 1  # class 0: TP 8, FN 2; class 1: TP 5, FP 1; class 2: FP 1
    iou0, iou1, iou2 = 8 / 10, 5 / 6, 0.0
    clean, _ = metrics.mean_iou(conf)
    paper, per = metrics.mean_iou_paper(conf)
    np.testing.assert_allclose(clean, (iou0 + iou1 + iou2) / 3, rtol=1e-6)
    np.testing.assert_allclose(paper, (iou0 + iou1 + iou2 + 1.0) / 4, rtol=1e-6)
    np.testing.assert_allclose(per, [iou0, iou1, iou2, 1.0], rtol=1e-6)
    # A perfect prediction on 2 of 19 classes: clean 1, paper 1 too; a wrong one on 2 of 19:
    # clean 0, paper 17 / 19 (the inflation the paper's table carries).
    wrong = np.zeros((19, 19), np.int64)
    wrong[0, 1] = wrong[1, 0] = 10
    assert float(metrics.mean_iou(wrong)[0]) == 0.0
    np.testing.assert_allclose(metrics.mean_iou_paper(wrong)[0], 17 / 19, rtol=1e-6)
    np.testing.assert_allclose(metrics.mean_iou_paper(np.zeros((3, 3)))[0], 1.0)
