"""The render-once cache of the procedural benchmark: exact, keyed by content, atomic, clear on bad files."""

import glob
import os

import numpy as np
import pytest

from dakpn_jax.data import procedural, procedural_cache, sources

SMALL = dict(
    height=32,
    width=64,
    num_synthetic_train=3,
    num_real_train=3,
    num_real_labelled=2,
    num_real_val=2,
    num_paired_eval=2,
)


def _assert_same(a, b):
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert a[k].tobytes() == b[k].tobytes(), k  # byte for byte
        assert a[k].flags.c_contiguous, k


@pytest.mark.parametrize("split", procedural.SPLITS)
def test_cached_examples_equal_rendered_ones_byte_for_byte(tmp_path, split):
    config = procedural.ProceduralConfig(seed=3, **SMALL)
    cached = procedural_cache.CachedProceduralSource(split, config, str(tmp_path))
    direct = procedural.make_source(split, config)
    assert len(cached) == len(direct)
    for i in range(len(direct)):
        assert not cached.is_cached(i)
        _assert_same(cached[i], direct[i])  # rendered and stored
        assert cached.is_cached(i)
        _assert_same(cached[i], direct[i])  # read back from disk
    # A fresh source over the same directory reads the stored files (and they are complete npz files).
    again = procedural_cache.CachedProceduralSource(split, config, str(tmp_path))
    _assert_same(again[len(direct) - 1], direct[len(direct) - 1])
    assert not glob.glob(os.path.join(str(tmp_path), "**", "*.tmp"), recursive=True)


def test_content_changes_change_the_key_and_lengths_do_not(tmp_path):
    base = procedural.ProceduralConfig(**SMALL)
    key = procedural_cache.cache_key(base)
    for change in (dict(seed=1), dict(height=48), dict(width=96), dict(classes=(0, 2, 10))):
        other = procedural.ProceduralConfig(**{**SMALL, **change})
        assert procedural_cache.cache_key(other) != key, change
    assert (
        procedural_cache.cache_key(procedural.ProceduralConfig(**{**SMALL, "num_real_val": 7}))
        == key
    )
    # Filled with seed 0, a seed-1 source never serves seed-0 frames.
    s0 = procedural_cache.CachedProceduralSource("real-val", base, str(tmp_path))
    s0[0]
    cfg1 = procedural.ProceduralConfig(**{**SMALL, "seed": 1})
    s1 = procedural_cache.CachedProceduralSource("real-val", cfg1, str(tmp_path))
    assert not s1.is_cached(0)
    _assert_same(s1[0], procedural.make_source("real-val", cfg1)[0])
    assert not np.array_equal(s1[0]["image"], s0[0]["image"])


def test_stale_tmp_files_are_ignored_and_bad_files_raise(tmp_path):
    config = procedural.ProceduralConfig(**SMALL)
    src = procedural_cache.CachedProceduralSource("synthetic-train", config, str(tmp_path))
    # A crash mid-write leaves only a temporary file: the example counts as not cached and renders.
    with open(src.path(0) + ".abc.tmp", "wb") as f:
        f.write(b"partial")
    assert not src.is_cached(0)
    _assert_same(src[0], procedural.make_source("synthetic-train", config)[0])
    # A truncated example file is reported by name, not returned.
    with open(src.path(1), "wb") as f:
        f.write(b"\x93NUMPY truncated")
    with pytest.raises(ValueError, match="0000001.npy"):
        src[1]
    # A file of another frame size too.
    np.save(src.path(2), np.zeros(8 * 8 * 4, np.uint8))
    with pytest.raises(ValueError, match="0000002.npy.*32x64"):
        src[2]
    with pytest.raises(IndexError):
        src[3]
    with pytest.raises(ValueError, match="cache_dir"):
        procedural_cache.CachedProceduralSource("synthetic-train", config, "")


def test_fill_and_the_sources_dispatch(tmp_path):
    data = {"name": "procedural", "cache_dir": str(tmp_path), **SMALL}
    source = sources.make_source(data, "synthetic-train")
    assert isinstance(source, procedural_cache.CachedProceduralSource)
    assert procedural_cache.fill("synthetic-train", data, str(tmp_path), num_workers=1) == 3
    assert all(source.is_cached(i) for i in range(3))
    direct = sources.make_source({"name": "procedural", **SMALL}, "synthetic-train")
    assert isinstance(direct, procedural.ProceduralSource)
    _assert_same(source[2], direct[2])
