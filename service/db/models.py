"""SQL tables. The job row is the system of record for every job; Celery only carries its id.

The schema is created and changed only by the Alembic migrations in ``migrations/``; these
classes must match them (``tests/api/test_migrations.py`` compares the two).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

# Re-exported: the service imports the job vocabulary with its tables.
from llfc_results.jobs import FINISHED_STATUSES as FINISHED_STATUSES
from llfc_results.jobs import JobKind as JobKind
from llfc_results.jobs import JobStatus as JobStatus

ACTIVE_STATUSES = (JobStatus.QUEUED, JobStatus.RUNNING)


def _stored_as_text(enum: type[StrEnum]) -> Enum:
    """A column holding ``enum``'s values as VARCHAR(20), as the migrations create it (no
    database enum type and no CHECK constraint, so a new member needs no migration)."""
    return Enum(
        enum,
        native_enum=False,
        create_constraint=False,
        length=20,
        values_callable=lambda members: [member.value for member in members],
    )


def arch_key(arch: Any) -> str:
    """sha256 of the canonical JSON of an arch object: equal archs give equal keys."""
    canonical = json.dumps(arch, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _arch_key_of_row(context: Any) -> str:
    return arch_key(context.get_current_parameters()["arch"])


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id(prefix: str) -> str:
    """A random public id such as ``job_3f2a...``: unguessable, so ids leak nothing."""
    return f"{prefix}_{uuid.uuid4().hex}"


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC timestamps on every database.

    PostgreSQL keeps the zone (``timestamptz``); SQLite has no zone type, so values are stored as
    naive UTC and given their zone back when read.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("Timestamps must be timezone-aware.")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


JSONType = JSON().with_variant(JSONB(), "postgresql")


NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
"""Named constraints, so migrations can alter them on SQLite (batch mode) as on PostgreSQL."""


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Owner(Base):
    """Whoever holds API keys; every checkpoint, dataset and job belongs to one owner."""

    __tablename__ = "owners"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class ApiKey(Base):
    """An API key, stored only as HMAC-SHA256(secret_key, key); ``prefix`` names it for people."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    owner_id: Mapped[str] = mapped_column(ForeignKey("owners.id", ondelete="CASCADE"), index=True)
    prefix: Mapped[str] = mapped_column(String(20))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class Checkpoint(Base):
    """A validated state dict, stored as safetensors in the blob store.

    ``sha256`` and ``size_bytes`` describe the bytes the owner uploaded (so re-uploading the same
    file finds the same row); ``blob_sha256`` names the stored safetensors blob. ``arch_key`` is
    the sha256 of the canonical arch JSON: the same bytes fitting two archs are two checkpoints.
    ``key_map`` is ``{name in the file: name stored}`` for the tensors the upload's key_map
    renamed, None when it renamed none. ``graph_blob_sha256`` names the blob of an ONNX
    checkpoint's graph (its weights stripped), which its arch is built from; None for other archs.
    """

    __tablename__ = "checkpoints"
    __table_args__ = (
        UniqueConstraint("owner_id", "sha256", "arch_key", name="uq_checkpoints_owner_sha256_arch"),
        Index("ix_checkpoints_owner_created", "owner_id", "created_at", "id"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    owner_id: Mapped[str] = mapped_column(ForeignKey("owners.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    sha256: Mapped[str] = mapped_column(String(64))
    blob_sha256: Mapped[str] = mapped_column(String(64), index=True)
    format: Mapped[str] = mapped_column(String(20))
    arch: Mapped[dict[str, Any]] = mapped_column(JSONType)
    arch_key: Mapped[str] = mapped_column(String(64), default=_arch_key_of_row)
    num_params: Mapped[int] = mapped_column(BigInteger)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    source_job_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    key_map: Mapped[dict[str, str] | None] = mapped_column(JSONType, nullable=True)
    graph_blob_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Blob(Base):
    """A file of the blob store that rows refer to (by ``sha256``).

    Adding the first reference (with the file's rename into place) and dropping the last (with
    its unlink) both lock this row, so they cannot interleave across owners.
    """

    __tablename__ = "blobs"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Dataset(Base):
    """An uploaded ``.npz`` or ``.safetensors`` file of arrays ``x`` and ``y`` (``kind``
    ``labelled``), or of token sequences ``x`` alone (``tokens``; ``num_classes`` is then the
    largest token + 1).

    ``sha256`` and ``size_bytes`` describe the upload; ``blob_sha256`` names its normalised copy
    (float32 ``x``, int64 ``y``; int64 ``x`` for tokens) that workers memory-map, and
    ``stored_bytes`` is what the owner's storage quota is charged for it. Rows from before
    normalised copies have neither.
    """

    __tablename__ = "datasets"
    __table_args__ = (
        UniqueConstraint("owner_id", "sha256", name="uq_datasets_owner_sha256"),
        Index("ix_datasets_owner_created", "owner_id", "created_at", "id"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    owner_id: Mapped[str] = mapped_column(ForeignKey("owners.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    format: Mapped[str] = mapped_column(String(20))
    num_examples: Mapped[int] = mapped_column(Integer)
    input_shape: Mapped[list[int]] = mapped_column(JSONType)
    num_classes: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(20), default="labelled", server_default="labelled")
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    blob_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    stored_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Job(Base):
    """One unit of work and its whole life: the worker claims it, reports into it, finishes it.

    A claim is a lease: ``claimed_by`` names the worker process (``host:pid``) that holds it,
    ``attempts`` numbers it (every write of a run is conditional on its number, so a run that
    lost its lease can change nothing), and ``heartbeat_at`` must stay fresh or the lease is
    taken back (``service/lifecycle.py``). ``published_at`` is when the job's message was last
    sent again by the republisher (the first publish is at ``created_at``).

    ``reserved_bytes`` is the worst-case size of the job's outputs, counted against the owner's
    storage quota while the job is queued or running. ``train_dataset_ref`` is the data for
    BatchNorm re-estimation and activation matching, when the job names one apart from its
    evaluation data.

    ``queue`` is the logical queue the routing rules gave it at submission (``service/routing.py``):
    only workers consuming it take the job.

    ``model_ids`` lists the models of a job on N of them (a sweep), in the order asked; null for
    jobs on a pair or on none. It, ``model_a_id``, ``model_b_id``, ``dataset_ref`` and
    ``train_dataset_ref`` are kept as plain text (no foreign key) so a job still says what it
    ran on after those inputs are deleted.
    """

    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("owner_id", "idempotency_key", name="uq_jobs_owner_idempotency_key"),
        Index("ix_jobs_owner_created", "owner_id", "created_at", "id"),
        Index("ix_jobs_status", "status"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    owner_id: Mapped[str] = mapped_column(ForeignKey("owners.id", ondelete="CASCADE"))
    kind: Mapped[JobKind] = mapped_column(_stored_as_text(JobKind))
    queue: Mapped[str] = mapped_column(String(40))
    status: Mapped[JobStatus] = mapped_column(_stored_as_text(JobStatus), default=JobStatus.QUEUED)
    progress_fraction: Mapped[float] = mapped_column(Float, default=0.0)
    progress_stage: Mapped[str] = mapped_column(String(200), default="queued")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    claimed_by: Mapped[str | None] = mapped_column(String(200), nullable=True)
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    run_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    idempotency_key: Mapped[str | None] = mapped_column(String(200), nullable=True)
    request_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    params: Mapped[dict[str, Any]] = mapped_column(JSONType)
    arch: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    model_a_id: Mapped[str | None] = mapped_column(String(40), nullable=True, index=True)
    model_b_id: Mapped[str | None] = mapped_column(String(40), nullable=True, index=True)
    model_ids: Mapped[list[str] | None] = mapped_column(JSONType, nullable=True)
    dataset_ref: Mapped[str | None] = mapped_column(String(60), nullable=True)
    train_dataset_ref: Mapped[str | None] = mapped_column(String(60), nullable=True)
    reserved_bytes: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)


class JobArtifact(Base):
    """A named output of a job: a checkpoint of the job's owner, or a URL."""

    __tablename__ = "job_artifacts"
    __table_args__ = (UniqueConstraint("job_id", "name", name="uq_job_artifacts_job_name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(100))
    checkpoint_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    url: Mapped[str | None] = mapped_column(String(500), nullable=True)


class LayerMetric(Base):
    """One number of an analyze result, queryable by job, pair, metric, layer and alpha.

    ``layer`` is null for whole-model numbers (the LMC loss and error along the path); ``alpha``
    is null for numbers that do not depend on it (``cos_ab``, ``commutativity``). ``value`` is
    null where the engine reported a non-finite number.
    """

    __tablename__ = "layer_metrics"
    __table_args__ = (
        Index("ix_layer_metrics_job_metric_layer", "job_id", "metric", "layer"),
        Index("ix_layer_metrics_job_alpha", "job_id", "alpha"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    pair: Mapped[str] = mapped_column(String(20))
    metric: Mapped[str] = mapped_column(String(50))
    layer: Mapped[str | None] = mapped_column(String(200), nullable=True)
    layer_index: Mapped[int | None] = mapped_column(Integer, nullable=True)
    alpha: Mapped[float | None] = mapped_column(Float, nullable=True)
    value: Mapped[float | None] = mapped_column(Float, nullable=True)


class SweepPair(Base):
    """One unordered pair of a succeeded sweep: models ``index_a`` (as A) and ``index_b`` (as
    B) of the job's ``model_ids``, ``index_a < index_b``; the sweep matrices' numbers of the
    pair (``matched_*`` null when the sweep did not match; any null where the engine reported
    a non-finite number) and the pair's whole analyze result.
    """

    __tablename__ = "sweep_pairs"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    index_a: Mapped[int] = mapped_column(Integer, primary_key=True)
    index_b: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_a_id: Mapped[str] = mapped_column(String(40))
    model_b_id: Mapped[str] = mapped_column(String(40))
    naive_loss_barrier: Mapped[float | None] = mapped_column(Float, nullable=True)
    naive_error_barrier: Mapped[float | None] = mapped_column(Float, nullable=True)
    naive_llfc_distance: Mapped[float | None] = mapped_column(Float, nullable=True)
    matched_loss_barrier: Mapped[float | None] = mapped_column(Float, nullable=True)
    matched_error_barrier: Mapped[float | None] = mapped_column(Float, nullable=True)
    matched_llfc_distance: Mapped[float | None] = mapped_column(Float, nullable=True)
    analysis: Mapped[dict[str, Any]] = mapped_column(JSONType)


class Worker(Base):
    """A live (or lately live) ``llfc worker``: its main process writes its row at start and
    every ``LLFC_HEARTBEAT_SECONDS``, and deletes it when it stops cleanly.

    ``name`` is ``host:pid`` of the main process; ``queues`` the logical queues it consumes;
    ``device`` its ``LLFC_DEVICE`` and ``gpus`` the GPUs it was given, as text (read from its
    settings, never from CUDA). A row whose heartbeat is older than the lease belongs to a worker
    that is gone; the maintenance sweep deletes rows a day old.
    """

    __tablename__ = "workers"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    queues: Mapped[list[str]] = mapped_column(JSONType)
    device: Mapped[str] = mapped_column(String(20))
    gpus: Mapped[str | None] = mapped_column(String(200), nullable=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
