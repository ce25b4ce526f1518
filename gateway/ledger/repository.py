"""Every query on balances (the team's, a project's, a key's: the same columns, see
``Account``) and ledger entries. Amounts move only by conditional, relative
updates (``held = held + :x``), never by writing back a value read earlier."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import ColumnElement, and_, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from gateway.db.session import dialect_name
from gateway.jobs.models import OPEN_STATES, Job
from gateway.ledger.models import (
    BudgetAlert,
    EntryKind,
    KeyBalance,
    LedgerEntry,
    ProjectBalance,
    TeamBalance,
)
from gateway.tenancy.models import Team


@dataclass(frozen=True)
class PeriodAmounts:
    """One level's period row as a statement returned it (micro-USD; budget None: unlimited)."""

    budget_micro_usd: int | None
    held_micro_usd: int
    captured_micro_usd: int
    granted_micro_usd: int = 0

    @property
    def limit_micro_usd(self) -> int | None:
        """What the level may spend in the period: its budget plus the grants; None: any."""
        if self.budget_micro_usd is None:
            return None
        return self.budget_micro_usd + self.granted_micro_usd


Scope = Literal["team", "project", "key"]
SCOPES: tuple[Scope, ...] = ("team", "project", "key")
"""Every level, in the order its balance rows are locked (submits, settlements, grants)."""

_Balance = type[TeamBalance] | type[ProjectBalance] | type[KeyBalance]


@dataclass(frozen=True)
class Account:
    """One level's balance rows: the team's, a project's or a key's."""

    scope: Scope
    owner: int | str
    """The team id, project id or key id."""

    @classmethod
    def team(cls, team_id: int) -> Account:
        return cls("team", team_id)

    @property
    def table(self) -> _Balance:
        return _TABLES[self.scope]

    def owned(self) -> ColumnElement[bool]:
        owner_column: InstrumentedAttribute[Any] = getattr(self.table, _OWNER_COLUMNS[self.scope])
        return owner_column == self.owner

    def matches(self, period: str) -> ColumnElement[bool]:
        return and_(self.owned(), self.table.period == period)

    def returned(self) -> tuple[InstrumentedAttribute[Any], ...]:
        table = self.table
        return (
            table.budget_micro_usd,
            table.held_micro_usd,
            table.captured_micro_usd,
            table.granted_micro_usd,
        )


_TABLES: dict[Scope, _Balance] = {
    "team": TeamBalance,
    "project": ProjectBalance,
    "key": KeyBalance,
}
_OWNER_COLUMNS: dict[Scope, str] = {"team": "team_id", "project": "project_id", "key": "api_key_id"}


def _amounts(row: Any) -> PeriodAmounts:
    return PeriodAmounts(row[0], row[1], row[2], row[3])


async def try_reserve(
    session: AsyncSession, account: Account, period: str, amount: int, now: datetime
) -> PeriodAmounts | None:
    """Add ``amount`` to held if it fits the budget (plus grants); the row stays locked until
    commit. None when it does not fit, or when the period has no balance row yet."""
    table = account.table
    stmt = (
        update(table)
        .where(
            account.matches(period),
            (table.budget_micro_usd.is_(None))
            | (
                table.held_micro_usd + table.captured_micro_usd + amount
                <= table.budget_micro_usd + table.granted_micro_usd
            ),
        )
        .values(held_micro_usd=table.held_micro_usd + amount, updated_at=now)
        .returning(*account.returned())
    )
    row = (await session.execute(stmt)).one_or_none()
    return _amounts(row) if row is not None else None


async def set_budget(
    session: AsyncSession, account: Account, period: str, budget: int | None, now: datetime
) -> None:
    await session.execute(
        update(account.table)
        .where(account.matches(period))
        .values(budget_micro_usd=budget, updated_at=now)
    )


async def set_later_budgets(
    session: AsyncSession, account: Account, period: str, budget: int | None, now: datetime
) -> None:
    """The budget of the rows of periods after ``period`` that already exist (opened early by
    a grant for a later month): a budget change applies to them too."""
    table = account.table
    await session.execute(
        update(table)
        .where(account.owned(), table.period > period)
        .values(budget_micro_usd=budget, updated_at=now)
    )


async def add_granted(
    session: AsyncSession, account: Account, period: str, amount: int, now: datetime
) -> PeriodAmounts:
    table = account.table
    stmt = (
        update(table)
        .where(account.matches(period))
        .values(granted_micro_usd=table.granted_micro_usd + amount, updated_at=now)
        .returning(*account.returned())
    )
    return _amounts((await session.execute(stmt)).one())


async def get_balance(session: AsyncSession, account: Account, period: str) -> PeriodAmounts | None:
    stmt = select(*account.returned()).where(account.matches(period))
    row = (await session.execute(stmt)).one_or_none()
    return _amounts(row) if row is not None else None


async def lock_balance(
    session: AsyncSession, account: Account, period: str
) -> PeriodAmounts | None:
    """The period's row, locked until commit: its figures cannot change under the caller."""
    stmt = select(*account.returned()).where(account.matches(period)).with_for_update()
    row = (await session.execute(stmt)).one_or_none()
    return _amounts(row) if row is not None else None


async def create_balance_if_missing(
    session: AsyncSession, account: Account, period: str, budget: int | None, now: datetime
) -> None:
    """Open the period's balance row; a concurrent creator winning the race is fine."""
    values = {
        _OWNER_COLUMNS[account.scope]: account.owner,
        "period": period,
        "budget_micro_usd": budget,
        "granted_micro_usd": 0,
        "held_micro_usd": 0,
        "captured_micro_usd": 0,
        "updated_at": now,
    }
    insert = postgresql.insert if dialect_name(session) == "postgresql" else sqlite.insert
    await session.execute(insert(account.table).values(**values).on_conflict_do_nothing())


async def move_settled_amounts(
    session: AsyncSession,
    account: Account,
    period: str,
    *,
    hold: int,
    captured: int,
    now: datetime,
) -> PeriodAmounts:
    """Settle one hold: it leaves ``held``; ``captured`` (≤ hold) joins ``captured``."""
    table = account.table
    stmt = (
        update(table)
        .where(account.matches(period))
        .values(
            held_micro_usd=table.held_micro_usd - hold,
            captured_micro_usd=table.captured_micro_usd + captured,
            updated_at=now,
        )
        .returning(*account.returned())
    )
    return _amounts((await session.execute(stmt)).one())


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


async def captured_amounts(session: AsyncSession, job_ids: Sequence[str]) -> dict[str, int]:
    """The capture of each of these jobs that has one (at most one each), by job id."""
    if not job_ids:
        return {}
    stmt = select(LedgerEntry.job_id, LedgerEntry.amount_micro_usd).where(
        LedgerEntry.job_id.in_(job_ids), LedgerEntry.kind == EntryKind.CAPTURE
    )
    return {job_id: int(amount) for job_id, amount in (await session.execute(stmt)).all()}


async def team_periods(session: AsyncSession, team_id: int) -> set[str]:
    """The periods the team has a balance row for."""
    stmt = select(TeamBalance.period).where(TeamBalance.team_id == team_id)
    return {str(period) for period in (await session.execute(stmt)).scalars()}


async def latest_alerts(session: AsyncSession, *, limit: int) -> Sequence[BudgetAlert]:
    """The latest budget alerts of every team, newest first."""
    stmt = select(BudgetAlert).order_by(BudgetAlert.id.desc()).limit(limit)
    return (await session.execute(stmt)).scalars().all()
