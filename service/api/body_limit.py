"""A cap on the size of every request body that is not a file upload.

File uploads (multipart/form-data) are streamed to disk under their own cap,
LLFC_MAX_UPLOAD_BYTES. Everything else is a small JSON body that FastAPI reads into memory
whole, so without a cap one request with a key could make the API hold gigabytes.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.problems import problem_response

MAX_JSON_BODY_BYTES = 1024 * 1024
TOO_LARGE_DETAIL = (
    f"The request body is larger than {MAX_JSON_BODY_BYTES:,} bytes; job and other JSON bodies "
    "must be smaller (files are uploaded as multipart/form-data)."
)


class JsonBodyLimitMiddleware:
    """Answer 413 for non-multipart bodies over MAX_JSON_BODY_BYTES, declared or streamed."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        if headers.get(b"content-type", b"").startswith(b"multipart/form-data"):
            await self.app(scope, receive, send)
            return
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > MAX_JSON_BODY_BYTES:
            response = problem_response(413, TOO_LARGE_DETAIL, type_slug="body-too-large")
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
                if received > MAX_JSON_BODY_BYTES:
                    raise HTTPException(413, TOO_LARGE_DETAIL)
            return message

        await self.app(scope, counting_receive, send)
