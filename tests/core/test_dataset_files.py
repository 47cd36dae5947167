"""Uploaded dataset files: zip bombs and ambiguous archives refused from their headers, values
converted a chunk at a time into the normalised copy, and jobs reading only the examples they
use. Memory is measured with tracemalloc, which numpy reports its array buffers to."""

from __future__ import annotations

import hashlib
import io
import json
import tracemalloc
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
import pytest
import torch
from safetensors.torch import load_file as load_torch_safetensors
from safetensors.torch import save_file as save_torch_safetensors

from llfc_core.data import (
    builtin_installed,
    inspect_array_file,
    open_normalised,
    read_arrays,
    write_normalised,
)
from llfc_core.errors import DatasetError

MiB = 2**20
Result = TypeVar("Result")


def peak_allocated(action: Callable[[], Result]) -> tuple[Result, int]:
    """What ``action`` returns and the most bytes it had allocated at once (numpy included)."""
    tracemalloc.start()
    try:
        result = action()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak


def peak_allocated_until_error(action: Callable[[], object]) -> tuple[DatasetError, int]:
    def refused() -> DatasetError:
        with pytest.raises(DatasetError) as raised:
            action()
        return raised.value

    return peak_allocated(refused)


class CountingSink:
    """A sink that keeps only the size and sha256 of what is written to it."""

    def __init__(self) -> None:
        self.size = 0
        self.digest = hashlib.sha256()

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        self.digest.update(chunk)


def write_zeros_npz(path: Path, num_examples: int) -> None:
    """An .npz of ``num_examples`` uint8 zeros as x (N x 1) and as y, deflated (about 1000x),
    written without ever holding the zeros."""
    arrays = {"x.npy": (num_examples, 1), "y.npy": (num_examples,)}
    zeros = bytes(4 * MiB)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, shape in arrays.items():
            with archive.open(name, "w", force_zip64=True) as member:
                header = {"descr": "|u1", "fortran_order": False, "shape": shape}
                np.lib.format.write_array_header_1_0(member, header)
                for start in range(0, num_examples, len(zeros)):
                    member.write(zeros[: min(len(zeros), num_examples - start)])


def test_the_389_kb_npz_declaring_200m_examples_is_refused_from_its_headers(
    tmp_path: Path,
) -> None:
    path = tmp_path / "bomb.npz"
    write_zeros_npz(path, 200_000_000)
    assert path.stat().st_size < 400_000
    error, peak = peak_allocated_until_error(lambda: read_arrays(path))
    assert "declares 400,000,256 bytes once decompressed, more than 64 times" in error.message
    assert "numpy.savez" in error.message
    # The old reader grew by 2.67 GB on this file before it answered.
    assert peak < 1 * MiB


def test_converting_a_highly_compressible_npz_holds_one_chunk_at_a_time(tmp_path: Path) -> None:
    path = tmp_path / "zeros.npz"
    num_examples = 20_000_000
    write_zeros_npz(path, num_examples)
    arrays = inspect_array_file(path, max_expansion=10_000)
    sink = CountingSink()
    num_classes, peak = peak_allocated(lambda: write_normalised(arrays, sink))
    assert num_classes == 1
    assert sink.size == arrays.normalised_bytes > 12 * num_examples  # float32 x, int64 y
    # 240 MB written and 40 MB decompressed, with a few chunks of 1M values in memory.
    assert peak < 32 * MiB


def test_a_job_limit_reads_only_the_examples_it_keeps(tmp_path: Path) -> None:
    num_examples, features = 200_000, 64
    source = tmp_path / "large.safetensors"
    x = torch.arange(num_examples * features, dtype=torch.float32).reshape(num_examples, features)
    y = torch.arange(num_examples) % 10
    save_torch_safetensors({"x": x, "y": y}, str(source))
    normalised = tmp_path / "normalised.safetensors"
    with normalised.open("wb") as file:
        write_normalised(inspect_array_file(source), file)
    del x
    assert normalised.stat().st_size > 50 * MiB
    limited, peak = peak_allocated(lambda: open_normalised(normalised, 100, "large"))
    assert limited.num_examples == 100 and limited.name == "large"
    assert torch.equal(limited.x[99], torch.arange(99 * 64, 100 * 64, dtype=torch.float32))
    assert limited.y.tolist() == [index % 10 for index in range(100)]
    assert peak < 64 * 1024
    assert open_normalised(normalised).num_examples == num_examples


