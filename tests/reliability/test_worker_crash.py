"""Workers killed mid-job, and jobs delivered twice, on PostgreSQL and Redis.

A job whose worker dies runs again (attempts + 1) and succeeds, or ends failed with a sentence
after LLFC_MAX_ATTEMPTS runs; it never stays running; and a second delivery of a running job
(by hand, or by Redis once its visibility timeout passed) never makes it run twice at once.
"""

from __future__ import annotations

import os
import signal
import time

from celery import Celery
from support.api import wait_for_job
from support.reliability import (
    HEARTBEAT_S,
    LEASE_S,
    MAX_ATTEMPTS,
    Stack,
    submitted,
    train_body,
)
from support.servers import wait_until

SHORT_EPOCHS = 5
"""A train job of about 4 s on two busy cores: caught running, then run again to its end."""
LONG_EPOCHS = 12
"""About 7 s: long enough to be killed at each attempt before it ends."""
ENDLESS_EPOCHS = 300
"""Minutes of training: it runs until the test cancels it."""


def test_a_killed_pool_child_leaves_its_job_to_run_again_and_succeed(stack: Stack) -> None:
    worker = stack.worker()
    with stack.http() as http:
        job_id = submitted(http, train_body(SHORT_EPOCHS, seed=1))
        os.kill(stack.running_child_pid(job_id, attempt=1), signal.SIGKILL)
        job = wait_for_job(http, job_id, timeout=120)
    assert job["status"] == "succeeded", job
    assert job["attempts"] == 2
    assert [artifact["name"] for artifact in job["artifacts"]] == ["model_0"]
    log = worker.log()
    # The worker's main process put the job back at once, without waiting for the lease.
    assert f"Job {job_id}: its worker process" in log
    assert "the job is now queued" in log


def test_a_job_whose_worker_dies_at_every_attempt_ends_failed_with_a_sentence(
    stack: Stack,
) -> None:
    stack.worker()
    with stack.http() as http:
        job_id = submitted(http, train_body(LONG_EPOCHS, seed=2))
        for attempt in range(1, MAX_ATTEMPTS + 1):
            os.kill(stack.running_child_pid(job_id, attempt), signal.SIGKILL)
        job = wait_for_job(http, job_id, timeout=60)
    assert job["status"] == "failed", job
    assert job["attempts"] == MAX_ATTEMPTS
    assert job["error"] == (
        f"The job did not finish in {MAX_ATTEMPTS} attempts: each time its worker process "
        "stopped (it was killed, crashed or ran out of memory) or lost contact with the "
        "database, and it is not run again."
    )
    assert job["finished_at"] is not None
    assert job["result"] is None


def test_a_job_left_running_by_a_killed_worker_is_taken_back_when_its_lease_expires(
    stack: Stack,
) -> None:
    stack.worker()
    with stack.http() as http:
        job_id = submitted(http, train_body(SHORT_EPOCHS, seed=3))
        stack.running_child_pid(job_id, attempt=1)
        stack.kill_worker()
        killed_at = time.monotonic()
        # No worker is left: the API's reaper alone notices the stale heartbeat.
        requeued = wait_for_job(http, job_id, statuses=("queued",), timeout=30)
        waited = time.monotonic() - killed_at
        assert waited >= LEASE_S - HEARTBEAT_S - 0.2, waited
        assert requeued["progress"]["stage"] == "queued again: its worker stopped answering"
        assert stack.job_row(job_id)["attempts"] == 1
        stack.worker()
        job = wait_for_job(http, job_id, timeout=120)
    assert job["status"] == "succeeded", job
    assert job["attempts"] == 2


def test_a_running_job_delivered_again_never_runs_twice_at_once(stack: Stack) -> None:
    worker = stack.worker()  # two pool children: one is free for the second delivery
    with stack.http() as http:
        job_id = submitted(http, train_body(ENDLESS_EPOCHS, seed=4))
        stack.running_child_pid(job_id, attempt=1)
        # A second message by hand, as a republish or another client of the broker could send.
        celery = Celery(broker=stack.redis.url)
        try:
            celery.send_task("llfc.train", args=[job_id], queue="llfc", task_id=f"again-{job_id}")
        finally:
            celery.close()

        def refused(redelivered: bool) -> bool:
            return any(
                f"Job {job_id} is not queued" in line
                and ("redelivered by the broker" in line) == redelivered
                for line in worker.log().splitlines()
            )

        # Redis hands the unacknowledged message out again once its visibility timeout passed.
        wait_until(lambda: refused(redelivered=True), 60, "Redis to deliver the message again")
        wait_until(
            lambda: f"Task llfc.train[again-{job_id}] succeeded" in worker.log(),
            60,
            "the hand-sent duplicate to be done with",
        )
        row = stack.job_row(job_id)
        assert (row["status"], row["attempts"]) == ("running", 1)
        assert http.post(f"/v1/jobs/{job_id}/cancel").status_code == 202
        job = wait_for_job(http, job_id, timeout=60)
    assert (job["status"], job["attempts"]) == ("cancelled", 1), job
    assert worker.log().count(f"Job {job_id} (train) started") == 1
