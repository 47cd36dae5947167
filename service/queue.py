"""Publishing jobs to the workers, always after the job row is committed.

A failed publish leaves the job ``queued`` in the database, which stays the record: ``llfc serve``
and ``llfc requeue`` publish every queued job again, and the worker's atomic claim makes a
duplicate message harmless.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from service.db.models import Job, utcnow
from worker.celery_app import QUEUE, TASK_NAMES, celery_app

logger = logging.getLogger(__name__)


def publish_job(job_id: str, kind: str) -> bool:
    """Send the task for a committed job; returns False (and logs) if the broker refused it."""
    try:
        celery_app.send_task(TASK_NAMES[kind], args=[job_id], queue=QUEUE)
    except Exception:
        logger.exception("Could not publish job %s; it stays queued until republished", job_id)
        return False
    return True


def requeue_interrupted(session: Session) -> list[str]:
    """Put jobs left ``running`` by a worker that is known to be gone back to ``queued``.

    Only for the embedded mode, where ``llfc serve`` owns the one worker: elsewhere a running
    job may belong to a live worker on another machine.
    """
    ids = list(session.scalars(select(Job.id).where(Job.status == "running")))
    if ids:
        # One whose cancel was requested ends cancelled rather than running again.
        session.execute(
            update(Job)
            .where(Job.id.in_(ids), Job.status == "running", Job.cancel_requested.is_(True))
            .values(status="cancelled", finished_at=utcnow(), progress_stage="cancelled")
        )
        session.execute(
            update(Job)
            .where(Job.id.in_(ids), Job.status == "running")
            .values(status="queued", progress_stage="queued again after a restart")
        )
    session.commit()
    return ids


def publish_queued(session: Session) -> int:
    """Publish every queued job again; returns how many were sent."""
    queued: Iterable[tuple[str, str]] = session.execute(
        select(Job.id, Job.kind).where(Job.status == "queued").order_by(Job.created_at)
    ).tuples()
    pending = list(queued)
    session.commit()
    return sum(publish_job(job_id, kind) for job_id, kind in pending)


def purge_broker_queue() -> int:
    """Drop every message waiting in the job queue; the caller republishes from the job rows."""
    with celery_app.connection_for_write() as connection:
        return int(connection.default_channel.queue_purge(QUEUE) or 0)
