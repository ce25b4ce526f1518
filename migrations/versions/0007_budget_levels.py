"""Budget levels: projects inside teams, per-key and per-project period balances, per-job cost
caps at every level, one-off grants.

Every level's balance has the same CHECK as the team's, now counting grants:
``held + captured <= budget + granted``. Jobs record their project and whether their hold is
on their key's balance (jobs held before this revision are not: their settlement moves the
team's balance alone, as their hold did).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from gateway.db.base import BigIntPK, UTCDateTime

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
WITHIN_BUDGET = (
    "budget_micro_usd IS NULL "
    "OR held_micro_usd + captured_micro_usd <= budget_micro_usd + granted_micro_usd"
)
OLD_WITHIN_BUDGET = (
    "budget_micro_usd IS NULL OR held_micro_usd + captured_micro_usd <= budget_micro_usd"
)


def _money_columns() -> list[sa.Column[object]]:
    return [
        sa.Column("period", sa.String(7), nullable=False),
        sa.Column("budget_micro_usd", sa.BigInteger(), nullable=True),
        sa.Column("granted_micro_usd", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("held_micro_usd", sa.BigInteger(), nullable=False),
        sa.Column("captured_micro_usd", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
    ]


def _checks(table: str) -> list[sa.CheckConstraint]:
    return [
        sa.CheckConstraint("held_micro_usd >= 0", name=op.f(f"ck_{table}_held_non_negative")),
        sa.CheckConstraint(
            "captured_micro_usd >= 0", name=op.f(f"ck_{table}_captured_non_negative")
        ),
        sa.CheckConstraint(WITHIN_BUDGET, name=op.f(f"ck_{table}_within_budget")),
    ]


def _sqlite() -> bool:
    return op.get_context().dialect.name == "sqlite"


def _add_columns(table: str, *columns: sa.Column[object], references: str | None = None) -> None:
    """Columns added in place. On SQLite a table other rows reference (jobs, api_keys) cannot
    be rebuilt inside the migration's transaction (dropping its old copy trips their foreign
    keys), so there the new reference column is a plain column: the gateway's code keeps it
    consistent; on Postgres it carries its foreign key."""
    for column in columns:
        op.add_column(table, column)
    if references is not None and not _sqlite():
        column_name = columns[0].name
        op.create_foreign_key(
            op.f(f"fk_{table}_{column_name}_{references}"),
            table,
            references,
            [column_name],
            ["id"],
        )


def _drop_columns(table: str, *names: str, references: str | None = None) -> None:
    if references is not None and not _sqlite():
        op.drop_constraint(op.f(f"fk_{table}_{names[0]}_{references}"), table, type_="foreignkey")
    for name in names:
        if _sqlite():  # SQLite >= 3.35 drops a plain column in place
            op.execute(f"ALTER TABLE {table} DROP COLUMN {name}")
        else:
            op.drop_column(table, name)


def upgrade() -> None:
    op.create_table(
        "projects",
        sa.Column("id", BigIntPK, autoincrement=True, nullable=False),
        sa.Column("team_id", ID, nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("monthly_budget_micro_usd", sa.BigInteger(), nullable=True),
        sa.Column("max_cost_per_job_micro_usd", sa.BigInteger(), nullable=True),
        sa.Column("soft_limit_percent", sa.Integer(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["team_id"], ["teams.id"], name=op.f("fk_projects_team_id_teams")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_projects")),
        sa.UniqueConstraint("team_id", "name", name="uq_projects_team_id_name"),
    )
    _add_columns("teams", sa.Column("max_cost_per_job_micro_usd", sa.BigInteger(), nullable=True))
    _add_columns(
        "api_keys",
        sa.Column("project_id", ID, nullable=True),
        sa.Column("role", sa.String(16), nullable=False, server_default="member"),
        sa.Column("monthly_budget_micro_usd", sa.BigInteger(), nullable=True),
        sa.Column("max_cost_per_job_micro_usd", sa.BigInteger(), nullable=True),
        references="projects",
    )
    _add_columns(
        "jobs",
        sa.Column("project_id", ID, nullable=True),
        sa.Column("key_held", sa.Boolean(), nullable=False, server_default=sa.false()),
        references="projects",
    )
    with op.batch_alter_table("team_balances") as batch:
        batch.add_column(
            sa.Column("granted_micro_usd", sa.BigInteger(), nullable=False, server_default="0")
        )
        batch.drop_constraint(op.f("ck_team_balances_within_budget"), type_="check")
        batch.create_check_constraint(op.f("ck_team_balances_within_budget"), WITHIN_BUDGET)
    op.create_table(
        "project_balances",
        sa.Column("project_id", ID, nullable=False),
        *_money_columns(),
        *_checks("project_balances"),
        sa.ForeignKeyConstraint(
            ["project_id"], ["projects.id"], name=op.f("fk_project_balances_project_id_projects")
        ),
        sa.PrimaryKeyConstraint("project_id", "period", name=op.f("pk_project_balances")),
    )
    op.create_table(
        "key_balances",
        sa.Column("api_key_id", sa.String(32), nullable=False),
        *_money_columns(),
        *_checks("key_balances"),
        sa.ForeignKeyConstraint(
            ["api_key_id"], ["api_keys.id"], name=op.f("fk_key_balances_api_key_id_api_keys")
        ),
        sa.PrimaryKeyConstraint("api_key_id", "period", name=op.f("pk_key_balances")),
    )
    op.create_table(
        "budget_grants",
        sa.Column("id", BigIntPK, autoincrement=True, nullable=False),
        sa.Column("team_id", ID, nullable=False),
        sa.Column("scope", sa.String(8), nullable=False),
        sa.Column("project_id", ID, nullable=True),
        sa.Column("api_key_id", sa.String(32), nullable=True),
        sa.Column("period", sa.String(7), nullable=False),
        sa.Column("amount_micro_usd", sa.BigInteger(), nullable=False),
        sa.Column("reason", sa.String(255), nullable=False),
        sa.Column("granted_by", sa.String(160), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.CheckConstraint("amount_micro_usd > 0", name=op.f("ck_budget_grants_amount_positive")),
        sa.CheckConstraint(
            "scope IN ('team', 'project', 'key')", name=op.f("ck_budget_grants_scope_known")
        ),
        sa.ForeignKeyConstraint(
            ["team_id"], ["teams.id"], name=op.f("fk_budget_grants_team_id_teams")
        ),
        sa.ForeignKeyConstraint(
            ["project_id"], ["projects.id"], name=op.f("fk_budget_grants_project_id_projects")
        ),
        sa.ForeignKeyConstraint(
            ["api_key_id"], ["api_keys.id"], name=op.f("fk_budget_grants_api_key_id_api_keys")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_budget_grants")),
    )
    op.create_index("ix_budget_grants_team_id_period", "budget_grants", ["team_id", "period"])
    # Budget alerts per level: once per level (the team, a project, a key), period and
    # threshold. Existing alerts are the teams' (owner '' stands for the team itself).
    with op.batch_alter_table("budget_alerts") as batch:
        batch.add_column(sa.Column("scope", sa.String(8), nullable=False, server_default="team"))
        batch.add_column(sa.Column("owner", sa.String(32), nullable=False, server_default=""))
        batch.add_column(sa.Column("scope_name", sa.String(64), nullable=True))
        batch.drop_constraint("uq_budget_alerts_once", type_="unique")
        batch.create_unique_constraint(
            "uq_budget_alerts_once", ["team_id", "scope", "owner", "period", "threshold"]
        )
        batch.create_check_constraint(
            op.f("ck_budget_alerts_scope_known"), "scope IN ('team', 'project', 'key')"
        )


def downgrade() -> None:
    # The projects' and keys' alerts have no place in the old unique key (once per team).
    op.execute("DELETE FROM budget_alerts WHERE scope <> 'team'")
    with op.batch_alter_table("budget_alerts") as batch:
        batch.drop_constraint(op.f("ck_budget_alerts_scope_known"), type_="check")
        batch.drop_constraint("uq_budget_alerts_once", type_="unique")
        batch.create_unique_constraint("uq_budget_alerts_once", ["team_id", "period", "threshold"])
        batch.drop_column("scope_name")
        batch.drop_column("owner")
        batch.drop_column("scope")
    op.drop_index("ix_budget_grants_team_id_period", table_name="budget_grants")
    op.drop_table("budget_grants")
    op.drop_table("key_balances")
    op.drop_table("project_balances")
    with op.batch_alter_table("team_balances") as batch:
        batch.drop_constraint(op.f("ck_team_balances_within_budget"), type_="check")
        batch.create_check_constraint(op.f("ck_team_balances_within_budget"), OLD_WITHIN_BUDGET)
        batch.drop_column("granted_micro_usd")
    _drop_columns("jobs", "project_id", "key_held", references="projects")
    _drop_columns(
        "api_keys",
        "project_id",
        "role",
        "monthly_budget_micro_usd",
        "max_cost_per_job_micro_usd",
        references="projects",
    )
    _drop_columns("teams", "max_cost_per_job_micro_usd")
    op.drop_table("projects")
