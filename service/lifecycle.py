"""Every change of a job's status, in one place: submission, cancel, the claim and its lease,
progress, the end of a run, and taking back the runs that will not end.

Each change is one conditional UPDATE, so concurrent API processes and workers never undo each
other's: a job leaves ``queued`` once, and a run writes only while it holds the job's lease.

A worker process runs a job only while it holds the job's lease. The claim is one conditional
UPDATE that sets ``status='running'``, ``claimed_by='host:pid'``, a fresh ``heartbeat_at`` and
``attempts + 1``; every later write of that run (heartbeat, progress, its end) is conditional on
``attempts`` still being its number. Hence:

* a second delivery of the job's message (Redis hands an unacknowledged message out again after
  its visibility timeout; the republisher may send one twice) finds the job running with a fresh
  heartbeat and does nothing, so a job never runs twice at once;
* the worker's main process beats for the runs its pool children hold (``worker/leases.py``),
  so a run whose computing thread holds the GIL for minutes keeps its lease;
* a run whose process died stops beating; once its heartbeat is older than the lease
  (``LLFC_LEASE_SECONDS``), :func:`reap_lost_runs` (or the next claim) takes the job back:
  queued again, or failed with a sentence once it has had ``LLFC_MAX_ATTEMPTS`` runs;
* a run that lost its lease (say the database was out of reach for longer than the lease) can
  no longer write anything, and stops at its next progress report.

Timestamps come from the clocks of the API and worker machines, which must agree to well within
the lease (NTP does that).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import Enum
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.orm import Session, aliased

from service.core.config import Settings
from service.db.models import Job, JobArtifact, JobStatus, LayerMetric, Owner, SweepPair, utcnow
from service.db.session import rows_changed

QUEUED = JobStatus.QUEUED
RUNNING = JobStatus.RUNNING

WAITING_FOR_SLOT_STAGE = "waiting: your other running jobs take every slot one owner gets"
"""The stage of a queued job whose claim was refused by the per-owner running-job cap."""


def lock_owner(session: Session, owner_id: str) -> None:
    """Lock the owner's row until the caller's commit (PostgreSQL; SQLite serialises writers),
    for a count of the owner's jobs that must stay true until the change it decides."""
    session.execute(select(Owner.id).where(Owner.id == owner_id).with_for_update())


def worker_token(pid: int | None = None) -> str:
    """``host:pid`` of a worker process, what ``claimed_by`` holds while it runs a job."""
    return f"{socket.gethostname()}:{os.getpid() if pid is None else pid}"


def lease_expiry(settings: Settings, now: datetime) -> datetime:
    """Heartbeats older than this belong to runs that are taken as lost."""
    return now - timedelta(seconds=settings.lease_seconds)


def exhausted_sentence(attempts: int) -> str:
    """Why a job that kept losing its worker ends failed."""
    return (
        f"The job did not finish in {attempts} attempt{'s' if attempts != 1 else ''}: each time "
        "its worker process stopped (it was killed, crashed or ran out of memory) or lost "
        "contact with the database, and it is not run again."
    )


def hard_time_limit_sentence(limit_s: float) -> str:
    return (
        f"The job exceeded its hard time limit of {limit_s:g} s and its worker process was "
        "stopped; submit it with less work (fewer epochs, alphas or examples)."
    )


def soft_time_limit_sentence(limit_s: float) -> str:
    return (
        f"The job exceeded its time limit of {limit_s:g} s and was stopped; submit it with less "
        "work (fewer epochs, alphas or examples)."
    )


# --- Submission and cancel -----------------------------------------------------------------


def queued_job(**columns: Any) -> Job:
    """A new job row in its first state (queued, nothing run yet); the caller adds and commits
    it, then publishes it."""
    return Job(
        status=QUEUED,
        progress_fraction=0.0,
        progress_stage=QUEUED.value,
        created_at=utcnow(),
        attempts=0,
        cancel_requested=False,
        **columns,
    )


