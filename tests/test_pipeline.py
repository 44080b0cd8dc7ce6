"""The grain input pipeline: order, sharding, augmentation alignment, state save/restore."""

import gc
import json

import numpy as np
import pytest

from dakpn_jax.data import pipeline
from dakpn_jax.data import procedural as P

H, W = 12, 20


def _label_of(y, x):
    """An asymmetric label pattern, so a crop from the wrong place or a flip shows up."""
    return (3 * y + 7 * x) % 19


class CodedSource:
    """Example i: image colours encode (label, row, column); label = _label_of(row, column) + i."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        y, x = np.mgrid[:H, :W]
        label = ((_label_of(y, x) + i) % 19).astype(np.uint8)
        image = np.stack([label * 13, y * 10, x * 10], -1).astype(np.uint8)
        return {"image": image, "label": label, "index": np.int32(i)}


def _take(it, n):
    return [next(it) for _ in range(n)]


def _indices(batches):
    return [b["index"].tolist() for b in batches]


@pytest.mark.smoke
def test_restoring_state_reproduces_following_batches():
    src = CodedSource(10)
    it = pipeline.make_pipeline(src, batch_size=3, seed=7, crop_size=(8, 12), random_flip=True)
    _take(it, 2)
    state = json.loads(json.dumps(it.get_state()))  # JSON round trip, as in a checkpoint
    expected = _take(it, 6)  # crosses epoch boundaries (10 examples, 3 per batch)
    # Restore into the same iterator and into a freshly built one.
    it.set_state(state)
    fresh = pipeline.make_pipeline(src, batch_size=3, seed=7, crop_size=(8, 12), random_flip=True)
    fresh.set_state(state)
    for other in (it, fresh):
        for want, got in zip(expected, _take(other, 6)):
            assert want.keys() == got.keys()
            for k in want:
                np.testing.assert_array_equal(want[k], got[k])
    # A different seed gives another stream.
    other = pipeline.make_pipeline(src, batch_size=3, seed=8, crop_size=(8, 12), random_flip=True)
    assert _indices(_take(other, 4)) != _indices(
        _take(
            pipeline.make_pipeline(src, batch_size=3, seed=7, crop_size=(8, 12), random_flip=True),
            4,
        )
    )


@pytest.mark.smoke
def test_augmentation_never_misaligns_image_and_label():
    it = pipeline.make_pipeline(
        CodedSource(16), batch_size=4, seed=1, crop_size=(7, 9), random_flip=True
    )
    offsets, flips = set(), set()
    for batch in _take(it, 12):
        img, lab = batch["image"], batch["label"]
        assert img.dtype == np.float32 and img.shape == (4, 7, 9, 3) and lab.dtype == np.uint8
        assert lab.shape == (4, 7, 9)
        code = np.round(img * 255).astype(np.int64)
        np.testing.assert_array_equal(code[..., 0], lab.astype(np.int64) * 13)  # colour <-> label
        y, x = code[..., 1] // 10, code[..., 2] // 10  # where each pixel came from
        expect = (_label_of(y, x) + batch["index"][:, None, None]) % 19
        np.testing.assert_array_equal(lab, expect)
        # Crops are contiguous windows, flipped or not, with one geometry per example.
        assert (np.diff(y, axis=1) == 1).all() and (np.abs(np.diff(x, axis=2)) == 1).all()
        for b in range(4):
            step = int(np.diff(x[b], axis=1)[0, 0])
            flips.add(step == -1)
            offsets.add((int(y[b].min()), int(x[b].min())))
    assert flips == {True, False}
    assert len(offsets) > 10  # crop positions vary


def test_float_images_are_uint8_over_255_without_augmentation():
    src = P.make_source("paired-eval", P.ProceduralConfig(height=32, width=64, num_paired_eval=4))
    batch = next(pipeline.make_pipeline(src, batch_size=2, seed=0, shuffle=False))
    for k in ("synthetic", "real"):
        assert batch[k].dtype == np.float32 and batch[k].shape == (2, 32, 64, 3)
        np.testing.assert_array_equal(batch[k][1], src[1][k].astype(np.float32) / 255)
    np.testing.assert_array_equal(batch["label"][0], src[0]["label"])


def test_epochs_are_reshuffled_permutations():
    n = 12
    it = pipeline.make_pipeline(CodedSource(n), batch_size=4, seed=3, num_epochs=3)
    order = sum(_indices(it), [])  # a finite iterator ends
    assert len(order) == 3 * n
    epochs = [order[k * n : (k + 1) * n] for k in range(3)]
    for e in epochs:
        assert sorted(e) == list(range(n))
    assert epochs[0] != epochs[1] and epochs[1] != epochs[2] and epochs[0] != list(range(n))
    plain = pipeline.make_pipeline(
        CodedSource(n), batch_size=4, seed=3, shuffle=False, num_epochs=1
    )
    assert sum(_indices(plain), []) == list(range(n))
    # drop_remainder: 10 examples in batches of 4 -> 2 batches, or 3 with a short last one.
    assert [
        len(b["index"])
        for b in pipeline.make_pipeline(CodedSource(10), batch_size=4, seed=0, num_epochs=1)
    ] == [4, 4]
    assert [
        len(b["index"])
        for b in pipeline.make_pipeline(
            CodedSource(10), batch_size=4, seed=0, num_epochs=1, drop_remainder=False
        )
    ] == [4, 4, 2]


def test_shards_split_the_global_stream():
    """Two processes with batch B see, step by step, exactly the global batch of one process with 2B,
    row for row: process k holds rows [k*B, (k+1)*B), the layout make_array_from_process_local_data
    stitches, so per-row randomness in a train step (e.g. tile positions) matches across process counts."""
    kw = dict(seed=5, crop_size=(6, 6), random_flip=True)
    whole = pipeline.make_pipeline(CodedSource(14), batch_size=4, **kw)
    parts = [
        pipeline.make_pipeline(CodedSource(14), batch_size=2, shard_index=k, shard_count=2, **kw)
        for k in range(2)
    ]
    for _ in range(5):
        g = next(whole)
        p0, p1 = next(parts[0]), next(parts[1])
        assert g["index"].tolist() == p0["index"].tolist() + p1["index"].tolist()
        # ... including the augmentation, which is keyed by the global position.
        np.testing.assert_array_equal(g["image"], np.concatenate([p0["image"], p1["image"]]))
    # Finite epochs: equal shard lengths even when the count does not divide.
    lens = [
        len(
            list(
                pipeline.make_pipeline(
                    CodedSource(7), batch_size=1, seed=0, shard_index=k, shard_count=2, num_epochs=1
                )
            )
        )
        for k in range(2)
    ]
    assert lens == [3, 3]


@pytest.mark.slow
def test_worker_processes_match_threads():
    kw = dict(batch_size=2, seed=4, crop_size=(8, 8), random_flip=True)
    want = _take(pipeline.make_pipeline(CodedSource(6), **kw), 3)
    it = pipeline.make_pipeline(CodedSource(6), worker_count=1, **kw)
    try:
        got = _take(it, 3)
        json.dumps(it.get_state())
    finally:
        del it
        gc.collect()
    for a, b in zip(want, got):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(batch_size=0), "batch_size"),
        (dict(seed=-1), "seed"),
        (dict(seed=2**32), "seed"),
        (dict(shard_index=2, shard_count=2), "shard_index"),
        (dict(shard_count=0), "shard_count"),
        (dict(num_epochs=0), "num_epochs"),
        (dict(crop_size=(13, 4)), "crop_size"),
        (dict(crop_size=(0, 4)), "crop_size"),
        (dict(crop_size="big"), "crop_size"),
        (dict(worker_count=-1), "worker_count"),
    ],
)
def test_bad_arguments_name_the_field(kwargs, field):
    args = dict(batch_size=2, seed=0)
    args.update(kwargs)
    with pytest.raises(ValueError, match=field):
        pipeline.make_pipeline(CodedSource(4), **args)


def test_empty_source_is_an_error():
    with pytest.raises(ValueError, match="source"):
        pipeline.make_pipeline(CodedSource(0), batch_size=1, seed=0)
