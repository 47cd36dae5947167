"""Hostile PyTorch checkpoint archives, built from real ``torch.save`` output and re-packed with
``zipfile``, for the engine tests and the HTTP hostile-input suite."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Mapping

import torch
from torch import nn

CHUNK = bytes(1024 * 1024)


def torch_saved(state: Mapping[str, object]) -> bytes:
    buffer = io.BytesIO()
    torch.save(dict(state), buffer)
    return buffer.getvalue()


def repacked(
    saved: bytes,
    compression: int = zipfile.ZIP_STORED,
    extra_members: Mapping[str, bytes] | None = None,
) -> bytes:
    """The members of the archive ``saved``, written again with ``compression``, plus
    ``extra_members`` (named inside the archive's top folder)."""
    output = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(saved)) as source, zipfile.ZipFile(output, "w") as target:
        top = source.namelist()[0].partition("/")[0]
        for member in source.infolist():
            target.writestr(member.filename, source.read(member), compress_type=compression)
        for name, content in (extra_members or {}).items():
            target.writestr(f"{top}/{name}", content, compress_type=compression)
    return output.getvalue()


def deflate_bomb(declared_bytes: int) -> bytes:
    """``torch.save`` of a one-tensor state dict whose storage member, re-packed with DEFLATE,
    inflates to ``declared_bytes`` zeros (about 1 KB of file per MB declared)."""
    saved = torch_saved({"0.weight": torch.zeros(4)})
    output = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(saved)) as source, zipfile.ZipFile(output, "w") as target:
        for member in source.infolist():
            if member.filename.endswith("/data/0"):
                info = zipfile.ZipInfo(member.filename)
                info.compress_type = zipfile.ZIP_DEFLATED
                with target.open(info, "w", force_zip64=True) as stream:
                    for start in range(0, declared_bytes, len(CHUNK)):
                        stream.write(CHUNK[: declared_bytes - start])
            else:
                target.writestr(member, source.read(member), compress_type=zipfile.ZIP_DEFLATED)
    return output.getvalue()


def torchscript_archive() -> bytes:
    """A TorchScript archive (``torch.jit.save``): ``code/``, ``constants.pkl`` and friends."""
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(nn.Linear(2, 2)), buffer)
    return buffer.getvalue()


def torch_export_archive() -> bytes:
    """A torch.export archive (``torch.export.save``, a ``.pt2``): ``archive_format``,
    ``models/``, ``data/weights/``..."""
    buffer = io.BytesIO()
    program = torch.export.export(nn.Linear(2, 2), (torch.randn(1, 2),))
    torch.export.save(program, buffer)
    return buffer.getvalue()


def with_lying_member_size(saved: bytes, member_suffix: str, declared_bytes: int) -> bytes:
    """``saved`` with the central-directory sizes of the member ending in ``member_suffix``
    changed to ``declared_bytes`` (the data itself unchanged)."""
    patched = bytearray(saved)
    directory_entry = b"PK\x01\x02"
    position = patched.find(directory_entry)
    while position >= 0:
        name_length = int.from_bytes(patched[position + 28 : position + 30], "little")
        name = bytes(patched[position + 46 : position + 46 + name_length])
        if name.endswith(member_suffix.encode()):
            size = declared_bytes.to_bytes(4, "little")
            patched[position + 20 : position + 24] = size
            patched[position + 24 : position + 28] = size
            return bytes(patched)
        position = patched.find(directory_entry, position + 4)
    raise ValueError(f"no member ending in {member_suffix!r}")
