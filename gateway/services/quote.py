"""Quotes (``POST /v1/quote``): what a submit with the same body and headers would cost, line by
line, and whether it would be accepted now, without doing any of it. Nothing is held,
forwarded, billed or recorded: the quote is one short read-only session.

It goes through the submit's own steps, in the submit's order, so it answers as the submit
would: the same validation (``submit.validated``: a 400 there is a 400 here), the same
project (``submit.project_of``: 403 ``project_not_allowed``, 400 ``unknown_project``), the
rate card in force (503 ``rate_card_missing``), the same price (``price_request``), the same
levels (``submit.levels_of``). What would refuse the submit after that is not an error of the
quote but its answer (``refusal``, the error object the submit would answer with, and
``accepted: false``), checked in the submit's order: a per-job cap (400
``cost_cap_exceeded``), then each level's budget in the lock order team, project, key (429
``quota_exceeded`` naming the first without room), then the team's concurrency cap (429
``concurrency_limit``). An ``Idempotency-Key`` is checked as the submit checks it (its form,
sent once) and otherwise ignored: a quote claims nothing and replays nothing.

A quote is a forecast, not a reservation: another submit may take the room it saw before
this caller's own submit arrives.

Lines: the image fee (``image``, one per image) and the seconds at the resolution's rate
(``video_seconds_720p``). ``price_request`` rounds the seconds' cost half-up once and adds the
image fee, an exact integer: so the image line is exact, the seconds line is the rounded
seconds' cost, and the lines add up to the total to the micro-dollar.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from sqlalchemy.ext.asyncio import AsyncSession

from gateway.core.clock import utcnow
from gateway.core.periods import month_bounds, period_of
from gateway.core.pricing import BillableUnits, RateCard, price_request
from gateway.db.session import autocommit
from gateway.errors import (
    BudgetExhausted,
    ConcurrencyLimited,
    CostCapExceeded,
    GatewayError,
)
from gateway.ledger import quotas, repository
from gateway.ledger.quotas import Level, PeriodBalance, TeamQuota, check_cost_caps
from gateway.ledger.rates import rate_card_in_force
from gateway.services import submit
from gateway.services.proxy import ProxyDeps, ScopeBalance, team_quota
from gateway.tenancy.service import Principal


@dataclass(frozen=True)
class QuoteLine:
    item: str
    """``image``, or ``video_seconds_<resolution>``."""
    quantity: Decimal | int
    unit_price_micro_usd: int
    amount_micro_usd: int


@dataclass(frozen=True)
class ScopeQuote:
    """One level that applies to the job, as it stands now (micro-USD)."""

    level: ScopeBalance
    remaining_after_micro_usd: int | None
    """What would be left after this job: the remaining minus the price; negative when the
    job does not fit this level (by that much); None when the level is unlimited."""


@dataclass(frozen=True)
class Quote:
    model: str
    rate_card_version: str
    lines: tuple[QuoteLine, ...]
    total_micro_usd: int
    """The price: what the submit would hold, ``price_request``'s figure."""
    refusal: GatewayError | None
    """What the submit would be refused with now (its 400 or 429), None if it would fit."""
    scopes: tuple[ScopeQuote, ...]
    """The team first, then the project, then the key: the submit's lock order."""

    @property
    def accepted(self) -> bool:
        return self.refusal is None

    @property
    def team_balance(self) -> PeriodBalance:
        return self.scopes[0].level.balance


async def quote_submission(
    deps: ProxyDeps,
    principal: Principal,
    raw_body: bytes,
    *,
    tags_header: str | None = None,
    project_header: str | None = None,
    idempotency_key: str | None = None,
) -> Quote:
    """Price ``raw_body`` as a submit by ``principal`` with these headers would be priced,
    and say whether it would be accepted now; raises what the submit would raise before
    pricing (400, 403, 503)."""
    request, _ = await submit.validated(deps, raw_body, tags_header, idempotency_key)
    project = submit.project_of(principal, project_header)
    team = team_quota(principal)
    now = utcnow()
    period = period_of(now)
    policy = deps.settings.default_budget_policy
    async with autocommit(deps.sessionmaker) as session:
        card = await rate_card_in_force(session, request.model.id, now)
        resolved = await submit.resolved_project(session, principal.team_id, project)
        units = request.billable_units()
        total = price_request(units, card)
        levels = submit.levels_of(principal, resolved)
        team_balance = await quotas.balance_view(session, team, period, policy)
        found = [ScopeBalance("team", team.name, team_balance)]
        for level in levels:  # the lock order: the project's, then the key's
            balance = await _level_balance(session, level, period)
            found.append(ScopeBalance(level.scope, level.name, balance))
        in_flight = None
        if team.max_concurrent_jobs is not None:
            in_flight = await repository.count_open_jobs(session, team.team_id)
    scopes = tuple(ScopeQuote(s, _remaining_after(s.balance, total)) for s in found)
    return Quote(
        model=request.model.id,
        rate_card_version=card.version,
        lines=_lines(units, card, total),
        total_micro_usd=total,
        refusal=_refusal(team, levels, scopes, total, in_flight),
        scopes=scopes,
    )


async def _level_balance(session: AsyncSession, level: Level, period: str) -> PeriodBalance:
    """A project's or key's period as a hold would find it: a period with no row yet has
    used nothing and starts with the level's monthly budget (None: unlimited)."""
    row = await repository.get_balance(session, level.account, period)
    if row is None:
        return PeriodBalance(period, level.monthly_budget_micro_usd, 0, 0)
    return PeriodBalance.of(period, row)


def _remaining_after(balance: PeriodBalance, total: int) -> int | None:
    remaining = balance.remaining
    return None if remaining is None else remaining - total


def _lines(units: BillableUnits, card: RateCard, total: int) -> tuple[QuoteLine, ...]:
    """The price line by line; the seconds' line takes what the image fee leaves of
    ``price_request``'s total (its one half-up rounding is on the seconds' cost alone)."""
    lines = []
    images = units.image_count * card.image_fee_micro_usd
    if units.image_count:
        lines.append(QuoteLine("image", units.image_count, card.image_fee_micro_usd, images))
    lines.append(
        QuoteLine(
            f"video_seconds_{units.resolution}",
            units.duration_seconds,
            card.per_second_micro_usd[units.resolution],
            total - images,
        )
    )
    return tuple(lines)


def _refusal(
    team: TeamQuota,
    levels: list[Level],
    scopes: tuple[ScopeQuote, ...],
    total: int,
    in_flight: int | None,
) -> GatewayError | None:
    """What the submit would be refused with, in the order it checks: the per-job caps
    (before any hold), each level's budget (team, project, key), the concurrency cap."""
    try:
        check_cost_caps(team, levels, total)
    except CostCapExceeded as exc:
        return exc
    for scope in scopes:
        balance = scope.level.balance
        limit = balance.limit
        if limit is not None and balance.held + balance.captured + total > limit:
            return BudgetExhausted(
                period=balance.period,
                budget=limit,
                held=balance.held,
                captured=balance.captured,
                requested=total,
                scope=scope.level.scope,
                scope_name=scope.level.name,
                granted=balance.granted,
                resets_at=month_bounds(balance.period)[1],
            )
    limit = team.max_concurrent_jobs
    if in_flight is not None and limit is not None and in_flight >= limit:
        return ConcurrencyLimited(in_flight=in_flight, limit=limit)
    return None
