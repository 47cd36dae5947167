"""Leases on running jobs: the claim, the heartbeat, and taking back the claims of lost runs.

A worker process runs a job only while it holds the job's lease. The claim is one conditional
UPDATE that sets ``status='running'``, ``claimed_by='host:pid'``, a fresh ``heartbeat_at`` and
``attempts + 1``; every later write of that run (heartbeat, progress, its end) is conditional on
``attempts`` still being its number. Hence:

* a second delivery of the job's message (Redis hands an unacknowledged message out again after
  its visibility timeout; the republisher may send one twice) finds the job running with a fresh
  heartbeat and does nothing, so a job never runs twice at once;
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
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from service.core.config import Settings
from service.db.models import Job, utcnow
from service.db.session import rows_changed


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


def claim_job(
    session: Session, job_id: str, token: str, settings: Settings, now: datetime | None = None
) -> Job | None:
    """Take the lease of a queued job, or of a running one whose run is lost; commit.

    Returns the job as claimed (``attempts`` is this run's number), or None when the job is
    not takeable: finished, cancelled, or running with a fresh heartbeat (a duplicate delivery).
    """
    now = now or utcnow()
    takeable = or_(
        Job.status == "queued",
        and_(
            Job.status == "running",
            Job.heartbeat_at < lease_expiry(settings, now),
            Job.attempts < settings.max_attempts,
            Job.cancel_requested.is_(False),
        ),
    )
    claimed = rows_changed(
        session,
        update(Job)
        .where(Job.id == job_id, takeable)
        .values(
            status="running",
            claimed_by=token[:200],
            started_at=now,
            heartbeat_at=now,
            attempts=Job.attempts + 1,
            progress_fraction=0.0,
            progress_stage="starting",
            error=None,
        ),
    )
    session.commit()
    if not claimed:
        return None
    job = session.scalars(
        select(Job).where(Job.id == job_id).execution_options(populate_existing=True)
    ).one()
    session.commit()
    return job


def holds_lease(job_id: str, attempt: int) -> Any:
    """The WHERE clause of every write of run number ``attempt`` of a job."""
    return and_(Job.id == job_id, Job.status == "running", Job.attempts == attempt)


def beat(session: Session, job_id: str, attempt: int, now: datetime | None = None) -> bool:
    """Refresh run ``attempt``'s heartbeat and commit; False if it no longer holds the lease."""
    changed = rows_changed(
        session,
        update(Job).where(holds_lease(job_id, attempt)).values(heartbeat_at=now or utcnow()),
    )
    session.commit()
    return changed == 1


def _end_values(status: str, now: datetime, stage: str, error: str | None) -> dict[str, Any]:
    return {"status": status, "finished_at": now, "progress_stage": stage, "error": error}


def release_run(
    session: Session, job_id: str, condition: Any, settings: Settings, reason: str, now: datetime
) -> str | None:
    """Take a job back from a run that will not finish, if ``condition`` still holds; commit.

    The job ends ``cancelled`` if a cancel was asked for, ``failed`` once it has had
    ``max_attempts`` runs, else it is ``queued`` again (its stage says ``reason``). Returns the
    new status, or None when the job no longer matched ``condition``.
    """
    base = update(Job).where(Job.id == job_id, condition)
    outcomes: list[tuple[Any, str, dict[str, Any]]] = [
        (
            Job.cancel_requested.is_(True),
            "cancelled",
            _end_values("cancelled", now, "cancelled", None),
        ),
        (
            Job.attempts >= settings.max_attempts,
            "failed",
            _end_values("failed", now, "failed", None),
        ),
        (
            Job.attempts < settings.max_attempts,
            "queued",
            {
                "status": "queued",
                "claimed_by": None,
                "progress_stage": reason[:200],
                "published_at": now,
            },
        ),
    ]
    for extra, status, values in outcomes:
        if status == "failed":
            attempts = session.scalar(select(Job.attempts).where(Job.id == job_id)) or 0
            values["error"] = exhausted_sentence(attempts)
        if rows_changed(session, base.where(extra).values(**values)):
            session.commit()
            return status
    session.commit()
    return None


@dataclass
class ReapReport:
    """What one pass of the reaper did, by job id; ``requeued`` lists (id, kind) to publish."""

    requeued: list[tuple[str, str]] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)


def reap_lost_runs(session: Session, settings: Settings, now: datetime | None = None) -> ReapReport:
    """Take back every running job whose heartbeat is older than the lease; commit.

    The caller publishes the requeued ones (their previous message was consumed by the lost run).
    """
    now = now or utcnow()
    expiry = lease_expiry(settings, now)
    lost = and_(Job.status == "running", Job.heartbeat_at < expiry)
    candidates = [
        (job_id, kind) for job_id, kind in session.execute(select(Job.id, Job.kind).where(lost))
    ]
    session.commit()
    report = ReapReport()
    for job_id, kind in candidates:
        status = release_run(
            session, job_id, lost, settings, "queued again: its worker stopped answering", now
        )
        if status == "queued":
            report.requeued.append((job_id, kind))
        elif status == "failed":
            report.failed.append(job_id)
        elif status == "cancelled":
            report.cancelled.append(job_id)
    return report


def release_claim_of(
    session: Session, job_id: str, token: str, settings: Settings, reason: str
) -> str | None:
    """Take a job back from the run of worker process ``token``, which is known to be gone."""
    held = and_(Job.status == "running", Job.claimed_by == token)
    return release_run(session, job_id, held, settings, reason, utcnow())


def fail_claim_of(session: Session, job_id: str, token: str, sentence: str) -> bool:
    """End the run of worker process ``token`` as failed with ``sentence``; commit."""
    changed = rows_changed(
        session,
        update(Job)
        .where(Job.id == job_id, Job.status == "running", Job.claimed_by == token)
        .values(**_end_values("failed", utcnow(), "failed", sentence)),
    )
    session.commit()
    return changed == 1
