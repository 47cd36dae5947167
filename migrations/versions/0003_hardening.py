"""Hardening: checkpoints keyed by bytes and arch, blob reference locks, normalised datasets,
storage reservations and training data of jobs.

* ``checkpoints.arch_key`` (sha256 of the canonical arch JSON): the same bytes may be stored as
  two checkpoints of two archs they both fit, sharing one blob; the unique key becomes
  (owner, bytes, arch).
* ``blobs``: one row per stored blob, locked by whoever adds or drops a reference to it, so an
  upload and a delete of the same content by two owners cannot race the file's unlink.
* ``datasets.blob_sha256`` / ``stored_bytes``: the normalised copy (float32 ``x``, int64 ``y``)
  workers memory-map, and the bytes charged to the owner's quota for it.
* ``jobs.reserved_bytes``: the worst-case size of a job's outputs, counted against the owner's
  storage quota from submission until the job ends; ``jobs.train_dataset_ref``: the data used
  for BatchNorm re-estimation and activation matching when it is not the evaluation data.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""

import hashlib
import json
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _arch_key(arch: object) -> str:
    if isinstance(arch, str):
        arch = json.loads(arch)
    canonical = json.dumps(arch, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def upgrade() -> None:
    op.create_table(
        "blobs",
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("sha256", name="pk_blobs"),
    )
    with op.batch_alter_table("checkpoints") as batch:
        batch.add_column(sa.Column("arch_key", sa.String(64), nullable=True))
    connection = op.get_bind()
    checkpoints = sa.table(
        "checkpoints",
        sa.column("id", sa.String),
        sa.column("arch", sa.JSON),
        sa.column("arch_key", sa.String),
    )
    for checkpoint_id, arch in connection.execute(sa.select(checkpoints.c.id, checkpoints.c.arch)):
        connection.execute(
            checkpoints.update()
            .where(checkpoints.c.id == checkpoint_id)
            .values(arch_key=_arch_key(arch))
        )
    with op.batch_alter_table("checkpoints") as batch:
        batch.alter_column("arch_key", existing_type=sa.String(64), nullable=False)
        batch.drop_constraint("uq_checkpoints_owner_sha256", type_="unique")
        batch.create_unique_constraint(
            "uq_checkpoints_owner_sha256_arch", ["owner_id", "sha256", "arch_key"]
        )
    connection.execute(
        sa.text(
            "INSERT INTO blobs (sha256, created_at) "
            "SELECT DISTINCT blob_sha256, CURRENT_TIMESTAMP FROM checkpoints "
            "UNION SELECT DISTINCT sha256, CURRENT_TIMESTAMP FROM datasets"
        )
    )
    with op.batch_alter_table("datasets") as batch:
        batch.add_column(sa.Column("blob_sha256", sa.String(64), nullable=True))
        batch.add_column(sa.Column("stored_bytes", sa.BigInteger(), nullable=True))
        batch.create_index("ix_datasets_blob_sha256", ["blob_sha256"])
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(
            sa.Column("reserved_bytes", sa.BigInteger(), nullable=False, server_default="0")
        )
        batch.add_column(sa.Column("train_dataset_ref", sa.String(60), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("train_dataset_ref")
        batch.drop_column("reserved_bytes")
    with op.batch_alter_table("datasets") as batch:
        batch.drop_index("ix_datasets_blob_sha256")
        batch.drop_column("stored_bytes")
        batch.drop_column("blob_sha256")
    with op.batch_alter_table("checkpoints") as batch:
        batch.drop_constraint("uq_checkpoints_owner_sha256_arch", type_="unique")
        batch.create_unique_constraint("uq_checkpoints_owner_sha256", ["owner_id", "sha256"])
        batch.drop_column("arch_key")
    op.drop_table("blobs")
