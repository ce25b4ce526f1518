"""``gateway teams create|list``."""

from __future__ import annotations

from collections.abc import Sequence

import click
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.audit.service import Actor
from gateway.cli._common import echo_json, load_settings, run_in_session
from gateway.cli._output import Column, print_table
from gateway.core.usd import format_usd, parse_usd
from gateway.services import teams as team_changes
from gateway.tenancy import service
from gateway.tenancy.models import Team


def team_to_dict(team: Team) -> dict[str, object]:
    budget = team.monthly_budget_micro_usd
    return {
        "id": team.id,
        "name": team.name,
        "cost_center": team.cost_center,
        "monthly_budget_usd": format_usd(budget) if budget is not None else None,
        "max_concurrent_jobs": team.max_concurrent_jobs,
        "soft_limit_percent": team.soft_limit_percent,
        "created_at": team.created_at.isoformat(),
        "disabled": team.disabled_at is not None,
    }


@click.group()
def teams() -> None:
    """Manage teams (tenants)."""


@teams.command("create")
@click.argument("name")
@click.option("--monthly-budget-usd", help="Budget per calendar month (UTC), e.g. 250 or 99.50.")
@click.option("--cost-center", help="Cost center that finance charges this team's spend to.")
@click.option("--max-concurrent-jobs", type=click.IntRange(min=1), help="Cap on jobs in flight.")
@click.option(
    "--soft-limit-percent",
    type=click.IntRange(1, 100),
    help="Alert when this share of the budget is used or held (e.g. 80).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the team as JSON.")
def create(
    name: str,
    monthly_budget_usd: str | None,
    cost_center: str | None,
    max_concurrent_jobs: int | None,
    soft_limit_percent: int | None,
    as_json: bool,
) -> None:
    """Create team NAME."""
    budget: int | None = None
    if monthly_budget_usd is not None:
        try:
            budget = parse_usd(monthly_budget_usd)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="'--monthly-budget-usd'") from None
    settings = load_settings()

    async def _create(session: AsyncSession) -> Team:
        return await service.create_team(
            session,
            name,
            actor=Actor.cli(),
            cost_center=cost_center,
            monthly_budget_micro_usd=budget,
            max_concurrent_jobs=max_concurrent_jobs,
            soft_limit_percent=soft_limit_percent,
        )

    team = run_in_session(settings, _create)
    if as_json:
        echo_json(team_to_dict(team))
    else:
        click.echo(f"created team {team.name} (id {team.id})")


@teams.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def list_teams(as_json: bool) -> None:
    """List teams."""
    settings = load_settings()
    rows: Sequence[Team] = run_in_session(settings, service.list_teams)
    data = [team_to_dict(t) for t in rows]
    if as_json:
        echo_json(data)
        return
    print_table(
        [
            Column("NAME"),
            Column("COST CENTER"),
            Column("BUDGET/MONTH USD", "right"),
            Column("SOFT LIMIT %", "right"),
            Column("MAX JOBS", "right"),
            Column("STATUS"),
        ],
        (
            [
                row["name"],
                row["cost_center"],
                row["monthly_budget_usd"] or "default",
                row["soft_limit_percent"],
                row["max_concurrent_jobs"],
                "disabled" if row["disabled"] else "enabled",
            ]
            for row in data
        ),
    )


@teams.command("update")
@click.argument("name")
@click.option("--monthly-budget-usd", help="New budget per month (USD), or 'none' to clear it.")
@click.option("--cost-center")
@click.option("--max-concurrent-jobs", type=click.IntRange(min=1))
@click.option("--soft-limit-percent", type=click.IntRange(1, 100))
@click.option("--disable/--enable", "disabled", default=None, help="Stop (or restart) the team.")
@click.option("--json", "as_json", is_flag=True, help="Print the team as JSON.")
def update(
    name: str,
    monthly_budget_usd: str | None,
    cost_center: str | None,
    max_concurrent_jobs: int | None,
    soft_limit_percent: int | None,
    disabled: bool | None,
    as_json: bool,
) -> None:
    """Change team NAME's budget, limits or cost center; disable or enable it."""
    changes: dict[str, object] = {}
    if monthly_budget_usd is not None:
        try:
            changes["monthly_budget_micro_usd"] = (
                None if monthly_budget_usd.lower() == "none" else parse_usd(monthly_budget_usd)
            )
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="'--monthly-budget-usd'") from None
    for field, value in (
        ("cost_center", cost_center),
        ("max_concurrent_jobs", max_concurrent_jobs),
        ("soft_limit_percent", soft_limit_percent),
        ("disabled", disabled),
    ):
        if value is not None:
            changes[field] = value
    if not changes:
        raise click.UsageError("nothing to change: give at least one option")
    settings = load_settings()

    async def _update(session: AsyncSession) -> Team:
        return await team_changes.update_team(
            session, name, changes, actor=Actor.cli(), policy=settings.default_budget_policy
        )

    team = run_in_session(settings, _update)
    if as_json:
        echo_json(team_to_dict(team))
    else:
        click.echo(f"updated team {team.name}")
