"""Closed months are frozen at a ledger entry id, not a timestamp.

A settlement is stamped by the replica that writes it, before its transaction commits: one
committing just after a close, stamped just before it (or by a replica whose clock runs
behind), would have slipped into the frozen month. The close now records the last entry id
under a lock that waits for entries still being written.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("closed_periods") as batch:
        batch.add_column(sa.Column("last_entry_id", sa.BigInteger(), nullable=True))
    # Months closed before this revision: frozen as of their closing time, as they were.
    op.execute(
        "UPDATE closed_periods SET last_entry_id = COALESCE((SELECT MAX(e.id) FROM"
        " ledger_entries e WHERE e.created_at <= closed_periods.closed_at), 0)"
    )
    with op.batch_alter_table("closed_periods") as batch:
        batch.alter_column("last_entry_id", existing_type=sa.BigInteger(), nullable=False)


def downgrade() -> None:
    with op.batch_alter_table("closed_periods") as batch:
        batch.drop_column("last_entry_id")
