"""Quotas: reserving a hold against every budget level that applies to a job (its team, its
project, its key), atomically, across any number of replicas.

Each level's reservation is one conditional update of that level's balance row for the period
(``held = held + :amount WHERE held + captured + :amount <= budget + granted``); the row locks
order concurrent reservations and each table's CHECK constraint refuses any overspend that
slipped past the code. All levels are reserved in one transaction, or none is (a refusal at
any level rolls back the others). **Lock order** (never changed, so concurrent submits of one
team cannot deadlock): the team row (only under a concurrency cap), then the team's balance,
then the project's, then the key's; settlements and grants take them in the same order.
The optional concurrency cap is counted under the team lock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.core.periods import month_bounds
from gateway.core.usd import format_usd
from gateway.errors import BudgetExhausted, ConcurrencyLimited, Conflict, CostCapExceeded
from gateway.ledger import repository
from gateway.ledger.repository import Account, PeriodAmounts, Scope


@dataclass(frozen=True)
class TeamQuota:
    """What the quota rules need to know about a team."""

    team_id: int
    monthly_budget_micro_usd: int | None
    max_concurrent_jobs: int | None
    soft_limit_percent: int | None = None
    name: str = ""
    max_cost_per_job_micro_usd: int | None = None


@dataclass(frozen=True)
class Level:
    """A budget level below the team that a job is also held on: its project, or its key."""

    account: Account
    name: str
    """The project's name or the key's id (named in a refusal)."""
    monthly_budget_micro_usd: int | None
    """The budget a new period's row starts with; None: unlimited (the team's still applies)."""
    max_cost_per_job_micro_usd: int | None = None
    soft_limit_percent: int | None = None

    @property
    def scope(self) -> Scope:
        return self.account.scope


@dataclass(frozen=True)
class PeriodBalance:
    """A team's balance for one period as the API shows it, micro-USD. ``budget`` None means
    unlimited."""

    period: str
    budget: int | None
    held: int
    captured: int
    granted: int = 0

    @property
    def limit(self) -> int | None:
        """What may be spent in the period: the budget plus one-off grants; None: any."""
        return None if self.budget is None else self.budget + self.granted

    @property
    def remaining(self) -> int | None:
        limit = self.limit
        if limit is None:
            return None
        return max(limit - self.held - self.captured, 0)

    def remaining_header(self) -> str:
        remaining = self.remaining
        return "unlimited" if remaining is None else format_usd(remaining)

    @classmethod
    def of(cls, period: str, row: PeriodAmounts) -> PeriodBalance:
        return cls(
            period,
            row.budget_micro_usd,
            row.held_micro_usd,
            row.captured_micro_usd,
            row.granted_micro_usd,
        )


BudgetPolicy = Literal["unlimited", "deny"]


async def _reserve_or_refuse(
    session: AsyncSession, account: Account, name: str, period: str, amount: int, now: datetime
) -> PeriodAmounts:
    """After a reservation found no room: lock the row, so that the refusal's figures are the
    ones it was refused on (a settlement committing meanwhile could otherwise show room in
    them), and reserve after all if a release has made room since."""
    current = await repository.lock_balance(session, account, period)
    assert current is not None, "the period's balance row was opened before"
    limit, used = current.limit_micro_usd, current.held_micro_usd + current.captured_micro_usd
    if limit is None or used + amount <= limit:
        row = await repository.try_reserve(session, account, period, amount, now)
        assert row is not None, "the row is locked by this transaction and has room"
        return row
    raise BudgetExhausted(
        period=period,
        budget=limit,
        held=current.held_micro_usd,
        captured=current.captured_micro_usd,
        requested=amount,
        scope=account.scope,
        scope_name=name,
        granted=current.granted_micro_usd,
        resets_at=month_bounds(period)[1],
    )


async def _reserve_level(
    session: AsyncSession,
    account: Account,
    name: str,
    *,
    period: str,
    amount: int,
    budget: int | None,
    now: datetime,
) -> PeriodAmounts:
    """Reserve ``amount`` on one level's row for ``period``, opening the row (with ``budget``)
    if it is the level's first job of the period; or raise ``BudgetExhausted``."""
    row = await repository.try_reserve(session, account, period, amount, now)
    if row is None:
        # No room, or no row yet for this period (its first submit). Whatever a read says now
        # may already be stale: a concurrent first submit can commit the row between two of
        # our statements. So open the row unconditionally (a no-op if it exists; it waits for
        # a concurrent opener's commit) and try again: only a reservation that fails with the
        # row in place means the budget has no room.
        await repository.create_balance_if_missing(session, account, period, budget, now)
        row = await repository.try_reserve(session, account, period, amount, now)
        if row is None:
            row = await _reserve_or_refuse(session, account, name, period, amount, now)
    return row


