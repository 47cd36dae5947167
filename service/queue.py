"""Publishing jobs to the workers, always after the job row is committed.

The database is the source of truth, the broker only a way to wake a worker: a message may be
lost (a failed publish, a broker restarted without persistence, a worker killed with messages
prefetched) or delivered twice, and a job whose owner runs the most jobs allowed at once is
left queued by its claim (published again when one of them ends, :func:`publish_waiting_jobs`).
So a job still ``queued`` some time after its last publish is published again, once a live
worker consumes its queue (:func:`republish_unclaimed`, run periodically by
``service/maintenance.py``), and the worker's atomic claim (``service/lifecycle.py``) turns every
duplicate into a no-op. Every publish goes to the job's own queue, so a job republished for any
reason still reaches only workers that take it. The broker itself (its application, queues and
task name) is ``service/broker.py``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.broker import publish_job
from service.core.config import Settings
from service.db.models import Job, JobStatus, utcnow
from service.fleet import live_consumers, registered_workers
from service.lifecycle import WAITING_FOR_SLOT_STAGE, lock_owner, mark_published, release_run

logger = logging.getLogger(__name__)

REPUBLISH_BATCH = 500
"""Most jobs one republishing pass sends; the next pass takes the rest."""


def publish_and_mark(session: Session, job_ids: Sequence[str], now: datetime | None = None) -> int:
    """Publish jobs, each to its own queue (``jobs.queue``), recording ``published_at``; stop at
    the first failure, as the broker is then down and the rest would wait for nothing. Returns
    how many were sent (a job deleted meanwhile is skipped)."""
    now = now or utcnow()
    rows = session.execute(select(Job.id, Job.queue).where(Job.id.in_(job_ids)))
    queues = {job_id: queue for job_id, queue in rows}
    session.commit()
    sent = 0
    for job_id in job_ids:
        if job_id not in queues:
            continue
        if not publish_job(job_id, queues[job_id]):
            break
        mark_published(session, job_id, now)
        sent += 1
    return sent


def publish_waiting_jobs(session: Session, settings: Settings, ended_job_id: str) -> int:
    """Publish the oldest jobs that a claim left waiting for a running-job slot, of the owner of
    ``ended_job_id`` (a job that just ended), as many as slots are free; returns how many were
    sent.

    The owner's row is locked while counting (:func:`service.lifecycle.lock_owner`), as the claim
    does: a claim refused just before the end that freed its slot has marked its job waiting
    by then, so no job waits for a wake-up that already passed.
    """
    owner_id = session.scalar(select(Job.owner_id).where(Job.id == ended_job_id))
    if owner_id is None:
        return 0
    lock_owner(session, owner_id)
    running = int(
        session.scalar(
            select(func.count())
            .select_from(Job)
            .where(Job.owner_id == owner_id, Job.status == JobStatus.RUNNING)
        )
        or 0
    )
    free_slots = settings.max_running_jobs_per_owner - running
    waiting = list(
        session.scalars(
            select(Job.id)
            .where(
                Job.owner_id == owner_id,
                Job.status == JobStatus.QUEUED,
                Job.progress_stage == WAITING_FOR_SLOT_STAGE,
            )
            .order_by(Job.created_at)
            .limit(max(free_slots, 0))
        )
    )
    session.commit()
    return publish_and_mark(session, waiting) if waiting else 0


def republish_unclaimed(session: Session, settings: Settings, now: datetime | None = None) -> int:
    """Publish again every job still queued ``republish_after_seconds`` after its last publish,
    in a queue that a live worker consumes.

    Its message may never have reached the broker, or the broker may have lost it; if it did
    not, the duplicate is refused by the claim. A queue without a live worker (the GPU machine
    is down) is left alone until one registers: its jobs' messages would only pile up, one more
    each interval, for the returning worker to wade through. Returns how many were sent.
    """
    now = now or utcnow()
    served = list(live_consumers(registered_workers(session), settings, now))
    cutoff = now - timedelta(seconds=settings.republish_after_seconds)
    last_publish = func.coalesce(Job.published_at, Job.created_at)
    stale = list(
        session.scalars(
            select(Job.id)
            .where(Job.status == JobStatus.QUEUED, last_publish < cutoff, Job.queue.in_(served))
            .order_by(Job.created_at)
            .limit(REPUBLISH_BATCH)
        )
    )
    session.commit()
    sent = publish_and_mark(session, stale, now)
    if stale:
        logger.info("Published again %d of %d job(s) queued since %s", sent, len(stale), cutoff)
    return sent


def requeue_interrupted(session: Session, settings: Settings) -> list[str]:
    """Take back every job left ``running`` by a worker that is known to be gone.

    Only for the embedded mode, where ``llfc serve`` owns the one worker: elsewhere a running
    job may belong to a live worker on another machine (the lease decides there). Each job ends
    ``cancelled`` if that was asked, ``failed`` after its last attempt, else it is queued again.
    """
    running = Job.status == JobStatus.RUNNING
    ids = list(session.scalars(select(Job.id).where(running)))
    session.commit()
    now = utcnow()
    for job_id in ids:
        release_run(session, job_id, running, settings, "queued again after a restart", now)
    return ids


def publish_queued(session: Session) -> int:
    """Publish every queued job again; returns how many were sent."""
    queued = list(
        session.scalars(
            select(Job.id).where(Job.status == JobStatus.QUEUED).order_by(Job.created_at)
        )
    )
    session.commit()
    return publish_and_mark(session, queued)
