"""The lease rules on a real (SQLite) database, without processes: the claim refuses a job that is
running with a fresh heartbeat, takes back one whose heartbeat is stale, fences the old run, and
the reaper requeues, fails or cancels lost runs; plus the quota checks and their settings."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from alembic.command import upgrade
from pydantic import ValidationError
from sqlalchemy import update
from sqlalchemy.orm import Session

from service.api.problems import ProblemError
from service.core.config import Settings
from service.db.migrate import alembic_config
from service.db.models import Checkpoint, Job, Owner, utcnow
from service.db.session import make_engine, make_sessionmaker
from service.leases import beat, claim_job, exhausted_sentence, reap_lost_runs
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
    url = settings.resolved_database_url
    upgrade(alembic_config(url), "head")
    engine = make_engine(url)
    with make_sessionmaker(engine)() as session:
        session.add(Owner(id="own_1", name="lab"))
        session.commit()
        yield session
    engine.dispose()


def _job(session: Session, job_id: str, **values: object) -> str:
    fields: dict[str, object] = {
        "owner_id": "own_1",
        "kind": "train",
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

    assert report.requeued == [(again, "train")]
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


def test_the_queued_job_quota_counts_only_queued_jobs_of_the_owner(
    session: Session, settings: Settings
) -> None:
    _job(session, "job_q1")
    _job(session, "job_r1", status="running")
    _job(session, "job_s1", status="succeeded")
    check_queued_jobs(session, settings, "own_1")
    _job(session, "job_q2")
    with pytest.raises(ProblemError) as refused:
        check_queued_jobs(session, settings, "own_1")
    assert refused.value.status == 429
    assert refused.value.headers == {"Retry-After": "30"}
    assert refused.value.extra == {"queued": 2, "limit": 2}


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
    with pytest.raises(ProblemError) as refused:
        check_stored_bytes(session, settings, "own_1", 401, "this upload")
    assert refused.value.status == 507
    assert refused.value.extra == {"stored_bytes": 600, "reserved_bytes": 0, "limit": 1000}
    check_stored_bytes(session, settings, "own_1", 0, "the checkpoints of this job")
    session.execute(update(Checkpoint).values(size_bytes=1000))
    session.commit()
    with pytest.raises(ProblemError, match="the checkpoints of this job cannot be stored"):
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
