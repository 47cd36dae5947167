"""Checkpoints: both formats read back exactly, hostile or damaged bytes are refused with a
sentence, and state dicts are held against their arch."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load as load_safetensors_bytes
from support.checkpoint_archives import (
    deflate_bomb,
    repacked,
    torch_export_archive,
    torch_saved,
    torchscript_archive,
    with_lying_member_size,
)

from llfc_core.archs import Architecture, parse_arch
from llfc_core.checkpoints import (
    TORCH_ZIP_MAX_MEMBERS,
    check_torch_zip,
    is_stored_form,
    load_safetensors,
    read_checkpoint,
    safetensors_bytes,
    save_safetensors,
    validate_state_dict,
)
from llfc_core.errors import CheckpointFormatError, CheckpointMismatchError

VGG_SMALL = {"name": "vgg", "depth": 11, "width": 0.125, "in_channels": 1, "input_size": 8}


def trained_state(arch: Architecture) -> dict[str, torch.Tensor]:
    """A state dict with nonzero running statistics and counters (two training-mode passes)."""
    torch.manual_seed(0)
    model = arch.build().train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(4, *arch.input_shape))
    return model.state_dict()


@pytest.fixture(scope="module")
def vgg() -> Architecture:
    return parse_arch(VGG_SMALL)


@pytest.fixture(scope="module")
def vgg_state(vgg: Architecture) -> dict[str, torch.Tensor]:
    return trained_state(vgg)


def assert_same_tensors(
    actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], ordered: bool = True
) -> None:
    """Same names, dtypes and values; safetensors stores tensors in its own order."""
    assert list(actual) == list(expected) if ordered else sorted(actual) == sorted(expected)
    for key in expected:
        assert actual[key].dtype == expected[key].dtype, key
        assert torch.equal(actual[key], expected[key]), key


def test_torch_zip_checkpoint_round_trips(tmp_path: Path, vgg_state: dict[str, Any]) -> None:
    path = tmp_path / "model.pt"
    torch.save(vgg_state, path)
    state, fmt = read_checkpoint(path)
    assert fmt == "torch"
    assert_same_tensors(state, vgg_state)
    assert int(state["features.1.num_batches_tracked"]) == 2


def test_legacy_torch_format_is_refused_with_how_to_re_save(
    tmp_path: Path, vgg_state: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "legacy.pth"
    torch.save(vgg_state, path, _use_new_zipfile_serialization=False)
    monkeypatch.setattr(torch, "load", _must_not_run)
    with pytest.raises(CheckpointFormatError, match=r"legacy .* Re-save it with torch\.save"):
        read_checkpoint(path)


def test_safetensors_checkpoint_round_trips(tmp_path: Path, vgg_state: dict[str, Any]) -> None:
    path = tmp_path / "model.safetensors"
    save_safetensors(vgg_state, path)
    state, fmt = read_checkpoint(path)
    assert fmt == "safetensors"
    assert_same_tensors(state, vgg_state, ordered=False)
    assert_same_tensors(load_safetensors(path), vgg_state, ordered=False)
    assert not list(tmp_path.glob(".*partial"))


def test_format_is_sniffed_from_content_not_file_name(
    tmp_path: Path, vgg_state: dict[str, Any]
) -> None:
    safetensors_named_pt = tmp_path / "weights.pt"
    save_safetensors(vgg_state, safetensors_named_pt)
    torch_named_safetensors = tmp_path / "weights.safetensors"
    torch.save(vgg_state, torch_named_safetensors)
    assert read_checkpoint(safetensors_named_pt)[1] == "safetensors"
    assert read_checkpoint(torch_named_safetensors)[1] == "torch"


def test_safetensors_bytes_matches_the_file_format(vgg_state: dict[str, Any]) -> None:
    restored = load_safetensors_bytes(safetensors_bytes(vgg_state))
    assert_same_tensors(restored, vgg_state, ordered=False)


def test_tensors_sharing_memory_are_saved_as_separate_copies(tmp_path: Path) -> None:
    shared = torch.arange(6.0)
    path = tmp_path / "tied.safetensors"
    save_safetensors({"a": shared, "b": shared, "c": shared[:3]}, path)
    state = load_safetensors(path)
    assert torch.equal(state["b"], shared)
    assert torch.equal(state["c"], torch.arange(3.0))


@pytest.mark.parametrize("wrapper", ["state_dict", "model"])
def test_training_checkpoint_with_one_state_dict_entry_is_unwrapped(
    tmp_path: Path, vgg_state: dict[str, Any], wrapper: str
) -> None:
    path = tmp_path / "checkpoint.pt"
    torch.save({wrapper: vgg_state, "epoch": 12, "best_accuracy": 0.93}, path)
    state, _ = read_checkpoint(path)
    assert_same_tensors(state, vgg_state)


def test_data_parallel_prefix_is_stripped(tmp_path: Path, vgg_state: dict[str, Any]) -> None:
    path = tmp_path / "dp.pt"
    torch.save(OrderedDict((f"module.{k}", v) for k, v in vgg_state.items()), path)
    state, _ = read_checkpoint(path)
    assert_same_tensors(state, vgg_state)


class WritesMarker:
    """Unpickling this opens (creates) a file: the stand-in for arbitrary code execution."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


