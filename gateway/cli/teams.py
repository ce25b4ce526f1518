"""``gateway teams create|list|update``, and the ``--...-usd`` options every family of
commands parses the same way."""

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


def usd_or_none(micro_usd: int | None) -> str | None:
    return format_usd(micro_usd) if micro_usd is not None else None


def parse_usd_param(value: str, option: str, *, positive: bool = False) -> int:
    """A ``--...-usd`` value in micro-USD; an amount that cannot work is a usage error (exit 2),
    as is 0 where only a positive amount makes sense (a per-job cap, a grant)."""
    try:
        amount = parse_usd(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=f"'{option}'") from None
    if positive and amount == 0:
        raise click.BadParameter("must be more than 0", param_hint=f"'{option}'")
    return amount


def usd_option(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    """Click callback: a ``--...-usd`` amount (a budget: 0 or more); None when not given."""
    return None if value is None else parse_usd_param(value, param.opts[0])


def positive_usd_option(
    ctx: click.Context, param: click.Parameter, value: str | None
) -> int | None:
    """Click callback: a ``--...-usd`` amount that must be more than 0 (a cap, a grant)."""
    return None if value is None else parse_usd_param(value, param.opts[0], positive=True)


def usd_change(
    changes: dict[str, object],
    field: str,
    value: str | None,
    option: str,
    *,
    positive: bool = False,
) -> None:
    """An ``update`` command's ``--...-usd`` option into ``changes[field]``: ``none`` clears
    the setting, absent leaves it alone."""
    if value is None:
        return
    cleared = value.strip().lower() == "none"
    changes[field] = None if cleared else parse_usd_param(value, option, positive=positive)


CAP_HELP = "Refuse any single request priced above this (USD)."


def team_to_dict(team: Team) -> dict[str, object]:
    budget = team.monthly_budget_micro_usd
    return {
        "id": team.id,
        "name": team.name,
        "cost_center": team.cost_center,
        "monthly_budget_usd": format_usd(budget) if budget is not None else None,
        "max_cost_per_job_usd": usd_or_none(team.max_cost_per_job_micro_usd),
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
@click.option(
    "--monthly-budget-usd",
    callback=usd_option,
    help="Budget per calendar month (UTC), e.g. 250 or 99.50.",
)
@click.option("--max-cost-per-job-usd", callback=positive_usd_option, help=CAP_HELP)
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
    monthly_budget_usd: int | None,
    max_cost_per_job_usd: int | None,
    cost_center: str | None,
    max_concurrent_jobs: int | None,
    soft_limit_percent: int | None,
    as_json: bool,
) -> None:
    """Create team NAME."""
    settings = load_settings()

    async def _create(session: AsyncSession) -> Team:
        return await service.create_team(
            session,
            name,
            actor=Actor.cli(),
            cost_center=cost_center,
            monthly_budget_micro_usd=monthly_budget_usd,
            max_concurrent_jobs=max_concurrent_jobs,
            soft_limit_percent=soft_limit_percent,
            max_cost_per_job_micro_usd=max_cost_per_job_usd,
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
            Column("MAX/JOB USD", "right"),
            Column("SOFT LIMIT %", "right"),
            Column("MAX JOBS", "right"),
            Column("STATUS"),
        ],
        (
            [
                row["name"],
                row["cost_center"],
                row["monthly_budget_usd"] or "default",
                row["max_cost_per_job_usd"],
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
@click.option("--max-cost-per-job-usd", help="New per-job cap (USD), or 'none' to clear it.")
@click.option("--cost-center")
@click.option("--max-concurrent-jobs", type=click.IntRange(min=1))
@click.option("--soft-limit-percent", type=click.IntRange(1, 100))
@click.option("--disable/--enable", "disabled", default=None, help="Stop (or restart) the team.")
@click.option("--json", "as_json", is_flag=True, help="Print the team as JSON.")
def update(
    name: str,
    monthly_budget_usd: str | None,
    max_cost_per_job_usd: str | None,
    cost_center: str | None,
    max_concurrent_jobs: int | None,
    soft_limit_percent: int | None,
    disabled: bool | None,
    as_json: bool,
) -> None:
    """Change team NAME's budget, limits or cost center; disable or enable it."""
    changes: dict[str, object] = {}
    usd_change(changes, "monthly_budget_micro_usd", monthly_budget_usd, "--monthly-budget-usd")
    usd_change(
        changes,
        "max_cost_per_job_micro_usd",
        max_cost_per_job_usd,
        "--max-cost-per-job-usd",
        positive=True,
    )
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
