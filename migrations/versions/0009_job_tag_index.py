"""An index for finding a team's jobs by a tag (the portal's jobs filter), on Postgres.

A GIN index (``jsonb_path_ops``) on the jobs' tags as ``jsonb``, partial on ``tags IS NOT
NULL``: a submit without tags pays nothing for it, and a tag no job has is answered from the
index instead of by reading every job of the team. Queried with ``tags::jsonb @> '{"k": "v"}'``
(``gateway.jobs.repository.list_team_jobs``). SQLite (one process, the demo) filters by
``json_extract`` without an index. Building it locks the jobs table against writes for the
build (seconds per million jobs): run the upgrade in a quiet moment.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "CREATE INDEX ix_jobs_tags ON jobs USING gin ((tags::jsonb) jsonb_path_ops) "
            "WHERE tags IS NOT NULL"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP INDEX ix_jobs_tags")
