"""Changing a team's money: its settings (tenancy) and, when the budget changes, the budget of
the period under way (the ledger); one-off grants to the team or to one of its projects or
keys. Each in the caller's one transaction."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from gateway.audit.service import Actor
from gateway.core.clock import utcnow
from gateway.core.periods import month_bounds, period_of
from gateway.errors import Conflict, InvalidRequest, NotFound
from gateway.ledger import grants, quotas
from gateway.ledger import repository as ledger
from gateway.ledger.models import BudgetGrant
from gateway.ledger.quotas import BudgetPolicy, PeriodBalance, TeamQuota
from gateway.ledger.repository import Account, Scope
from gateway.tenancy import repository as tenancy_repository
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
        await quotas.set_period_budget(
            session, team.id, period_of(now), quotas.period_budget(_quota(team), policy), now
        )
    return team


def _quota(team: Team) -> TeamQuota:
    return TeamQuota(team.id, team.monthly_budget_micro_usd, team.max_concurrent_jobs)


@dataclass(frozen=True)
class LevelGrant:
    """A grant with the names of the level it went to."""

    grant: BudgetGrant
    team: str
    scope: Scope
    name: str
    """The team's name, the project's name or the key's id."""

    @property
    def project(self) -> str | None:
        return self.name if self.scope == "project" else None


@dataclass(frozen=True)
class _Level:
    account: Account
    name: str
    audit_target: str
    budget_for_new_period: int | None


async def _level(
    session: AsyncSession,
    team: Team,
    *,
    project: str | None,
    key_id: str | None,
    policy: BudgetPolicy,
) -> _Level:
    if project is not None and key_id is not None:
        raise InvalidRequest(
            "a grant goes to the team, one project or one key: give a project or a key, not both",
            code="conflicting_parameters",
            param="key_id",
        )
    if project is not None:
        row = await tenancy.require_project(session, team, project)
        return _Level(
            Account("project", row.id),
            row.name,
            tenancy.project_target(team.name, row.name),
            row.monthly_budget_micro_usd,
        )
    if key_id is not None:
        key = await tenancy_repository.get_key(session, key_id)
        if key is None or key.team_id != team.id:  # another team's key is no business of this
            raise NotFound(
                f"team {team.name!r} has no API key with id {key_id!r}",
                code="key_not_found",
                param="key_id",
            )
        return _Level(Account("key", key.id), key.id, key.id, key.monthly_budget_micro_usd)
    budget = quotas.period_budget(_quota(team), policy)
    return _Level(Account.team(team.id), team.name, team.name, budget)


async def grant_budget(
    session: AsyncSession,
    team_name: str,
    *,
    amount_micro_usd: int,
    reason: str,
    actor: Actor,
    policy: BudgetPolicy,
    period: str | None = None,
    project: str | None = None,
    key_id: str | None = None,
    now: datetime | None = None,
) -> tuple[LevelGrant, PeriodBalance]:
    """Grant ``team_name`` (or one of its projects, or one of its keys) ``amount_micro_usd``
    more for ``period`` only (default: the month under way), audited. Returns the grant and
    the level's balance for the period after it. Refused: a month already over (400
    ``period_ended``), and a level with no budget in that month (409 ``budget_unlimited``:
    a grant would change nothing)."""
    now = now or utcnow()
    current = period_of(now)
    period = period or current
    month_bounds(period)  # 400 for a month that cannot exist
    if period < current:
        raise InvalidRequest(
            f"{period} has ended: a grant raises the budget of this month or a later one",
            code="period_ended",
            param="period",
        )
    team = await tenancy.require_team(session, team_name)
    level = await _level(session, team, project=project, key_id=key_id, policy=policy)
    existing = await ledger.get_balance(session, level.account, period)
    budget = existing.budget_micro_usd if existing is not None else level.budget_for_new_period
    if budget is None:
        raise Conflict(
            f"{level.account.scope} {level.name!r} has no budget in {period} (it is unlimited): "
            "a grant would change nothing; set a monthly budget first",
            code="budget_unlimited",
            param="amount_usd",
        )
    row, balance = await grants.grant(
        session,
        level.account,
        team_id=team.id,
        scope_name=level.audit_target,
        period=period,
        amount_micro_usd=amount_micro_usd,
        reason=reason,
        budget_for_new_period=level.budget_for_new_period,
        actor=actor,
        now=now,
    )
    return LevelGrant(row, team.name, level.account.scope, level.name), balance


async def list_grants(session: AsyncSession, team_name: str, period: str) -> list[LevelGrant]:
    """The team's grants at every level for ``period``, oldest first."""
    month_bounds(period)
    team = await tenancy.require_team(session, team_name)
    projects = {p.id: p.name for p in await tenancy_repository.list_projects(session, team.id)}
    found = []
    for row in await grants.grants_for(session, team.id, period):
        scope: Scope
        if row.project_id is not None:
            scope, name = "project", projects.get(row.project_id, str(row.project_id))
        elif row.api_key_id is not None:
            scope, name = "key", row.api_key_id
        else:
            scope, name = "team", team.name
        found.append(LevelGrant(row, team.name, scope, name))
    return found