def test_the_marker_payload_really_runs_code_when_unpickled(tmp_path: Path) -> None:
    marker = tmp_path / "control-marker"
    pickle.loads(pickle.dumps({"weight": WritesMarker(marker)})).get("weight").close()
    assert marker.exists()


@pytest.mark.parametrize("container", ["raw pickle", "torch zip", "torch legacy"])
def test_pickle_that_would_run_code_is_refused_without_running_it(
    tmp_path: Path, container: str
) -> None:
    marker = tmp_path / "pwned"
    payload = {"features.0.weight": torch.zeros(2), "evil": WritesMarker(marker)}
    path = tmp_path / "evil.pt"
    if container == "raw pickle":
        path.write_bytes(pickle.dumps(payload))
    else:
        torch.save(payload, path, _use_new_zipfile_serialization=container == "torch zip")
    refusal = "objects other than tensors" if container == "torch zip" else "legacy"
    with pytest.raises(CheckpointFormatError, match=refusal):
        read_checkpoint(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ([torch.zeros(2)], "holds a list, not a state dict"),
        ({"weight": torch.zeros(2), "step": 3}, "step are not tensors"),
        ({}, "empty mapping"),
        ({"state_dict": {"w": torch.zeros(1)}, "model": {"w": torch.zeros(1)}}, "both"),
        ({"state_dict": {"w": 1.0}}, "state_dict are not tensors"),
    ],
)
def test_torch_files_that_are_not_state_dicts_are_refused(
    tmp_path: Path, content: Any, fragment: str
) -> None:
    path = tmp_path / "odd.pt"
    torch.save(content, path)
    with pytest.raises(CheckpointFormatError, match=fragment):
        read_checkpoint(path)


def test_truncated_torch_zip_is_refused(tmp_path: Path, vgg_state: dict[str, Any]) -> None:
    path = tmp_path / "cut.pt"
    torch.save(vgg_state, path)
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(CheckpointFormatError, match="corrupt or truncated"):
        read_checkpoint(path)


def test_truncated_safetensors_is_refused(tmp_path: Path, vgg_state: dict[str, Any]) -> None:
    whole = safetensors_bytes(vgg_state)
    path = tmp_path / "cut.safetensors"
    path.write_bytes(whole[: len(whole) - 100])
    with pytest.raises(CheckpointFormatError, match="truncated"):
        read_checkpoint(path)


def test_safetensors_header_claiming_more_bytes_than_the_file_holds_is_refused(
    tmp_path: Path,
) -> None:
    header = b'{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}'
    path = tmp_path / "lying.safetensors"
    assert len(header) == 54
    path.write_bytes((len(header) + 10_000).to_bytes(8, "little") + header + b"\0" * 4)
    with pytest.raises(
        CheckpointFormatError, match="claims 10,054 bytes but the file holds only 58"
    ):
        read_checkpoint(path)
    path.write_bytes((2**62).to_bytes(8, "little") + header + b"\0" * 4)
    with pytest.raises(CheckpointFormatError, match="more than the 100,000,000 allowed"):
        read_checkpoint(path)


