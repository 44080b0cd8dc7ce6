"""Prepare a real dataset from its extracted official archives into TFDS array_record files.

    python -m dakpn_jax.data.prepare --dataset=gta5 --manual_dir=/data/gta5 --data_dir=~/tensorflow_datasets

Datasets: gta5, synthia, cityscapes, face_synthetics, celebamask_hq (docs/DATASETS.md has the
download steps and the folder each one expects). Preparation decodes every image and label once,
maps the labels to the shared train ids and fails on the first malformed pair with the file's
name; ``--on_error=skip`` instead skips such pairs, counts them and writes the list to
``<data_dir>/<builder>/<version>/skipped.json`` (and prints the count).

Why TFDS without TensorFlow works: `tfds.features.Image` only needs TensorFlow to *encode numpy
arrays*; given encoded bytes it stores them as they are, and reading (`as_data_source`) decodes
with PIL. Images are therefore stored as their original PNG/JPEG bytes (pixel-exact) and the
mapped labels are PNG-encoded here with PIL.
"""
from __future__ import annotations

import io
import json
import os
import sys

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from dakpn_jax.data import sources

ON_ERROR = ("raise", "skip")


class OfficialLayoutBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Base TFDS builder over an official layout; subclasses set `DATASET` (the dataset module).

    Features: ``key`` (file stem), ``image`` (original encoded bytes, decoded to uint8 (H, W, 3)),
    ``label`` (PNG, uint8 (H, W, 1), train ids, 255 = ignore).
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    DATASET = None  # the dataset module: NAME, SPLITS, list_examples, load_label
    # tfds locates a builder's code (for its download-checksums file) through `importlib_resources`,
    # a Python < 3.9 backport that is not installed on newer Pythons. Manual-download builders
    # have no checksums, so there is nothing to locate.
    code_path = None

    def __init__(self, *, on_error: str = "raise", **kwargs):
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error={on_error!r}: expected one of {ON_ERROR}")
        kwargs.setdefault("file_format", "array_record")
        self.on_error = on_error
        self.skipped = []  # (split, key, reason) of pairs skipped under on_error="skip"
        super().__init__(**kwargs)

    @property
    def MANUAL_DOWNLOAD_INSTRUCTIONS(self):  # pylint: disable=invalid-name
        return f"Extract the official {self.DATASET.NAME} archives as docs/DATASETS.md describes."

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            description=(self.DATASET.__doc__ or "").strip(),
            # Keep the listing order (sorted names / official split order) instead of tfds's
            # key-hash shuffle, so prepared and direct sources index the same examples the same
            # way (the real-train-labelled subset depends on it).
            disable_shuffling=True,
            features=tfds.features.FeaturesDict({
                "key": tfds.features.Text(),
                "image": tfds.features.Image(shape=(None, None, 3), dtype=np.uint8),
                "label": tfds.features.Image(shape=(None, None, 1), dtype=np.uint8,
                                             encoding_format="png"),
            }),
        )

    def _split_generators(self, dl_manager):
        root = dl_manager.manual_dir
        return {split: self._generate_examples(split, self.DATASET.list_examples(root, split))
                for split in self.DATASET.SPLITS}

    def _generate_examples(self, split, examples):
        for ex in examples:
            try:
                data, image = sources.encode_image(ex.image)
                label = self.DATASET.load_label(ex.label, image.shape[:2])
            except ValueError as e:
                if self.on_error == "raise":
                    raise
                self.skipped.append((split, ex.key, str(e)))
                continue
            buf = io.BytesIO()
            Image.fromarray(label).save(buf, format="PNG")
            yield ex.key, {"key": ex.key, "image": data, "label": buf.getvalue()}


def prepare(dataset: str, manual_dir, data_dir, *, on_error: str = "raise"):
    """Builds the TFDS copy of `dataset` from `manual_dir` into `data_dir`; returns the builder.

    Raises ValueError naming the folder when `manual_dir` does not exist.
    """
    module = sources.dataset_module(dataset)
    manual_dir = os.path.expanduser(os.fspath(manual_dir))
    if not os.path.isdir(manual_dir):
        raise ValueError(f"manual_dir={manual_dir!r}: folder does not exist")
    builder = module.Builder(data_dir=os.path.expanduser(os.fspath(data_dir)), on_error=on_error)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    if builder.skipped:
        path = os.path.join(builder.data_dir, "skipped.json")
        with open(path, "w") as f:
            json.dump([dict(split=s, key=k, reason=r) for s, k, r in builder.skipped], f, indent=1)
        print(f"{dataset}: skipped {len(builder.skipped)} malformed pairs (listed in {path})",
              file=sys.stderr)
    return builder


def main(argv=None):
    import argparse  # pylint: disable=import-outside-toplevel
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", required=True, choices=sorted(sources.DATASETS))
    parser.add_argument("--manual_dir", required=True, help="folder with the extracted official archives")
    parser.add_argument("--data_dir", default="~/tensorflow_datasets", help="TFDS data dir to write")
    parser.add_argument("--on_error", default="raise", choices=ON_ERROR,
                        help="malformed pairs: fail (default) or skip, count and list them")
    args = parser.parse_args(argv)
    builder = prepare(args.dataset, args.manual_dir, args.data_dir, on_error=args.on_error)
    sizes = {name: info.num_examples for name, info in builder.info.splits.items()}
    print(f"{args.dataset}: prepared {sizes} in {builder.data_dir}")


if __name__ == "__main__":
    main()
