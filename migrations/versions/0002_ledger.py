"""Ledger: rate card versions, per-team period balances, append-only entries, idempotency keys.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24

Rows written under 0001 are carried over: each job gets its period, ``rejected`` becomes
``released``, and jobs still open get the hold they would have had (a period whose holds exceed
the team's budget has its budget raised to the held amount, so nothing more is spent in it).
"""

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

from gateway.db.base import BigIntPK, UTCDateTime

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TEAM_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
OPEN = "('pending', 'submitted', 'unknown')"
# The seed's published rates, as the first version (a snapshot: never read from the catalog).
SEED_RATE_CARD = {
    "model": "grok-imagine-video-1-5",
    "version": "seed-2026-11",
    "effective_from": datetime(2026, 1, 1, tzinfo=UTC),
    "image_fee_micro_usd": 50_000,
    "per_second_micro_usd": {"480p": 96_000, "720p": 168_000},
}


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    now = datetime.now(UTC)

    rate_cards = op.create_table(
        "rate_cards",
        sa.Column("id", BigIntPK, autoincrement=True, nullable=False),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("effective_from", UTCDateTime(), nullable=False),
        sa.Column("image_fee_micro_usd", sa.BigInteger(), nullable=False),
        sa.Column("per_second_micro_usd", sa.JSON(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rate_cards")),
        sa.UniqueConstraint("model", "version", name="uq_rate_cards_model_version"),
    )
    op.create_index("ix_rate_cards_model_effective_from", "rate_cards", ["model", "effective_from"])
    op.bulk_insert(rate_cards, [{**SEED_RATE_CARD, "created_at": now}])

    op.create_table(
        "team_balances",
        sa.Column("team_id", TEAM_ID, nullable=False),
        sa.Column("period", sa.String(7), nullable=False),
        sa.Column("budget_micro_usd", sa.BigInteger(), nullable=True),
        sa.Column("held_micro_usd", sa.BigInteger(), nullable=False),
        sa.Column("captured_micro_usd", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.CheckConstraint("held_micro_usd >= 0", name=op.f("ck_team_balances_held_non_negative")),
        sa.CheckConstraint(
            "captured_micro_usd >= 0", name=op.f("ck_team_balances_captured_non_negative")
        ),
        sa.CheckConstraint(
            "budget_micro_usd IS NULL OR held_micro_usd + captured_micro_usd <= budget_micro_usd",
            name=op.f("ck_team_balances_within_budget"),
        ),
        sa.ForeignKeyConstraint(
            ["team_id"], ["teams.id"], name=op.f("fk_team_balances_team_id_teams")
        ),
        sa.PrimaryKeyConstraint("team_id", "period", name=op.f("pk_team_balances")),
    )

    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("period", sa.String(7), nullable=True))
        batch.add_column(sa.Column("upstream_status", sa.String(32), nullable=True))
        batch.add_column(sa.Column("upstream_error_code", sa.String(64), nullable=True))
        batch.add_column(sa.Column("terminal_body", sa.LargeBinary(), nullable=True))
        batch.add_column(
            sa.Column("check_attempts", sa.Integer(), nullable=False, server_default="0")
        )
        batch.add_column(sa.Column("next_check_at", UTCDateTime(), nullable=True))
        batch.add_column(
            sa.Column("needs_review", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch.add_column(sa.Column("flagged_at", UTCDateTime(), nullable=True))
        batch.add_column(sa.Column("settled_at", UTCDateTime(), nullable=True))
    month = (
        "to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM')"
        if dialect == "postgresql"
        else "strftime('%Y-%m', created_at)"
    )
    op.execute(f"UPDATE jobs SET period = {month}")  # noqa: S608 - no user input
    op.execute("UPDATE jobs SET state = 'released' WHERE state = 'rejected'")
    with op.batch_alter_table("jobs") as batch:
        batch.alter_column("period", existing_type=sa.String(7), nullable=False)
        batch.alter_column("check_attempts", server_default=None)
        batch.alter_column("needs_review", server_default=None)
    op.create_index("ix_jobs_team_id_state", "jobs", ["team_id", "state"])
    op.create_index("ix_jobs_state_next_check_at", "jobs", ["state", "next_check_at"])

    op.create_table(
        "ledger_entries",
        sa.Column("id", BigIntPK, autoincrement=True, nullable=False),
        sa.Column("job_id", sa.String(32), nullable=False),
        sa.Column("team_id", TEAM_ID, nullable=False),
        sa.Column("period", sa.String(7), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("amount_micro_usd", sa.BigInteger(), nullable=False),
        sa.Column("rate_card_version", sa.String(64), nullable=False),
        sa.Column("reason", sa.String(64), nullable=True),
        sa.Column("video_ms", sa.BigInteger(), nullable=True),
        sa.Column("upstream_cost_micro_usd", sa.BigInteger(), nullable=True),
        sa.Column("needs_review", sa.Boolean(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.CheckConstraint(
            "kind IN ('hold', 'capture', 'release', 'correction')",
            name=op.f("ck_ledger_entries_kind_known"),
        ),
        sa.CheckConstraint(
            "amount_micro_usd >= 0", name=op.f("ck_ledger_entries_amount_non_negative")
        ),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_ledger_entries_job_id_jobs")
        ),
        sa.ForeignKeyConstraint(
            ["team_id"], ["teams.id"], name=op.f("fk_ledger_entries_team_id_teams")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ledger_entries")),
    )
    op.create_index(
        "uq_ledger_entries_one_hold_per_job",
        "ledger_entries",
        ["job_id"],
        unique=True,
        postgresql_where=sa.text("kind = 'hold'"),
        sqlite_where=sa.text("kind = 'hold'"),
    )
    op.create_index(
        "uq_ledger_entries_one_settlement_per_job",
        "ledger_entries",
        ["job_id"],
        unique=True,
        postgresql_where=sa.text("kind IN ('capture', 'release')"),
        sqlite_where=sa.text("kind IN ('capture', 'release')"),
    )
    op.create_index("ix_ledger_entries_team_id_period", "ledger_entries", ["team_id", "period"])
    _append_only_triggers(dialect)

    # Carry over jobs that were open under 0001: their holds and their periods' balances.
    op.execute(
        "INSERT INTO ledger_entries (job_id, team_id, period, kind, amount_micro_usd, "  # noqa: S608
        "rate_card_version, reason, needs_review, created_at) "
        "SELECT id, team_id, period, 'hold', estimate_micro_usd, rate_card_version, "
        f"'migrated', {sa.false().compile(dialect=op.get_bind().dialect)}, created_at "
        f"FROM jobs WHERE state IN {OPEN}"
    )
    op.execute(
        sa.text(
            "INSERT INTO team_balances (team_id, period, budget_micro_usd, held_micro_usd, "  # noqa: S608
            "captured_micro_usd, updated_at) "
            "SELECT j.team_id, j.period, CASE WHEN t.monthly_budget_micro_usd IS NULL "
            "OR SUM(j.estimate_micro_usd) <= t.monthly_budget_micro_usd "
            "THEN t.monthly_budget_micro_usd ELSE SUM(j.estimate_micro_usd) END, "
            "SUM(j.estimate_micro_usd), 0, :now "
            f"FROM jobs j JOIN teams t ON t.id = j.team_id WHERE j.state IN {OPEN} "
            "GROUP BY j.team_id, j.period, t.monthly_budget_micro_usd"
        ).bindparams(sa.bindparam("now", now, type_=UTCDateTime()))
    )
    op.execute(
        sa.text(f"UPDATE jobs SET next_check_at = :now WHERE state IN {OPEN}").bindparams(  # noqa: S608
            sa.bindparam("now", now, type_=UTCDateTime())
        )
    )

    op.create_table(
        "job_requests",
        sa.Column("job_id", sa.String(32), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_job_requests_job_id_jobs")),
        sa.PrimaryKeyConstraint("job_id", name=op.f("pk_job_requests")),
    )

    op.create_table(
        "idempotency_keys",
        sa.Column("team_id", TEAM_ID, nullable=False),
        sa.Column("key", sa.String(255), nullable=False),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("job_id", sa.String(32), nullable=True),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("response_body", sa.LargeBinary(), nullable=True),
        sa.Column("response_headers", sa.JSON(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["team_id"], ["teams.id"], name=op.f("fk_idempotency_keys_team_id_teams")
        ),
        sa.PrimaryKeyConstraint("team_id", "key", name=op.f("pk_idempotency_keys")),
    )
    op.create_index(op.f("ix_idempotency_keys_expires_at"), "idempotency_keys", ["expires_at"])


def _append_only_triggers(dialect: str) -> None:
    message = "ledger_entries is append-only"
    if dialect == "postgresql":
        op.execute(
            "CREATE FUNCTION ledger_entries_append_only() RETURNS trigger LANGUAGE plpgsql AS $$ "
            f"BEGIN RAISE EXCEPTION '{message}: % refused', TG_OP; END $$"
        )
        op.execute(
            "CREATE TRIGGER ledger_entries_append_only BEFORE UPDATE OR DELETE ON ledger_entries "
            "FOR EACH ROW EXECUTE FUNCTION ledger_entries_append_only()"
        )
        op.execute(
            "CREATE TRIGGER ledger_entries_no_truncate BEFORE TRUNCATE ON ledger_entries "
            "FOR EACH STATEMENT EXECUTE FUNCTION ledger_entries_append_only()"
        )
    else:
        for operation in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER ledger_entries_no_{operation.lower()} BEFORE {operation} "
                f"ON ledger_entries BEGIN SELECT RAISE(ABORT, '{message}'); END"
            )


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    op.drop_index(op.f("ix_idempotency_keys_expires_at"), table_name="idempotency_keys")
    op.drop_table("idempotency_keys")
    op.drop_table("job_requests")
    if dialect == "postgresql":
        op.execute("DROP TRIGGER ledger_entries_no_truncate ON ledger_entries")
        op.execute("DROP TRIGGER ledger_entries_append_only ON ledger_entries")
        op.execute("DROP FUNCTION ledger_entries_append_only()")
    else:
        op.execute("DROP TRIGGER ledger_entries_no_update")
        op.execute("DROP TRIGGER ledger_entries_no_delete")
    op.drop_table("ledger_entries")
    op.drop_index("ix_jobs_state_next_check_at", table_name="jobs")
    op.drop_index("ix_jobs_team_id_state", table_name="jobs")
    op.execute("UPDATE jobs SET state = 'rejected' WHERE state = 'released'")
    op.execute("UPDATE jobs SET state = 'submitted' WHERE state = 'captured'")
    with op.batch_alter_table("jobs") as batch:
        for column in (
            "settled_at",
            "flagged_at",
            "needs_review",
            "next_check_at",
            "check_attempts",
            "terminal_body",
            "upstream_error_code",
            "upstream_status",
            "period",
        ):
            batch.drop_column(column)
    op.drop_table("team_balances")
    op.drop_index("ix_rate_cards_model_effective_from", table_name="rate_cards")
    op.drop_table("rate_cards")