def test_safetensors_with_inconsistent_offsets_is_refused(tmp_path: Path) -> None:
    header = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}).encode()
    path = tmp_path / "bad.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 4)
    with pytest.raises(CheckpointFormatError, match="safetensors file is corrupt"):
        read_checkpoint(path)


@pytest.mark.parametrize("content", [b"", b"PK", b"hello world, not weights", b"\x00" * 64])
def test_unrecognised_bytes_are_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "junk.bin"
    path.write_bytes(content)
    with pytest.raises(CheckpointFormatError) as caught:
        read_checkpoint(path)
    assert caught.value.message.endswith(".")


def test_validated_state_dict_is_in_model_order_and_loads_strictly(
    vgg: Architecture, vgg_state: dict[str, Any]
) -> None:
    shuffled = dict(reversed(list(vgg_state.items())))
    cleaned = validate_state_dict(vgg, shuffled)
    assert list(cleaned) == list(vgg_state)
    vgg.build().load_state_dict(cleaned, strict=True)


def test_missing_unexpected_and_mis_shaped_tensors_are_named(
    vgg: Architecture, vgg_state: dict[str, Any]
) -> None:
    state = dict(vgg_state)
    del state["features.4.bias"]
    state["features.99.weight"] = torch.zeros(3)
    state["classifier.weight"] = torch.zeros(10, 7)
    with pytest.raises(CheckpointMismatchError) as caught:
        validate_state_dict(vgg, state)
    error = caught.value
    assert error.missing == ["features.4.bias"]
    assert error.unexpected == ["features.99.weight"]
    assert error.mis_shaped == ["classifier.weight"]
    assert "missing features.4.bias" in error.message
    assert "unexpected features.99.weight" in error.message
    assert "classifier.weight (expected [10, 64], got [10, 7])" in error.message


def test_a_long_list_of_mismatches_is_truncated_in_the_message(vgg: Architecture) -> None:
    with pytest.raises(CheckpointMismatchError) as caught:
        validate_state_dict(vgg, {"only.weight": torch.zeros(1)})
    expected_count = len(vgg.expected_shapes())
    assert len(caught.value.missing) == expected_count
    assert f"and {expected_count - 10} more" in caught.value.message
    assert len(caught.value.message) < 1000


@pytest.mark.parametrize("bad_value", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_and_named(
    vgg: Architecture, vgg_state: dict[str, Any], bad_value: float
) -> None:
    state = dict(vgg_state)
    state["features.8.weight"] = state["features.8.weight"].clone()
    state["features.8.weight"][0, 0, 0, 0] = bad_value
    with pytest.raises(
        CheckpointFormatError, match=r"NaN or infinite values .* features\.8\.weight"
    ):
        validate_state_dict(vgg, state)


def test_float64_values_too_large_for_float32_are_refused(
    vgg: Architecture, vgg_state: dict[str, Any]
) -> None:
    state = {
        key: value.double() if value.is_floating_point() else value
        for key, value in vgg_state.items()
    }
    state["classifier.bias"][3] = 1e300
    with pytest.raises(CheckpointFormatError, match=r"classifier\.bias"):
        validate_state_dict(vgg, state)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_float_precisions_are_accepted_as_float32(
    tmp_path: Path, vgg: Architecture, vgg_state: dict[str, Any], dtype: torch.dtype
) -> None:
    low = {k: v.to(dtype) if v.is_floating_point() else v for k, v in vgg_state.items()}
    path = tmp_path / "low.safetensors"
    save_safetensors(low, path)
    state, _ = read_checkpoint(path)
    cleaned = validate_state_dict(vgg, state)
    weight = cleaned["features.0.weight"]
    assert weight.dtype == torch.float32
    assert torch.equal(weight, low["features.0.weight"].float())
    assert cleaned["features.1.num_batches_tracked"].dtype == torch.int64


def test_integer_counter_of_another_width_becomes_int64(
    vgg: Architecture, vgg_state: dict[str, Any]
) -> None:
    state = dict(vgg_state)
    state["features.1.num_batches_tracked"] = torch.tensor(7, dtype=torch.int32)
    cleaned = validate_state_dict(vgg, state)
    assert cleaned["features.1.num_batches_tracked"].dtype == torch.int64
    assert int(cleaned["features.1.num_batches_tracked"]) == 7


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("features.0.weight", torch.zeros(8, 1, 3, 3, dtype=torch.int64), "torch.int64"),
        ("features.0.bias", torch.zeros(8, dtype=torch.bool), "torch.bool"),
        ("features.1.num_batches_tracked", torch.tensor(2.0), "the model needs integer"),
    ],
)
def test_tensors_of_the_wrong_kind_are_refused_and_named(
    vgg: Architecture, vgg_state: dict[str, Any], key: str, value: torch.Tensor, fragment: str
) -> None:
    state = {**vgg_state, key: value}
    with pytest.raises(CheckpointFormatError) as caught:
        validate_state_dict(vgg, state)
    assert key in caught.value.message
    assert fragment in caught.value.message


