"""The poll: ``GET /v1/jobs/{id}``, the request lab tooling sends most, in one database round trip.

The generic path (authenticate, then read the job, then its artifacts, each in a transaction
of the session) costs five round trips and most of a request's CPU. Here one statement checks
the key, reads the job and its artifacts together (a job has at most a few artifacts, so the
left join repeats the job's columns only that often), on PostgreSQL in autocommit mode, where
a lone SELECT needs no BEGIN and COMMIT of its own. Only when no row comes back does a second
statement tell an unknown key from a job the key's owner does not have.

Every answer is read fresh: nothing is cached, so a poll never shows a stale status.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Engine, bindparam, select

from service.core.config import Settings
from service.db.models import FINISHED_STATUSES, ApiKey, Job, JobArtifact, Owner
from service.db.session import READ_ONLY_OPTION
from service.errors import NotFoundError
from service.job_watch import JobState
from service.jobs import public_job
from service.schemas import JobPublic
from service.security import LOCAL_OWNER_NAME, hash_api_key, key_error

# Keyed by the engine itself, not its id(): a disposed engine's id can be reused by a new one.
# One entry per engine the process opens (one, outside tests).
_reading_engines: dict[Engine, Engine] = {}


def _reading_engine(engine: Engine) -> Engine:
    """``engine`` for lone reads: autocommit on PostgreSQL (no BEGIN/COMMIT round trips); on
    SQLite a read-only transaction, whose BEGIN and COMMIT cost no round trip anyway."""
    reading = _reading_engines.get(engine)
    if reading is None:
        if engine.dialect.name == "sqlite":
            reading = engine.execution_options(**{READ_ONLY_OPTION: True})
        else:
            reading = engine.execution_options(isolation_level="AUTOCOMMIT")
        _reading_engines[engine] = reading
    return reading


_SHOWN_COLUMNS = (
    Job.id,
    Job.kind,
    Job.queue,
    Job.status,
    Job.progress_fraction,
    Job.progress_stage,
    Job.error,
    Job.created_at,
    Job.started_at,
    Job.finished_at,
    Job.result,
    Job.model_a_id,
    Job.model_b_id,
    Job.model_ids,
    Job.dataset_ref,
    Job.params,
    Job.attempts,
    Job.cancel_requested,
    JobArtifact.name,
    JobArtifact.checkpoint_id,
    JobArtifact.url,
)
_JOB_WITH_ARTIFACTS = (
    select(*_SHOWN_COLUMNS)
    .outerjoin(JobArtifact, JobArtifact.job_id == Job.id)
    .where(Job.id == bindparam("job_id"))
    .order_by(JobArtifact.id)
)
# Built once: composing a statement costs more CPU than running it.
_BY_KEY = _JOB_WITH_ARTIFACTS.join(ApiKey, ApiKey.owner_id == Job.owner_id).where(
    ApiKey.key_hash == bindparam("key_hash"), ApiKey.revoked_at.is_(None)
)
_OF_LOCAL_OWNER = _JOB_WITH_ARTIFACTS.join(Owner, Owner.id == Job.owner_id).where(
    Owner.name == LOCAL_OWNER_NAME
)
_LIVE_KEY = select(ApiKey.id).where(
    ApiKey.key_hash == bindparam("key_hash"), ApiKey.revoked_at.is_(None)
)


def read_polled_job(
    engine: Engine, settings: Settings, job_id: str, key: str | None
) -> tuple[JobPublic, bool]:
    """The job ``job_id`` of the owner of ``key`` and whether it is finished.

    ``key`` is the request's Bearer token (None without one; unused when auth is off). Raises
    UnauthorizedError for a missing, unknown or revoked key and NotFoundError for a job that
    does not exist or belongs to another owner.
    """
    key_hash = None
    if not settings.auth:
        statement, parameters = _OF_LOCAL_OWNER, {"job_id": job_id}
    elif key is None:
        raise key_error(missing=True)
    elif not key.strip():
        raise key_error(missing=False)
    else:
        key_hash = hash_api_key(key.strip(), settings.secret_key.get_secret_value())
        statement, parameters = _BY_KEY, {"job_id": job_id, "key_hash": key_hash}
    with _reading_engine(engine).connect() as connection:
        rows = connection.execute(statement, parameters).all()
        key_unknown = not rows and key_hash is not None
        if key_unknown and connection.scalar(_LIVE_KEY, {"key_hash": key_hash}) is None:
            raise key_error(missing=False)
    if not rows:
        raise NotFoundError("job", job_id)
    artifacts = [row for row in rows if row.name is not None]
    return public_job(rows[0], artifacts), rows[0].status in FINISHED_STATUSES


_STATES = select(Job.id, Job.status, Job.progress_stage, Job.progress_fraction).where(
    Job.id.in_(bindparam("job_ids", expanding=True))
)


def read_job_states(engine: Engine, job_ids: Sequence[str]) -> dict[str, JobState]:
    """The states of the jobs ``job_ids`` that exist, in one statement: the job watcher's tick
    (``service/job_watch.py``), which has checked who may see them already."""
    with _reading_engine(engine).connect() as connection:
        rows = connection.execute(_STATES, {"job_ids": list(job_ids)}).all()
    return {row.id: JobState(row.status, row.progress_stage, row.progress_fraction) for row in rows}
