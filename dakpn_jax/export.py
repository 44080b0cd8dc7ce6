"""Translate a dataset to disk with a trained translator (DA-KPN, or a GAN baseline).

    python -m dakpn_jax.export --workdir=TRANSLATOR_WORKDIR --split=synthetic-train --output=DIR \
        [--input=FOLDER_ROOT] [--batch_size=8] [--multihost]

writes, for every item of the source (the translator config's dataset ``--split``, or the folder
dataset ``--input`` = ROOT with ROOT/images and ROOT/labels)::

    DIR/images/<stem>.png    the translated image, whole frame at full resolution, RGB uint8
    DIR/labels/<stem>.png    the source label, unchanged: a folder source's label file is copied
                             byte for byte; a generated source's uint8 label array is stored as an
                             "L" PNG (it decodes to the identical array)
    DIR/manifest.json        translator (workdir, method, checkpoint step, config hash), source, count

Stems are the folder source's file stems, else the zero-padded item index. Translation runs on
global batches sharded over a 1-D 'data' mesh of this process's devices (the last batch padded by
repeating its final item); with several processes (``--multihost`` or ``--coordinator_address``,
as for training; all of them write into one shared DIR) process p takes every P-th unfinished
item, and the processes wait for each other before planning and before the final count. Every file is
written to a temporary name and then `os.replace`d, so a file either exists complete or not at all;
an item is finished when its image (and label) exist, and a re-run skips finished items, so a killed
export resumes where it stopped. The manifest is written before the first file: a target directory
whose manifest names another translator, checkpoint, config or source, or a non-empty directory
without a manifest, is refused with a ValueError before anything is written.

An official CycleGAN / CUT generator checkpoint (``latest_net_G_A.pth``, ``latest_net_G.pth``, or
a ``.safetensors`` conversion) translates a folder dataset without a training run::

    python -m dakpn_jax.export --generator_checkpoint=latest_net_G.pth --generator_arch=cut \
        --input=FOLDER_ROOT --output=DIR

(``dakpn_jax.models.torch_import``; .pth needs torch installed, .safetensors does not; the manifest
names the file and its sha256.)
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from typing import Callable

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from PIL import Image

from dakpn_jax import registry, workdir_lock

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


# ----------------------------------------------------------------------------- pieces


def config_hash(config) -> str:
    """sha256 (16 hex digits) of the config as canonical JSON (sorted keys; tuples as lists)."""
    d = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    text = json.dumps(d, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def make_translate_fn(config, state) -> Callable:
    """``fn(images (B,H,W,3) float32 [0,1], labels (B,H,W) int) -> (B,H,W,3)`` of the run's method:
    its ``make_translator(config, state)`` (the translator methods of `dakpn_jax.registry`, or a
    module given by dotted path that defines one)."""
    method = registry.method_module(config.method)
    if callable(getattr(method, "make_translator", None)):
        return method.make_translator(config, state)
    raise ValueError(
        f"config.method={config.method!r}: module {method.__name__} has no make_translator "
        f"(not a translation method? translators: {sorted(registry.translators())})"
    )


def _write_atomic(path: str, write: Callable[[str], None]) -> None:
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _save_png(array: np.ndarray, path: str) -> None:
    _write_atomic(path, lambda tmp: Image.fromarray(array).save(tmp, format="PNG"))


def to_uint8(images) -> np.ndarray:
    """[0, 1] floats -> uint8 by rounding: round(255 * clip(x, 0, 1)), exactly.

    In float64: 255 x is exact for a float32 x, whereas the float32 product rounds values just above
    a half grey level (e.g. 0.50000003) onto the half, which then rounds to even (one level low)."""
    return np.round(np.clip(np.asarray(images, np.float64), 0.0, 1.0) * 255.0).astype(np.uint8)


def _image_key(item: dict) -> str:
    for key in ("image", "synthetic"):  # paired-eval items carry the synthetic view as "synthetic"
        if key in item:
            return key
    raise ValueError(f"export: source items have no 'image' (keys {sorted(item)})")


def _check_target(output: str, manifest: dict) -> None:
    """ValueError unless `output` is absent, empty, or holds an export with the same manifest."""
    if not os.path.exists(output):
        return
    if not os.path.isdir(output):
        raise ValueError(f"export: output={output!r} exists and is not a directory")
    path = os.path.join(output, MANIFEST)
    if not os.path.exists(path):
        entries = sorted(
            e for e in os.listdir(output) if not e.startswith(workdir_lock.LOCK_PREFIX)
        )
        if entries:
            raise ValueError(
                f"export: output={output!r} is not empty ({entries[:5]}...) and has no {MANIFEST}; "
                "refusing to mix files from another source into it"
            )
        return
    try:
        with open(path) as f:
            old = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"export: cannot read {path!r}: {e}") from e
    for key in ("format", "method", "checkpoint_step", "config_hash", "source"):
        if old.get(key) != manifest[key]:
            raise ValueError(
                f"export: output={output!r} holds an export with {key}={old.get(key)!r}, this one "
                f"has {key}={manifest[key]!r}; use another --output (nothing was overwritten)"
            )


def _barrier(name: str) -> None:
    """All processes of a multi-host export wait here (no-op for one process). The processes share
    the output folder and decide from the files in it, so each must see a settled folder."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel

        multihost_utils.sync_global_devices(name)


