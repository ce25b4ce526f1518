"""``GET /admin/usage``: every team's money for a period, with its one-off grants and a row per
project (amounts as USD decimal strings with 6 places; budget and remaining null when
unlimited). Read from the same snapshot the metrics gauges show (``ledger.snapshot``)."""

from __future__ import annotations

from collections import defaultdict

from pydantic import BaseModel, Field
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.core.clock import utcnow
from gateway.core.periods import period_of
from gateway.core.usd import format_usd
from gateway.errors import NotFound
from gateway.ledger.quotas import BudgetPolicy
from gateway.ledger.snapshot import LevelFigures, ProjectFigures, TeamFigures, ledger_snapshot


def _usd(micro: int | None) -> str | None:
    return format_usd(micro) if micro is not None else None


class ProjectUsageOut(BaseModel):
    project: str
    budget_usd: str | None = Field(description="The project's own budget; null: none")
    granted_usd: str = Field(description="One-off grants to the project for the period")
    captured_usd: str
    held_usd: str
    remaining_usd: str | None = Field(description="budget + granted - captured - held, ≥ 0")


class TeamUsageOut(BaseModel):
    team: str
    period: str
    budget_usd: str | None
    granted_usd: str = Field(description="One-off grants to the team itself for the period")
    captured_usd: str
    held_usd: str
    remaining_usd: str | None = Field(description="budget + granted - captured - held, ≥ 0")
    jobs_in_flight: int
    projects: list[ProjectUsageOut] = Field(description="Each of the team's projects, by name")


def _amounts(figures: LevelFigures) -> dict[str, str | None]:
    return {
        "budget_usd": _usd(figures.budget_micro_usd),
        "granted_usd": format_usd(figures.granted_micro_usd),
        "captured_usd": format_usd(figures.captured_micro_usd),
        "held_usd": format_usd(figures.held_micro_usd),
        "remaining_usd": _usd(figures.remaining_micro_usd),
    }


def team_usage_out(
    figures: TeamFigures, period: str, projects: list[ProjectFigures]
) -> TeamUsageOut:
    return TeamUsageOut.model_validate(
        {
            "team": figures.team,
            "period": period,
            **_amounts(figures),
            "jobs_in_flight": figures.jobs_in_flight,
            "projects": [{"project": p.project, **_amounts(p)} for p in projects],
        }
    )


async def usage_view(
    session: AsyncSession, *, period: str | None, team: str | None, policy: BudgetPolicy
) -> list[TeamUsageOut]:
    """Every enabled team's usage for ``period`` (default: the current one), or only
    ``team``'s (404 ``team_not_found`` if there is no such enabled team)."""
    now = utcnow()
    period = period or period_of(now)
    snapshot = await ledger_snapshot(session, period=period, now=now, policy=policy)
    figures = [f for f in snapshot.teams if team is None or f.team == team]
    if team is not None and not figures:
        raise NotFound(f"no team named {team!r}", code="team_not_found", param="team")
    projects: dict[str, list[ProjectFigures]] = defaultdict(list)
    for project in snapshot.projects:
        projects[project.team].append(project)
    return [team_usage_out(f, period, projects[f.team]) for f in figures]
