"""Job kinds and statuses as the contract (``docs/API.md``) names them: one definition, used by
the server's tables and schemas and by the client, which imports nothing of the server."""

from __future__ import annotations

from enum import StrEnum


class JobKind(StrEnum):
    """What a job computes; the server checks each kind's params in ``service/jobs.py``."""

    MATCH = "match"
    INTERPOLATE = "interpolate"
    ANALYZE = "analyze"
    TRAIN = "train"
    SWEEP = "sweep"
    MERGE = "merge"


class JobStatus(StrEnum):
    """Where a job is in its life; the server changes it only in ``service/lifecycle.py``."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


MULTI_MODEL_KINDS = frozenset({JobKind.SWEEP, JobKind.MERGE})
"""Kinds whose job takes its checkpoints as ``models`` (N of them), not as ``model_a`` and
``model_b``."""

FINISHED_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})
"""Statuses a job never leaves."""
