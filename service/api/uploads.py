"""Multipart uploads read straight from the socket into the blob store.

Starlette's form parser would spool the whole body before the handler runs; here the ``file``
part is hashed and written chunk by chunk as it arrives, and the request is refused with 413 the
moment it passes the cap, without reading the rest. Small text fields (``arch``, ``name``) are
kept in memory under their own cap.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fastapi import Request
from python_multipart.multipart import MultipartParser, parse_options_header

from service.api.problems import ProblemError
from service.metrics import METRICS
from service.storage import BlobStore, IncomingBlob, UploadTooLargeError

MAX_TEXT_FIELD_BYTES = 64 * 1024
FORM_OVERHEAD_BYTES = 256 * 1024
"""Room for boundaries, part headers and text fields on top of the file itself."""


@dataclass
class MultipartUpload:
    """The text fields and the (not yet validated) file of one multipart request."""

    fields: dict[str, str]
    file: IncomingBlob | None
    filename: str | None = None


@dataclass
class _PartState:
    headers: dict[bytes, bytes] = field(default_factory=dict)
    header_field: bytes = b""
    header_value: bytes = b""
    name: str | None = None
    is_file: bool = False
    text: bytearray = field(default_factory=bytearray)


def _bad_request(detail: str) -> ProblemError:
    return ProblemError(422, detail, type_slug="invalid-upload")


async def receive_multipart(
    request: Request,
    store: BlobStore,
    max_file_bytes: int,
    file_field: str = "file",
    text_fields: tuple[str, ...] = ("name",),
) -> MultipartUpload:
    """Stream a ``multipart/form-data`` body: ``file_field`` into the store, ``text_fields`` kept.

    Other parts are read past and dropped. The caller owns the returned ``file`` and must
    commit or discard it.
    """
    content_type, options = parse_options_header(request.headers.get("content-type"))
    boundary = options.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary:
        raise ProblemError(
            415,
            "Send this upload as multipart/form-data with a 'file' part.",
            type_slug="unsupported-media-type",
        )
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_file_bytes + FORM_OVERHEAD_BYTES:
        raise UploadTooLargeError(max_file_bytes)

    upload = MultipartUpload(fields={}, file=None)
    part = _PartState()
    finished = False

    def on_part_begin() -> None:
        nonlocal part
        part = _PartState()

    def on_header_field(data: bytes, start: int, end: int) -> None:
        part.header_field += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        part.header_value += data[start:end]

    def on_header_end() -> None:
        part.headers[part.header_field.lower()] = part.header_value
        part.header_field, part.header_value = b"", b""

    def on_headers_finished() -> None:
        _, disposition = parse_options_header(part.headers.get(b"content-disposition"))
        name = disposition.get(b"name")
        part.name = name.decode("utf-8", "replace") if name is not None else None
        if part.name == file_field:
            if upload.file is not None:
                raise _bad_request(f"Send exactly one '{file_field}' part.")
            filename = disposition.get(b"filename")
            upload.filename = filename.decode("utf-8", "replace") if filename else None
            upload.file = store.incoming(max_file_bytes)
            part.is_file = True

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if part.is_file:
            assert upload.file is not None
            upload.file.write(data[start:end])
        elif part.name in text_fields:
            part.text += data[start:end]
            if len(part.text) > MAX_TEXT_FIELD_BYTES:
                raise _bad_request(
                    f"The form field '{part.name}' is longer than {MAX_TEXT_FIELD_BYTES:,} bytes."
                )

    def on_part_end() -> None:
        if not part.is_file and part.name in text_fields:
            try:
                upload.fields[part.name] = part.text.decode("utf-8")
            except UnicodeDecodeError as error:
                raise _bad_request(f"The form field '{part.name}' is not UTF-8 text.") from error

    def on_end() -> None:
        nonlocal finished
        finished = True

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
            "on_end": on_end,
        },
    )
    try:
        async for chunk in request.stream():
            parser.write(chunk)
        parser.finalize()
    except (ProblemError, UploadTooLargeError):
        if upload.file is not None:
            upload.file.discard()
        raise
    except Exception as error:
        if upload.file is not None:
            upload.file.discard()
        raise _bad_request(f"The multipart body could not be parsed ({error}).") from error
    if not finished:
        if upload.file is not None:
            upload.file.discard()
        raise _bad_request("The multipart body ended before its closing boundary.")
    if upload.file is None:
        raise _bad_request(f"The upload has no '{file_field}' part.")
    return upload


@dataclass
class ReceivedUpload:
    """A whole multipart upload whose file part arrived (not yet validated)."""

    file: IncomingBlob
    fields: dict[str, str]
    filename: str | None


async def receive_upload(
    request: Request, store: BlobStore, max_file_bytes: int, text_fields: tuple[str, ...]
) -> ReceivedUpload:
    """:func:`receive_multipart` for an upload route: the file part is there, and its bytes are
    counted in the upload metrics."""
    upload = await receive_multipart(request, store, max_file_bytes, text_fields=text_fields)
    assert upload.file is not None  # receive_multipart refuses a body without one
    METRICS.count_upload_bytes(upload.file.size)
    return ReceivedUpload(upload.file, upload.fields, upload.filename)
