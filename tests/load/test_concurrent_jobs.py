"""200 jobs from 20 concurrent clients against two workers on PostgreSQL and Redis: all of them
finish, none runs twice, none is lost, and status polling keeps answering while they run."""

from __future__ import annotations

import math
import re
import threading
import time
from dataclasses import dataclass, field

import pytest
from sqlalchemy import create_engine, text
from support.api import FINISHED, client, upload_mlp
from support.load import NUM_CLIENTS, LoadStack

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

JOBS_PER_CLIENT = 10
NUM_JOBS = NUM_CLIENTS * JOBS_PER_CLIENT
SMALL = [64, 16, 10]
POLL_INTERVAL_S = 0.2
RUN_DEADLINE_S = 300
POLL_P99_BOUND_S = 2.0


@dataclass
class ClientRun:
    """What one client saw: its job ids, the final job bodies and every poll's latency."""

    key: str
    job_alphas: dict[str, float] = field(default_factory=dict)
    finished: dict[str, dict] = field(default_factory=dict)
    submit_latencies: list[float] = field(default_factory=list)
    poll_latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def percentile(values: list[float], fraction: float) -> float:
    """The nearest-rank percentile: the smallest value with ``fraction`` of them at or below."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def alpha_of(client_index: int, job_index: int) -> float:
    """A distinct alpha in (0, 1) for every job, so that every output is distinct bytes (at 0 or
    1 the output would be model B or A itself, which the store keeps only once)."""
    return (client_index * JOBS_PER_CLIENT + job_index + 1) / (NUM_JOBS + 1)


def run_client(
    base_url: str,
    index: int,
    models: tuple[str, str],
    start: threading.Barrier,
    run: ClientRun,
) -> None:
    """Submit this client's jobs as fast as it can, then poll each until it finished."""
    try:
        with client(base_url, run.key) as http:
            start.wait()
            for job_index in range(JOBS_PER_CLIENT):
                alpha = alpha_of(index, job_index)
                body = {
                    "kind": "interpolate",
                    "model_a": models[0],
                    "model_b": models[1],
                    "params": {"alpha": alpha},
                }
                began = time.monotonic()
                response = http.post("/v1/jobs", json=body)
                run.submit_latencies.append(time.monotonic() - began)
                assert response.status_code == 202, response.text
                run.job_alphas[response.json()["id"]] = alpha
            deadline = time.monotonic() + RUN_DEADLINE_S
            while len(run.finished) < len(run.job_alphas) and time.monotonic() < deadline:
                for job_id in run.job_alphas.keys() - run.finished.keys():
                    began = time.monotonic()
                    response = http.get(f"/v1/jobs/{job_id}")
                    run.poll_latencies.append(time.monotonic() - began)
                    assert response.status_code == 200, response.text
                    if response.json()["status"] in FINISHED:
                        run.finished[job_id] = response.json()
                time.sleep(POLL_INTERVAL_S)
    except Exception as error:  # reported by the test, with the client it happened in
        run.errors.append(f"client {index}: {type(error).__name__}: {error}")


def test_200_concurrent_jobs_all_finish_once_and_polling_stays_fast(
    load_stack: LoadStack,
) -> None:
    runs = [ClientRun(key) for key in load_stack.keys]
    pairs = []
    for index, run in enumerate(runs):
        with client(load_stack.base_url, run.key) as http:
            pairs.append(
                (upload_mlp(http, SMALL, 2 * index), upload_mlp(http, SMALL, 2 * index + 1))
            )

    start = threading.Barrier(NUM_CLIENTS)
    threads = [
        threading.Thread(
            target=run_client, args=(load_stack.base_url, index, pairs[index], start, run)
        )
        for index, run in enumerate(runs)
    ]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(RUN_DEADLINE_S + 60)
    wall_s = time.monotonic() - began

    assert [error for run in runs for error in run.errors] == []
    submitted = {job_id: alpha for run in runs for job_id, alpha in run.job_alphas.items()}
    finished = {job_id: job for run in runs for job_id, job in run.finished.items()}
    polls = [latency for run in runs for latency in run.poll_latencies]
    submits = [latency for run in runs for latency in run.submit_latencies]
    split = _jobs_named_in_worker_logs(load_stack, set(submitted))
    print(
        f"\n{NUM_JOBS} jobs from {NUM_CLIENTS} clients in {wall_s:.1f} s "
        f"({NUM_JOBS / wall_s:.1f} jobs/s); jobs named in each worker's log: {split}\n"
        f"submit: p50 {percentile(submits, 0.5) * 1000:.0f} ms, "
        f"p99 {percentile(submits, 0.99) * 1000:.0f} ms, max {max(submits) * 1000:.0f} ms\n"
        f"GET /v1/jobs/{{id}} while running: {len(polls)} polls, "
        f"p50 {percentile(polls, 0.5) * 1000:.0f} ms, p99 {percentile(polls, 0.99) * 1000:.0f} ms, "
        f"max {max(polls) * 1000:.0f} ms"
    )

    # None lost, all finished, each once.
    assert len(submitted) == NUM_JOBS
    assert set(finished) == set(submitted)
    for job_id, job in finished.items():
        assert job["status"] == "succeeded", job
        assert job["attempts"] == 1, job
        assert job["result"]["alpha"] == submitted[job_id]
        assert len(job["artifacts"]) == 1, job
    _assert_each_result_written_once(load_stack.database_url, set(submitted))
    assert all(count > 0 for count in split), f"a worker took no job: {split}"
    assert percentile(polls, 0.99) < POLL_P99_BOUND_S


def _assert_each_result_written_once(database_url: str, job_ids: set[str]) -> None:
    """In the database: every job succeeded on its first attempt, with one artifact row and one
    checkpoint it produced, and no other jobs exist."""
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            jobs = connection.execute(text("SELECT id, status, attempts FROM jobs")).all()
            artifacts = connection.execute(
                text("SELECT job_id, count(*) FROM job_artifacts GROUP BY job_id")
            ).all()
            produced = connection.execute(
                text(
                    "SELECT source_job_id, count(*) FROM checkpoints "
                    "WHERE source_job_id IS NOT NULL GROUP BY source_job_id"
                )
            ).all()
    finally:
        engine.dispose()
    assert {row.id for row in jobs} == job_ids
    assert {(row.status, row.attempts) for row in jobs} == {("succeeded", 1)}
    assert dict(artifacts) == dict.fromkeys(job_ids, 1)
    assert dict(produced) == dict.fromkeys(job_ids, 1)


def _jobs_named_in_worker_logs(load_stack: LoadStack, job_ids: set[str]) -> list[int]:
    """How many of the jobs each worker's log names (it logs each job it runs)."""
    counts = []
    for worker in load_stack.workers:
        named = set(re.findall(r"job_[0-9a-f]{32}", worker.log()))
        counts.append(len(named & job_ids))
    return counts
