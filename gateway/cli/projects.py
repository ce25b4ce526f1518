"""``gateway projects create|list|update``: budget levels inside a team."""

from __future__ import annotations

from collections.abc import Sequence

import click
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.audit.service import Actor
from gateway.cli._common import echo_json, load_settings, run_in_session
from gateway.cli._output import Column, print_table
from gateway.cli.teams import CAP_HELP, positive_usd_option, usd_change, usd_option, usd_or_none
from gateway.services import projects as level_changes
from gateway.tenancy import service
from gateway.tenancy.models import Project


def project_to_dict(project: Project, team: str) -> dict[str, object]:
    return {
        "id": project.id,
        "team": team,
        "name": project.name,
        "monthly_budget_usd": usd_or_none(project.monthly_budget_micro_usd),
        "max_cost_per_job_usd": usd_or_none(project.max_cost_per_job_micro_usd),
        "soft_limit_percent": project.soft_limit_percent,
        "created_at": project.created_at.isoformat(),
    }


@click.group()
def projects() -> None:
    """Manage projects: budget levels inside a team."""


@projects.command("create")
@click.option("--team", "team_name", required=True, help="The team the project belongs to.")
@click.argument("name")
@click.option(
    "--monthly-budget-usd",
    callback=usd_option,
    help="Budget per calendar month (UTC), within the team's; default: none of its own.",
)
@click.option("--max-cost-per-job-usd", callback=positive_usd_option, help=CAP_HELP)
@click.option(
    "--soft-limit-percent",
    type=click.IntRange(1, 100),
    help="Alert when this share of the project's budget is used or held (e.g. 80).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the project as JSON.")
def create(
    team_name: str,
    name: str,
    monthly_budget_usd: int | None,
    max_cost_per_job_usd: int | None,
    soft_limit_percent: int | None,
    as_json: bool,
) -> None:
    """Create project NAME in a team."""
    settings = load_settings()

    async def _create(session: AsyncSession) -> Project:
        return await service.create_project(
            session,
            team_name,
            name,
            actor=Actor.cli(),
            monthly_budget_micro_usd=monthly_budget_usd,
            max_cost_per_job_micro_usd=max_cost_per_job_usd,
            soft_limit_percent=soft_limit_percent,
        )

    project = run_in_session(settings, _create)
    if as_json:
        echo_json(project_to_dict(project, team_name))
    else:
        click.echo(f"created project {project.name} in team {team_name} (id {project.id})")


@projects.command("list")
@click.option("--team", "team_name", required=True)
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def list_projects(team_name: str, as_json: bool) -> None:
    """List a team's projects."""
    settings = load_settings()

    async def _list(session: AsyncSession) -> Sequence[Project]:
        return await service.list_projects(session, team_name)

    data = [project_to_dict(p, team_name) for p in run_in_session(settings, _list)]
    if as_json:
        echo_json(data)
        return
    print_table(
        [
            Column("NAME"),
            Column("BUDGET/MONTH USD", "right"),
            Column("MAX/JOB USD", "right"),
            Column("SOFT LIMIT %", "right"),
        ],
        (
            [
                row["name"],
                row["monthly_budget_usd"] or "team's",
                row["max_cost_per_job_usd"],
                row["soft_limit_percent"],
            ]
            for row in data
        ),
    )


@projects.command("update")
@click.option("--team", "team_name", required=True)
@click.argument("name")
@click.option("--monthly-budget-usd", help="New budget per month (USD), or 'none' to clear it.")
@click.option("--max-cost-per-job-usd", help="New per-job cap (USD), or 'none' to clear it.")
@click.option("--soft-limit-percent", type=click.IntRange(1, 100))
@click.option("--json", "as_json", is_flag=True, help="Print the project as JSON.")
def update(
    team_name: str,
    name: str,
    monthly_budget_usd: str | None,
    max_cost_per_job_usd: str | None,
    soft_limit_percent: int | None,
    as_json: bool,
) -> None:
    """Change project NAME's budget (it applies to the month under way at once), per-job cap
    or alert."""
    changes: dict[str, object] = {}
    usd_change(changes, "monthly_budget_micro_usd", monthly_budget_usd, "--monthly-budget-usd")
    usd_change(
        changes,
        "max_cost_per_job_micro_usd",
        max_cost_per_job_usd,
        "--max-cost-per-job-usd",
        positive=True,
    )
    if soft_limit_percent is not None:
        changes["soft_limit_percent"] = soft_limit_percent
    if not changes:
        raise click.UsageError("nothing to change: give at least one option")
    settings = load_settings()

    async def _update(session: AsyncSession) -> Project:
        return await level_changes.update_project(
            session, team_name, name, changes, actor=Actor.cli()
        )

    project = run_in_session(settings, _update)
    if as_json:
        echo_json(project_to_dict(project, team_name))
    else:
        click.echo(f"updated project {project.name} in team {team_name}")
