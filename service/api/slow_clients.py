"""The API's HTTP protocol: uvicorn's httptools protocol with header and body read timeouts.

uvicorn closes idle keep-alive connections (``timeout_keep_alive``) and can refuse requests past
``limit_concurrency``, but it waits for a request's head and body for ever: a client sending one
header line every few seconds holds a connection, and its buffers, as long as it likes. Here a
request head not complete LLFC_HEADER_TIMEOUT_SECONDS after its first byte (or after the
connection opened) is answered 408 and the connection closed, and a request body of which no
byte arrived for LLFC_BODY_IDLE_TIMEOUT_SECONDS is cut off. The body clock stops while uvicorn
itself has paused reading (the route is not reading the body yet, or a pipelined request waits),
so a slow route is never blamed on its client.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.core.config import get_settings

logger = logging.getLogger(__name__)

_TIMEOUT_TEXT = b"The request headers did not arrive in time; send them at once.\n"
REQUEST_TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\n"
    b"content-type: text/plain; charset=utf-8\r\n"
    b"content-length: " + str(len(_TIMEOUT_TEXT)).encode() + b"\r\n"
    b"connection: close\r\n"
    b"\r\n" + _TIMEOUT_TEXT
)


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol plus the two read timeouts (settings read per process)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        settings = get_settings()
        self.header_timeout_s = settings.header_timeout_seconds
        self.body_idle_timeout_s = settings.body_idle_timeout_seconds
        self._header_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None

    # The head: from the connection's start, or from the first byte of a later request.

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[arg-type]
        self._start_header_clock()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._header_timer is None:
            self._start_header_clock()

    def on_headers_complete(self) -> None:
        self._stop_header_clock()
        super().on_headers_complete()
        self._restart_body_clock()

    def _start_header_clock(self) -> None:
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._on_header_timeout)

    def _stop_header_clock(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _on_header_timeout(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        logger.info(
            "Closing a connection whose request headers took over %gs", self.header_timeout_s
        )
        self.transport.write(REQUEST_TIMEOUT_RESPONSE)
        self.transport.close()

    # The body: the clock restarts with every chunk and stops once the request is complete.

    def on_body(self, body: bytes) -> None:
        super().on_body(body)
        self._restart_body_clock()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._stop_body_clock()

    def _restart_body_clock(self) -> None:
        self._stop_body_clock()
        self._body_timer = self.loop.call_later(self.body_idle_timeout_s, self._on_body_timeout)

    def _stop_body_clock(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _on_body_timeout(self) -> None:
        self._body_timer = None
        if self.transport.is_closing():
            return
        if self.flow.read_paused:
            # uvicorn is not reading: the wait is the route's, not the client's.
            self._restart_body_clock()
            return
        logger.info(
            "Closing a connection whose request body stalled for %gs", self.body_idle_timeout_s
        )
        self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_header_clock()
        self._stop_body_clock()
        super().connection_lost(exc)
