"""One API key's share of waits: past LLFC_MAX_WAITS_PER_KEY open long polls and event streams,
its long polls answer at once and its streams get 429, while other owners still wait.

Against a real ``llfc api`` (one process: the share is counted per process) with auth on.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack, closing

import httpx
import pytest
from support.api import client
from support.waits import WaitService, add_job, wait_service

pytestmark = pytest.mark.slow

SHARE = 2


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WaitService]:
    data_dir = tmp_path_factory.mktemp("wait-share")
    with wait_service(data_dir, LLFC_API_WORKERS="1", LLFC_MAX_WAITS_PER_KEY=str(SHARE)) as started:
        yield started


def _running_job(service: WaitService, owner: str, number: int) -> str:
    return add_job(service, f"job_share_{owner}_{number}", owner, "running")


def _open_stream(stack: ExitStack, http: httpx.Client, job_id: str) -> httpx.Response:
    response = stack.enter_context(http.stream("GET", f"/v1/jobs/{job_id}/events", timeout=30))
    if response.status_code == 200:
        # The first event says the stream is past its checks and waiting. The line iterator
        # stays open with the stream: dropping it would close the connection.
        lines = stack.enter_context(closing(response.iter_lines()))
        assert next(lines).startswith("event: ")
    else:
        response.read()
    return response


def _long_poll_seconds(http: httpx.Client, job_id: str) -> float:
    started = time.perf_counter()
    response = http.get(f"/v1/jobs/{job_id}", params={"wait": 1}, timeout=30)
    assert response.status_code == 200
    return time.perf_counter() - started


def test_a_key_past_its_share_of_waits_is_answered_at_once_and_others_still_wait(
    service: WaitService,
) -> None:
    with (
        client(service.base_url, service.keys["alice"]) as alice,
        client(service.base_url, service.keys["bob"]) as bob,
    ):
        alices = [_running_job(service, "alice", number) for number in range(SHARE + 1)]
        bobs = _running_job(service, "bob", 0)
        with ExitStack() as streams:
            held = [_open_stream(streams, alice, job_id) for job_id in alices[:SHARE]]
            assert [response.status_code for response in held] == [200] * SHARE

            refused = _open_stream(streams, alice, alices[SHARE])
            assert refused.status_code == 429
            assert refused.headers["Retry-After"]
            assert refused.json()["type"].endswith("/too-many-waits")
            assert "LLFC_MAX_WAITS_PER_KEY" in refused.json()["detail"]
            assert _long_poll_seconds(alice, alices[SHARE]) < 0.5

            assert _open_stream(streams, bob, bobs).status_code == 200
            assert _long_poll_seconds(bob, bobs) >= 1

        # The streams closed: the share is free again.
        assert _long_poll_seconds(alice, alices[SHARE]) >= 1
        with ExitStack() as streams:
            assert _open_stream(streams, alice, alices[SHARE]).status_code == 200