def check_cost_caps(team: TeamQuota, levels: Sequence[Level], amount: int) -> None:
    """Refuse (400 ``cost_cap_exceeded``) a job priced above the smallest per-job cap that
    applies, before anything is held; the narrowest level is named on a tie."""
    caps: list[tuple[int, Scope, str]] = []
    if team.max_cost_per_job_micro_usd is not None:
        caps.append((team.max_cost_per_job_micro_usd, "team", team.name))
    caps.extend(
        (level.max_cost_per_job_micro_usd, level.scope, level.name)
        for level in levels
        if level.max_cost_per_job_micro_usd is not None
    )
    if not caps:
        return
    smallest = min(cap for cap, _, _ in caps)
    if amount <= smallest:
        return
    _, scope, name = [c for c in caps if c[0] == smallest][-1]
    raise CostCapExceeded(scope=scope, scope_name=name, cap=smallest, requested=amount)


async def set_period_budget(
    session: AsyncSession,
    account: Account | int,
    period: str,
    budget: int | None,
    now: datetime,
) -> None:
    """A level's budget changed: the period already under way follows. The table's CHECK
    refuses a budget below what is already used or held this period (409)."""
    if isinstance(account, int):
        account = Account.team(account)
    if account.scope == "team":
        # The team's row first, then the balance row: the order a submit under a concurrency
        # cap takes them in (the other order deadlocks against it while this period has no
        # row yet).
        assert isinstance(account.owner, int)
        await repository.lock_team(session, account.owner)
    # Open the row first if this period has none yet, so a submit opening it concurrently
    # with the old budget cannot win: the update below always lands last.
    await repository.create_balance_if_missing(session, account, period, budget, now)
    try:
        async with session.begin_nested():
            await repository.set_budget(session, account, period, budget, now)
            await repository.set_later_budgets(session, account, period, budget, now)
    except IntegrityError:
        current = await repository.get_balance(session, account, period)
        used = (current.held_micro_usd + current.captured_micro_usd) if current else 0
        raise Conflict(
            f"the new budget is below what the {account.scope} has used or holds in {period} "
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
        team,
        period,
        policy,
        await repository.get_balance(session, Account.team(team.team_id), period),
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
    levels: Sequence[Level] = (),
) -> PeriodBalance:
    """Reserve ``amount`` for a new job at the team and at each of ``levels`` (project, then
    key), or raise ``BudgetExhausted`` (429 naming the level, with its figures) or
    ``ConcurrencyLimited``; the caller's transaction then rolls every level back. Returns the
    team's balance."""
    if team.max_concurrent_jobs is not None:
        # The concurrency count below runs under a lock on the team's row (not the period's
        # balance row: two submits on either side of a month boundary lock different balance
        # rows), so two submits of the same team cannot both see room for one more job. Taken
        # before the balance rows, in the order an admin's budget change takes them.
        await repository.lock_team(session, team.team_id)
    row = await _reserve_level(
        session,
        Account.team(team.team_id),
        team.name,
        period=period,
        amount=amount,
        budget=period_budget(team, policy),
        now=now,
    )
    for level in levels:  # project before key: the documented lock order
        await _reserve_level(
            session,
            level.account,
            level.name,
            period=period,
            amount=amount,
            budget=level.monthly_budget_micro_usd,
            now=now,
        )
    if team.max_concurrent_jobs is not None:
        # The caller's own new job, already written in this transaction, is among those counted.
        in_flight = await repository.count_open_jobs(session, team.team_id)
        if in_flight > team.max_concurrent_jobs:
            raise ConcurrencyLimited(in_flight=in_flight - 1, limit=team.max_concurrent_jobs)
    return PeriodBalance.of(period, row)
