"""Cost-allocation tags on jobs and ledger entries; closed months; report indexes.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from gateway.db.base import UTCDateTime

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("tags", sa.JSON(), nullable=True))
    op.create_index("ix_jobs_period_team_id", "jobs", ["period", "team_id"])
    # ledger_entries is append-only (triggers refuse UPDATE): adding a nullable column does
    # not update rows, so no trigger fires.
    op.add_column("ledger_entries", sa.Column("tags", sa.JSON(), nullable=True))
    op.create_index("ix_ledger_entries_job_id", "ledger_entries", ["job_id"])
    op.create_table(
        "closed_periods",
        sa.Column("period", sa.String(7), nullable=False),
        sa.Column("closed_at", UTCDateTime(), nullable=False),
        sa.Column("closed_by", sa.String(160), nullable=False),
        sa.PrimaryKeyConstraint("period", name=op.f("pk_closed_periods")),
    )


def downgrade() -> None:
    op.drop_table("closed_periods")
    op.drop_index("ix_ledger_entries_job_id", table_name="ledger_entries")
    op.drop_column("ledger_entries", "tags")
    op.drop_index("ix_jobs_period_team_id", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("tags")
