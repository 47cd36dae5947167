"""The lease rules on a real (SQLite) database, without processes: the claim refuses a job that is
running with a fresh heartbeat, takes back one whose heartbeat is stale, fences the old run, and
the reaper requeues, fails or cancels lost runs; plus the quota checks and their settings."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError
from sqlalchemy import update
from sqlalchemy.orm import Session
from support.stores import migrated_engine

from service.api.problems import user_error_response
from service.core.config import Settings
from service.db.models import Checkpoint, Job, JobArtifact, JobStatus, utcnow
from service.db.session import make_sessionmaker
from service.errors import StorageQuotaError, TooManyQueuedJobsError
from service.lifecycle import (
    RunCheck,
    beat,
    cancel,
    check_run,
    claim_job,
    end_run,
    exhausted_sentence,
    reap_lost_runs,
    report_progress,
    succeed_run,
)
from service.quotas import check_queued_jobs, check_stored_bytes

LEASE_S = 30.0


@pytest.fixture()
def settings(tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path,
        heartbeat_seconds=5.0,
        lease_seconds=LEASE_S,
        max_attempts=2,
        max_queued_jobs_per_owner=2,
        max_stored_bytes_per_owner=1000,
    )


@pytest.fixture()
def session(settings: Settings) -> Iterator[Session]:
    with (
        migrated_engine(settings.resolved_database_url, {"own_1": "lab"}) as engine,
        make_sessionmaker(engine)() as session,
    ):
        yield session


def _job(session: Session, job_id: str, **values: object) -> str:
    fields: dict[str, object] = {
        "owner_id": "own_1",
        "kind": "train",
        "queue": "gpu",
        "status": "queued",
        "progress_fraction": 0.0,
        "progress_stage": "queued",
        "created_at": utcnow(),
        "attempts": 0,
        "params": {},
        "cancel_requested": False,
    }
    session.add(Job(id=job_id, **{**fields, **values}))
    session.commit()
    return job_id


def _row(session: Session, job_id: str) -> Job:
    session.expire_all()
    job = session.get(Job, job_id)
    assert job is not None
    return job


def _later(seconds: float) -> datetime:
    return utcnow() + timedelta(seconds=seconds)


def test_a_queued_job_is_claimed_once_and_a_second_delivery_is_refused(
    session: Session, settings: Settings
) -> None:
    job_id = _job(session, "job_a")
    claimed = claim_job(session, job_id, "host:101", settings)
    assert claimed is not None
    assert (claimed.status, claimed.attempts, claimed.claimed_by) == ("running", 1, "host:101")
    # Within the lease the job is someone's: a duplicate delivery does nothing.
    assert claim_job(session, job_id, "host:102", settings, now=_later(LEASE_S - 1)) is None
    assert _row(session, job_id).claimed_by == "host:101"


def test_a_stale_run_is_taken_over_and_can_no_longer_write(
    session: Session, settings: Settings
) -> None:
    job_id = _job(session, "job_b")
    assert claim_job(session, job_id, "host:101", settings) is not None
    taken = claim_job(session, job_id, "host:202", settings, now=_later(LEASE_S + 1))
    assert taken is not None
    assert (taken.attempts, taken.claimed_by) == (2, "host:202")
    assert beat(session, job_id, "host:101") is False
    assert beat(session, job_id, "host:202") is True


def test_a_run_that_keeps_its_heartbeat_fresh_keeps_its_lease(
    session: Session, settings: Settings
) -> None:
    job_id = _job(session, "job_c")
    assert claim_job(session, job_id, "host:101", settings) is not None
    assert beat(session, job_id, "host:101", now=_later(LEASE_S - 1))
    assert claim_job(session, job_id, "host:202", settings, now=_later(LEASE_S + 1)) is None
    assert reap_lost_runs(session, settings, now=_later(LEASE_S + 1)).requeued == []


def test_the_reaper_requeues_fails_or_cancels_runs_whose_heartbeat_stopped(
    session: Session, settings: Settings
) -> None:
    stale = utcnow() - timedelta(seconds=LEASE_S + 1)
    running = {"status": "running", "heartbeat_at": stale, "claimed_by": "host:1"}
    again = _job(session, "job_again", attempts=1, **running)
    exhausted = _job(session, "job_exhausted", attempts=2, **running)
    cancelled = _job(session, "job_cancelled", attempts=1, cancel_requested=True, **running)
    alive = _job(session, "job_alive", attempts=1, **{**running, "heartbeat_at": utcnow()})

    report = reap_lost_runs(session, settings)

    assert report.requeued == [again]
    assert report.failed == [exhausted]
    assert report.cancelled == [cancelled]
    requeued = _row(session, again)
    assert (requeued.status, requeued.attempts, requeued.claimed_by) == ("queued", 1, None)
    assert requeued.progress_stage == "queued again: its worker stopped answering"
    failed = _row(session, exhausted)
    assert (failed.status, failed.error) == ("failed", exhausted_sentence(2))
    assert failed.finished_at is not None
    assert _row(session, cancelled).status == "cancelled"
    assert _row(session, alive).status == "running"


def test_a_run_at_its_last_attempt_is_not_taken_over_by_a_claim(
    session: Session, settings: Settings
) -> None:
    job_id = _job(session, "job_d")
    session.execute(
        update(Job)
        .where(Job.id == job_id)
        .values(status="running", attempts=2, heartbeat_at=utcnow(), claimed_by="host:1")
    )
    session.commit()
    assert claim_job(session, job_id, "host:2", settings, now=_later(LEASE_S + 1)) is None


def test_a_fenced_run_can_neither_report_progress_nor_end_the_job(
    session: Session, settings: Settings
) -> None:
    job_id = _job(session, "job_fence")
    first = claim_job(session, job_id, "host:101", settings)
    assert first is not None
    assert check_run(session, job_id, 1) is RunCheck.HELD
    assert claim_job(session, job_id, "host:202", settings, now=_later(LEASE_S + 1)) is not None
    assert check_run(session, job_id, 1) is RunCheck.LEASE_LOST
    report_progress(session, job_id, 1, 0.7, "from the old run", utcnow())
    assert end_run(session, job_id, 1, JobStatus.FAILED, first.started_at, "old") is False
    assert (
        succeed_run(session, job_id, 1, first.started_at, {}, [("model", "ckpt_x")], [], utcnow())
        is False
    )
    row = _row(session, job_id)
    assert (row.status, row.attempts, row.progress_stage) == ("running", 2, "starting")
    assert session.query(JobArtifact).filter_by(job_id=job_id).count() == 0
    assert end_run(session, job_id, 2, JobStatus.FAILED, row.started_at, "a sentence") is True
    row = _row(session, job_id)
    assert (row.status, row.error, row.progress_stage) == ("failed", "a sentence", "failed")
    assert row.run_seconds is not None


def test_a_succeeded_run_stores_its_result_artifacts_and_metric_rows_together(
    session: Session, settings: Settings
) -> None:
    job_id = _job(session, "job_ok", kind="analyze")
    claimed = claim_job(session, job_id, "host:101", settings)
    assert claimed is not None
    metric = {"pair": "naive", "metric": "lmc_loss", "layer": None, "layer_index": None}
    assert succeed_run(
        session,
        job_id,
        1,
        claimed.started_at,
        {"loss_barrier": 0.5},
        [("model_b_permuted", "ckpt_y")],
        [{**metric, "alpha": 0.5, "value": 1.25}],
        utcnow(),
    )
    row = _row(session, job_id)
    assert (row.status, row.result, row.progress_fraction) == (
        "succeeded",
        {"loss_barrier": 0.5},
        1.0,
    )
    assert row.progress_stage == "done"
    assert [a.checkpoint_id for a in session.query(JobArtifact).filter_by(job_id=job_id)] == [
        "ckpt_y"
    ]


def test_cancel_ends_a_queued_job_at_once_and_only_flags_a_running_one(
    session: Session, settings: Settings
) -> None:
    queued = _job(session, "job_cq")
    cancel(session, queued)
    row = _row(session, queued)
    assert (row.status, row.progress_stage) == ("cancelled", "cancelled before it started")
    assert row.finished_at is not None
    assert claim_job(session, queued, "host:101", settings) is None
    running = _job(session, "job_cr")
    assert claim_job(session, running, "host:101", settings) is not None
    cancel(session, running)
    assert (_row(session, running).status, _row(session, running).cancel_requested) == (
        "running",
        True,
    )
    assert check_run(session, running, 1) is RunCheck.CANCEL_REQUESTED


def test_the_queued_job_quota_counts_only_queued_jobs_of_the_owner(
    session: Session, settings: Settings
) -> None:
    _job(session, "job_q1")
    _job(session, "job_r1", status="running")
    _job(session, "job_s1", status="succeeded")
    check_queued_jobs(session, settings, "own_1")
    _job(session, "job_q2")
    with pytest.raises(TooManyQueuedJobsError) as refused:
        check_queued_jobs(session, settings, "own_1")
    response = user_error_response(refused.value)
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "30"
    body = json.loads(response.body)
    assert (body["type"], body["queued"], body["limit"]) == ("/problems/too-many-queued-jobs", 2, 2)


def test_the_storage_quota_refuses_what_would_pass_it_and_jobs_once_it_is_reached(
    session: Session, settings: Settings
) -> None:
    session.add(
        Checkpoint(
            id="ckpt_1",
            owner_id="own_1",
            name="a",
            sha256="a" * 64,
            blob_sha256="a" * 64,
            format="safetensors",
            arch={},
            num_params=1,
            size_bytes=600,
            created_at=utcnow(),
        )
    )
    session.commit()
    check_stored_bytes(session, settings, "own_1", 400, "this upload")
    with pytest.raises(StorageQuotaError) as refused:
        check_stored_bytes(session, settings, "own_1", 401, "this upload")
    response = user_error_response(refused.value)
    assert response.status_code == 507
    body = json.loads(response.body)
    assert {key: body[key] for key in ("stored_bytes", "reserved_bytes", "limit")} == {
        "stored_bytes": 600,
        "reserved_bytes": 0,
        "limit": 1000,
    }
    check_stored_bytes(session, settings, "own_1", 0, "the checkpoints of this job")
    session.execute(update(Checkpoint).values(size_bytes=1000))
    session.commit()
    with pytest.raises(StorageQuotaError, match="the checkpoints of this job cannot be stored"):
        check_stored_bytes(session, settings, "own_1", 0, "the checkpoints of this job")


def test_settings_refuse_a_lease_shorter_than_two_heartbeats_and_a_soft_limit_past_the_hard(
    tmp_path: Path,
) -> None:
    with pytest.raises(ValidationError, match="LLFC_LEASE_SECONDS"):
        Settings(data_dir=tmp_path, heartbeat_seconds=10, lease_seconds=15)
    with pytest.raises(ValidationError, match="LLFC_JOB_SOFT_TIME_LIMIT_SECONDS"):
        Settings(data_dir=tmp_path, job_soft_time_limit_seconds=60, job_time_limit_seconds=60)
    no_soft = Settings(data_dir=tmp_path, job_soft_time_limit_seconds=0, job_time_limit_seconds=5)
    assert no_soft.job_soft_time_limit_seconds == 0
