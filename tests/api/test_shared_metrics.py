"""Request counters summed over a host's API processes (``LLFC_API_WORKERS`` > 1)."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from support.servers import serve, wait_until

from service import shared_metrics
from service.metrics import Metrics, request_lines

HEALTHZ = 'llfc_http_requests_total{method="GET",route="/healthz",status="200"}'


def _count(lines: list[str], series: str) -> float:
    (value,) = [line.split()[-1] for line in lines if line.startswith(series + " ")]
    return float(value)


def _as_other_process(monkeypatch: pytest.MonkeyPatch, pid: int) -> None:
    monkeypatch.setattr(shared_metrics.os, "getpid", lambda: pid)


def test_a_scrape_sums_its_own_live_counts_and_the_other_processes_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    this_process, other_process = Metrics(), Metrics()
    for _ in range(3):
        this_process.observe_request("GET", "/healthz", 200, 0.002)
    for _ in range(4):
        other_process.observe_request("GET", "/healthz", 200, 0.2)
    other_process.observe_request("POST", "/v1/jobs", 202, 0.03)
    other_process.count_upload_bytes(1000)
    with monkeypatch.context() as patch:
        _as_other_process(patch, 1)
        shared_metrics.publish(tmp_path, other_process)
    this_process.count_upload_bytes(24)

    lines = request_lines(shared_metrics.collect(tmp_path, this_process))

    assert _count(lines, HEALTHZ) == 7
    assert (
        _count(lines, 'llfc_http_requests_total{method="POST",route="/v1/jobs",status="202"}') == 1
    )
    healthz_latency = '{method="GET",route="/healthz"'
    assert _count(lines, f"llfc_http_request_duration_seconds_count{healthz_latency}}}") == 7
    assert (
        _count(lines, f'llfc_http_request_duration_seconds_bucket{healthz_latency},le="0.005"}}')
        == 3
    )
    assert (
        _count(lines, f'llfc_http_request_duration_seconds_bucket{healthz_latency},le="0.25"}}')
        == 7
    )
    assert _count(lines, "llfc_upload_bytes_total") == 1024


def test_a_process_publishes_at_its_end_and_a_new_service_starts_from_zero(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    metrics = Metrics()
    with shared_metrics.publishing(tmp_path, metrics):
        metrics.observe_request("GET", "/healthz", 200, 0.001)
    _as_other_process(monkeypatch, 1)  # the scrape is answered by another process
    assert _count(request_lines(shared_metrics.collect(tmp_path, Metrics())), HEALTHZ) == 1
    shared_metrics.clear(tmp_path)
    assert list(tmp_path.glob("api-*.json")) == []


def test_a_torn_or_foreign_file_is_skipped(tmp_path: Path) -> None:
    (tmp_path / "api-7.json").write_text('{"requests": [')
    metrics = Metrics()
    metrics.observe_request("GET", "/healthz", 200, 0.001)
    assert _count(request_lines(shared_metrics.collect(tmp_path, metrics)), HEALTHZ) == 1


def test_every_api_process_reports_the_requests_of_all(tmp_path: Path) -> None:
    requests = 60
    with serve(tmp_path, [], tmp_path / "serve.log", LLFC_API_WORKERS="2") as served:

        def get_healthz(_: int) -> int:
            # A connection of its own each time, so the processes take turns accepting.
            return httpx.get(f"{served.base_url}/healthz").status_code

        with ThreadPoolExecutor(max_workers=8) as pool:
            assert set(pool.map(get_healthz, range(requests))) == {200}

        def published_all() -> bool:
            # The folder itself appears with the first publication, which may come after the
            # requests have been answered.
            folders = (
                list((tmp_path / "metrics").glob("*")) if (tmp_path / "metrics").exists() else []
            )
            if not folders:
                return False
            files = list(folders[0].glob("api-*.json"))
            return (
                len(files) == 2
                and _count(request_lines(shared_metrics.collect(folders[0], Metrics())), HEALTHZ)
                == requests
            )

        wait_until(published_all, timeout=10, what="both API processes' counters on disk")
        for _ in range(6):
            text = httpx.get(f"{served.base_url}/metrics").text
            match = re.search(r"^" + re.escape(HEALTHZ) + r" (\S+)$", text, flags=re.MULTILINE)
            assert match is not None and float(match.group(1)) == requests
