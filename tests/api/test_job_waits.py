"""Waiting on jobs over HTTP: the long poll, ETag and 304, the event stream and ``?ids=``.

Against a real ``llfc api`` in two processes with auth on and no worker; the jobs are rows this
test writes and changes through its own database connection, as a worker on another host
would.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import update
from support.api import client
from support.servers import TEST_METRICS_TOKEN, wait_until
from support.waits import WaitService, add_job, wait_service

from service.db.models import Job
from service.db.session import make_sessionmaker

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WaitService]:
    with wait_service(tmp_path_factory.mktemp("waits"), LLFC_API_WORKERS="2") as started:
        yield started


@pytest.fixture(scope="module")
def alice(service: WaitService) -> Iterator[httpx.Client]:
    with client(service.base_url, service.keys["alice"]) as http:
        yield http


@pytest.fixture(scope="module")
def bob(service: WaitService) -> Iterator[httpx.Client]:
    with client(service.base_url, service.keys["bob"]) as http:
        yield http


_count = iter(range(1_000_000))


def _job(service: WaitService, owner: str = "alice", status: str = "running") -> str:
    return add_job(service, f"job_wait{next(_count)}", owner, status)


def _set_later(service: WaitService, delay: float, job_id: str, **values: Any) -> None:
    """Change the job's row ``delay`` seconds from now, from this process (another "host")."""

    def change() -> None:
        time.sleep(delay)
        with make_sessionmaker(service.engine)() as session:
            session.execute(update(Job).where(Job.id == job_id).values(**values))
            session.commit()

    threading.Thread(target=change, daemon=True).start()


def _timed_get(http: httpx.Client, path: str, **kwargs: Any) -> tuple[httpx.Response, float]:
    started = time.perf_counter()
    response = http.get(path, timeout=70, **kwargs)
    return response, time.perf_counter() - started


def test_a_long_poll_answers_when_the_status_changes(
    service: WaitService, alice: httpx.Client
) -> None:
    job_id = _job(service)
    _set_later(service, 0.5, job_id, status="succeeded", progress_stage="done")
    response, took = _timed_get(alice, f"/v1/jobs/{job_id}", params={"wait": 20})
    assert response.status_code == 200
    assert response.json()["status"] == "succeeded"
    assert "Retry-After" not in response.headers
    assert 0.5 <= took < 2


def test_a_long_poll_answers_when_the_stage_changes_not_the_fraction(
    service: WaitService, alice: httpx.Client
) -> None:
    job_id = _job(service)
    _set_later(service, 0.2, job_id, progress_fraction=0.5)
    _set_later(service, 1.0, job_id, progress_stage="step 2")
    response, took = _timed_get(alice, f"/v1/jobs/{job_id}", params={"wait": 20})
    assert response.json()["progress"] == {"fraction": 0.5, "stage": "step 2"}
    assert 1.0 <= took < 2.5


def test_a_long_poll_with_nothing_changing_answers_after_its_seconds(
    service: WaitService, alice: httpx.Client
) -> None:
    job_id = _job(service)
    response, took = _timed_get(alice, f"/v1/jobs/{job_id}", params={"wait": 1})
    assert response.status_code == 200
    assert response.json()["status"] == "running"
    assert response.headers["Retry-After"]
    assert 1.0 <= took < 2


def test_a_finished_job_answers_a_long_poll_at_once(
    service: WaitService, alice: httpx.Client
) -> None:
    job_id = _job(service, status="succeeded")
    response, took = _timed_get(alice, f"/v1/jobs/{job_id}", params={"wait": 30})
    assert response.status_code == 200 and took < 1


def test_another_owners_job_is_404_at_once_without_waiting(
    service: WaitService, bob: httpx.Client
) -> None:
    job_id = _job(service)
    for path in (f"/v1/jobs/{job_id}", f"/v1/jobs/{job_id}/events"):
        response, took = _timed_get(bob, path, params={"wait": 30})
        assert response.status_code == 404 and took < 1
    response, took = _timed_get(bob, "/v1/jobs/job_unknown", params={"wait": 30})
    assert response.status_code == 404 and took < 1


@pytest.mark.parametrize("seconds", ["61", "-1", "soon"])
def test_a_wait_outside_0_to_60_seconds_is_422(
    service: WaitService, alice: httpx.Client, seconds: str
) -> None:
    response = alice.get(f"/v1/jobs/{_job(service)}", params={"wait": seconds})
    assert response.status_code == 422
    assert "wait" in response.text


