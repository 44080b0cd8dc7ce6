"""Reading a local PyTorch weight file into numpy: the one reader every importer uses.

``read_tensors(path)`` returns ``{name: np.ndarray}`` of

- ``.safetensors``: read with ``safetensors.numpy`` (no torch needed);
- ``.pth`` / ``.pt`` / ``.bin``: a torch-saved state dict, read with
  ``torch.load(..., map_location="cpu", weights_only=True)`` (no code from the file runs). torch is
  *not* a dependency of dakpn_jax: without it the error says how to convert the file once where
  torch is installed (``safetensors.torch.save_file(torch.load(p), p + ".safetensors")``).

A training checkpoint that wraps its state dict (``{"state_dict": {...}}`` or ``{"model": {...}}``)
is unwrapped. Floating tensors come back as float32 (half / bfloat16 files included), integer
buffers (e.g. BatchNorm's ``num_batches_tracked``) keep their dtype; entries that are not tensors
are left out, so an importer reports them as missing if it needs them.

Errors are :class:`WeightFileError` (a ``ValueError``) naming the file; a missing file is also a
``FileNotFoundError``, a .pth without torch also an ``ImportError``.
"""

from __future__ import annotations

import os
from typing import Mapping

import numpy as np

TORCH_SUFFIXES = (".pth", ".pt", ".bin")
CONVERT_HINT = (
    "convert it once where torch is installed: "
    "safetensors.torch.save_file(torch.load(p, map_location='cpu'), p + '.safetensors')"
)


class WeightFileError(ValueError):
    """A weight file that cannot be read; the message names the file."""


class WeightFileMissing(WeightFileError, FileNotFoundError):
    """The weight file does not exist."""


class TorchNeeded(WeightFileError, ImportError):
    """A torch-pickled file on a machine without torch."""


def read_tensors(path, *, what: str = "weights file", hint: str = "") -> dict[str, np.ndarray]:
    """All tensors of the local weight file ``path`` (module docstring) as numpy arrays.

    ``what`` names the file in errors (e.g. ``"VGG19 weights file"``); ``hint`` is appended to the
    missing-file error (which file is expected).
    """
    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
        raise WeightFileError(f"{what}: expected a non-empty path, got {path!r}")
    path = os.path.expanduser(os.fspath(path))
    if not os.path.isfile(path):
        raise WeightFileMissing(
            f"{what} {path!r} does not exist{' (' + hint + ')' if hint else ''}"
        )
    if path.endswith(".safetensors"):
        from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel

        try:
            tensors = dict(load_file(path))
        except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
            raise WeightFileError(f"{what} {path!r}: cannot read it as safetensors ({e})") from e
        return {
            k: v.astype(np.float32) if np.issubdtype(v.dtype, np.floating) else v
            for k, v in tensors.items()
        }
    if not path.endswith(TORCH_SUFFIXES):
        raise WeightFileError(f"{what} {path!r}: expected a .pth, .pt, .bin or .safetensors file")
    try:
        import torch  # pylint: disable=import-outside-toplevel
    except ImportError as e:
        raise TorchNeeded(
            f"{what} {path!r} is a PyTorch file; reading it needs torch, which is not a "
            f"dependency of dakpn_jax. Install torch, or {CONVERT_HINT}"
        ) from e
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - pickle / zip errors of a damaged or non-torch file
        raise WeightFileError(f"{what} {path!r}: torch.load cannot read it ({e})") from e
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping):
        raise WeightFileError(
            f"{what} {path!r} holds a {type(obj).__name__}, not a state dict (name -> tensor)"
        )
    return {
        k: (v.detach().float() if v.is_floating_point() else v.detach()).cpu().numpy()
        for k, v in obj.items()
        if isinstance(v, torch.Tensor)
    }


__all__ = ["read_tensors", "WeightFileError", "WeightFileMissing", "TorchNeeded"]
