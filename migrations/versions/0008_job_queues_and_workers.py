"""Queues by device, and the registry of live workers.

* ``jobs.queue``: the logical queue (``gpu``, ``cpu``, ...) the routing rules gave the job at
  submission; only workers consuming it take the job. Jobs from before get the queue the default
  rules give (frozen here as they were at this revision: training, STE matching and models of
  5M parameters or more on ``gpu``, the rest on ``cpu``), so a queued training job still goes to
  a GPU worker after the upgrade. A job whose models were deleted is judged without them.
* ``workers``: one row per live ``llfc worker`` main process (``host:pid``): the queues it
  consumes, its device and GPUs as configured, when it started and last beat.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30
"""

import json
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
LARGE_MODEL_PARAMS = 5_000_000
METHOD_PARAMS = {"match": "method", "merge": "method", "analyze": "match", "sweep": "match"}


def _as_json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def _needs_gpu(kind: str, params: Any, first_model: str | None, large: set[str]) -> bool:
    """The default rules at this revision, on what an existing row holds."""
    key = METHOD_PARAMS.get(kind)
    method = (_as_json(params) or {}).get(key) if key else None
    return kind == "train" or method == "ste" or first_model in large


def _gpu_job_ids(connection: sa.Connection) -> list[str]:
    large = set(
        connection.scalars(
            sa.text("SELECT id FROM checkpoints WHERE num_params >= :least"),
            {"least": LARGE_MODEL_PARAMS},
        )
    )
    rows = connection.execute(
        sa.text("SELECT id, kind, params, model_a_id, model_ids FROM jobs")
    )
    gpu = []
    for job_id, kind, params, model_a_id, model_ids in rows:
        first_model = model_a_id or next(iter(_as_json(model_ids) or []), None)
        if _needs_gpu(kind, params, first_model, large):
            gpu.append(job_id)
    return gpu


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("queue", sa.String(40), nullable=False, server_default="cpu"))
    connection = op.get_bind()
    jobs = sa.table("jobs", sa.column("id", sa.String), sa.column("queue", sa.String))
    gpu = _gpu_job_ids(connection)
    for start in range(0, len(gpu), 500):
        connection.execute(
            jobs.update().where(jobs.c.id.in_(gpu[start : start + 500])).values(queue="gpu")
        )
    with op.batch_alter_table("jobs") as batch:
        batch.alter_column("queue", existing_type=sa.String(40), server_default=None)
    op.create_table(
        "workers",
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("queues", JSON, nullable=False),
        sa.Column("device", sa.String(20), nullable=False),
        sa.Column("gpus", sa.String(200), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_workers"),
    )
    op.create_index("ix_workers_last_heartbeat_at", "workers", ["last_heartbeat_at"])


def downgrade() -> None:
    op.drop_index("ix_workers_last_heartbeat_at", table_name="workers")
    op.drop_table("workers")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("queue")
