"""The direct-read scan: malformed pairs of an official layout found before training starts.

`base.DirectSource` (official folders read without ``prepare``) runs it once per listed split
when it is built, i.e. in a method's ``make_iterators``, before the first step. Per pair, from the
file headers only (PIL opens lazily; no pixels are decoded): both files exist (so orphans, an image
without its label or a label without its image, show up), each header is readable, each PNG / JPEG
ends with its end marker (a file cut short by a full disk or a killed copy), the label mode is an
8-bit id mode (``module.LABEL_MODES``; None: any) and the label size equals the image size (a
dataset may define ``check_label(label_ref, image_hw)`` instead, as CelebAMask-HQ does for its
part masks). The ``on_error`` policy is prepare's: ``"raise"`` the first malformed pair's error,
naming the file, or ``"skip"``: drop it and count it. The kept list keeps the listing order, so
every process and every rerun keeps the same pairs at the same indices.
"""

from __future__ import annotations

import logging
import os
import sys

from PIL import Image

_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"
_SCAN_CACHE: dict = {}  # (dataset, root, split, with_labels, on_error, n) -> (kept, skipped): one scan per process


def file_header(path, what) -> tuple[tuple[int, int], str]:
    """((H, W), PIL mode) of the image at `path` from its header, without decoding the pixels.

    Also checks the end of PNG and JPEG files (the IEND chunk, the EOI marker), which catches the
    usual damage, a file cut short by a full disk or a killed copy, for the price of one small
    read. ValueError naming the file if it is missing, unreadable or truncated.
    """
    if not os.path.isfile(path):
        raise ValueError(f"{path}: {what} file is missing")
    try:
        with Image.open(path) as im:
            size, mode, fmt = (im.size[1], im.size[0]), im.mode, im.format
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - 12))
            tail = f.read()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ValueError(f"{path}: unreadable {what} file ({e})") from e
    if (fmt == "PNG" and not tail.endswith(_PNG_END)) or (
        fmt == "JPEG" and b"\xff\xd9" not in tail[-4:]
    ):
        raise ValueError(f"{path}: truncated {what} file (its {fmt} end marker is missing)")
    return size, mode


def check_label_header(path, image_hw, modes=("L", "P")) -> None:
    """Header checks of a label file: readable, intact end, mode in `modes` (None: any), size == image_hw."""
    hw, mode = file_header(path, "label")
    if modes is not None and mode not in modes:
        raise ValueError(
            f"{path}: label file has mode {mode!r}; expected 8-bit single-channel ids "
            f"({' or '.join(repr(m) for m in modes)})"
        )
    if tuple(hw) != tuple(image_hw):
        raise ValueError(
            f"{path}: label size {tuple(hw)} (H, W) does not match its image size {tuple(image_hw)}"
        )


def check_example(module, ex, with_labels: bool = True) -> None:
    """ValueError naming the file if the pair `ex` of dataset `module` is malformed (headers only).

    A dataset module may define ``check_label(label_ref, image_hw)`` (CelebAMask-HQ: part masks);
    otherwise the label is one file checked with `check_label_header` and ``module.LABEL_MODES``.
    """
    image_hw, _ = file_header(ex.image, "image")
    if not with_labels:
        return
    custom = getattr(module, "check_label", None)
    if custom is not None:
        custom(ex.label, image_hw)
    else:
        check_label_header(ex.label, image_hw, getattr(module, "LABEL_MODES", ("L", "P")))


def scan_examples(
    module,
    examples,
    *,
    with_labels: bool = True,
    on_error: str = "raise",
    num_threads: int | None = None,
):
    """(kept examples, [(key, reason)] skipped) of a listing, checked with `check_example`.

    Header reads are I/O bound, so they run in threads; the result keeps the listing order, so
    every process (and every rerun) keeps the same pairs at the same indices. ``on_error="raise"``
    raises the first malformed pair's error (in listing order) instead.
    """
    from concurrent.futures import ThreadPoolExecutor  # pylint: disable=import-outside-toplevel

    def one(ex):
        try:
            check_example(module, ex, with_labels)
            return None
        except ValueError as e:
            return str(e)

    threads = num_threads or min(32, 4 * (os.cpu_count() or 1))
    with ThreadPoolExecutor(threads) as pool:
        errors = list(pool.map(one, examples, chunksize=64))
    kept, skipped = [], []
    for ex, err in zip(examples, errors):
        if err is None:
            kept.append(ex)
        elif on_error == "raise":
            raise ValueError(err)
        else:
            skipped.append((ex.key, err))
    return kept, skipped


def scanned(module, root, split, examples, *, with_labels: bool, on_error: str):
    """`scan_examples` of one listed split with the hint and the skip report of a direct read;
    (kept, skipped), cached per process (real-train and real-train-labelled share one scan)."""
    key = (module.NAME, os.path.abspath(root), split, with_labels, on_error, len(examples))
    if key in _SCAN_CACHE:
        return _SCAN_CACHE[key]
    try:
        kept, skipped = scan_examples(module, examples, with_labels=with_labels, on_error=on_error)
    except ValueError as e:
        raise ValueError(
            f"{e} [found by the scan of {module.NAME} {split} in {root} before training; "
            "--config.data.on_error=skip skips and counts such pairs, as prepare "
            "--on_error=skip does]"
        ) from e
    if skipped:
        print(
            f"{module.NAME} {split} ({root}): skipped {len(skipped)} of {len(examples)} malformed pairs "
            f"(on_error=skip), e.g. {skipped[0][1]}",
            file=sys.stderr,
        )
        logging.getLogger("dakpn_jax.data").info(
            "skipped %s %s pairs: %s", module.NAME, split, skipped
        )
    if not kept:
        raise ValueError(
            f"{module.NAME} split {split!r} in {root}: no usable pairs ({len(examples)} listed, "
            f"all malformed, e.g. {skipped[0][1] if skipped else 'none listed'})"
        )
    _SCAN_CACHE[key] = kept, skipped
    return kept, skipped
