"""Changing a level below the team (a project, a key): its settings (tenancy) and, when its
budget changes, the budget of the period under way (the ledger), in the caller's one
transaction. Creating and listing them touch no balance: see ``gateway.tenancy.service``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from gateway.audit.service import Actor
from gateway.core.clock import utcnow
from gateway.core.periods import period_of
from gateway.ledger import quotas
from gateway.ledger.repository import Account
from gateway.tenancy import service as tenancy
from gateway.tenancy.models import Project
from gateway.tenancy.service import KeyDetails


async def _apply_budget(session: AsyncSession, account: Account, budget: int | None) -> None:
    """The level's new budget for the month under way too: refused (409
    ``budget_below_usage``, the whole change rolled back) below what it has used or holds."""
    now = utcnow()
    await quotas.set_period_budget(session, account, period_of(now), budget, now)


async def update_project(
    session: AsyncSession,
    team_name: str,
    name: str,
    changes: Mapping[str, Any],
    *,
    actor: Actor,
) -> Project:
    """Change some of a project's settings (only the keys present in ``changes``); a budget
    change applies to the period under way at once (None: the project has no budget of its
    own, only the team's applies)."""
    project = await tenancy.update_project(session, team_name, name, changes, actor=actor)
    if "monthly_budget_micro_usd" in changes:
        await _apply_budget(
            session, Account("project", project.id), project.monthly_budget_micro_usd
        )
    return project


async def update_key(
    session: AsyncSession, key_id: str, changes: Mapping[str, Any], *, actor: Actor
) -> KeyDetails:
    """Change a key's project, role, budget or cap; a budget change applies to the period
    under way at once."""
    details = await tenancy.update_key(session, key_id, changes, actor=actor)
    if "monthly_budget_micro_usd" in changes:
        await _apply_budget(
            session, Account("key", details.key.id), details.key.monthly_budget_micro_usd
        )
    return details