def _write_manifest(output: str, manifest: dict) -> None:
    if jax.process_index() == 0:
        text = json.dumps(manifest, indent=2, sort_keys=True)
        _write_atomic(os.path.join(output, MANIFEST), lambda tmp: _write_text(tmp, text))


def _write_text(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


# ----------------------------------------------------------------------------- the export


def export_translated(
    workdir: str,
    output: str,
    *,
    split: str | None = "synthetic-train",
    input_dir: str | None = None,
    config=None,
    batch_size: int = 8,
    devices=None,
    progress: bool = True,
    on_file_written: Callable[[str], None] | None = None,
    restored=None,
    translate_fn: Callable | None = None,
    translator_id: str | None = None,
) -> dict:
    """Translates a dataset with the translator of `workdir` into `output` (module docstring).

    Args:
      workdir: the translator's training run (checkpoint + config.json).
      output: target directory (created; resumed if it holds the same export).
      split: a split of the translator config's dataset (`dakpn_jax.data.sources.make_source`);
        ignored when `input_dir` is given.
      input_dir: a folder dataset ROOT (ROOT/images, optional ROOT/labels) to translate instead.
      config: the translator config; given, it must match the checkpoint's model shapes (ValueError
        otherwise). Default: workdir/config.json.
      batch_size: global batch, rounded up to a multiple of the device count.
      devices: this process's devices for the 'data' mesh (default: jax.local_devices()).
      progress: show a tqdm progress bar.
      on_file_written: called with each finished image path (tests use it to interrupt an export).
      restored: (config, state) to use instead of restoring `workdir` (e.g.
        `torch_import.restore_for_export` of an official generator checkpoint; `workdir` then names it).
      translate_fn: a translator that needs no checkpoint (a training-free control of
        `dakpn_jax.controls`, same signature as ``make_translator``'s): then ``workdir`` is ignored,
        ``config`` (its ``data`` names the dataset) is required and ``translator_id`` names it in the
        manifest (as its method; checkpoint step 0).
    Returns:
      The manifest dict (with "count" and "complete").
    """
    from dakpn_jax.data import sources as data_sources  # pylint: disable=import-outside-toplevel
    from dakpn_jax.data.folder import FolderSource  # pylint: disable=import-outside-toplevel
    from dakpn_jax.training import trainer  # pylint: disable=import-outside-toplevel

    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"export: batch_size must be a positive int, got {batch_size!r}")
    if translate_fn is not None:
        if config is None or not translator_id:
            raise ValueError("export: translate_fn needs config (for its data) and translator_id")
        state, workdir = {"step": np.zeros((), np.int32)}, f"<{translator_id}>"
        config = (
            config.copy_and_resolve_references()
            if hasattr(config, "copy_and_resolve_references")
            else config
        )
        with config.unlocked():
            config.method = str(translator_id)
    else:
        config, state = restored if restored is not None else trainer.restore_state(workdir, config)
        # This process's single-device copy of the replicated state: export runs per process on a mesh of
        # its own devices, so nothing may refer to other hosts' devices.
        state = jax.tree.map(lambda x: x.addressable_data(0), state)
    if input_dir is not None:
        label_dir = os.path.join(input_dir, "labels")
        source = FolderSource(
            os.path.join(input_dir, "images"), label_dir if os.path.isdir(label_dir) else None
        )
        stems = list(source.stems)
        source_id = {"folder": os.path.abspath(input_dir), "count": len(source)}
    else:
        source = data_sources.make_source(config.data, split)
        width = max(6, len(str(max(len(source) - 1, 0))))
        stems = [f"{i:0{width}d}" for i in range(len(source))]
        source_id = {"split": split, "data_hash": config_hash(config.data), "count": len(source)}
    if len(source) == 0:
        raise ValueError(f"export: the source {source!r} is empty")
    manifest = {
        "format": FORMAT_VERSION,
        "method": config.method,
        "translator_workdir": workdir if translate_fn is not None else os.path.abspath(workdir),
        "checkpoint_step": int(np.asarray(jax.device_get(state["step"]))),
        "config_hash": config_hash(config),
        "source": source_id,
    }
    _check_target(output, manifest)  # before anything is written
    # One export per output directory: a second one into the same folder ends here (one line naming
    # the process that holds it); the check is repeated under the lock, which creates the folder.
    with workdir_lock.exclusive(output, what="export"):
        _check_target(output, manifest)
        _barrier(
            "export: target checked"
        )  # no process may see another's first files as a foreign target
        img_dir, lbl_dir = os.path.join(output, "images"), os.path.join(output, "labels")
        os.makedirs(img_dir, exist_ok=True)
        os.makedirs(lbl_dir, exist_ok=True)
        _write_manifest(output, {**manifest, "complete": False})

        first = source[0]
        key, has_label = _image_key(first), "label" in first
        label_paths = getattr(source, "label_paths", None)

        def finished(i: int) -> bool:
            return os.path.exists(os.path.join(img_dir, stems[i] + ".png")) and (
                not has_label or os.path.exists(os.path.join(lbl_dir, stems[i] + ".png"))
            )

        todo = [i for i in range(len(source)) if not finished(i)]
        _barrier(
            "export: planned"
        )  # every process splits the same todo list, read before any writes
        devices = list(jax.local_devices() if devices is None else devices)
        mesh = Mesh(np.asarray(devices), ("data",))
        shard = NamedSharding(mesh, P("data"))
        gb = -(-int(batch_size) // len(devices)) * len(devices)
        translate = translate_fn if translate_fn is not None else make_translate_fn(config, state)
        run = jax.jit(
            lambda x, y: translate(x, y), in_shardings=(shard, shard), out_shardings=shard
        )

        def batches():
            """Consecutive unfinished items of one frame size, up to gb of them; streamed (a large
            dataset never sits in memory). Process p of P takes every P-th unfinished item."""
            current = []
            for i in todo[jax.process_index() :: jax.process_count()]:
                item = source[i]
                if current and (len(current) == gb or item[key].shape != current[0][1][key].shape):
                    yield current
                    current = []
                current.append((i, item))
            if current:
                yield current

        bar = None
        if progress and jax.process_index() == 0:
            from tqdm import tqdm  # pylint: disable=import-outside-toplevel

            bar = tqdm(
                total=len(source),
                initial=len(source) - len(todo),
                unit="img",
                desc=f"export -> {output}",
            )
        try:
            for batch in batches():
                items = [it for _, it in batch] + [batch[-1][1]] * (
                    gb - len(batch)
                )  # pad: repeat the last item
                images = np.stack([it[key] for it in items]).astype(np.float32) / 255.0
                labels = (
                    np.stack([it["label"] for it in items])
                    if has_label
                    else np.zeros(images.shape[:3], np.uint8)
                ).astype(np.int32)
                # Explicit placement on this process's mesh: under jax.distributed, jit refuses numpy
                # inputs with a non-replicated sharding.
                out = to_uint8(
                    jax.device_get(
                        run(jax.device_put(images, shard), jax.device_put(labels, shard))
                    )
                )
                if out.shape != images.shape:
                    raise ValueError(
                        f"export: translator returned {out.shape} for images {images.shape}"
                    )
                for j, (i, item) in enumerate(batch):
                    stem = stems[i]
                    if has_label:  # label first: an image on disk implies its label is there too
                        dst = os.path.join(lbl_dir, stem + ".png")
                        if label_paths is not None and label_paths[i].lower().endswith(".png"):
                            _write_atomic(
                                dst, lambda tmp, src=label_paths[i]: shutil.copyfile(src, tmp)
                            )
                        else:
                            _save_png(np.asarray(item["label"], np.uint8), dst)
                    path = os.path.join(img_dir, stem + ".png")
                    _save_png(out[j], path)
                    if bar is not None:
                        bar.update(1)
                    if on_file_written is not None:
                        on_file_written(path)
        finally:
            if bar is not None:
                bar.close()
        _barrier("export: written")  # count the other processes' files too
        done = sum(finished(i) for i in range(len(source)))
        manifest = {**manifest, "count": done, "complete": done == len(source)}
        _write_manifest(output, manifest)
        return manifest


# ----------------------------------------------------------------------------- CLI


def main(argv) -> None:
    del argv
    from absl import flags  # pylint: disable=import-outside-toplevel

    f = flags.FLAGS
    if f.multihost or f.coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS"):
        from dakpn_jax.training import trainer  # pylint: disable=import-outside-toplevel

        trainer.initialize_distributed(f.coordinator_address, f.num_processes, f.process_id)
    restored, workdir = None, f.workdir
    if f.generator_checkpoint:
        from dakpn_jax.models import torch_import  # pylint: disable=import-outside-toplevel

        if f.workdir or not f.input:
            raise ValueError(
                "export: --generator_checkpoint needs --input=FOLDER_ROOT and no --workdir"
            )
        restored, workdir = (
            torch_import.restore_for_export(f.generator_checkpoint, f.generator_arch),
            f.generator_checkpoint,
        )
    elif not f.workdir:
        raise ValueError("export: give --workdir (a training run) or --generator_checkpoint")
    m = export_translated(
        workdir,
        f.output,
        split=f.split,
        input_dir=f.input,
        batch_size=f.batch_size,
        restored=restored,
    )
    print(
        f"export: {m['count']} images in {f.output} (complete={m['complete']}, "
        f"checkpoint step {m['checkpoint_step']}, config {m['config_hash']})"
    )


if __name__ == "__main__":
    from absl import app, flags  # pylint: disable=import-outside-toplevel

    flags.DEFINE_string("workdir", None, "Translator training run directory.")
    flags.DEFINE_string(
        "generator_checkpoint",
        None,
        "Official CycleGAN/CUT generator state dict (.pth or "
        ".safetensors) to translate with instead of --workdir.",
    )
    flags.DEFINE_enum(
        "generator_arch", "cyclegan", ["cyclegan", "cut"], "Layout of --generator_checkpoint."
    )
    flags.DEFINE_string(
        "output", None, "Target dataset directory (images/, labels/, manifest.json).", required=True
    )
    flags.DEFINE_string(
        "split", "synthetic-train", "Split of the translator config's dataset to translate."
    )
    flags.DEFINE_string(
        "input", None, "Folder dataset ROOT (ROOT/images, ROOT/labels) to translate instead."
    )
    flags.DEFINE_integer(
        "batch_size", 8, "Global batch (rounded up to a multiple of the device count)."
    )
    flags.DEFINE_bool(
        "multihost", False, "jax.distributed.initialize() with auto-detection (TPU VM slices)."
    )
    flags.DEFINE_string(
        "coordinator_address", None, "host:port of process 0 (multi-host GPU clusters)."
    )
    flags.DEFINE_integer("num_processes", None, "Number of processes (with --coordinator_address).")
    flags.DEFINE_integer("process_id", None, "This process's index (with --coordinator_address).")
    app.run(main)
