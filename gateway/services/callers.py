"""Who is calling with a gateway API key, and what the tenant route reads for them, in one
round trip: the key and its team, and, as the route needs them, the team's balance for the
period (with, for ``GET /v1/usage``, the balances of the key's project and of the key) and the
polled job.

On Postgres it is one direct statement (``gateway.db.direct``); elsewhere the ORM queries of
each domain, in one session. Either way the key's rules are ``tenancy.service.check_key``'s,
read fresh on every request: a revoked key or a disabled team is refused at once on every
replica, with nothing cached to invalidate.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from gateway.core.clock import utcnow
from gateway.core.periods import period_of
from gateway.db.direct import DirectStatements, Row
from gateway.db.session import autocommit
from gateway.errors import AuthenticationFailed, GatewayError
from gateway.jobs import repository as jobs
from gateway.jobs.models import Job, JobState
from gateway.ledger import quotas
from gateway.ledger import repository as ledger
from gateway.ledger.quotas import PeriodBalance
from gateway.ledger.repository import PeriodAmounts
from gateway.services.poll import FinishedJob, OpenJob
from gateway.services.proxy import (
    JOB_ID,
    ProxyDeps,
    ScopeBalance,
    level_accounts,
    scope_balances,
    team_quota,
)
from gateway.tenancy.authentication import KeyRecord, authenticate_key, check_key
from gateway.tenancy.keys import parse_key
from gateway.tenancy.service import Principal


@dataclass(frozen=True)
class Reads:
    """What a route reads beside the caller: the balance (for the quota header and usage),
    every level's balance (usage: ``scopes`` implies ``balance``), and the job it polls."""

    balance: bool = False
    job_id: str | None = None
    scopes: bool = False

    @property
    def balances(self) -> bool:
        return self.balance or self.scopes


@dataclass(frozen=True)
class Caller:
    principal: Principal
    balance: PeriodBalance | None = None
    job: Job | FinishedJob | OpenJob | None = None
    scopes: tuple[ScopeBalance, ...] | None = None
    """With ``Reads(scopes=True)``: every level that applies, the team's first."""


async def by_key(deps: ProxyDeps, token: str, pepper: str, reads: Reads) -> Caller:
    """The key's principal and ``reads``, or ``AuthenticationFailed`` / ``PermissionDenied``."""
    parsed = parse_key(token)
    if parsed is None:
        raise AuthenticationFailed("invalid API key", code="invalid_api_key")
    if deps.direct is None:
        return await _by_key_in_session(deps, token, pepper, reads)
    job_id = _usable_job_id(reads)
    now = utcnow()
    row = await deps.direct.fetchrow(
        _statement(reads.balances, reads.scopes, job_id is not None),
        parsed.key_id,
        *([period_of(now)] if reads.balances else []),
        *([job_id] if job_id is not None else []),
    )
    record = _key_record(row) if row is not None else None
    try:
        checked = check_key(
            token,
            record,
            pepper=pepper,
            now=now,
            last_used_resolution=deps.settings.key_last_used_resolution_seconds,
            previous_pepper=deps.settings.key_pepper_previous.get_secret_value() or None,
        )
    except GatewayError:
        deps.keys_seen.forget(parsed.key_id)
        raise
    principal = checked.principal
    assert row is not None  # check_key refuses a key nothing was found for
    assert record is not None
    secret_hash = record.secret_hash
    if checked.rehashed is not None:
        await deps.direct.fetchrow(_REHASH, parsed.key_id, record.secret_hash, checked.rehashed)
        secret_hash = checked.rehashed
    deps.keys_seen.saw(parsed.key_id, secret_hash, principal)
    if checked.touch_last_used_before is not None:
        await _touch_last_used(deps.direct, parsed.key_id, checked.touch_last_used_before, now)
    balance = _balance(deps, principal, row, now) if reads.balances else None
    job = _job(row) if job_id is not None else None
    scopes = None
    if reads.scopes:
        assert balance is not None
        scopes = scope_balances(principal, balance, *_level_amounts(row))
    return Caller(principal, balance, job, scopes)


async def read_for(deps: ProxyDeps, principal: Principal, reads: Reads) -> Caller:
    """``reads`` for a principal already known (a company JWT's team)."""
    if not reads.balances and reads.job_id is None:
        return Caller(principal)
    async with autocommit(deps.sessionmaker) as session:
        return await _read_in_session(session, deps, principal, reads)


async def _by_key_in_session(deps: ProxyDeps, token: str, pepper: str, reads: Reads) -> Caller:
    async with autocommit(deps.sessionmaker) as session:
        principal = await authenticate_key(
            session,
            token,
            pepper=pepper,
            last_used_resolution=deps.settings.key_last_used_resolution_seconds,
            previous_pepper=deps.settings.key_pepper_previous.get_secret_value() or None,
        )
        return await _read_in_session(session, deps, principal, reads)


async def _read_in_session(
    session: AsyncSession, deps: ProxyDeps, principal: Principal, reads: Reads
) -> Caller:
    balance = None
    period = period_of(utcnow())
    if reads.balances:
        policy = deps.settings.default_budget_policy
        balance = await quotas.balance_view(session, team_quota(principal), period, policy)
    scopes = None
    if reads.scopes:
        assert balance is not None
        levels = [
            await ledger.get_balance(session, account, period) if account is not None else None
            for account in level_accounts(principal)
        ]
        scopes = scope_balances(principal, balance, *levels)
    job_id = _usable_job_id(reads)
    job = await jobs.find_for_team(session, job_id, principal.team_id) if job_id else None
    return Caller(principal, balance, job, scopes)


