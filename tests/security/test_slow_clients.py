"""Slow clients against a real `llfc serve` with short read timeouts, over raw sockets: a request
head trickling in one header line at a time and a body that stalls are both cut off within their
timeout, and ordinary requests keep being answered meanwhile.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest
from support.servers import Served, serve

HEADER_TIMEOUT_S = 2.0
BODY_IDLE_TIMEOUT_S = 2.0
SLOW_CONNECTIONS = 6
TRICKLE_EVERY_S = 0.5
"""Far below either timeout: every connection here is busy, just slow."""


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    data_dir = tmp_path_factory.mktemp("slow-clients")
    with serve(
        data_dir,
        [],
        data_dir / "serve.log",
        LLFC_DEVICE="cpu",
        LLFC_WORKER_STOP_GRACE_SECONDS="1",
        LLFC_HEADER_TIMEOUT_SECONDS=str(HEADER_TIMEOUT_S),
        LLFC_BODY_IDLE_TIMEOUT_SECONDS=str(BODY_IDLE_TIMEOUT_S),
    ) as running:
        yield running


def _connect(served: Served) -> socket.socket:
    address = urlsplit(served.base_url)
    assert address.hostname is not None and address.port is not None
    return socket.create_connection((address.hostname, address.port), timeout=1)


def _is_closed(connection: socket.socket) -> tuple[bool, bytes]:
    """Whether the server closed ``connection``, and what it sent before closing."""
    received = b""
    try:
        while chunk := connection.recv(65536):
            received += chunk
    except (TimeoutError, BlockingIOError):
        return False, received
    except ConnectionResetError:
        return True, received
    return True, received


def test_connections_trickling_header_lines_are_closed_within_the_header_timeout(
    served: Served,
) -> None:
    connections = [_connect(served) for _ in range(SLOW_CONNECTIONS)]
    for connection in connections:
        connection.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    started = time.monotonic()
    closed_after: dict[int, float] = {}
    answers: dict[int, bytes] = {}
    line = 0
    while (
        len(closed_after) < SLOW_CONNECTIONS and time.monotonic() - started < 4 * HEADER_TIMEOUT_S
    ):
        line += 1
        for index, connection in enumerate(connections):
            if index in closed_after:
                continue
            try:
                connection.sendall(f"X-Slow-{line}: {'a' * 20}\r\n".encode())
            except (BrokenPipeError, ConnectionResetError):
                closed_after[index] = time.monotonic() - started
                continue
            connection.settimeout(TRICKLE_EVERY_S / SLOW_CONNECTIONS)
            closed, received = _is_closed(connection)
            if closed:
                closed_after[index] = time.monotonic() - started
                answers[index] = received
        # Ordinary requests are answered while the slow connections are open.
        assert httpx.get(f"{served.base_url}/healthz", timeout=5).status_code == 200
    for connection in connections:
        connection.close()
    assert len(closed_after) == SLOW_CONNECTIONS, closed_after
    assert max(closed_after.values()) < HEADER_TIMEOUT_S + 1.5, closed_after
    for received in answers.values():
        assert received == b"" or received.startswith(b"HTTP/1.1 408 "), received[:100]


def test_a_request_body_that_stalls_is_cut_off_after_the_body_idle_timeout(
    served: Served,
) -> None:
    connection = _connect(served)
    connection.sendall(
        b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000\r\n\r\n" + b'{"kind": "match", "params": {"padding": "'
    )
    started = time.monotonic()
    connection.settimeout(4 * BODY_IDLE_TIMEOUT_S)
    closed, _ = _is_closed(connection)
    elapsed = time.monotonic() - started
    connection.close()
    assert closed
    assert BODY_IDLE_TIMEOUT_S - 0.5 < elapsed < BODY_IDLE_TIMEOUT_S + 1.5, elapsed
    assert httpx.get(f"{served.base_url}/healthz", timeout=5).status_code == 200


def test_a_request_body_sent_slowly_but_steadily_is_answered(served: Served) -> None:
    body = b'{"kind": "nonsense"}'
    connection = _connect(served)
    connection.sendall(
        b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
    )
    # Each pause is below the idle timeout, their sum above it: only silence counts.
    pieces = [body[index : index + 4] for index in range(0, len(body), 4)]
    for piece in pieces:
        time.sleep(BODY_IDLE_TIMEOUT_S / 2)
        connection.sendall(piece)
    connection.settimeout(10)
    closed, received = _is_closed(connection)
    connection.close()
    assert closed
    assert received.startswith(b"HTTP/1.1 422 "), received[:200]
    assert len(pieces) * BODY_IDLE_TIMEOUT_S / 2 > BODY_IDLE_TIMEOUT_S
