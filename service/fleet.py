"""The fleet of workers: their registry rows, and what it says of each queue.

Each ``llfc worker`` main process writes its ``workers`` row at start and every
``LLFC_HEARTBEAT_SECONDS`` (``worker/registry.py``) and deletes it when it stops cleanly. A row
whose heartbeat is within ``LLFC_LEASE_SECONDS`` is a live consumer of its queues, the same
freshness that keeps a running job's lease; a worker killed outright leaves a row that stops
counting after the lease and is deleted by the maintenance sweep a day later. ``/readyz`` and
``/metrics`` read this module.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from service.core.config import Settings
from service.db.models import Job, JobStatus, Worker, utcnow
from service.db.session import rows_changed
from service.lifecycle import lease_expiry

WORKER_ROW_MAX_AGE = timedelta(days=1)
"""A worker row whose last heartbeat is older is deleted by the maintenance sweep."""


@dataclass(frozen=True)
class WorkerIdentity:
    """What a worker's row says of it, known at its start from its settings alone."""

    name: str
    queues: list[str]
    device: str
    gpus: str | None


@dataclass(frozen=True)
class QueueState:
    """One logical queue: its live consumers and the jobs waiting in it."""

    consumers: int
    queued: int


def beat_worker(
    session: Session, worker: WorkerIdentity, started_at: datetime, now: datetime | None = None
) -> None:
    """Write the worker's row with a fresh heartbeat, creating it if missing; commit.

    The row is updated first: only this worker process writes it, so the insert that follows a
    missed update cannot race another writer (a row deleted by the sweep is made again)."""
    now = now or utcnow()
    values = {"queues": worker.queues, "device": worker.device, "gpus": worker.gpus}
    updated = rows_changed(
        session,
        update(Worker).where(Worker.name == worker.name).values(last_heartbeat_at=now, **values),
    )
    if not updated:
        session.add(
            Worker(name=worker.name, started_at=started_at, last_heartbeat_at=now, **values)
        )
    session.commit()


def remove_worker(session: Session, name: str) -> None:
    """Delete the row of a worker that stops cleanly; commit."""
    session.execute(delete(Worker).where(Worker.name == name))
    session.commit()


def prune_workers(session: Session, now: datetime | None = None) -> int:
    """Delete the rows of workers silent for :data:`WORKER_ROW_MAX_AGE`; commit; how many."""
    cutoff = (now or utcnow()) - WORKER_ROW_MAX_AGE
    pruned = rows_changed(session, delete(Worker).where(Worker.last_heartbeat_at < cutoff))
    session.commit()
    return pruned


def registered_workers(session: Session) -> list[Worker]:
    """Every worker row, by name (live or not: their heartbeats' ages say which)."""
    return list(session.scalars(select(Worker).order_by(Worker.name)))


def live_consumers(workers: Sequence[Worker], settings: Settings, now: datetime) -> Counter[str]:
    """How many live workers consume each queue."""
    expiry = lease_expiry(settings, now)
    return Counter(
        queue
        for worker in workers
        if worker.last_heartbeat_at >= expiry
        for queue in dict.fromkeys(worker.queues)
    )


def queue_states(
    session: Session, settings: Settings, workers: Sequence[Worker], now: datetime
) -> dict[str, QueueState]:
    """Every queue the rules route to, holds queued jobs or has a live consumer, by name."""
    rows = session.execute(
        select(Job.queue, func.count()).where(Job.status == JobStatus.QUEUED).group_by(Job.queue)
    )
    queued = {queue: int(count) for queue, count in rows}
    consumers = live_consumers(workers, settings, now)
    names = sorted({*settings.routed_queues, *queued, *consumers})
    return {name: QueueState(consumers[name], queued.get(name, 0)) for name in names}


def unserved_queues_sentence(
    states: dict[str, QueueState], settings: Settings, with_counts: bool = True
) -> str | None:
    """A sentence naming each queue that jobs are routed to or wait in while no live worker
    consumes it (with its queued jobs when ``with_counts``), or None when every such queue has
    one."""
    routed = set(settings.routed_queues)
    unserved = [
        f"'{name}'"
        + (f" ({state.queued} job{'s' if state.queued != 1 else ''} queued)" if with_counts else "")
        for name, state in states.items()
        if state.consumers == 0 and (name in routed or state.queued)
    ]
    if not unserved:
        return None
    return (
        f"No live worker consumes the queue{'s' if len(unserved) > 1 else ''} "
        f"{', '.join(unserved)}: jobs routed there wait until a worker with that queue in "
        "LLFC_WORKER_QUEUES starts (or its heartbeat comes back)."
    )
