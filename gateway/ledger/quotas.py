"""Quotas: reserving a hold against a team's budget, atomically, across any number of replicas.

The reservation is one conditional update of the team's balance row for the period
(``held = held + :amount WHERE held + captured + :amount <= budget``); the database's row
lock orders concurrent reservations and the table's CHECK constraint refuses any overspend
that slipped past the code. The optional concurrency cap is counted under that same lock.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.core.usd import format_usd
from gateway.errors import BudgetExhausted, ConcurrencyLimited, Conflict
from gateway.ledger import repository
from gateway.ledger.repository import PeriodAmounts


@dataclass(frozen=True)
class TeamQuota:
    """What the quota rules need to know about a team."""

    team_id: int
    monthly_budget_micro_usd: int | None
    max_concurrent_jobs: int | None
    soft_limit_percent: int | None = None


@dataclass(frozen=True)
class PeriodBalance:
    """A team's balance for one period as the API shows it, micro-USD. ``budget`` None means
    unlimited."""

    period: str
    budget: int | None
    held: int
    captured: int

    @property
    def remaining(self) -> int | None:
        if self.budget is None:
            return None
        return max(self.budget - self.held - self.captured, 0)

    def remaining_header(self) -> str:
        remaining = self.remaining
        return "unlimited" if remaining is None else format_usd(remaining)

    @classmethod
    def of(cls, period: str, row: PeriodAmounts) -> PeriodBalance:
        return cls(period, row.budget_micro_usd, row.held_micro_usd, row.captured_micro_usd)


BudgetPolicy = Literal["unlimited", "deny"]


async def _reserve_or_refuse(
    session: AsyncSession, team_id: int, period: str, amount: int, now: datetime
) -> PeriodAmounts:
    """After a reservation found no room: lock the row, so that the refusal's figures are the
    ones it was refused on (a settlement committing meanwhile could otherwise show room in
    them), and reserve after all if a release has made room since."""
    current = await repository.lock_balance(session, team_id, period)
    assert current is not None, "the period's balance row was opened before"
    budget, used = current.budget_micro_usd, current.held_micro_usd + current.captured_micro_usd
    if budget is None or used + amount <= budget:
        row = await repository.try_reserve(session, team_id, period, amount, now)
        assert row is not None, "the row is locked by this transaction and has room"
        return row
    raise BudgetExhausted(
        period=period,
        budget=budget,
        held=current.held_micro_usd,
        captured=current.captured_micro_usd,
        requested=amount,
    )


async def set_period_budget(
    session: AsyncSession, team_id: int, period: str, budget: int | None, now: datetime
) -> None:
    """A team's budget changed: the period already under way follows. The table's CHECK
    refuses a budget below what is already used or held this period (409)."""
    # The team's row first, then the balance row: the order a submit under a concurrency cap
    # takes them in (the other order deadlocks against it while this period has no row yet).
    await repository.lock_team(session, team_id)
    # Open the row first if this period has none yet, so a submit opening it concurrently
    # with the team's old budget cannot win: the update below always lands last.
    await repository.create_balance_if_missing(session, team_id, period, budget, now)
    try:
        async with session.begin_nested():
            await repository.set_budget(session, team_id, period, budget, now)
    except IntegrityError:
        current = await repository.get_balance(session, team_id, period)
        used = (current.held_micro_usd + current.captured_micro_usd) if current else 0
        raise Conflict(
            f"the new budget is below what the team has used or holds in {period} "
            f"({format_usd(used)} USD); lower it to at least that, or disable the team",
            code="budget_below_usage",
            param="monthly_budget_usd",
        ) from None


def period_budget(team: TeamQuota, policy: BudgetPolicy) -> int | None:
    """The budget a new period starts with: the team's, else the configured default."""
    if team.monthly_budget_micro_usd is not None:
        return team.monthly_budget_micro_usd
    return None if policy == "unlimited" else 0


async def balance_view(
    session: AsyncSession, team: TeamQuota, period: str, policy: BudgetPolicy
) -> PeriodBalance:
    return view_of(
        team, period, policy, await repository.get_balance(session, team.team_id, period)
    )


def view_of(
    team: TeamQuota, period: str, policy: BudgetPolicy, row: PeriodAmounts | None
) -> PeriodBalance:
    """The balance a period's row shows; a period with no row yet has used nothing."""
    if row is None:
        return PeriodBalance(period, period_budget(team, policy), 0, 0)
    return PeriodBalance.of(period, row)


async def reserve_hold(
    session: AsyncSession,
    team: TeamQuota,
    *,
    period: str,
    amount: int,
    now: datetime,
    policy: BudgetPolicy,
) -> PeriodBalance:
    """Reserve ``amount`` for a new job, or raise ``BudgetExhausted`` (429 with the figures) or
    ``ConcurrencyLimited``."""
    if team.max_concurrent_jobs is not None:
        # The concurrency count below runs under a lock on the team's row (not the period's
        # balance row: two submits on either side of a month boundary lock different balance
        # rows), so two submits of the same team cannot both see room for one more job. Taken
        # before the balance row, in the order an admin's budget change takes them.
        await repository.lock_team(session, team.team_id)
    row = await repository.try_reserve(session, team.team_id, period, amount, now)
    if row is None:
        # No room, or no row yet for this period (its first submit). Whatever a read says now
        # may already be stale: a concurrent first submit can commit the row between two of
        # our statements. So open the row unconditionally (a no-op if it exists; it waits for
        # a concurrent opener's commit) and try again: only a reservation that fails with the
        # row in place means the budget has no room.
        budget = period_budget(team, policy)
        await repository.create_balance_if_missing(session, team.team_id, period, budget, now)
        row = await repository.try_reserve(session, team.team_id, period, amount, now)
        if row is None:
            row = await _reserve_or_refuse(session, team.team_id, period, amount, now)
    if team.max_concurrent_jobs is not None:
        # The caller's own new job, already written in this transaction, is among those counted.
        in_flight = await repository.count_open_jobs(session, team.team_id)
        if in_flight > team.max_concurrent_jobs:
            raise ConcurrencyLimited(in_flight=in_flight - 1, limit=team.max_concurrent_jobs)
    return PeriodBalance.of(period, row)
