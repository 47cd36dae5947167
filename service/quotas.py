"""Per-owner quotas, so one lab's sweep cannot fill the queue or the disk for everyone.

* Queued jobs: at most ``LLFC_MAX_QUEUED_JOBS_PER_OWNER`` waiting at once; one more is refused
  (:class:`TooManyQueuedJobsError`, with a hint of when to retry). The owner's row is locked
  while counting (PostgreSQL; SQLite serialises writers anyway), so concurrent submissions
  cannot overshoot the cap.
* Stored bytes: the owner's checkpoints (``size_bytes``: what was uploaded, or what a job
  stored) and datasets (``stored_bytes``: their normalised copy) may take at most
  ``LLFC_MAX_STORED_BYTES_PER_OWNER``; an upload that would pass it, or a job that would store
  more checkpoints once it is reached, is refused (:class:`StorageQuotaError`). Each queued or
  running job that stores checkpoints holds a reservation of its worst-case output
  (``jobs.reserved_bytes``), counted with the stored bytes until the job ends, so the jobs
  accepted below the quota cannot together store past it.
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.core.config import Settings
from service.db.models import ACTIVE_STATUSES, Checkpoint, Dataset, Job, JobStatus, Owner
from service.errors import StorageQuotaError, TooManyQueuedJobsError

QUEUE_FULL_RETRY_AFTER_S = 30


def queued_jobs(session: Session, owner_id: str) -> int:
    return int(
        session.scalar(
            select(func.count())
            .select_from(Job)
            .where(Job.owner_id == owner_id, Job.status == JobStatus.QUEUED)
        )
        or 0
    )


def check_queued_jobs(session: Session, settings: Settings, owner_id: str) -> None:
    """Refuse (TooManyQueuedJobsError) a new job when the owner already has the most queued
    jobs allowed.

    Locks the owner's row until the caller's commit, so the count stays true until the new job
    is in.
    """
    session.execute(select(Owner.id).where(Owner.id == owner_id).with_for_update())
    waiting = queued_jobs(session, owner_id)
    if waiting >= settings.max_queued_jobs_per_owner:
        raise TooManyQueuedJobsError(
            f"You already have {waiting} queued jobs, the most this service keeps waiting for "
            "one owner; submit again once some have started, or cancel some.",
            retry_after_s=QUEUE_FULL_RETRY_AFTER_S,
            queued=waiting,
            limit=settings.max_queued_jobs_per_owner,
        )


def stored_bytes(session: Session, owner_id: str) -> int:
    """Bytes of the owner's checkpoints and datasets (a dataset's normalised copy, or its upload
    for rows from before normalised copies)."""
    charged = (
        (Checkpoint.owner_id, Checkpoint.size_bytes),
        (Dataset.owner_id, func.coalesce(Dataset.stored_bytes, Dataset.size_bytes)),
    )
    total = 0
    for owner_column, size in charged:
        total += int(
            session.scalar(select(func.coalesce(func.sum(size), 0)).where(owner_column == owner_id))
            or 0
        )
    return total


def reserved_bytes(session: Session, owner_id: str) -> int:
    """Bytes the owner's queued and running jobs may still store (their reservations)."""
    return int(
        session.scalar(
            select(func.coalesce(func.sum(Job.reserved_bytes), 0)).where(
                Job.owner_id == owner_id, Job.status.in_(ACTIVE_STATUSES)
            )
        )
        or 0
    )


def check_stored_bytes(
    session: Session, settings: Settings, owner_id: str, new_bytes: int, what: str
) -> None:
    """Refuse (StorageQuotaError) storing ``new_bytes`` more for the owner past the quota,
    counting what the owner's unfinished jobs have reserved.

    ``what`` names the refused thing in the sentence, e.g. "this upload".
    """
    used = stored_bytes(session, owner_id)
    reserved = reserved_bytes(session, owner_id)
    limit = settings.max_stored_bytes_per_owner
    taken = used + reserved
    if taken + new_bytes > limit or (new_bytes == 0 and taken >= limit):
        held = (
            f" and your queued and running jobs reserve {reserved:,} bytes for their outputs"
            if reserved
            else ""
        )
        wait = " or wait for your jobs to end" if reserved else ""
        raise StorageQuotaError(
            f"Your checkpoints and datasets already take {used:,} bytes{held} of the {limit:,} "
            f"bytes this service keeps for one owner, so {what} cannot be stored; delete "
            f"checkpoints or datasets you no longer need{wait}, then try again.",
            stored_bytes=used,
            reserved_bytes=reserved,
            limit=limit,
        )
