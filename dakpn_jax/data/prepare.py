"""Prepare a real dataset from its extracted official archives into TFDS array_record files.

    python -m dakpn_jax.data.prepare --dataset=gta5 --manual_dir=/data/gta5 --data_dir=~/tensorflow_datasets

Datasets: gta5, synthia, cityscapes, face_synthetics, celebamask_hq (docs/DATASETS.md has the
download steps and the folder each one expects). Preparation decodes every image and label once,
maps the labels to the shared class ids and stops at the first malformed pair with the file's
name; ``--on_error=skip`` instead skips such pairs, counts them and lists them in
``<dataset dir>/skipped.json``. The result is a TFDS dataset directory,
``<data_dir>/dakpn_<dataset>/1.0.0/``, read with `tfds.builder_from_directory(...).as_data_source`.

Why the records are written here rather than by a `tfds.core.GeneratorBasedBuilder`: TFDS's
generator path buffers a split in memory up to 1 GB and then spills it to temporary buckets
through `tf.io.gfile`, which needs TensorFlow (Cityscapes val alone is over 1 GB; GTA5 is ~60 GB),
and with ordered output (`disable_shuffling`) it would sort one giant bucket in memory. So the
examples are streamed, in listing order, straight into array_record shards (constant memory, no
TensorFlow), serialized by the TFDS `FeaturesDict` and described by
`tfds.folder_dataset.write_metadata` (the documented route for externally written records).
Images are stored as their original PNG/JPEG bytes (`tfds.features.Image` keeps given bytes as
they are and decodes with PIL when read), so they come back pixel-exact.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import sys

import numpy as np
from PIL import Image

from dakpn_jax.data import base

ON_ERROR = ("raise", "skip")
VERSION = "1.0.0"
EXAMPLES_PER_SHARD = 1000  # ~2 GB shards for Cityscapes-size frames; many shards read in parallel


def features():
    """The stored features: ``key`` (file stem), ``image`` (original encoded bytes, decoded to
    uint8 (H, W, 3)), ``label`` (PNG, uint8 (H, W, 1), class ids, 255 = ignore)."""
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

    return tfds.features.FeaturesDict(
        {
            "key": tfds.features.Text(),
            "image": tfds.features.Image(shape=(None, None, 3), dtype=np.uint8),
            "label": tfds.features.Image(
                shape=(None, None, 1), dtype=np.uint8, encoding_format="png"
            ),
        }
    )


def dataset_dir(data_dir, dataset: str) -> str:
    """Where `dataset` is (or will be) prepared under `data_dir`."""
    return os.path.join(os.path.expanduser(os.fspath(data_dir)), f"dakpn_{dataset}", VERSION)


def is_prepared(data_dir, dataset: str) -> bool:
    return os.path.isfile(os.path.join(dataset_dir(data_dir, dataset), "dataset_info.json"))


def _encode(module, ex) -> dict:
    """The stored example of one listed pair; ValueError naming the file if it is malformed."""
    data, image = base.encode_image(ex.image)
    label = module.load_label(ex.label, image.shape[:2])
    buf = io.BytesIO()
    Image.fromarray(label).save(buf, format="PNG")
    return {"key": ex.key, "image": data, "label": buf.getvalue()}


_FEATURES = None


def _record(job):
    """(serialized example, None) or (None, error message) for job = (dataset name, Example).

    Top-level so that worker processes can run it; ValueErrors (malformed input) are returned, so
    the parent applies the on_error policy in listing order.
    """
    global _FEATURES  # one FeaturesDict per process
    if _FEATURES is None:
        _FEATURES = features()
    name, ex = job
    try:
        return _FEATURES.serialize_example(_encode(base.dataset_module(name), ex)), None
    except ValueError as e:
        return None, str(e)


def _write_split(module, examples, out_dir, split, *, on_error, skipped, progress, pool):
    """Streams `examples` into array_record shards in listing order; returns the tfds SplitInfo."""
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
    from array_record.python import array_record_module  # pylint: disable=import-outside-toplevel
    from tqdm import tqdm  # pylint: disable=import-outside-toplevel

    num_shards = max(1, -(-len(examples) // EXAMPLES_PER_SHARD))
    jobs = [(module.NAME, ex) for ex in examples]
    results = pool.imap(_record, jobs, chunksize=4) if pool else map(_record, jobs)  # both ordered
    lengths, num_bytes = [], 0
    bar = tqdm(
        total=len(examples), desc=f"{module.NAME} {split}", unit=" examples", disable=not progress
    )
    for shard in range(num_shards):
        path = os.path.join(
            out_dir, f"dakpn_{module.NAME}-{split}.array_record-{shard:05d}-of-{num_shards:05d}"
        )
        writer = array_record_module.ArrayRecordWriter(
            path, "group_size:1"
        )  # as TFDS: random access
        count = 0
        for ex in examples[shard * EXAMPLES_PER_SHARD : (shard + 1) * EXAMPLES_PER_SHARD]:
            record, error = next(results)
            bar.update()
            if error is not None:
                if on_error == "raise":
                    writer.close()
                    raise ValueError(error)
                skipped.append((split, ex.key, error))
                continue
            writer.write(record)
            count, num_bytes = count + 1, num_bytes + len(record)
        writer.close()
        lengths.append(count)
    bar.close()
    if not sum(lengths):
        raise ValueError(
            f"{module.NAME} split {split!r}: no usable examples "
            f"({len(examples)} listed, {len(skipped)} skipped so far)"
        )
    return tfds.core.SplitInfo(name=split, shard_lengths=lengths, num_bytes=num_bytes)


def prepare(
    dataset: str,
    manual_dir,
    data_dir,
    *,
    on_error: str = "raise",
    num_workers: int = 0,
    progress: bool = True,
) -> str:
    """Prepares `dataset` from the extracted official folder `manual_dir` under `data_dir`.

    Returns the dataset directory. An already prepared dataset is left as it is. Writes go to a
    temporary folder that is renamed only on success, so an interrupted run leaves nothing that
    looks prepared. `num_workers` > 0 decodes and encodes in that many (spawned) processes; the
    output is the same, in the same order.
    """
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

    if on_error not in ON_ERROR:
        raise ValueError(f"on_error={on_error!r}: expected one of {ON_ERROR}")
    module = base.dataset_module(dataset)
    manual_dir = os.path.expanduser(os.fspath(manual_dir))
    if not os.path.isdir(manual_dir):
        raise ValueError(f"manual_dir={manual_dir!r}: folder does not exist")
    final = dataset_dir(data_dir, dataset)
    if is_prepared(data_dir, dataset):
        print(f"{dataset}: already prepared in {final}", file=sys.stderr)
        return final
    tmp = final + ".incomplete"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"num_workers={num_workers!r}: expected an int >= 0")
    import multiprocessing  # pylint: disable=import-outside-toplevel

    # spawn, not fork: the caller may hold threads (JAX, grain) that fork would copy mid-state.
    pool = multiprocessing.get_context("spawn").Pool(num_workers) if num_workers else None
    skipped, split_infos = [], []
    try:
        for split in module.SPLITS:
            examples = module.list_examples(manual_dir, split)
            split_infos.append(
                _write_split(
                    module,
                    examples,
                    tmp,
                    split,
                    on_error=on_error,
                    skipped=skipped,
                    progress=progress,
                    pool=pool,
                )
            )
    finally:
        if pool:
            pool.terminate()
    feats = features()
    tfds.folder_dataset.write_metadata(
        data_dir=tmp,
        features=feats,
        split_infos=split_infos,
        version=VERSION,
        check_data=False,  # its check reads through tf.data; `open_prepared` below checks instead
        description=(module.__doc__ or "").strip(),
        disable_shuffling=True,
    )
    if skipped:
        with open(os.path.join(tmp, "skipped.json"), "w") as f:
            json.dump([dict(split=s, key=k, reason=r) for s, k, r in skipped], f, indent=1)
        print(
            f"{dataset}: skipped {len(skipped)} malformed pairs (listed in "
            f"{os.path.join(final, 'skipped.json')})",
            file=sys.stderr,
        )
    os.rename(tmp, final)
    open_prepared(data_dir, dataset, module.SPLITS[0])[
        0
    ]  # fails loudly if TFDS cannot read it back
    return final


def open_prepared(data_dir, dataset: str, split: str, *, encoded: bool = False):
    """The TFDS random-access data source of a prepared split (``+``-joined splits allowed).

    With `encoded`, ``image`` and ``label`` come back as the stored PNG/JPEG bytes (TFDS would
    decode with OpenCV when it is installed and PIL otherwise; `PreparedSource` below always
    decodes with PIL, like the direct reader, so both paths give identical pixels).
    """
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

    if not is_prepared(data_dir, dataset):
        raise ValueError(
            f"data_dir={os.path.expanduser(os.fspath(data_dir))!r}: {dataset} is not prepared there; run "
            f"python -m dakpn_jax.data.prepare --dataset={dataset} --manual_dir=<extracted folder> "
            f"--data_dir={os.fspath(data_dir)}"
        )
    decoders = (
        {"image": tfds.decode.SkipDecoding(), "label": tfds.decode.SkipDecoding()}
        if encoded
        else None
    )
    return tfds.builder_from_directory(dataset_dir(data_dir, dataset)).as_data_source(
        split=split, decoders=decoders
    )


class PreparedSource:
    """Random-access source over a prepared dataset (TFDS array_record, read without TensorFlow)."""

    def __init__(self, module, data_dir, split: str):
        base.split_names(module, split, "split")
        self._ds = open_prepared(data_dir, module.NAME, split, encoded=True)

    def __len__(self):
        return len(self._ds)

    def __getitem__(self, index):
        if not 0 <= index < len(self._ds):  # IndexError, as the sequence protocol expects
            raise IndexError(f"index {index} out of range for a source of length {len(self._ds)}")
        ex = self._ds[index]
        with (
            Image.open(io.BytesIO(ex["image"])) as image,
            Image.open(io.BytesIO(ex["label"])) as label,
        ):
            return {"image": np.asarray(image.convert("RGB")), "label": np.asarray(label)}


def main(argv=None):
    import argparse  # pylint: disable=import-outside-toplevel

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", required=True, choices=sorted(base.DATASETS))
    parser.add_argument(
        "--manual_dir", required=True, help="folder with the extracted official archives"
    )
    parser.add_argument(
        "--data_dir", default="~/tensorflow_datasets", help="TFDS data dir to write"
    )
    parser.add_argument(
        "--on_error",
        default="raise",
        choices=ON_ERROR,
        help="malformed pairs: fail (default) or skip, count and list them",
    )
    parser.add_argument(
        "--num_workers",
        type=int,
        default=min(8, os.cpu_count() or 1),
        help="decoding processes (0: in this process)",
    )
    args = parser.parse_args(argv)
    path = prepare(
        args.dataset,
        args.manual_dir,
        args.data_dir,
        on_error=args.on_error,
        num_workers=args.num_workers,
    )
    module = base.dataset_module(args.dataset)
    sizes = {s: len(open_prepared(args.data_dir, args.dataset, s)) for s in module.SPLITS}
    print(f"{args.dataset}: prepared {sizes} in {path}")


if __name__ == "__main__":
    main()