def _usable_job_id(reads: Reads) -> str | None:
    """The polled id, if it can be an upstream job id at all (else no query is made)."""
    job_id = reads.job_id
    return job_id if job_id is not None and JOB_ID.fullmatch(job_id) else None


_KEY_COLUMNS = (
    "k.id, k.secret_hash, k.revoked_at, k.expires_at, k.last_used_at, t.id, t.name, "
    "t.monthly_budget_micro_usd, t.max_concurrent_jobs, t.soft_limit_percent, t.disabled_at, "
    "t.max_cost_per_job_micro_usd, k.role, k.monthly_budget_micro_usd, "
    "k.max_cost_per_job_micro_usd, p.id, p.name, p.monthly_budget_micro_usd, "
    "p.max_cost_per_job_micro_usd, p.soft_limit_percent"
)


def _balance_columns(alias: str) -> str:
    """A period row's figures, then its period (NULL: no row), as ``_amounts_at`` reads them."""
    names = ("budget", "held", "captured", "granted")
    return ", ".join([*(f"{alias}.{name}_micro_usd" for name in names), f"{alias}.period"])


_BALANCE_COLUMNS = _balance_columns("b")
_LEVEL_COLUMNS = f"{_balance_columns('pb')}, {_balance_columns('kb')}"
_JOB_COLUMNS = tuple(column.name for column in Job.__table__.columns)
_JOB_ID_AT = _JOB_COLUMNS.index("id")
_TERMINAL_BODY_AT = _JOB_COLUMNS.index("terminal_body")


def _statement(balance: bool, scopes: bool, job: bool) -> str:
    return _STATEMENTS[balance, scopes, job]


def _build_statement(balance: bool, scopes: bool, job: bool) -> str:
    """The key, its team and its project; with ``balance`` the team's period row; with
    ``scopes`` also the project's and the key's (usage alone: a poll joins no more than it
    reads); with ``job`` the polled job. Every row by its primary key: one index lookup each."""
    assert balance or not scopes, "the levels' rows are read for the team's period"
    columns = [_KEY_COLUMNS]
    joins = [
        "FROM api_keys k JOIN teams t ON t.id = k.team_id "
        "LEFT JOIN projects p ON p.id = k.project_id"
    ]
    if balance:
        columns.append(_BALANCE_COLUMNS)
        joins.append("LEFT JOIN team_balances b ON b.team_id = k.team_id AND b.period = $2")
    if scopes:
        columns.append(_LEVEL_COLUMNS)
        joins.append(
            "LEFT JOIN project_balances pb ON pb.project_id = k.project_id AND pb.period = $2 "
            "LEFT JOIN key_balances kb ON kb.api_key_id = k.id AND kb.period = $2"
        )
    if job:
        columns.append(", ".join(f"j.{name}" for name in _JOB_COLUMNS))
        joins.append(
            f"LEFT JOIN jobs j ON j.upstream_job_id = ${3 if balance else 2} "
            "AND j.team_id = k.team_id"
        )
    return f"SELECT {', '.join(columns)} {' '.join(joins)} WHERE k.id = $1"


_STATEMENTS = {
    (b, s, j): _build_statement(b, s, j)
    for b in (False, True)
    for s in (False, True)
    for j in (False, True)
    if b or not s
}
_KEY_WIDTH = 20
_BALANCE_WIDTH = 5


def _key_record(row: Row) -> KeyRecord:
    return KeyRecord(*row[:_KEY_WIDTH])


def _balance(deps: ProxyDeps, principal: Principal, row: Row, now: datetime) -> PeriodBalance:
    amounts = _amounts_at(row, _KEY_WIDTH)
    policy = deps.settings.default_budget_policy
    return quotas.view_of(team_quota(principal), period_of(now), policy, amounts)


def _level_amounts(row: Row) -> tuple[PeriodAmounts | None, PeriodAmounts | None]:
    """The project's and the key's period rows (``_LEVEL_COLUMNS``), None where none exists."""
    start = _KEY_WIDTH + _BALANCE_WIDTH
    return _amounts_at(row, start), _amounts_at(row, start + _BALANCE_WIDTH)


def _amounts_at(row: Row, start: int) -> PeriodAmounts | None:
    budget, held, captured, granted, found = row[start : start + _BALANCE_WIDTH]
    return PeriodAmounts(budget, held, captured, granted) if found is not None else None


def _job(row: Row) -> FinishedJob | OpenJob | None:
    start = len(row) - len(_JOB_COLUMNS)
    if row[start + _JOB_ID_AT] is None:
        return None
    terminal_body = row[start + _TERMINAL_BODY_AT]
    if terminal_body is not None:
        return FinishedJob(terminal_body)  # all a poll of it reads
    values: dict[str, Any] = dict(zip(_JOB_COLUMNS, row[start:], strict=True))
    values["state"] = JobState(values["state"])
    if isinstance(values["tags"], str):
        values["tags"] = json.loads(values["tags"])
    return OpenJob(values)


_REHASH = "UPDATE api_keys SET secret_hash = $3 WHERE id = $1 AND secret_hash = $2"
_TOUCH = (
    "UPDATE api_keys SET last_used_at = $3 "
    "WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < $2)"
)


async def _touch_last_used(
    direct: DirectStatements, key_id: str, stale_before: datetime, now: datetime
) -> None:
    await direct.fetchrow(_TOUCH, key_id, stale_before, now)
