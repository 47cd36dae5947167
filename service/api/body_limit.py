"""A cap on the size of every request body except a file upload to an upload route.

File uploads (multipart/form-data to POST /v1/checkpoints and POST /v1/datasets) are streamed to
disk under their own cap, LLFC_MAX_UPLOAD_BYTES, after the key was checked. Every other body,
whatever its Content-Type, is small JSON or nothing, so it is cut off at MAX_BODY_BYTES: a
multipart body sent elsewhere is not a way around the cap.
"""

from __future__ import annotations

from collections.abc import Iterable

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.problems import problem_response

MAX_BODY_BYTES = 1024 * 1024
TOO_LARGE_DETAIL = (
    f"The request body is larger than {MAX_BODY_BYTES:,} bytes; job and other JSON bodies "
    "must be smaller (files are uploaded as multipart/form-data to /v1/checkpoints and "
    "/v1/datasets)."
)


class BodyLimitMiddleware:
    """Answer 413 for bodies over MAX_BODY_BYTES, declared or streamed, except multipart
    uploads POSTed to one of ``upload_paths``."""

    def __init__(self, app: ASGIApp, upload_paths: Iterable[str]) -> None:
        self.app = app
        self.upload_paths = frozenset(upload_paths)

    def _is_upload(self, scope: Scope, headers: dict[bytes, bytes]) -> bool:
        return (
            scope["method"] == "POST"
            and scope["path"] in self.upload_paths
            and headers.get(b"content-type", b"").startswith(b"multipart/form-data")
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        if self._is_upload(scope, headers):
            await self.app(scope, receive, send)
            return
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            response = problem_response(
                413, TOO_LARGE_DETAIL, type_slug="body-too-large", headers={"Connection": "close"}
            )
            await response(scope, receive, send)
            return

        received = 0

        async def counting_receive() -> Message:
            # A body streamed without Content-Length is counted as it arrives; the route's
            # body reader passes the HTTPException on, and the problem handler answers it.
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > MAX_BODY_BYTES:
                    raise HTTPException(413, TOO_LARGE_DETAIL, headers={"Connection": "close"})
            return message

        await self.app(scope, counting_receive, send)
