"""The one grain input pipeline every dataset feeds: source -> shuffle -> augment -> shard -> batch.

    it = make_pipeline(source, batch_size=8, seed=0, crop_size=(64, 128), random_flip=True)
    batch = next(it)             # {"image": float32 (8, 64, 128, 3) in [0, 1], "label": uint8 (8, 64, 128)}
    state = it.get_state()       # JSON-serialisable; goes into the orbax checkpoint
    it.set_state(state)          # the following batches are reproduced exactly

Order of operations, on grain's lazy random-access `MapDataset` (nothing is read that is not used):

  1. shuffle (optional): a seeded permutation of the source per epoch, reshuffled every epoch;
  2. repeat: `num_epochs` passes, or forever with `num_epochs=None`;
  3. augment: random crop and horizontal flip with one `numpy.random.Generator` per element, seeded
     from (seed, position in the global stream), so the same geometry hits every spatial key of the
     example (image, label, paired views) and reruns reproduce it;
  4. batch (`batch_size` per process) on the global stream, then shard: process k takes batches
     k, k + n, k + 2n, ... (n = shard_count), so step t's global batch (the processes' batches
     stacked in process order) is, row for row, the one-process batch of n * batch_size. Shuffling
     and augmenting *before* sharding makes it independent of the process count;
  5. uint8 images -> float32 in [0, 1];
  6. to_iter_dataset with a read thread pool and prefetch buffer, optionally `worker_count` processes.

An example is a dict of arrays. *Spatial* keys are those whose first two dims are the example's
(H, W) (the first spatial key decides); crop and flip act on them, other keys pass through. A uint8
array (H, W, 3) is an image and becomes float32; labels (H, W) stay uint8.

Flips and left/right classes. A horizontal flip turns a left eye into a right eye, so for label
spaces with sided classes (the face parts ``l_eye``/``r_eye``, ``l_brow``/``r_brow``,
``l_ear``/``r_ear``) a flipped label must also swap those ids: ``flip_label_map(class_names)`` is the
(256,) uint8 lookup table doing that (the identity for street scenes: no Cityscapes class has a
side), and ``make_pipeline(..., flip_label_map=lut)`` applies it to every 2-D label key of a flipped
example. Without the argument the source's own ``flip_label_map`` attribute is used
(`dakpn_jax.data.sources.make_source` sets it for the face label space), so every method that
flips gets the swap.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from absl import flags
import grain
import numpy as np

_SEED_LIMIT = 2**32  # grain's shuffle seeds are 32-bit


def flip_label_map(class_names) -> np.ndarray:
    """(256,) uint8 label lookup for a horizontal flip: id k -> k, except that ``l_X`` and ``r_X``
    swap whenever both names exist (``l_lip``, the lower lip, has no ``r_lip`` and stays). Ids beyond
    the class list (255 = ignore) map to themselves."""
    names = [str(n) for n in class_names]
    if len(names) > 255:
        raise ValueError(
            f"flip_label_map: {len(names)} classes do not fit uint8 labels with 255 = ignore"
        )
    lut = np.arange(256, dtype=np.uint8)
    index = {n: i for i, n in enumerate(names)}
    for i, n in enumerate(names):
        if n.startswith("l_") and ("r_" + n[2:]) in index:
            j = index["r_" + n[2:]]
            lut[i], lut[j] = j, i
    return lut


def _positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def _crop_hw(crop_size) -> tuple[int, int] | None:
    if crop_size is None:
        return None
    if isinstance(crop_size, (int, np.integer)) and not isinstance(crop_size, bool):
        crop_size = (crop_size, crop_size)
    try:
        h, w = crop_size
    except (TypeError, ValueError):
        raise ValueError(
            f"crop_size must be an int or (height, width), got {crop_size!r}"
        ) from None
    return _positive_int("crop_size[0]", h), _positive_int("crop_size[1]", w)


def _spatial_keys(example: Mapping[str, np.ndarray]) -> tuple[list[str], tuple[int, int] | None]:
    """The keys sharing the (H, W) of the first array with ndim >= 2, and that (H, W)."""
    hw = None
    keys = []
    for key, value in example.items():
        value = np.asarray(value)
        if value.ndim < 2:
            continue
        if hw is None:
            hw = value.shape[:2]
        if value.shape[:2] == hw:
            keys.append(key)
    return keys, hw


class AugmentFn:
    """Label-consistent random crop + horizontal flip of one example (a picklable grain map).

    Called as `fn(index, example)` by `MapDataset.map_with_index`. The generator is seeded from
    (seed, index), so the crop offset (top, left) ~ U{0..H-h} x U{0..W-w} and the flip coin are the same
    for every spatial key and for every rerun.
    """

    def __init__(
        self,
        seed: int,
        crop_size: tuple[int, int] | None,
        random_flip: bool,
        flip_label_map: np.ndarray | None = None,
    ):
        self.seed = seed
        self.crop_size = crop_size
        self.random_flip = random_flip
        self.flip_label_map = flip_label_map

    def __call__(self, index: int, example: Mapping[str, Any]) -> dict[str, np.ndarray]:
        example = {k: np.asarray(v) for k, v in example.items()}
        keys, hw = _spatial_keys(example)
        if hw is None:
            return example
        rng = np.random.default_rng([self.seed, int(index)])
        rows, cols = slice(None), slice(None)
        if self.crop_size is not None:
            (H, W), (h, w) = hw, self.crop_size
            if h > H or w > W:
                raise ValueError(f"crop_size={self.crop_size} exceeds the example size {(H, W)}")
            top, left = int(rng.integers(0, H - h + 1)), int(rng.integers(0, W - w + 1))
            rows, cols = slice(top, top + h), slice(left, left + w)
        flip = self.random_flip and rng.uniform() < 0.5
        for k in keys:
            window = example[k][rows, cols]
            # Contiguous copies: views would keep the whole frame alive and slow the batch stacking.
            if (
                flip
                and self.flip_label_map is not None
                and window.ndim == 2
                and np.issubdtype(window.dtype, np.integer)
            ):
                window = self.flip_label_map[
                    window
                ]  # sided classes swap (a fresh array: no copy needed)
            example[k] = np.ascontiguousarray(window[:, ::-1] if flip else window)
        return example


def to_float_images(batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """uint8 image arrays (B, H, W, 3) -> float32 in [0, 1]; everything else unchanged."""
    out = {}
    for key, value in batch.items():
        if value.dtype == np.uint8 and value.ndim == 4 and value.shape[-1] == 3:
            value = value.astype(np.float32) / np.float32(255.0)
        out[key] = value
    return out


def make_pipeline(
    source: Sequence[Mapping[str, np.ndarray]],
    *,
    batch_size: int,
    seed: int,
    shard_index: int = 0,
    shard_count: int = 1,
    shuffle: bool = True,
    num_epochs: int | None = None,
    crop_size: int | tuple[int, int] | None = None,
    random_flip: bool = False,
    drop_remainder: bool = True,
    worker_count: int = 0,
    flip_label_map: np.ndarray | None = None,
    num_threads: int = 4,
    prefetch_buffer_size: int = 4,
) -> grain.DatasetIterator:
    """A grain iterator over per-process numpy batches of `source` (see the module docstring).

    Args:
      source: random-access source (`len`, `source[i] -> dict of arrays`), e.g. `procedural.make_source`.
      batch_size: examples per batch *per process* (global batch / process count).
      seed: int in [0, 2**32); fixes the shuffle order and every augmentation.
      shard_index, shard_count: this process's index and the process count.
      shuffle: reshuffle every epoch; otherwise source order.
      num_epochs: passes over the source; None repeats forever.
      crop_size: None, an int or (height, width) of the random crop.
      random_flip: flip examples horizontally with probability 1/2.
      drop_remainder: drop a last incomplete batch (finite `num_epochs` only).
      worker_count: 0 reads in threads of this process; > 0 uses that many worker processes.
      flip_label_map: (256,) uint8 lookup applied to the 2-D label keys of flipped examples (see the
        module docstring); None: the source's ``flip_label_map`` attribute, if any.
      num_threads, prefetch_buffer_size: read threads and batches read ahead.

    Returns:
      A `grain.DatasetIterator` of dicts: uint8 (B, h, w, 3) keys as float32 in [0, 1], the rest as
      stored (labels uint8 (B, h, w)). `get_state()` is JSON-serialisable; `set_state` restores it.
    """
    batch_size = _positive_int("batch_size", batch_size)
    shard_count = _positive_int("shard_count", shard_count)
    if (
        isinstance(seed, bool)
        or not isinstance(seed, (int, np.integer))
        or not 0 <= seed < _SEED_LIMIT
    ):
        raise ValueError(f"seed must be an int in [0, 2**32), got {seed!r}")
    if (
        isinstance(shard_index, bool)
        or not isinstance(shard_index, (int, np.integer))
        or not (0 <= shard_index < shard_count)
    ):
        raise ValueError(
            f"shard_index must be an int in [0, shard_count={shard_count}), got {shard_index!r}"
        )
    if num_epochs is not None:
        num_epochs = _positive_int("num_epochs", num_epochs)
    if (
        isinstance(worker_count, bool)
        or not isinstance(worker_count, (int, np.integer))
        or worker_count < 0
    ):
        raise ValueError(f"worker_count must be a non-negative int, got {worker_count!r}")
    num_threads = _positive_int("num_threads", num_threads)
    prefetch_buffer_size = _positive_int("prefetch_buffer_size", prefetch_buffer_size)
    crop = _crop_hw(crop_size)
    length = len(source)
    if length == 0:
        raise ValueError("source is empty (len(source) == 0)")
    if crop is not None:
        _, hw = _spatial_keys(source[0])
        if hw is not None and (crop[0] > hw[0] or crop[1] > hw[1]):
            raise ValueError(f"crop_size={crop} exceeds the source's example size {tuple(hw)}")

    ds = grain.MapDataset.source(source)
    if shuffle:
        ds = ds.shuffle(seed=int(seed))
    # Reseeding per epoch: the shuffle draws a new permutation each epoch.
    ds = ds.repeat(num_epochs)
    if crop is not None or random_flip:
        lut = (
            flip_label_map
            if flip_label_map is not None
            else getattr(source, "flip_label_map", None)
        )
        if lut is not None:
            lut = np.asarray(lut)
            if lut.shape != (256,) or lut.dtype != np.uint8:
                raise ValueError(
                    f"flip_label_map must be a (256,) uint8 lookup table, got {lut.shape} {lut.dtype}"
                )
        ds = ds.map_with_index(AugmentFn(int(seed), crop, bool(random_flip), lut))
    # Batch, then shard whole batches: global batch t is the concatenation of the processes' batches
    # t in process order, i.e. process k holds rows [k*b, (k+1)*b) of the one-process batch of n*b,
    # exactly the layout `jax.make_array_from_process_local_data` stitches. So a run gives the same
    # global batches, row for row, on any process count.
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    if num_epochs is not None:
        # Equal shard lengths, so no process runs out of batches before the others.
        ds = ds[: len(ds) // shard_count * shard_count]
    ds = ds[shard_index::shard_count]
    ds = ds.map(to_float_images)
    iter_ds = ds.to_iter_dataset(
        grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch_buffer_size)
    )
    if worker_count > 0:
        # grain's worker processes read absl flags; outside an absl app (scripts, tests) nobody parsed
        # them, so take their defaults rather than fail. An absl app's own parse still happens later.
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        iter_ds = iter_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=int(worker_count)))
    return iter(iter_ds)
