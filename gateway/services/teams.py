"""Changing a team: its settings (tenancy) and, when the budget changes, the budget of the
period under way (the ledger), in the caller's one transaction."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from gateway.audit.service import Actor
from gateway.core.clock import utcnow
from gateway.core.periods import period_of
from gateway.ledger import quotas
from gateway.ledger.quotas import BudgetPolicy, TeamQuota
from gateway.tenancy import service as tenancy
from gateway.tenancy.models import Team


async def update_team(
    session: AsyncSession,
    name: str,
    changes: Mapping[str, Any],
    *,
    actor: Actor,
    policy: BudgetPolicy,
) -> Team:
    """Change some of a team's settings (only the keys present in ``changes``). A budget
    change applies to the period under way as well: refused (409 ``budget_below_usage``, the
    whole change rolled back) below what the team has used or holds. The team's row is locked
    before the balance row, the order a capped submit takes them in."""
    team = await tenancy.update_team(session, name, changes, actor=actor)
    if "monthly_budget_micro_usd" in changes:
        now = utcnow()
        quota = TeamQuota(team.id, team.monthly_budget_micro_usd, team.max_concurrent_jobs)
        await quotas.set_period_budget(
            session, team.id, period_of(now), quotas.period_budget(quota, policy), now
        )
    return team