def test_if_none_match_answers_304_until_the_job_changes(
    service: WaitService, alice: httpx.Client
) -> None:
    job_id = _job(service)
    first = alice.get(f"/v1/jobs/{job_id}")
    etag = first.headers["ETag"]
    unchanged = alice.get(f"/v1/jobs/{job_id}", headers={"If-None-Match": etag})
    assert unchanged.status_code == 304
    assert unchanged.content == b""
    assert unchanged.headers["ETag"] == etag and unchanged.headers["Retry-After"]
    # A change of the fraction alone is a new version too.
    _set_later(service, 0, job_id, progress_fraction=0.3)
    time.sleep(0.3)
    changed = alice.get(f"/v1/jobs/{job_id}", headers={"If-None-Match": etag})
    assert changed.status_code == 200
    assert changed.headers["ETag"] != etag
    assert changed.json()["progress"]["fraction"] == 0.3


def test_a_long_poll_with_if_none_match_waits_for_a_new_version(
    service: WaitService, alice: httpx.Client
) -> None:
    job_id = _job(service)
    etag = alice.get(f"/v1/jobs/{job_id}").headers["ETag"]
    # A stale copy is answered at once; the current one waits (here: its seconds, then 304).
    _set_later(service, 0, job_id, progress_fraction=0.2)
    time.sleep(0.3)
    stale, took = _timed_get(alice, f"/v1/jobs/{job_id}?wait=20", headers={"If-None-Match": etag})
    assert stale.status_code == 200 and took < 1
    current = stale.headers["ETag"]
    same, took = _timed_get(alice, f"/v1/jobs/{job_id}?wait=1", headers={"If-None-Match": current})
    assert same.status_code == 304 and took >= 1


def _events(http: httpx.Client, job_id: str) -> list[tuple[str, dict[str, Any]]]:
    events = []
    with http.stream("GET", f"/v1/jobs/{job_id}/events", timeout=30) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        name = ""
        for line in response.iter_lines():
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                events.append((name, json.loads(line.removeprefix("data: "))))
    return events


def test_the_event_stream_sends_progress_then_the_job_and_ends(
    service: WaitService, alice: httpx.Client
) -> None:
    job_id = _job(service)
    _set_later(service, 0.3, job_id, progress_fraction=0.5)
    _set_later(service, 0.8, job_id, progress_stage="step 2")
    _set_later(service, 1.3, job_id, status="failed", error="out of memory")
    events = _events(alice, job_id)
    names = [name for name, _ in events]
    assert names == ["progress", "progress", "progress", "job"]
    assert [data["progress"] for _, data in events[:3]] == [
        {"fraction": 0.1, "stage": "step 1"},
        {"fraction": 0.5, "stage": "step 1"},
        {"fraction": 0.5, "stage": "step 2"},
    ]
    final = events[-1][1]
    assert (final["id"], final["status"], final["error"]) == (job_id, "failed", "out of memory")


def test_the_event_stream_of_a_finished_job_is_the_job_alone(
    service: WaitService, alice: httpx.Client
) -> None:
    job_id = _job(service, status="cancelled")
    assert [name for name, _ in _events(alice, job_id)] == ["job"]


def test_ids_reads_the_owners_jobs_in_the_order_named(
    service: WaitService, alice: httpx.Client
) -> None:
    first, second = _job(service), _job(service, status="succeeded")
    bobs = _job(service, owner="bob")
    ids = ",".join([second, bobs, "job_unknown", first, second])
    response = alice.get("/v1/jobs", params={"ids": ids})
    assert response.status_code == 200
    body = response.json()
    assert [job["id"] for job in body["items"]] == [second, first]
    assert body["next_cursor"] is None


@pytest.mark.parametrize(
    ("params", "says"),
    [
        ({"ids": ",".join(f"job_{index}" for index in range(101))}, "at most 100"),
        ({"ids": " , "}, "names no job"),
        ({"ids": "job_a,job b"}, "is not a job id"),
        ({"ids": "job_a", "status": "running"}, "'status'"),
        ({"ids": "job_a", "limit": "5"}, "'limit'"),
    ],
)
def test_ids_refuses_too_many_malformed_or_combined_with_filters(
    alice: httpx.Client, params: dict[str, str], says: str
) -> None:
    response = alice.get("/v1/jobs", params=params)
    assert response.status_code == 422
    problem = response.json()
    assert says in problem["detail"]
    # A malformed request field, typed as the others are (docs/API.md, "Errors").
    assert problem["type"] == "/problems/validation"


def test_the_metrics_count_long_polls_apart_from_polls(
    service: WaitService, alice: httpx.Client
) -> None:
    job_id = _job(service)
    alice.get(f"/v1/jobs/{job_id}", params={"wait": 0.1})

    def long_polls_counted() -> bool:
        # Either process may have served it; /metrics sums them as they publish.
        token = {"Authorization": f"Bearer {TEST_METRICS_TOKEN}"}
        metrics = httpx.get(f"{service.base_url}/metrics", headers=token).text
        return 'route="/v1/jobs/{job_id}?wait"' in metrics

    wait_until(long_polls_counted, 10, "the long poll in /metrics")
