"""ONNX checkpoints' graphs: the model of an ``.onnx`` upload (arch ``{"name": "onnx"}``) is its
graph, weights stripped, kept as a blob of its own beside the state dict's.

* ``checkpoints.graph_blob_sha256``: the blob holding that graph; null for every other arch.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-10
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("checkpoints") as batch:
        batch.add_column(sa.Column("graph_blob_sha256", sa.String(64), nullable=True))
        batch.create_index("ix_checkpoints_graph_blob_sha256", ["graph_blob_sha256"])


def downgrade() -> None:
    with op.batch_alter_table("checkpoints") as batch:
        batch.drop_index("ix_checkpoints_graph_blob_sha256")
        batch.drop_column("graph_blob_sha256")
