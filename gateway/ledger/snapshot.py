"""The ledger's state at a glance, computed in the database: what the metrics gauges show and
what operators alert on (per team and per project), and the admin's usage view. Read-only; a
few aggregate queries, run on a schedule."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import and_, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.jobs.models import OPEN_STATES, Job, JobState
from gateway.ledger.models import ProjectBalance, TeamBalance
from gateway.ledger.quotas import BudgetPolicy
from gateway.tenancy.models import Project, Team


@dataclass(frozen=True)
class LevelFigures:
    """One level's money for the period (micro-USD; budget None: unlimited)."""

    budget_micro_usd: int | None
    captured_micro_usd: int
    held_micro_usd: int
    granted_micro_usd: int

    @property
    def limit_micro_usd(self) -> int | None:
        """What may be spent in the period: the budget plus its grants; None: any amount."""
        if self.budget_micro_usd is None:
            return None
        return self.budget_micro_usd + self.granted_micro_usd

    @property
    def remaining_micro_usd(self) -> int | None:
        limit = self.limit_micro_usd
        if limit is None:
            return None
        return max(limit - self.captured_micro_usd - self.held_micro_usd, 0)


@dataclass(frozen=True)
class TeamFigures(LevelFigures):
    team_id: int
    team: str
    soft_limit_percent: int | None
    jobs_in_flight: int

    @property
    def soft_limit_micro_usd(self) -> int | None:
        """The budget's soft-limit share (grants excluded, as the soft-limit alert counts)."""
        if self.budget_micro_usd is None or self.soft_limit_percent is None:
            return None
        return self.budget_micro_usd * self.soft_limit_percent // 100


@dataclass(frozen=True)
class ProjectFigures(LevelFigures):
    team: str
    project: str


@dataclass(frozen=True)
class LedgerSnapshot:
    teams: list[TeamFigures]
    holds_outstanding_micro_usd: int
    oldest_hold_age_seconds: float
    reconciler_lag_seconds: float
    projects: list[ProjectFigures]
    """Every project of the enabled teams, by team then name."""


async def ledger_snapshot(
    session: AsyncSession, *, period: str, now: datetime, policy: BudgetPolicy
) -> LedgerSnapshot:
    open_states = OPEN_STATES
    in_flight = (
        select(Job.team_id, func.count().label("n"))
        .where(Job.state.in_(open_states))
        .group_by(Job.team_id)
        .subquery()
    )
    rows = await session.execute(
        select(
            Team.id,
            Team.name,
            Team.monthly_budget_micro_usd,
            Team.soft_limit_percent,
            TeamBalance.period,
            TeamBalance.budget_micro_usd,
            func.coalesce(TeamBalance.captured_micro_usd, 0),
            func.coalesce(TeamBalance.held_micro_usd, 0),
            func.coalesce(TeamBalance.granted_micro_usd, 0),
            func.coalesce(in_flight.c.n, 0),
        )
        .outerjoin(TeamBalance, and_(TeamBalance.team_id == Team.id, TeamBalance.period == period))
        .outerjoin(in_flight, in_flight.c.team_id == Team.id)
        .where(Team.disabled_at.is_(None))
        .order_by(Team.name)
    )
    teams = []
    for team_id, name, team_budget, soft, found, period_budget, captured, held, granted, n in rows:
        # The period's row carries its budget once opened; before that, the team's (or policy).
        if found is not None:
            budget = period_budget
        elif team_budget is not None:
            budget = team_budget
        else:
            budget = None if policy == "unlimited" else 0
        teams.append(
            TeamFigures(
                budget_micro_usd=budget,
                captured_micro_usd=int(captured),
                held_micro_usd=int(held),
                granted_micro_usd=int(granted),
                team_id=team_id,
                team=name,
                soft_limit_percent=soft,
                jobs_in_flight=int(n),
            )
        )
    projects = await _project_figures(session, period)
    held_total = (await session.execute(select(func.sum(TeamBalance.held_micro_usd)))).scalar()
    oldest = (
        await session.execute(select(func.min(Job.created_at)).where(Job.state.in_(open_states)))
    ).scalar()
    most_overdue = (
        await session.execute(
            select(func.min(Job.next_check_at)).where(
                Job.state == JobState.SUBMITTED, Job.next_check_at <= now
            )
        )
    ).scalar()
    return LedgerSnapshot(
        teams=teams,
        holds_outstanding_micro_usd=int(held_total or 0),
        oldest_hold_age_seconds=_age(now, oldest),
        reconciler_lag_seconds=_age(now, most_overdue),
        projects=projects,
    )


async def _project_figures(session: AsyncSession, period: str) -> list[ProjectFigures]:
    """Every project of the enabled teams with its period row (none yet: used nothing, and
    the project's own budget, if any; a project has no default policy)."""
    rows = await session.execute(
        select(
            Team.name,
            Project.name,
            Project.monthly_budget_micro_usd,
            ProjectBalance.period,
            ProjectBalance.budget_micro_usd,
            func.coalesce(ProjectBalance.captured_micro_usd, 0),
            func.coalesce(ProjectBalance.held_micro_usd, 0),
            func.coalesce(ProjectBalance.granted_micro_usd, 0),
        )
        .join(Team, Team.id == Project.team_id)
        .outerjoin(
            ProjectBalance,
            and_(ProjectBalance.project_id == Project.id, ProjectBalance.period == period),
        )
        .where(Team.disabled_at.is_(None))
        .order_by(Team.name, Project.name)
    )
    return [
        ProjectFigures(
            budget_micro_usd=period_budget if found is not None else own_budget,
            captured_micro_usd=int(captured),
            held_micro_usd=int(held),
            granted_micro_usd=int(granted),
            team=team,
            project=project,
        )
        for team, project, own_budget, found, period_budget, captured, held, granted in rows
    ]


def _age(now: datetime, since: datetime | None) -> float:
    if since is None:
        return 0.0
    if since.tzinfo is None:  # aggregates may come back without the column's type
        since = since.replace(tzinfo=UTC)
    return max((now - since).total_seconds(), 0.0)
