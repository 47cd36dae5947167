"""Jobs on N models, and sweep results per pair.

* ``jobs.model_ids``: the checkpoint ids of a job on N models (a sweep), in the order asked;
  null for jobs on a pair (``model_a_id``, ``model_b_id``) or on none. Plain ids, as those
  columns are, so the job still says what it ran on after its models are deleted.
* ``sweep_pairs``: one row per unordered pair of a succeeded sweep: its models' positions and
  ids, the matrices' numbers for the pair (naive and, when the sweep matched, matched) and the
  pair's whole analyze result.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("model_ids", JSON, nullable=True))
    op.create_table(
        "sweep_pairs",
        sa.Column("job_id", sa.String(40), nullable=False),
        sa.Column("index_a", sa.Integer(), nullable=False),
        sa.Column("index_b", sa.Integer(), nullable=False),
        sa.Column("model_a_id", sa.String(40), nullable=False),
        sa.Column("model_b_id", sa.String(40), nullable=False),
        sa.Column("naive_loss_barrier", sa.Float(), nullable=True),
        sa.Column("naive_error_barrier", sa.Float(), nullable=True),
        sa.Column("naive_llfc_distance", sa.Float(), nullable=True),
        sa.Column("matched_loss_barrier", sa.Float(), nullable=True),
        sa.Column("matched_error_barrier", sa.Float(), nullable=True),
        sa.Column("matched_llfc_distance", sa.Float(), nullable=True),
        sa.Column("analysis", JSON, nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name="fk_sweep_pairs_job_id_jobs", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("job_id", "index_a", "index_b", name="pk_sweep_pairs"),
    )


def downgrade() -> None:
    op.drop_table("sweep_pairs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("model_ids")
