"""One sniffing function, one safetensors header parser and one zip end-record reader serve both
checkpoints and datasets; each caller gets its own error type with the same sentence."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest
import torch
from safetensors.torch import save

from llfc_core.errors import CheckpointFormatError, DatasetError
from llfc_core.file_formats import (
    HEAD_BYTES,
    SAFETENSORS_MAX_HEADER_BYTES,
    read_safetensors_header,
    read_zip_directory,
    sniff_format,
)


def test_sniffing_tells_the_three_formats_apart_by_content() -> None:
    safetensors = save({"w": torch.zeros(2)})
    archive = io.BytesIO()
    torch.save({"w": torch.zeros(2)}, archive)
    npz = io.BytesIO()
    np.savez(npz, x=np.zeros(2))
    assert sniff_format(safetensors[:HEAD_BYTES]) == "safetensors"
    assert sniff_format(archive.getvalue()[:HEAD_BYTES]) == "zip"
    assert sniff_format(npz.getvalue()[:HEAD_BYTES]) == "zip"
    assert sniff_format(b"\x80\x02}q\x00(X\x01\x00") == "pickle"
    assert sniff_format(b"GIF89a not a model"[:HEAD_BYTES]) is None
    assert sniff_format(b"PK") is None


@pytest.mark.parametrize("error", [CheckpointFormatError, DatasetError])
def test_a_header_past_the_library_limit_is_refused_with_the_callers_error(
    error: type[CheckpointFormatError] | type[DatasetError],
) -> None:
    content = (SAFETENSORS_MAX_HEADER_BYTES + 1).to_bytes(8, "little") + b"{}"
    with pytest.raises(error, match="more than the 100,000,000 allowed"):
        read_safetensors_header(io.BytesIO(content), len(content), error)


def test_the_header_is_returned_without_metadata_and_with_where_the_data_starts() -> None:
    content = save({"x": torch.ones(3)}, metadata={"format": "pt"})
    header = read_safetensors_header(io.BytesIO(content), len(content), DatasetError)
    assert list(header.entries) == ["x"]
    assert header.entries["x"]["data_offsets"] == [0, 12]
    assert header.data_start == len(content) - 12


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ([1, 2], "not a JSON object"),
        ({"x": {"dtype": "F32", "shape": [1]}}, "no valid data_offsets"),
        ({"x": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, "ends at data byte 16"),
    ],
)
def test_headers_that_do_not_describe_the_file_are_refused(header: object, message: str) -> None:
    text = json.dumps(header).encode()
    content = len(text).to_bytes(8, "little") + text + bytes(8)
    with pytest.raises(DatasetError, match=message):
        read_safetensors_header(io.BytesIO(content), len(content), DatasetError)


def test_the_zip_end_records_give_the_member_count_before_zipfile_reads_anything() -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for index in range(5):
            archive.writestr(f"member{index}", b"")
    content = buffer.getvalue()
    directory = read_zip_directory(io.BytesIO(content), len(content))
    assert directory is not None and directory.members == 5
    assert directory.directory_bytes == 5 * (46 + len("member0"))
    assert read_zip_directory(io.BytesIO(content[:-10]), len(content) - 10) is None