def cancel(session: Session, job_id: str) -> None:
    """Cancel a job; commit. A queued job ends ``cancelled`` now and never runs; a running one
    is asked to stop (its run reads the flag at its next progress report); a finished one is
    left as it is."""
    cancelled_now = rows_changed(
        session,
        update(Job)
        .where(Job.id == job_id, Job.status == QUEUED)
        .values(
            status=JobStatus.CANCELLED,
            cancel_requested=True,
            finished_at=utcnow(),
            progress_stage="cancelled before it started",
        ),
    )
    if not cancelled_now:
        session.execute(
            update(Job).where(Job.id == job_id, Job.status == RUNNING).values(cancel_requested=True)
        )
    session.commit()


def mark_published(session: Session, job_id: str, now: datetime) -> None:
    """Record that a still-queued job's message was just sent; commit."""
    session.execute(
        update(Job).where(Job.id == job_id, Job.status == QUEUED).values(published_at=now)
    )
    session.commit()


# --- Runs and their leases --------------------------------------------------------------------


def claim_job(
    session: Session, job_id: str, token: str, settings: Settings, now: datetime | None = None
) -> Job | None:
    """Take the lease of a queued job, or of a running one whose run is lost; commit.

    Returns the job as claimed (``attempts`` is this run's number), or None when the job is
    not takeable: finished, cancelled, running with a fresh heartbeat (a duplicate delivery),
    of a queue this worker does not consume (``LLFC_WORKER_QUEUES``: a CPU worker never takes
    a GPU job, whatever message reached it; see :func:`queue_not_consumed`), or its owner
    already runs ``LLFC_MAX_RUNNING_JOBS_PER_OWNER`` other jobs. In that last
    case the job stays queued with the stage :data:`WAITING_FOR_SLOT_STAGE`, and is published
    again when one of them ends (:func:`service.queue.publish_waiting_jobs`). The owner's row is
    locked while counting, so concurrent claims cannot pass the cap.
    """
    now = now or utcnow()
    owner_id = session.scalar(select(Job.owner_id).where(Job.id == job_id))
    if owner_id is None:
        session.commit()
        return None
    lock_owner(session, owner_id)
    other = aliased(Job)
    others_running = (
        select(func.count())
        .select_from(other)
        .where(other.owner_id == owner_id, other.status == RUNNING, other.id != job_id)
        .scalar_subquery()
    )
    takeable = or_(
        Job.status == QUEUED,
        and_(
            Job.status == RUNNING,
            Job.heartbeat_at < lease_expiry(settings, now),
            Job.attempts < settings.max_attempts,
            Job.cancel_requested.is_(False),
        ),
    )
    consumed = Job.queue.in_(settings.consumed_queues)
    claimed = rows_changed(
        session,
        update(Job)
        .where(
            Job.id == job_id,
            consumed,
            takeable,
            others_running < settings.max_running_jobs_per_owner,
        )
        .values(
            status=RUNNING,
            claimed_by=token[:200],
            started_at=now,
            heartbeat_at=now,
            attempts=Job.attempts + 1,
            progress_fraction=0.0,
            progress_stage="starting",
            error=None,
        ),
    )
    if not claimed:
        # Still queued in a queue of this worker: the owner's other running jobs hold every slot.
        session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == QUEUED, consumed)
            .values(progress_stage=WAITING_FOR_SLOT_STAGE)
        )
        session.commit()
        return None
    session.commit()
    job = session.scalars(
        select(Job).where(Job.id == job_id).execution_options(populate_existing=True)
    ).one()
    session.commit()
    return job


def queue_not_consumed(session: Session, job_id: str, settings: Settings) -> str | None:
    """The queue of ``job_id`` when it is queued in one this worker does not consume (its
    message came by the legacy queue, or was misrouted), else None; commit.

    The caller publishes the job to that queue: never one this worker reads, so a refused job
    cannot come back to it, and a failed publish leaves the job to the republisher."""
    queue = session.scalar(
        select(Job.queue).where(
            Job.id == job_id, Job.status == QUEUED, Job.queue.not_in(settings.consumed_queues)
        )
    )
    session.commit()
    return queue