def test_resnet_checkpoint_validates_after_a_torch_round_trip(tmp_path: Path) -> None:
    arch = parse_arch({"name": "resnet", "depth": 8, "in_channels": 1, "input_size": 8})
    state = trained_state(arch)
    path = tmp_path / "resnet.pt"
    torch.save(state, path)
    cleaned = validate_state_dict(arch, read_checkpoint(path)[0])
    assert_same_tensors(cleaned, state)


# --- torch archives are checked before torch parses them ----------------------------------------


def _must_not_run(*_args: object, **_kwargs: object) -> None:
    raise AssertionError("torch.load ran on a file that should have been refused before it")


MLP_SMALL = {"name": "mlp", "widths": [4, 3, 2]}


@pytest.mark.filterwarnings("ignore:`torch.jit.s:DeprecationWarning")
def test_a_torchscript_archive_is_refused_before_torch_reads_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "scripted.pt"
    path.write_bytes(torchscript_archive())
    monkeypatch.setattr(torch, "load", _must_not_run)
    with pytest.raises(CheckpointFormatError, match=r"This is a TorchScript archive") as caught:
        read_checkpoint(path)
    assert "can run code" in caught.value.message
    assert "torch.onnx.export" in caught.value.message


def test_a_torch_export_archive_is_refused_before_torch_reads_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "exported.pt2"
    path.write_bytes(torch_export_archive())
    monkeypatch.setattr(torch, "load", _must_not_run)
    with pytest.raises(CheckpointFormatError, match=r"This is a torch\.export archive") as caught:
        read_checkpoint(path)
    assert "state_dict" in caught.value.message and ".onnx" in caught.value.message


@pytest.mark.parametrize("member", ["constants.pkl", "code/__torch__.py", ".debug_pkl", "extra/x"])
def test_a_state_dict_archive_with_a_member_torch_save_does_not_write_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, member: str
) -> None:
    path = tmp_path / "extra.pt"
    saved = torch_saved(parse_arch(MLP_SMALL).build().state_dict())
    path.write_bytes(repacked(saved, extra_members={member: b"print('hi')"}))
    monkeypatch.setattr(torch, "load", _must_not_run)
    with pytest.raises(CheckpointFormatError, match=f"holds .*{member}"):
        read_checkpoint(path)


def test_a_stored_re_pack_of_a_torch_save_archive_is_still_read(tmp_path: Path) -> None:
    state = parse_arch(MLP_SMALL).build().state_dict()
    path = tmp_path / "repacked.pt"
    path.write_bytes(repacked(torch_saved(state)))
    assert_same_tensors(read_checkpoint(path, parse_arch(MLP_SMALL))[0], dict(state))


def test_a_compressed_member_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "deflated.pt"
    saved = torch_saved(parse_arch(MLP_SMALL).build().state_dict())
    path.write_bytes(repacked(saved, compression=zipfile.ZIP_DEFLATED))
    monkeypatch.setattr(torch, "load", _must_not_run)
    with pytest.raises(CheckpointFormatError, match=r"is compressed, which torch\.save never does"):
        read_checkpoint(path)


def test_a_member_declaring_more_bytes_than_the_file_holds_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "lying.pt"
    saved = torch_saved({"0.weight": torch.zeros(12)})
    path.write_bytes(with_lying_member_size(saved, "/data/0", 800_000_000))
    monkeypatch.setattr(torch, "load", _must_not_run)
    with pytest.raises(CheckpointFormatError, match="declares 800,000,000 bytes"):
        read_checkpoint(path)


