"""The ledger's state at a glance, computed in the database: what the metrics gauges show and
what operators alert on. Read-only; a few aggregate queries, run on a schedule."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import and_, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.jobs.models import OPEN_STATES, Job, JobState
from gateway.ledger.models import TeamBalance
from gateway.ledger.quotas import BudgetPolicy
from gateway.tenancy.models import Team


@dataclass(frozen=True)
class TeamFigures:
    team_id: int
    team: str
    budget_micro_usd: int | None
    soft_limit_percent: int | None
    captured_micro_usd: int
    held_micro_usd: int
    jobs_in_flight: int

    @property
    def soft_limit_micro_usd(self) -> int | None:
        if self.budget_micro_usd is None or self.soft_limit_percent is None:
            return None
        return self.budget_micro_usd * self.soft_limit_percent // 100


@dataclass(frozen=True)
class LedgerSnapshot:
    teams: list[TeamFigures]
    holds_outstanding_micro_usd: int
    oldest_hold_age_seconds: float
    reconciler_lag_seconds: float


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
            TeamBalance.budget_micro_usd,
            func.coalesce(TeamBalance.captured_micro_usd, 0),
            func.coalesce(TeamBalance.held_micro_usd, 0),
            func.coalesce(in_flight.c.n, 0),
        )
        .outerjoin(TeamBalance, and_(TeamBalance.team_id == Team.id, TeamBalance.period == period))
        .outerjoin(in_flight, in_flight.c.team_id == Team.id)
        .where(Team.disabled_at.is_(None))
        .order_by(Team.name)
    )
    teams = []
    for team_id, name, team_budget, soft, period_budget, captured, held, n in rows:
        # The period's row carries its budget once opened; before that, the team's (or policy).
        if period_budget is not None or captured or held:
            budget = period_budget
        elif team_budget is not None:
            budget = team_budget
        else:
            budget = None if policy == "unlimited" else 0
        teams.append(TeamFigures(team_id, name, budget, soft, int(captured), int(held), int(n)))
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
    )


def _age(now: datetime, since: datetime | None) -> float:
    if since is None:
        return 0.0
    if since.tzinfo is None:  # aggregates may come back without the column's type
        since = since.replace(tzinfo=UTC)
    return max((now - since).total_seconds(), 0.0)
