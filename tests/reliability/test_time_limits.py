"""Soft and hard time limits per job (LLFC_JOB_SOFT_TIME_LIMIT_SECONDS and
LLFC_JOB_TIME_LIMIT_SECONDS): a job past the soft one stops and ends failed with a sentence; one
past the hard one is killed with its pool child, ends failed with a sentence, and the worker goes
on serving."""

from __future__ import annotations

import os

from support.api import wait_for_job
from support.reliability import Stack, interpolate_body, submitted, train_body
from support.servers import wait_until

ENDLESS_EPOCHS = 300
"""Minutes of training: only a time limit ends it within the test."""


def test_a_job_past_its_soft_time_limit_stops_and_ends_failed_with_a_sentence(
    stack: Stack,
) -> None:
    stack.worker(LLFC_JOB_SOFT_TIME_LIMIT_SECONDS="2", LLFC_JOB_TIME_LIMIT_SECONDS="60")
    with stack.http() as http:
        job = wait_for_job(http, submitted(http, train_body(ENDLESS_EPOCHS, seed=20)), timeout=60)
    assert job["status"] == "failed", job
    assert job["error"] == (
        "The job exceeded its time limit of 2 s and was stopped; submit it with less work "
        "(fewer epochs, alphas or examples)."
    )
    assert job["attempts"] == 1
    assert job["artifacts"] == []


def test_a_job_past_its_hard_time_limit_is_killed_and_the_worker_goes_on(stack: Stack) -> None:
    # No soft limit: the job never stops by itself, as one stuck in native code would not.
    worker = stack.worker(LLFC_JOB_SOFT_TIME_LIMIT_SECONDS="0", LLFC_JOB_TIME_LIMIT_SECONDS="3")
    with stack.http() as http:
        job_id = submitted(http, train_body(ENDLESS_EPOCHS, seed=21))
        child = stack.running_child_pid(job_id, attempt=1)
        job = wait_for_job(http, job_id, timeout=60)
        assert job["status"] == "failed", job
        assert job["error"] == (
            "The job exceeded its hard time limit of 3 s and its worker process was stopped; "
            "submit it with less work (fewer epochs, alphas or examples)."
        )
        assert job["attempts"] == 1
        wait_until(lambda: not os.path.exists(f"/proc/{child}"), 30, "the child to be gone")
        after = wait_for_job(http, submitted(http, interpolate_body(http, 50)), timeout=120)
    assert after["status"] == "succeeded", after
    assert f"Job {job_id} killed at its hard time limit of 3s" in worker.log()