def holds_lease(job_id: str, attempt: int) -> Any:
    """The WHERE clause of every write of run number ``attempt`` of a job."""
    return and_(Job.id == job_id, Job.status == RUNNING, Job.attempts == attempt)


def beat(session: Session, job_id: str, token: str, now: datetime | None = None) -> bool:
    """Refresh the heartbeat of the run that worker process ``token`` holds; commit.

    False if that process holds no run of the job (it has not claimed it yet, or the job was
    taken back). Keyed by the claim's ``claimed_by``, not its attempt, so that the worker's
    main process can beat for its pool children without asking them anything.
    """
    changed = rows_changed(
        session,
        update(Job)
        .where(Job.id == job_id, Job.status == RUNNING, Job.claimed_by == token)
        .values(heartbeat_at=now or utcnow()),
    )
    session.commit()
    return changed == 1


def _end_values(status: JobStatus, now: datetime, error: str | None = None) -> dict[str, Any]:
    """The columns a job's end sets; its stage names the status, or says "done"."""
    stage = "done" if status == JobStatus.SUCCEEDED else status.value
    return {"status": status, "finished_at": now, "progress_stage": stage, "error": error}


def release_run(
    session: Session, job_id: str, condition: Any, settings: Settings, reason: str, now: datetime
) -> JobStatus | None:
    """Take a job back from a run that will not finish, if ``condition`` still holds; commit.

    The job ends ``cancelled`` if a cancel was asked for, ``failed`` once it has had
    ``max_attempts`` runs, else it is ``queued`` again (its stage says ``reason``). Returns the
    new status, or None when the job no longer matched ``condition``.
    """
    base = update(Job).where(Job.id == job_id, condition)
    outcomes: list[tuple[Any, JobStatus, dict[str, Any]]] = [
        (
            Job.cancel_requested.is_(True),
            JobStatus.CANCELLED,
            _end_values(JobStatus.CANCELLED, now),
        ),
        (
            Job.attempts >= settings.max_attempts,
            JobStatus.FAILED,
            _end_values(JobStatus.FAILED, now),
        ),
        (
            Job.attempts < settings.max_attempts,
            QUEUED,
            {
                "status": QUEUED,
                "claimed_by": None,
                "progress_stage": reason[:200],
                "published_at": now,
            },
        ),
    ]
    for extra, status, values in outcomes:
        if status == JobStatus.FAILED:
            attempts = session.scalar(select(Job.attempts).where(Job.id == job_id)) or 0
            values["error"] = exhausted_sentence(attempts)
        if rows_changed(session, base.where(extra).values(**values)):
            session.commit()
            return status
    session.commit()
    return None


@dataclass
class ReapReport:
    """What one pass of the reaper did, by job id; the ``requeued`` ones are to be published."""

    requeued: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)


def reap_lost_runs(session: Session, settings: Settings, now: datetime | None = None) -> ReapReport:
    """Take back every running job whose heartbeat is older than the lease; commit.

    The caller publishes the requeued ones (their previous message was consumed by the lost run).
    """
    now = now or utcnow()
    expiry = lease_expiry(settings, now)
    lost = and_(Job.status == RUNNING, Job.heartbeat_at < expiry)
    candidates = list(session.scalars(select(Job.id).where(lost)))
    session.commit()
    report = ReapReport()
    for job_id in candidates:
        status = release_run(
            session, job_id, lost, settings, "queued again: its worker stopped answering", now
        )
        if status == QUEUED:
            report.requeued.append(job_id)
        elif status == JobStatus.FAILED:
            report.failed.append(job_id)
        elif status == JobStatus.CANCELLED:
            report.cancelled.append(job_id)
    return report


def release_claim_of(
    session: Session, job_id: str, token: str, settings: Settings, reason: str
) -> JobStatus | None:
    """Take a job back from the run of worker process ``token``, which is known to be gone."""
    held = and_(Job.status == RUNNING, Job.claimed_by == token)
    return release_run(session, job_id, held, settings, reason, utcnow())


