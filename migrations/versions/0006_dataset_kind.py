"""Token datasets: what an uploaded dataset holds.

* ``datasets.kind``: ``labelled`` (examples ``x`` with class labels ``y``, every dataset before
  this revision) or ``tokens`` (token sequences ``x`` for language models, no ``y``).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-14
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("datasets") as batch:
        batch.add_column(
            sa.Column("kind", sa.String(20), nullable=False, server_default="labelled")
        )


def downgrade() -> None:
    with op.batch_alter_table("datasets") as batch:
        batch.drop_column("kind")