def test_an_archive_with_absurdly_many_members_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "many.pt"
    saved = torch_saved({"0.weight": torch.zeros(1)})
    many = {f"data/{1000 + index}": b"" for index in range(TORCH_ZIP_MAX_MEMBERS)}
    path.write_bytes(repacked(saved, extra_members=many))
    monkeypatch.setattr(zipfile.ZipFile, "__init__", _must_not_run)
    with pytest.raises(CheckpointFormatError, match="members, more than the 10,000"):
        check_torch_zip(path)


def test_tensor_data_beyond_what_the_arch_can_hold_is_refused_before_loading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 4 MB of float32 for an arch of 23 values: a stored, well-formed archive, but far more
    # data than the arch could use even as float64 with optimizer state.
    path = tmp_path / "oversized.pt"
    torch.save({"0.weight": torch.zeros(1_000_000)}, path)
    monkeypatch.setattr(torch, "load", _must_not_run)
    with pytest.raises(CheckpointFormatError, match="4,000,000 bytes of tensor data, more than"):
        read_checkpoint(path, parse_arch(MLP_SMALL))


def test_a_float64_training_checkpoint_with_adam_state_fits_the_arch_bound(
    tmp_path: Path,
) -> None:
    arch = parse_arch({"name": "mlp", "widths": [64, 512, 10]})
    model = arch.build().double()
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.randn(2, 64, dtype=torch.float64)).sum().backward()
    optimizer.step()
    path = tmp_path / "training.pt"
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, path)
    state, _ = read_checkpoint(path, arch)
    assert_same_tensors(
        validate_state_dict(arch, state), validate_state_dict(arch, model.state_dict())
    )


def test_a_deflate_bomb_is_refused_without_inflating_it(tmp_path: Path) -> None:
    path = tmp_path / "bomb.pt"
    path.write_bytes(deflate_bomb(800 * 2**20))
    assert path.stat().st_size < 2**20
    # A fresh process, so its peak resident size says what this one call cost.
    measured = subprocess.run(
        [sys.executable, "-c", PEAK_GROWTH_OF_READING, str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    refusal, growth_kib = measured.stdout.strip().rsplit("\n", 1)
    assert "is compressed, which torch.save never does" in refusal
    assert int(growth_kib) < 50 * 1024


PEAK_GROWTH_OF_READING = """
import resource, sys
from pathlib import Path
from llfc_core.archs import parse_arch
from llfc_core.checkpoints import read_checkpoint
from llfc_core.errors import CheckpointFormatError
arch = parse_arch({"name": "mlp", "widths": [4, 3, 2]})
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    read_checkpoint(Path(sys.argv[1]), arch)
    print("accepted")
except CheckpointFormatError as error:
    print(error.message)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
"""


def test_torch_files_are_refused_on_a_torch_older_than_2_10_but_safetensors_are_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = parse_arch(MLP_SMALL).build().state_dict()
    zip_path, legacy_path, safetensors_path = (tmp_path / name for name in ("a.pt", "b.pt", "c"))
    torch.save(state, zip_path)
    torch.save(state, legacy_path, _use_new_zipfile_serialization=False)
    save_safetensors(state, safetensors_path)
    monkeypatch.setattr(torch, "__version__", "2.9.1+cu128")
    monkeypatch.setattr(torch, "load", _must_not_run)
    refusal = r"runs PyTorch 2\.9\.1.*needs 2\.10 or later"
    for path in (zip_path, legacy_path):
        with pytest.raises(CheckpointFormatError, match=refusal):
            read_checkpoint(path)
    assert read_checkpoint(safetensors_path)[1] == "safetensors"


def test_a_safetensors_header_nested_thousands_deep_is_refused_with_a_sentence(
    tmp_path: Path,
) -> None:
    header = b'{"__metadata__":' + b"[" * 3000 + b"]" * 3000 + b"}"
    path = tmp_path / "deep.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header)
    with pytest.raises(CheckpointFormatError, match="nested too deeply"):
        read_checkpoint(path)
    assert not is_stored_form(parse_arch(MLP_SMALL), path)
