"""Soft limits per team and budget alerts (raised once per team, period and threshold).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from gateway.db.base import BigIntPK, UTCDateTime

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TEAM_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("teams") as batch:
        batch.add_column(sa.Column("soft_limit_percent", sa.Integer(), nullable=True))
    op.create_table(
        "budget_alerts",
        sa.Column("id", BigIntPK, autoincrement=True, nullable=False),
        sa.Column("team_id", TEAM_ID, nullable=False),
        sa.Column("period", sa.String(7), nullable=False),
        sa.Column("threshold", sa.String(16), nullable=False),
        sa.Column("budget_micro_usd", sa.BigInteger(), nullable=False),
        sa.Column("used_micro_usd", sa.BigInteger(), nullable=False),
        sa.Column("limit_micro_usd", sa.BigInteger(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", UTCDateTime(), nullable=False),
        sa.Column("delivered_at", UTCDateTime(), nullable=True),
        sa.Column("gave_up_at", UTCDateTime(), nullable=True),
        sa.Column("last_error", sa.String(255), nullable=True),
        sa.ForeignKeyConstraint(
            ["team_id"], ["teams.id"], name=op.f("fk_budget_alerts_team_id_teams")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_budget_alerts")),
        sa.UniqueConstraint("team_id", "period", "threshold", name="uq_budget_alerts_once"),
    )
    op.create_index(
        "ix_budget_alerts_pending", "budget_alerts", ["delivered_at", "next_attempt_at"]
    )


def downgrade() -> None:
    op.drop_index("ix_budget_alerts_pending", table_name="budget_alerts")
    op.drop_table("budget_alerts")
    with op.batch_alter_table("teams") as batch:
        batch.drop_column("soft_limit_percent")
