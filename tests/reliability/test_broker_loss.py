"""Redis restarted without persistence, with jobs queued: none is lost, none runs twice.

The job rows in PostgreSQL are the record; a job still queued some seconds after its last
publish is published again by the API's maintenance sweep, and the claim makes a duplicate a
no-op.
"""

from __future__ import annotations

from support.api import wait_for_job
from support.reliability import Stack, interpolate_body, submitted


def test_jobs_queued_when_redis_loses_its_messages_all_run_once(stack: Stack) -> None:
    stack.kill_worker()  # nobody consumes: the messages wait in Redis
    with stack.http() as http:
        bodies = [interpolate_body(http, seed) for seed in (10, 20, 30)]
        queued = [submitted(http, body) for body in bodies]
        assert stack.redis.messages_waiting() >= len(queued)
        stack.redis.kill()
        # Committed and answered 202 while the broker is down; its publish failed.
        down = submitted(http, {**bodies[0], "kind": "match"})
        stack.redis.start()
        stack.worker()
        jobs = [wait_for_job(http, job_id, timeout=120) for job_id in [*queued, down]]
    assert [job["status"] for job in jobs] == ["succeeded"] * 4, jobs
    assert [job["attempts"] for job in jobs] == [1] * 4
    # Each reached the worker through the republisher, which records when it sent a job.
    assert all(stack.job_row(job["id"])["published_at"] is not None for job in jobs)
    assert f"Could not publish job {down}" in stack.api.log()


def test_the_api_and_a_running_worker_carry_on_after_redis_restarts(stack: Stack) -> None:
    stack.worker()
    with stack.http() as http:
        body = interpolate_body(http, 40)
        stack.redis.kill()
        stack.redis.start()
        job_ids = [submitted(http, body), submitted(http, {**body, "kind": "match"})]
        jobs = [wait_for_job(http, job_id, timeout=120) for job_id in job_ids]
    assert [job["status"] for job in jobs] == ["succeeded", "succeeded"], jobs
    assert [job["attempts"] for job in jobs] == [1, 1]
