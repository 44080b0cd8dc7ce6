"""The one weight-file reader (dakpn_jax/models/weight_files.py) every importer uses.

The files are written here by torch and safetensors themselves, so the reader is checked against
what those libraries store, not against itself.
"""

import sys

import numpy as np
import pytest

from dakpn_jax.models import weight_files

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")


def _state():
    g = torch.Generator().manual_seed(0)
    return {
        "conv.weight": torch.randn(4, 3, 3, 3, generator=g),
        "bn.running_mean": torch.randn(4, generator=g).half(),
        "bn.num_batches_tracked": torch.tensor(7, dtype=torch.int64),
    }


def _check(got, want):
    assert sorted(got) == sorted(want)
    for k, v in want.items():
        ref = v.float().numpy() if v.is_floating_point() else v.numpy()
        assert got[k].dtype == ref.dtype, k
        np.testing.assert_array_equal(got[k], ref)
    assert (
        got["bn.running_mean"].dtype == np.float32
        and got["bn.num_batches_tracked"].dtype == np.int64
    )


@pytest.mark.parametrize("wrap", [None, "state_dict", "model"])
def test_pth_round_trip_and_checkpoint_unwrapping(tmp_path, wrap):
    sd = _state()
    obj = sd if wrap is None else {wrap: sd, "epoch": 3}
    torch.save({**obj, "note": "not a tensor"} if wrap is None else obj, tmp_path / "w.pth")
    _check(
        weight_files.read_tensors(str(tmp_path / "w.pth")), sd
    )  # the non-tensor entry is left out


def test_safetensors_round_trip(tmp_path):
    sd = _state()
    safetensors_torch.save_file(sd, str(tmp_path / "w.safetensors"))
    _check(weight_files.read_tensors(tmp_path / "w.safetensors"), sd)


def test_errors_name_the_file(tmp_path, monkeypatch):
    with pytest.raises(
        FileNotFoundError, match=r"VGG19 weights file .*nope.pth' does not exist \(get it\)"
    ):
        weight_files.read_tensors(
            str(tmp_path / "nope.pth"), what="VGG19 weights file", hint="get it"
        )
    with pytest.raises(ValueError, match="does not exist"):  # also a ValueError
        weight_files.read_tensors(str(tmp_path / "nope.pth"))
    with pytest.raises(ValueError, match="non-empty path"):
        weight_files.read_tensors("")
    (tmp_path / "w.npz").write_bytes(b"x")
    with pytest.raises(ValueError, match="w.npz.*expected a .pth, .pt, .bin or .safetensors"):
        weight_files.read_tensors(str(tmp_path / "w.npz"))
    (tmp_path / "junk.safetensors").write_bytes(b"not a file")
    with pytest.raises(ValueError, match="junk.safetensors.*safetensors"):
        weight_files.read_tensors(str(tmp_path / "junk.safetensors"))
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="junk.pth.*torch.load"):
        weight_files.read_tensors(str(tmp_path / "junk.pth"))
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="list.pth.*holds a list, not a state dict"):
        weight_files.read_tensors(str(tmp_path / "list.pth"))
    torch.save(_state(), tmp_path / "w.pth")
    monkeypatch.setitem(sys.modules, "torch", None)  # as on a machine without torch
    with pytest.raises(ImportError, match="w.pth.*needs torch.*save_file"):
        weight_files.read_tensors(str(tmp_path / "w.pth"))
