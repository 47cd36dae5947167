"""is_stored_form: an upload that already is the stored float32 safetensors file is recognised
from its header and checked for NaN/Inf in chunks; anything else goes the general way."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import llfc_core.checkpoints as checkpoints
from llfc_core.archs import Architecture, parse_arch
from llfc_core.checkpoints import (
    is_stored_form,
    load_safetensors,
    safetensors_bytes,
    save_safetensors,
    validate_state_dict,
)
from llfc_core.errors import CheckpointFormatError

VGG_SMALL = {"name": "vgg", "depth": 11, "width": 0.125, "in_channels": 1, "input_size": 8}


@pytest.fixture(scope="module")
def mlp() -> Architecture:
    return parse_arch({"name": "mlp", "widths": [32, 16, 10]})


def state_of(arch: Architecture) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return dict(arch.build().state_dict())


def write(path: Path, state: dict[str, torch.Tensor]) -> Path:
    path.write_bytes(safetensors_bytes(state))
    return path


def test_a_float32_safetensors_file_of_the_arch_is_in_stored_form(
    tmp_path: Path, mlp: Architecture
) -> None:
    state = state_of(mlp)
    path = write(tmp_path / "model.safetensors", state)
    assert is_stored_form(mlp, path)
    # What the general path would store holds the same tensors.
    cleaned = validate_state_dict(mlp, load_safetensors(path))
    assert all(torch.equal(cleaned[key], state[key]) for key in state)


def test_integer_buffers_as_int64_are_in_stored_form(tmp_path: Path) -> None:
    vgg = parse_arch(VGG_SMALL)
    state = state_of(vgg)
    assert any(value.dtype == torch.int64 for value in state.values())
    assert is_stored_form(vgg, write(tmp_path / "vgg.safetensors", state))


def test_files_needing_cleaning_are_not_in_stored_form(tmp_path: Path, mlp: Architecture) -> None:
    state = state_of(mlp)
    half = {key: value.half() for key, value in state.items()}
    prefixed = {f"module.{key}": value for key, value in state.items()}
    extra = {**state, "extra": torch.zeros(2)}
    missing = dict(list(state.items())[1:])
    torch_path = tmp_path / "model.pt"
    torch.save(state, torch_path)
    padded = write(tmp_path / "padded.safetensors", state)
    padded.write_bytes(padded.read_bytes() + b"\0" * 8)
    cases = {
        "half": write(tmp_path / "half.safetensors", half),
        "prefixed": write(tmp_path / "prefixed.safetensors", prefixed),
        "extra": write(tmp_path / "extra.safetensors", extra),
        "missing": write(tmp_path / "missing.safetensors", missing),
        "torch": torch_path,
        "trailing bytes": padded,
        "empty": tmp_path / "empty.safetensors",
    }
    cases["empty"].write_bytes(b"")
    assert {name: is_stored_form(mlp, path) for name, path in cases.items()} == dict.fromkeys(
        cases, False
    )


def test_nan_and_inf_are_found_in_any_chunk_and_named(
    tmp_path: Path, mlp: Architecture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 64-byte chunks: the 32x16 weight (2 KiB) is read in 32 pieces, the bad value in the last.
    monkeypatch.setattr(checkpoints, "STORED_FORM_SCAN_BYTES", 64)
    state = state_of(mlp)
    state["0.weight"][15, 31] = float("nan")
    state["2.bias"][3] = float("-inf")
    path = tmp_path / "diverged.safetensors"
    save_safetensors(state, path)
    with pytest.raises(CheckpointFormatError) as caught:
        is_stored_form(mlp, path)
    assert "NaN or infinite values" in str(caught.value)
    assert "0.weight, 2.bias" in str(caught.value)
    assert "0.bias" not in str(caught.value)


def test_validate_state_dict_names_tensors_with_non_finite_values(mlp: Architecture) -> None:
    state = state_of(mlp)
    state["2.weight"][0, 0] = float("inf")
    state["0.bias"] = torch.full((16,), float("nan"))
    with pytest.raises(CheckpointFormatError, match=r"in 0\.bias, 2\.weight;"):
        validate_state_dict(mlp, state)
