"""The drop-in proxy's shared pieces: what the tenant routes' orchestration works with, the
answer it gives back, and the usage figures. Submit is ``services.submit``, poll
``services.poll``; the rules of each are in their docstrings."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from functools import cached_property

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.catalog.spec import Catalog
from gateway.config import Settings
from gateway.core.clock import utcnow
from gateway.core.periods import period_of
from gateway.db.direct import DirectStatements
from gateway.db.health import DatabaseHealth
from gateway.ledger import quotas, settlement
from gateway.ledger.holds import RateCardsSeen
from gateway.ledger.quotas import PeriodBalance, TeamQuota
from gateway.ledger.repository import Account, PeriodAmounts, Scope
from gateway.observability.metrics import Metrics
from gateway.services.alerts import BudgetAlerts
from gateway.services.outbox import AnswerOutbox
from gateway.tenancy.authentication import KeysSeen
from gateway.tenancy.service import Principal
from gateway.upstream.client import UpstreamClient, UpstreamResponse

logger = logging.getLogger(__name__)

# What an upstream job id may look like before we use it in a query or an upstream URL.
JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


@dataclass(frozen=True)
class ProxyDeps:
    """What the tenant routes' orchestration works with (built once by the runtime)."""

    settings: Settings
    catalog: Catalog
    sessionmaker: async_sessionmaker[AsyncSession]
    upstream: UpstreamClient
    metrics: Metrics
    alerts: BudgetAlerts
    outbox: AnswerOutbox
    db_health: DatabaseHealth
    direct: DirectStatements | None = None
    """Hot-path statements past the ORM (Postgres only; None: the ORM path everywhere)."""
    rate_cards: RateCardsSeen = field(default_factory=RateCardsSeen)
    keys_seen: KeysSeen = field(default_factory=KeysSeen)

    @cached_property
    def vocabulary(self) -> settlement.StatusVocabulary:
        """The upstream's status words, as configured (read once, not per poll)."""
        return settlement.vocabulary_from(self.settings)


@dataclass(frozen=True)
class ProxiedResponse:
    """What goes back to the client: the upstream's status and bytes, plus our headers."""

    status_code: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    job_id: str | None = None
    upstream_seconds: float | None = None
    balance: PeriodBalance | None = None
    captured_micro_usd: int | None = None
    """Set when this response settled its job with a capture (for the access log)."""


def team_quota(principal: Principal) -> TeamQuota:
    """The quota rules' view of the caller's team (as authenticated: budget, caps, alert)."""
    p = principal
    return TeamQuota(
        p.team_id,
        p.monthly_budget_micro_usd,
        p.max_concurrent_jobs,
        p.soft_limit_percent,
        name=p.team_name,
        max_cost_per_job_micro_usd=p.max_cost_per_job_micro_usd,
    )


async def usage(session: AsyncSession, deps: ProxyDeps, principal: Principal) -> PeriodBalance:
    """The caller's team's balance for the current period."""
    return await quotas.balance_view(
        session, team_quota(principal), period_of(utcnow()), deps.settings.default_budget_policy
    )


@dataclass(frozen=True)
class ScopeBalance:
    """One budget level that applies to the caller, with its balance for the period."""

    scope: Scope
    name: str
    """The team's or the project's name, or the key's id (as a refusal names it)."""
    balance: PeriodBalance


def level_accounts(principal: Principal) -> tuple[Account | None, Account | None]:
    """The caller's levels below the team: the project its key is bound to, and its key
    (None where the caller has none: a JWT caller has neither)."""
    project = principal.project
    return (
        Account("project", project.id) if project is not None else None,
        Account("key", principal.key_id) if principal.key_id is not None else None,
    )


def scope_balances(
    principal: Principal,
    team: PeriodBalance,
    project: PeriodAmounts | None,
    key: PeriodAmounts | None,
) -> tuple[ScopeBalance, ...]:
    """Every level that applies to the caller, widest first: its team; the project its key
    is bound to; its key (a gateway key). ``project``/``key``: that level's row for the
    period, None when it has none yet (nothing used: the level's own budget, if any)."""
    period = team.period
    scopes = [ScopeBalance("team", principal.team_name, team)]
    if principal.project is not None:
        budget = principal.project.monthly_budget_micro_usd
        scopes.append(
            ScopeBalance("project", principal.project.name, _level_view(period, budget, project))
        )
    if principal.key_id is not None:
        budget = principal.key_monthly_budget_micro_usd
        scopes.append(ScopeBalance("key", principal.key_id, _level_view(period, budget, key)))
    return tuple(scopes)


def _level_view(period: str, budget: int | None, row: PeriodAmounts | None) -> PeriodBalance:
    # A level below the team has no default policy: no budget of its own is no limit of its own.
    return PeriodBalance(period, budget, 0, 0) if row is None else PeriodBalance.of(period, row)


def pass_through(
    answer: UpstreamResponse,
    *,
    extra: dict[str, str] | None = None,
    job_id: str | None = None,
    balance: PeriodBalance | None = None,
) -> ProxiedResponse:
    headers = dict(answer.headers)
    if extra:
        headers.update(extra)
    return ProxiedResponse(
        status_code=answer.status_code,
        body=answer.body,
        headers=headers,
        job_id=job_id,
        upstream_seconds=answer.elapsed_seconds,
        balance=balance,
    )
