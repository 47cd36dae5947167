"""Which queue a job goes to, decided once at submission by ``LLFC_QUEUE_ROUTES`` and stored
in ``jobs.queue`` (the Celery queue carrying each one's messages is ``service/broker.py``'s).

A logical queue (``gpu``, ``cpu``) is a class of worker: jobs that need a GPU (training, STE
matching, large models) go where only GPU workers consume. The rules are data
(:class:`service.core.config.QueueRoute`): the first whose conditions all hold names the queue,
and the last has none, so every job gets one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from service.core.config import QueueRoute
from service.db.models import JobKind

METHOD_PARAMS = {
    JobKind.MATCH: "method",
    JobKind.MERGE: "method",
    JobKind.ANALYZE: "match",
    JobKind.SWEEP: "match",
}
"""The param holding each kind's matching (or merging) method, which routing rules may name."""


@dataclass(frozen=True)
class JobTraits:
    """What the routing rules look at, known at submission."""

    kind: JobKind
    method: str | None
    num_params: int
    memory_bytes: int


def job_method(kind: JobKind, params: Mapping[str, Any]) -> str | None:
    """The job's matching or merging method, None for kinds without one."""
    key = METHOD_PARAMS.get(kind)
    method = params.get(key) if key else None
    return str(method) if method is not None else None


def matches(route: QueueRoute, job: JobTraits) -> bool:
    """Whether every condition ``route`` gives holds for ``job``."""
    return (
        (route.kinds is None or job.kind in route.kinds)
        and (route.methods is None or job.method in route.methods)
        and (route.min_params is None or job.num_params >= route.min_params)
        and (route.min_memory_bytes is None or job.memory_bytes >= route.min_memory_bytes)
    )


def route_job(routes: Sequence[QueueRoute], job: JobTraits) -> str:
    """The queue of the first rule that ``job`` matches (the settings end with a fallback)."""
    return next(route.queue for route in routes if matches(route, job))
