"""How uploaded files are laid out, read without trusting them: which format a file is (from its
first bytes, never its name), a safetensors header, and a zip archive's end-of-directory records.

Checkpoints (:mod:`llfc_core.checkpoints`) and datasets (:mod:`llfc_core.data`) both read these
formats; each passes the error type its callers expect, so one parser gives both the same limits
and sentences.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal

from llfc_core.errors import LLFCError

FileFormat = Literal["safetensors", "zip", "pickle"]

HEAD_BYTES = 9
"""What :func:`sniff_format` needs: a safetensors file's 8-byte length and the JSON's first byte."""
SAFETENSORS_MAX_HEADER_BYTES = 100_000_000
"""The safetensors library's own limit on the JSON header."""
ZIP_LOCAL_HEADER = b"PK\x03\x04"
ZIP_END = b"PK\x05\x06"
ZIP64_END_LOCATOR = b"PK\x06\x07"
ZIP64_END = b"PK\x06\x06"
_ZIP_END_BYTES = 22
_ZIP_MAX_COMMENT_BYTES = 0xFFFF
_ZIP64_END_BYTES = 56


def sniff_format(head: bytes) -> FileFormat | None:
    """The format of a file whose first :data:`HEAD_BYTES` bytes are ``head``, or None.

    A safetensors JSON header starts right after its 8-byte length; a zip archive (a local header
    first, or only an end record when empty) or a pickle stream (protocol 2+, ``\\x80``) never has
    ``{`` at byte 8, so no file is taken for two formats.
    """
    if len(head) >= HEAD_BYTES and head[8:9] == b"{":
        return "safetensors"
    if head[:4] in (ZIP_LOCAL_HEADER, ZIP_END):
        return "zip"
    if head.startswith(b"\x80"):
        return "pickle"
    return None


def sniff_file(path: Path) -> tuple[int, FileFormat | None]:
    """The size of the file at ``path`` and its format (see :func:`sniff_format`); ``OSError``
    when it cannot be read, for the caller to say in its own words."""
    size = path.stat().st_size
    with path.open("rb") as file:
        return size, sniff_format(file.read(HEAD_BYTES))


@dataclass(frozen=True)
class SafetensorsHeader:
    """A safetensors header checked against its file: ``entries`` maps each tensor's name to its
    ``dtype``, ``shape`` and ``data_offsets`` (relative to ``data_start``), metadata left out."""

    entries: dict[str, dict[str, Any]]
    data_start: int


@dataclass(frozen=True)
class HeaderLimit:
    """The most header bytes a caller accepts, and why (said when a header is longer)."""

    max_bytes: int
    reason: str


LIBRARY_HEADER_LIMIT = HeaderLimit(SAFETENSORS_MAX_HEADER_BYTES, "the safetensors library's limit")


def read_safetensors_header(
    file: BinaryIO,
    size: int,
    error: type[LLFCError],
    limit: HeaderLimit = LIBRARY_HEADER_LIMIT,
) -> SafetensorsHeader:
    """The header of the ``size``-byte safetensors file open as ``file`` (read from its start).

    Raises ``error`` for a header that is longer than ``limit`` or than the file, not a JSON
    object, nested too deeply to parse, or with a tensor whose data offsets are missing or end
    past the file. Nothing but the header is read; the library checks dtypes and shapes. The
    limit is checked before the header is parsed: parsed, a header of a million empty tensors
    (59 MB) costs about 30 times its size in memory.
    """
    file.seek(0)
    length_bytes = file.read(8)
    if len(length_bytes) < 8:
        raise error(f"The safetensors file is truncated: it holds only {size} bytes.")
    header_length = int.from_bytes(length_bytes, "little")
    if header_length > limit.max_bytes:
        raise error(
            f"The safetensors header claims {header_length:,} bytes, more than the "
            f"{limit.max_bytes:,} allowed ({limit.reason})."
        )
    if 8 + header_length > size:
        raise error(
            f"The safetensors header claims {header_length:,} bytes but the file holds "
            f"only {size - 8:,} after the length; it is truncated or corrupt."
        )
    try:
        header = json.loads(file.read(header_length))
    except RecursionError as parse_error:
        raise error(
            "The safetensors header is nested too deeply to read; a safetensors header is an "
            "object of tensor entries, each one level deep."
        ) from parse_error
    except ValueError as parse_error:
        raise error(
            "The safetensors header is not valid JSON; the file is corrupt."
        ) from parse_error
    if not isinstance(header, dict):
        raise error("The safetensors header is not a JSON object.")
    header.pop("__metadata__", None)
    data_size = size - 8 - header_length
    for name, entry in header.items():
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
        ):
            raise error(f"The safetensors header entry for {name!r} has no valid data_offsets.")
        if offsets[1] > data_size:
            raise error(
                f"The safetensors file is truncated: tensor {name!r} ends at data byte "
                f"{offsets[1]:,} but the file holds only {data_size:,} data bytes."
            )
    return SafetensorsHeader(header, 8 + header_length)


@dataclass(frozen=True)
class ZipDirectory:
    """What a zip archive's end records declare, the larger of the classic and zip64 values."""

    members: int
    directory_bytes: int


def read_zip_directory(file: BinaryIO, size: int) -> ZipDirectory | None:
    """The member count and central-directory size the archive ``file`` of ``size`` bytes
    declares at its end, or None when it has no end record (it is truncated or not a zip).

    ``zipfile`` reads the central directory whole and makes an object per entry, so an upload
    can declare millions; callers check these numbers before anything else parses the archive.
    The zip64 record counts as well: torch writes it, and readers prefer it.
    """
    tail_length = min(size, _ZIP_END_BYTES + _ZIP_MAX_COMMENT_BYTES)
    file.seek(size - tail_length)
    tail = file.read(tail_length)
    end = tail.rfind(ZIP_END)
    if end < 0 or end + _ZIP_END_BYTES > len(tail):
        return None
    members = [int.from_bytes(tail[end + 10 : end + 12], "little")]
    directory_bytes = [int.from_bytes(tail[end + 12 : end + 16], "little")]
    locator = end - 20
    if locator >= 0 and tail[locator : locator + 4] == ZIP64_END_LOCATOR:
        file.seek(int.from_bytes(tail[locator + 8 : locator + 16], "little"))
        record = file.read(_ZIP64_END_BYTES)
        if len(record) == _ZIP64_END_BYTES and record[:4] == ZIP64_END:
            members.append(int.from_bytes(record[32:40], "little"))
            directory_bytes.append(int.from_bytes(record[40:48], "little"))
    return ZipDirectory(max(members), max(directory_bytes))
