"""A render-once disk cache of the procedural benchmark, so a GPU run is not bound by the Python renderer.

The procedural renderer runs in NumPy on one core, slower than a GPU consumes batches (rates:
docs/RESULTS.md, "Data"). :class:`CachedProceduralSource` is a drop-in random-access source for one split:
``source[i]`` returns exactly ``ProceduralSource(split, config)[i]`` (the same uint8 arrays, byte for
byte), reading ``<cache_dir>/<key>/<split>/<i>.npy`` when it exists and rendering + storing it
otherwise; :func:`fill` pre-renders a split with several processes.

Format: one flat uint8 ``.npy`` per example holding the example's arrays raveled one after another
in sorted key order (:data:`FIELDS`); reading returns C-contiguous views into that one buffer. (An
``.npz`` read an order of magnitude slower than a raw ``.npy``, docs/RESULTS.md "Data"; splitting a
(H, W, 4) array into image and label copies was slower still.)

Safety:

- Key. ``<key>`` is a SHA-256 over everything that fixes an example's content: the renderer version
  :data:`RENDER_VERSION` and the config fields ``seed``, ``height``, ``width`` and ``classes``
  (example i depends only on (seed, split, i) and these). A change of any of them reads and writes a
  different directory, so a cache can never serve frames of another config. Split lengths
  (``num_*``) do not change any example, so they share the cache. Bump :data:`RENDER_VERSION`
  whenever the renderer's output changes.
- Atomic writes. Each example is written to a unique temporary file in the same directory and moved
  into place with ``os.replace``; readers see either no file or a complete one, so concurrent
  workers and a crash mid-write are harmless (a crash can leave a ``*.tmp`` file, which is never
  read; the cache never deletes files, so remove those by hand).
- A file that does not load (or holds other keys/shapes than the renderer gives) raises a
  ``ValueError`` naming it, rather than returning garbage; delete the file (or the key directory)
  to re-render. The cache never deletes anything itself.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from typing import Any

import numpy as np

from dakpn_jax.data import procedural

RENDER_VERSION = 1
"""Bump when the procedural renderer's output changes: it is part of every cache key."""

_CONTENT_FIELDS = ("seed", "height", "width", "classes")

FIELDS = {
    "synthetic-train": ("image", "label"),
    "real-train": ("image",),
    "real-train-labelled": ("image", "label"),
    "real-val": ("image", "label"),
    "paired-eval": ("label", "real", "synthetic"),
}
"""The arrays of an example per split, in storage order (uint8: labels (H, W), images (H, W, 3))."""


def cache_key(config: Any) -> str:
    """The 16-hex-digit key of the examples ``config`` renders (module docstring)."""
    c = procedural.ProceduralConfig.from_any(config)
    content = {"render_version": RENDER_VERSION, **{f: getattr(c, f) for f in _CONTENT_FIELDS}}
    content["classes"] = list(content["classes"])
    blob = json.dumps(content, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _atomic_write(path: str, write) -> None:
    directory = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


class CachedProceduralSource:
    """``ProceduralSource(split, config)`` backed by a disk cache under ``cache_dir`` (module docstring)."""

    def __init__(self, split: str, config: Any, cache_dir: str):
        if not cache_dir:
            raise ValueError("cache_dir: expected a directory path, got an empty value")
        self._source = procedural.make_source(split, config)
        self.split = split
        self.config = self._source.config
        self.key = cache_key(self.config)
        root = os.path.join(os.path.abspath(os.path.expanduser(cache_dir)), self.key)
        self.directory = os.path.join(root, split)
        try:
            os.makedirs(self.directory, exist_ok=True)
        except OSError as e:
            raise ValueError(
                f"cache_dir={cache_dir!r}: cannot create {self.directory!r}: {e}"
            ) from e
        info = os.path.join(root, "config.json")
        if not os.path.exists(info):  # for humans: what this key renders
            c = self.config
            text = json.dumps(
                {
                    "render_version": RENDER_VERSION,
                    **{
                        f: list(c.classes) if f == "classes" else getattr(c, f)
                        for f in _CONTENT_FIELDS
                    },
                },
                indent=1,
            )
            _atomic_write(info, lambda f: f.write(text.encode()))

    def __len__(self) -> int:
        return len(self._source)

    def __repr__(self):
        return f"CachedProceduralSource({self._source!r}, dir={self.directory!r})"

    def path(self, index: int) -> str:
        return os.path.join(self.directory, f"{int(index):07d}.npy")

    def _shapes(self) -> list[tuple[str, tuple[int, ...]]]:
        h, w = self.config.height, self.config.width
        return [(k, (h, w) if k == "label" else (h, w, 3)) for k in FIELDS[self.split]]

    def __getitem__(self, index) -> dict[str, np.ndarray]:
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(
                f"index {index} out of range for split {self.split!r} of length {len(self)}"
            )
        path = self.path(index)
        if os.path.exists(path):
            return self._load(path)
        example = self._source[index]
        shapes = self._shapes()
        if sorted(example) != sorted(k for k, _ in shapes) or any(
            example[k].dtype != np.uint8 or example[k].shape != shape for k, shape in shapes
        ):
            raise ValueError(
                f"procedural cache: the renderer returned "
                f"{ {k: (a.shape, str(a.dtype)) for k, a in example.items()} } for {self.split!r}, "
                f"expected uint8 {dict(shapes)}; update FIELDS and RENDER_VERSION"
            )
        flat = np.concatenate([example[k].ravel() for k, _ in shapes])
        _atomic_write(path, lambda f: np.save(f, flat, allow_pickle=False))
        return example

    def _load(self, path: str) -> dict[str, np.ndarray]:
        shapes = self._shapes()
        expected = sum(int(np.prod(shape)) for _, shape in shapes)
        try:
            flat = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:
            raise ValueError(
                f"procedural cache: cannot read {path!r} ({e}); delete it to re-render"
            ) from e
        if flat.dtype != np.uint8 or flat.shape != (expected,):
            raise ValueError(
                f"procedural cache: {path!r} holds {flat.dtype} {flat.shape}, expected uint8 "
                f"({expected},) = {dict(shapes)} for {self.config.height}x{self.config.width} "
                f"frames; delete it to re-render"
            )
        example, start = {}, 0
        for k, shape in shapes:
            n = int(np.prod(shape))
            example[k] = flat[start : start + n].reshape(shape)
            start += n
        return example

    def is_cached(self, index: int) -> bool:
        return os.path.exists(self.path(index))


def _fill_range(args):
    split, config, cache_dir, lo, hi = args
    source = CachedProceduralSource(split, config, cache_dir)
    for i in range(lo, hi):
        if not source.is_cached(i):
            source[i]  # pylint: disable=pointless-statement
    return hi - lo


def fill(
    split: str, config: Any, cache_dir: str, *, num_workers: int = 1, count: int | None = None
) -> int:
    """Renders the first ``count`` (default: all) examples of ``split`` into the cache; returns the count.

    Workers are processes (the renderer holds the GIL); each renders a contiguous range and skips
    what is cached already, so an interrupted fill resumes.
    """
    source = CachedProceduralSource(split, config, cache_dir)
    n = len(source) if count is None else min(int(count), len(source))
    if num_workers <= 1 or n < 2:
        return _fill_range((split, source.config, cache_dir, 0, n))
    import multiprocessing  # pylint: disable=import-outside-toplevel

    step = -(-n // num_workers)
    ranges = [(split, source.config, cache_dir, lo, min(lo + step, n)) for lo in range(0, n, step)]
    with multiprocessing.get_context("spawn").Pool(len(ranges)) as pool:
        return sum(pool.map(_fill_range, ranges))
