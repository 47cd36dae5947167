"""Request bodies at the HTTP edge, over real sockets to the guarded `llfc serve` (auth on): the key
is checked before any body is read, multipart is streamed only by the two upload routes, and
every other body is capped at 1 MiB whatever its Content-Type.
"""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from support.security import GuardedService, assert_problem

BOUNDARY = "llfc-edge"


def _rss_kib(guarded: GuardedService) -> tuple[int, int]:
    """The API process's (current, peak) resident memory in KiB."""
    status = Path(f"/proc/{guarded.process.popen.pid}/status").read_text()
    current = re.search(r"VmRSS:\s+(\d+) kB", status)
    peak = re.search(r"VmHWM:\s+(\d+) kB", status)
    assert current is not None and peak is not None
    return int(current.group(1)), int(peak.group(1))


def _multipart_chunks(total_bytes: int, chunk_bytes: int = 1024 * 1024) -> Iterator[bytes]:
    """A multipart body of about ``total_bytes`` sent in chunks (no Content-Length: chunked)."""
    yield (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="big.bin"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    chunk = b"\0" * chunk_bytes
    for _ in range(total_bytes // chunk_bytes):
        yield chunk
    yield f"\r\n--{BOUNDARY}--\r\n".encode()


def test_a_large_chunked_multipart_job_body_without_a_key_is_refused_without_growing_the_api(
    guarded: GuardedService,
) -> None:
    current_before, peak_before = _rss_kib(guarded)
    response = httpx.post(
        f"{guarded.base_url}/v1/jobs",
        content=_multipart_chunks(256 * 1024 * 1024),
        headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
        timeout=120,
    )
    assert_problem(response, 401, "Authorization: Bearer <key>")
    current_after, peak_after = _rss_kib(guarded)
    # Parsing the form first grew the API by about twice the body; now nothing of it is kept.
    assert peak_after - peak_before < 32 * 1024, (peak_before, peak_after)
    assert current_after - current_before < 32 * 1024, (current_before, current_after)


def test_a_large_multipart_job_body_with_a_key_is_415_without_growing_the_api(
    alice: httpx.Client, guarded: GuardedService
) -> None:
    _, peak_before = _rss_kib(guarded)
    response = alice.post(
        "/v1/jobs",
        content=_multipart_chunks(64 * 1024 * 1024),
        headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
        timeout=120,
    )
    assert_problem(response, 415, "not JSON", "application/json")
    _, peak_after = _rss_kib(guarded)
    assert peak_after - peak_before < 32 * 1024, (peak_before, peak_after)


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"]
)
def test_a_job_body_that_is_not_json_is_415_before_it_is_read(
    alice: httpx.Client, content_type: str
) -> None:
    response = alice.post(
        "/v1/jobs", content=b'{"kind": "match"}', headers={"Content-Type": content_type}
    )
    assert_problem(response, 415, "not JSON", "application/json")


def _answer_to_an_unfinished_body(
    guarded: GuardedService, path: str, content_type: str, key: str | None
) -> bytes:
    """Send a request head promising 512 KiB and only 1 KiB of it, then read the answer.

    A server that reads the body before checking the key would wait for the rest; so the answer
    arriving at all proves the key was checked first.
    """
    address = urlsplit(guarded.base_url)
    authorization = f"Authorization: Bearer {key}\r\n" if key else ""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {address.hostname}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {512 * 1024}\r\n{authorization}\r\n"
    ).encode()
    with socket.create_connection((address.hostname, address.port), timeout=10) as connection:
        connection.sendall(head + b"x" * 1024)
        answer = b""
        deadline = time.monotonic() + 10
        while b"\r\n\r\n" not in answer and time.monotonic() < deadline:
            received = connection.recv(65536)
            if not received:
                break
            answer += received
    return answer


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/v1/jobs", "application/json"),
        ("/v1/jobs", "text/plain"),
        ("/v1/checkpoints", f"multipart/form-data; boundary={BOUNDARY}"),
        ("/v1/datasets", f"multipart/form-data; boundary={BOUNDARY}"),
    ],
    ids=["job-json", "job-text", "checkpoint-upload", "dataset-upload"],
)
def test_the_key_is_checked_before_the_body_is_read(
    guarded: GuardedService, path: str, content_type: str
) -> None:
    for key in (None, "llfc_not-a-key"):
        answer = _answer_to_an_unfinished_body(guarded, path, content_type, key)
        assert answer.startswith(b"HTTP/1.1 401 "), answer[:200]


def test_a_job_body_read_by_the_route_is_still_described_in_the_openapi_document(
    guarded: GuardedService,
) -> None:
    document = httpx.get(f"{guarded.base_url}/openapi.json").json()
    operation = document["paths"]["/v1/jobs"]["post"]
    body = operation["requestBody"]
    assert body["required"] is True
    schema = body["content"]["application/json"]["schema"]
    assert schema["required"] == ["kind"]
    assert {"kind", "model_a", "model_b", "dataset", "params"} <= set(schema["properties"])
    assert {"401", "413", "415", "422"} <= set(operation["responses"])
    assert json.dumps(schema).count("$ref") == 0  # inline: nothing left to resolve
