"""Every query on balances and ledger entries. Amounts move only by conditional, relative
updates (``held = held + :x``), never by writing back a value read earlier."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.db.session import dialect_name
from gateway.jobs.models import OPEN_STATES, Job
from gateway.ledger.models import LedgerEntry, TeamBalance
from gateway.tenancy.models import Team


@dataclass(frozen=True)
class PeriodAmounts:
    """A team's period row as a statement returned it (micro-USD; budget None: unlimited)."""

    budget_micro_usd: int | None
    held_micro_usd: int
    captured_micro_usd: int


_RETURNED = (
    TeamBalance.budget_micro_usd,
    TeamBalance.held_micro_usd,
    TeamBalance.captured_micro_usd,
)


async def try_reserve(
    session: AsyncSession, team_id: int, period: str, amount: int, now: datetime
) -> PeriodAmounts | None:
    """Add ``amount`` to held if it fits the budget; the row stays locked until commit.

    None when it does not fit, or when the period has no balance row yet.
    """
    stmt = (
        update(TeamBalance)
        .where(
            TeamBalance.team_id == team_id,
            TeamBalance.period == period,
            (TeamBalance.budget_micro_usd.is_(None))
            | (
                TeamBalance.held_micro_usd + TeamBalance.captured_micro_usd + amount
                <= TeamBalance.budget_micro_usd
            ),
        )
        .values(held_micro_usd=TeamBalance.held_micro_usd + amount, updated_at=now)
        .returning(*_RETURNED)
    )
    row = (await session.execute(stmt)).one_or_none()
    return PeriodAmounts(*row) if row is not None else None


async def set_budget(
    session: AsyncSession, team_id: int, period: str, budget: int | None, now: datetime
) -> None:
    await session.execute(
        update(TeamBalance)
        .where(TeamBalance.team_id == team_id, TeamBalance.period == period)
        .values(budget_micro_usd=budget, updated_at=now)
    )


async def get_balance(session: AsyncSession, team_id: int, period: str) -> PeriodAmounts | None:
    stmt = select(*_RETURNED).where(TeamBalance.team_id == team_id, TeamBalance.period == period)
    row = (await session.execute(stmt)).one_or_none()
    return PeriodAmounts(*row) if row is not None else None


async def lock_balance(session: AsyncSession, team_id: int, period: str) -> PeriodAmounts | None:
    """The period's row, locked until commit: its figures cannot change under the caller."""
    stmt = (
        select(*_RETURNED)
        .where(TeamBalance.team_id == team_id, TeamBalance.period == period)
        .with_for_update()
    )
    row = (await session.execute(stmt)).one_or_none()
    return PeriodAmounts(*row) if row is not None else None


async def create_balance_if_missing(
    session: AsyncSession, team_id: int, period: str, budget: int | None, now: datetime
) -> None:
    """Open the period's balance row; a concurrent creator winning the race is fine."""
    values = {
        "team_id": team_id,
        "period": period,
        "budget_micro_usd": budget,
        "held_micro_usd": 0,
        "captured_micro_usd": 0,
        "updated_at": now,
    }
    insert = postgresql.insert if dialect_name(session) == "postgresql" else sqlite.insert
    await session.execute(insert(TeamBalance).values(**values).on_conflict_do_nothing())


async def move_settled_amounts(
    session: AsyncSession,
    team_id: int,
    period: str,
    *,
    hold: int,
    captured: int,
    now: datetime,
) -> PeriodAmounts:
    """Settle one hold: it leaves ``held``; ``captured`` (≤ hold) joins ``captured``."""
    stmt = (
        update(TeamBalance)
        .where(TeamBalance.team_id == team_id, TeamBalance.period == period)
        .values(
            held_micro_usd=TeamBalance.held_micro_usd - hold,
            captured_micro_usd=TeamBalance.captured_micro_usd + captured,
            updated_at=now,
        )
        .returning(*_RETURNED)
    )
    return PeriodAmounts(*(await session.execute(stmt)).one())


async def lock_team(session: AsyncSession, team_id: int) -> None:
    """FOR NO KEY UPDATE: exclusive among submits, but it does not wait for (nor block) the
    key-share locks that inserting rows referencing the team takes."""
    await session.execute(select(Team.id).where(Team.id == team_id).with_for_update(key_share=True))


async def count_open_jobs(session: AsyncSession, team_id: int) -> int:
    stmt = select(func.count()).where(Job.team_id == team_id, Job.state.in_(OPEN_STATES))
    return int((await session.execute(stmt)).scalar_one())


async def add_entries(session: AsyncSession, *entries: LedgerEntry) -> None:
    session.add_all(entries)
    await session.flush()


async def entries_for_job(session: AsyncSession, job_id: str) -> Sequence[LedgerEntry]:
    stmt = select(LedgerEntry).where(LedgerEntry.job_id == job_id).order_by(LedgerEntry.id)
    return (await session.execute(stmt)).scalars().all()