def test_the_normalised_copy_is_float32_x_and_int64_y_as_safetensors_reads_it(
    tmp_path: Path,
) -> None:
    x = np.arange(24, dtype=np.float64).reshape(6, 2, 2)
    y = np.array([0, 1, 2, 0, 1, 4], dtype=np.uint8)
    path = tmp_path / "data.npz"
    np.savez_compressed(path, x=x, y=y)
    arrays = inspect_array_file(path)
    normalised = tmp_path / "normalised.safetensors"
    with normalised.open("wb") as file:
        num_classes = write_normalised(arrays, file)
    assert num_classes == 5
    assert normalised.stat().st_size == arrays.normalised_bytes
    stored = load_torch_safetensors(str(normalised))
    assert stored["x"].dtype == torch.float32 and stored["y"].dtype == torch.int64
    assert torch.equal(stored["x"], torch.from_numpy(x).float())
    assert stored["y"].tolist() == y.tolist()
    assert (arrays.format, arrays.num_examples, arrays.input_shape) == ("npz", 6, (2, 2))


def npz_with_members(path: Path, members: list[tuple[str, bytes]]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # zipfile warns of a duplicate name
        with zipfile.ZipFile(path, "w") as archive:
            for name, content in members:
                archive.writestr(name, content)


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def npy_header_only(shape: tuple[int, ...]) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer, {"descr": "<f8", "fortran_order": False, "shape": shape}
    )
    return buffer.getvalue()


def test_a_member_named_x_beside_x_npy_is_refused_as_ambiguous(tmp_path: Path) -> None:
    path = tmp_path / "ambiguous.npz"
    members = [
        ("x.npy", npy(np.ones((2, 3)))),
        ("y.npy", npy(np.array([0, 1]))),
        ("x", npy_header_only((2**40,))),  # numpy.load would read this one as 'x'
    ]
    npz_with_members(path, members)
    error, peak = peak_allocated_until_error(lambda: read_arrays(path))
    assert "member named 'x', which numpy.savez never writes" in error.message
    assert peak < 1 * MiB


def test_two_members_of_one_name_are_refused_as_ambiguous(tmp_path: Path) -> None:
    path = tmp_path / "twice.npz"
    members = [
        ("x.npy", npy(np.ones((2, 3)))),
        ("x.npy", npy(np.ones((2, 3)))),
        ("y.npy", npy(np.array([0, 1]))),
    ]
    npz_with_members(path, members)
    with pytest.raises(DatasetError, match=r"several members named 'x\.npy'"):
        read_arrays(path)


def test_an_archive_of_many_members_is_refused_before_its_directory_is_read(
    tmp_path: Path,
) -> None:
    path = tmp_path / "members.npz"
    members = [("x.npy", npy(np.ones((2, 3)))), ("y.npy", npy(np.array([0, 1])))]
    npz_with_members(path, members + [(f"extra{index}", b"") for index in range(200_000)])
    error, peak = peak_allocated_until_error(lambda: read_arrays(path))
    assert "declares 200,002 members" in error.message
    # zipfile itself would have taken about 100 MiB for this directory.
    assert peak < 1 * MiB


def test_labels_past_2_to_the_63_are_refused_rather_than_wrapped(tmp_path: Path) -> None:
    path = tmp_path / "huge_labels.npz"
    np.savez(path, x=np.ones((2, 2)), y=np.array([1, 2**63 + 1], dtype=np.uint64))
    with pytest.raises(DatasetError, match="labels are class indices below"):
        read_arrays(path)


def test_a_fortran_ordered_x_is_refused_with_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "fortran.npz"
    np.savez(path, x=np.asfortranarray(np.ones((3, 2))), y=np.array([0, 1, 0]))
    with pytest.raises(DatasetError, match=r"numpy\.ascontiguousarray\(x\)"):
        read_arrays(path)


def test_examples_without_values_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "empty_rows.npz"
    np.savez(path, x=np.ones((3, 0)), y=np.array([0, 1, 0]))
    with pytest.raises(DatasetError, match="its examples hold no values"):
        read_arrays(path)


def test_mnist_and_cifar10_are_installed_only_with_every_file(tmp_path: Path) -> None:
    assert builtin_installed("digits", None)
    assert not builtin_installed("mnist", None)
    names = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte"]
    for name in names:
        (tmp_path / name).write_bytes(b"")
    assert not builtin_installed("mnist", tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(b"")
    assert builtin_installed("mnist", tmp_path)
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    for index in range(1, 5):
        (folder / f"data_batch_{index}.bin").write_bytes(b"")
    (folder / "test_batch.bin").write_bytes(b"")
    assert not builtin_installed("cifar10", tmp_path)
    (folder / "data_batch_5.bin").write_bytes(b"")
    assert builtin_installed("cifar10", tmp_path)


def test_a_dataset_header_of_many_tensors_is_refused_before_it_is_parsed(tmp_path: Path) -> None:
    # Parsed, a header of a million empty tensors (59 MB) cost about 1.9 GB; a dataset holds two.
    entries = {
        f"k{i}": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]} for i in range(30_000)
    }
    text = json.dumps(entries).encode()
    path = tmp_path / "many.safetensors"
    path.write_bytes(len(text).to_bytes(8, "little") + text)
    with pytest.raises(DatasetError, match="holds only the tensors 'x' and 'y'"):
        read_arrays(path)