def fail_claim_of(session: Session, job_id: str, token: str, sentence: str) -> bool:
    """End the run of worker process ``token`` as failed with ``sentence``; commit."""
    changed = rows_changed(
        session,
        update(Job)
        .where(Job.id == job_id, Job.status == RUNNING, Job.claimed_by == token)
        .values(**_end_values(JobStatus.FAILED, utcnow(), sentence)),
    )
    session.commit()
    return changed == 1


def report_progress(
    session: Session, job_id: str, attempt: int, fraction: float, stage: str, now: datetime
) -> None:
    """Write run ``attempt``'s progress (and so its heartbeat), if it still holds the lease;
    commit."""
    session.execute(
        update(Job)
        .where(holds_lease(job_id, attempt))
        .values(
            progress_fraction=min(max(fraction, 0.0), 1.0),
            progress_stage=stage[:200],
            heartbeat_at=now,
        )
    )
    session.commit()


class RunCheck(Enum):
    """What a run learns when it looks at its job's row."""

    HELD = "held"
    CANCEL_REQUESTED = "cancel requested"
    LEASE_LOST = "lease lost"


def check_run(session: Session, job_id: str, attempt: int) -> RunCheck:
    """Whether run ``attempt`` still holds the job's lease, and if so whether a cancel was
    asked for."""
    row = session.execute(
        select(Job.cancel_requested, Job.status, Job.attempts).where(Job.id == job_id)
    ).one_or_none()
    session.commit()
    if row is None or row.status != RUNNING or row.attempts != attempt:
        return RunCheck.LEASE_LOST
    return RunCheck.CANCEL_REQUESTED if row.cancel_requested else RunCheck.HELD


def _run_seconds(started_at: datetime | None, now: datetime) -> float | None:
    return (now - started_at).total_seconds() if started_at else None


def end_run(
    session: Session,
    job_id: str,
    attempt: int,
    status: JobStatus,
    started_at: datetime | None,
    error: str | None = None,
) -> bool:
    """End run ``attempt`` as ``failed`` (with the sentence ``error``) or ``cancelled``, if it
    still holds the lease; commit. ``started_at`` is the run's claim time."""
    now = utcnow()
    ended = rows_changed(
        session,
        update(Job)
        .where(holds_lease(job_id, attempt))
        .values(**_end_values(status, now, error), run_seconds=_run_seconds(started_at, now)),
    )
    session.commit()
    return ended == 1


def succeed_run(
    session: Session,
    job_id: str,
    attempt: int,
    started_at: datetime | None,
    result: dict[str, Any],
    artifacts: Sequence[tuple[str, str]],
    layer_metrics: Iterable[dict[str, Any]],
    now: datetime,
    sweep_pairs: Iterable[dict[str, Any]] = (),
) -> bool:
    """End run ``attempt`` succeeded with its result, artifacts (name, checkpoint id),
    per-layer metric rows and a sweep's pair rows, in the caller's transaction with the
    checkpoints it stored; commit.
    ``now`` is when its computation ended, taken before its outputs were stored.

    If the run lost its lease meanwhile (the job was taken back), everything is rolled back,
    checkpoints included, and False returned.
    """
    session.add_all(
        JobArtifact(job_id=job_id, name=name, checkpoint_id=checkpoint_id)
        for name, checkpoint_id in artifacts
    )
    session.add_all(LayerMetric(job_id=job_id, **row) for row in layer_metrics)
    session.add_all(SweepPair(job_id=job_id, **row) for row in sweep_pairs)
    finished = rows_changed(
        session,
        update(Job)
        .where(holds_lease(job_id, attempt))
        .values(
            **_end_values(JobStatus.SUCCEEDED, now),
            result=result,
            run_seconds=_run_seconds(started_at or now, now),
            progress_fraction=1.0,
        ),
    )
    if not finished:
        session.rollback()
        return False
    session.commit()
    return True
