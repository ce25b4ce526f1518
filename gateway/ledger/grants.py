"""One-off budget increases: an admin grants a level (a team, one of its projects, one of its
keys) extra budget for one period, with a reason. The grant is a row of its own (who, why,
how much) and moves the level's ``granted`` figure in the same transaction; it is audited."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.audit import service as audit
from gateway.audit.service import Actor
from gateway.core.periods import month_bounds
from gateway.core.usd import MAX_MICRO_USD, format_usd
from gateway.errors import InvalidRequest
from gateway.ledger import repository
from gateway.ledger.models import BudgetGrant
from gateway.ledger.quotas import PeriodBalance
from gateway.ledger.repository import Account

MAX_REASON_LENGTH = 255


async def grant(
    session: AsyncSession,
    account: Account,
    *,
    team_id: int,
    scope_name: str,
    period: str,
    amount_micro_usd: int,
    reason: str,
    budget_for_new_period: int | None,
    actor: Actor,
    now: datetime,
) -> tuple[BudgetGrant, PeriodBalance]:
    """Add ``amount_micro_usd`` to ``account``'s budget for ``period`` only. The period's row
    is opened (with ``budget_for_new_period``, as a first submit would) if it has none yet.
    Only this level's row is locked: grants never wait on, or hold up, the other levels."""
    month_bounds(period)  # 400 for a month that cannot exist
    if not 0 < amount_micro_usd <= MAX_MICRO_USD:
        raise InvalidRequest(
            "a grant must be a positive amount", code="out_of_range", param="amount_usd"
        )
    reason = reason.strip()
    if not reason or len(reason) > MAX_REASON_LENGTH:
        raise InvalidRequest(
            f"a grant needs a reason of 1-{MAX_REASON_LENGTH} characters",
            code="invalid_length",
            param="reason",
        )
    await repository.create_balance_if_missing(session, account, period, budget_for_new_period, now)
    amounts = await repository.add_granted(session, account, period, amount_micro_usd, now)
    row = BudgetGrant(
        team_id=team_id,
        scope=account.scope,
        project_id=account.owner if account.scope == "project" else None,
        api_key_id=account.owner if account.scope == "key" else None,
        period=period,
        amount_micro_usd=amount_micro_usd,
        reason=reason,
        granted_by=actor.name,
        created_at=now,
    )
    session.add(row)
    await session.flush()
    await audit.record(
        session,
        actor,
        "budget.grant",
        account.scope,
        scope_name,
        after={
            "period": period,
            "amount_usd": format_usd(amount_micro_usd),
            "reason": reason,
            "granted_usd": format_usd(amounts.granted_micro_usd),
        },
    )
    return row, PeriodBalance.of(period, amounts)


async def grants_for(session: AsyncSession, team_id: int, period: str) -> list[BudgetGrant]:
    """The team's grants (at every level) for ``period``, oldest first."""
    stmt = (
        select(BudgetGrant)
        .where(BudgetGrant.team_id == team_id, BudgetGrant.period == period)
        .order_by(BudgetGrant.id)
    )
    return list((await session.execute(stmt)).scalars().all())
