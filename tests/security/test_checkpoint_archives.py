"""Hostile checkpoint archives against a running `llfc serve`: TorchScript archives, zip bombs,
foreign or lying members, the legacy format and deeply nested safetensors headers are refused
with a 422 sentence before torch parses them, and the server keeps serving."""

from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch
from support.api import mlp_arch, mlp_state, upload_checkpoint
from support.checkpoint_archives import (
    deflate_bomb,
    repacked,
    torch_saved,
    torchscript_archive,
    with_lying_member_size,
)
from support.security import MAX_UPLOAD_BYTES, GuardedService, assert_problem

SMALL = [64, 16, 10]


@pytest.fixture(autouse=True)
def server_keeps_serving(guarded: GuardedService) -> Iterator[None]:
    yield
    assert guarded.is_serving(), guarded.process.log()[-3000:]


def _peak_rss_kib(guarded: GuardedService) -> int:
    status = Path(f"/proc/{guarded.process.popen.pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1))  # type: ignore[union-attr]


def test_a_deflate_bomb_checkpoint_is_refused_without_inflating_it(
    alice: httpx.Client, guarded: GuardedService
) -> None:
    declared = 800 * 2**20
    bomb = deflate_bomb(declared)
    assert len(bomb) < MAX_UPLOAD_BYTES
    peak_before = _peak_rss_kib(guarded)
    response = upload_checkpoint(alice, bomb, mlp_arch(SMALL))
    assert_problem(response, 422, "is compressed, which torch.save never does")
    assert _peak_rss_kib(guarded) - peak_before < 100 * 1024


@pytest.mark.filterwarnings("ignore:`torch.jit.s:DeprecationWarning")
def test_a_torchscript_archive_is_refused(alice: httpx.Client) -> None:
    response = upload_checkpoint(alice, torchscript_archive(), mlp_arch([2, 2]))
    assert_problem(
        response, 422, "This is a TorchScript archive (torch.jit.save); its loader unpickles"
    )


@pytest.mark.parametrize(
    ("make_file", "phrase"),
    [
        (
            lambda saved: repacked(saved, extra_members={"constants.pkl": b"\x80\x02N."}),
            "constants.pkl, which torch.save does not write",
        ),
        (
            lambda saved: repacked(saved, compression=zipfile.ZIP_DEFLATED),
            "is compressed, which torch.save never does",
        ),
        (
            lambda saved: with_lying_member_size(saved, "/data/0", 900_000_000),
            "declares 900,000,000 bytes",
        ),
    ],
    ids=["foreign-member", "compressed", "lying-size"],
)
def test_a_re_packed_torch_archive_is_refused(
    alice: httpx.Client, make_file: object, phrase: str
) -> None:
    saved = torch_saved(mlp_state(SMALL, 5))
    response = upload_checkpoint(alice, make_file(saved), mlp_arch(SMALL))  # type: ignore[operator]
    assert_problem(response, 422, phrase)


def test_more_tensor_data_than_the_arch_can_hold_is_refused(alice: httpx.Client) -> None:
    response = upload_checkpoint(
        alice, torch_saved({"0.weight": torch.zeros(200_000)}), mlp_arch([4, 3, 2])
    )
    assert_problem(response, 422, "800,000 bytes of tensor data, more than the mlp arch")


def test_the_legacy_torch_format_is_refused_with_how_to_re_save(alice: httpx.Client) -> None:
    buffer = io.BytesIO()
    torch.save(mlp_state(SMALL, 6), buffer, _use_new_zipfile_serialization=False)
    response = upload_checkpoint(alice, buffer.getvalue(), mlp_arch(SMALL))
    assert_problem(response, 422, "legacy (pre-1.6) format", "Re-save it with torch.save")


def test_a_safetensors_header_nested_thousands_deep_is_refused(alice: httpx.Client) -> None:
    header = b'{"__metadata__":' + b"[" * 3000 + b"]" * 3000 + b"}"
    content = len(header).to_bytes(8, "little") + header
    response = upload_checkpoint(alice, content, mlp_arch(SMALL), filename="deep.safetensors")
    assert_problem(response, 422, "nested too deeply")
