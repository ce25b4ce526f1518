"""Budget alerts: a budget level (the team, one of its projects, one of its keys) crossing its
soft limit, or hitting its hard limit (a submit refused for that level's budget), raises one
alert per level, period and threshold (a unique key makes "once" hold across replicas).
Soft limits are the team's and the projects' (``soft_limit_percent``); keys have none, so a
key raises its hard limit only. Alerts are always recorded; with ``GATEWAY_ALERT_WEBHOOK_URL``
set they are also POSTed as JSON, retried with backoff until delivered or
``GATEWAY_ALERT_WEBHOOK_MAX_ATTEMPTS`` is reached. For teams without Prometheus alerting.

Webhook body (``scope`` is ``team``, ``project`` or ``key``; ``scope_name`` the team's name,
the project's, or the key's id; ``team`` and ``cost_center`` are always the team's)::

    {"type": "gateway.budget_alert", "alert_id": 7, "threshold": "soft_limit",
     "scope": "project", "scope_name": "launch-video",
     "team": "video-lab", "cost_center": "CC-1", "period": "2026-11",
     "budget_usd": "500.000000", "limit_usd": "400.000000", "used_usd": "401.680000",
     "raised_at": "2026-11-24T09:30:00+00:00"}

``budget_usd`` is what the level may spend in the period (its budget plus one-off grants),
``limit_usd`` the threshold's own figure (that times the soft-limit percentage, or the
budget), ``used_usd`` captured + held when it was crossed.

Headers: ``Idempotency-Key: budget-alert-<id>`` (the same on every retry, so receivers can
drop duplicates) and, when ``GATEWAY_ALERT_WEBHOOK_SECRET`` is set,
``X-Gateway-Signature: sha256=<hex HMAC of the body>``.

On the hot path: the team's figures after a hold come with the hold; a project's are read
only when that project has both a budget and a soft limit, and only until this process has
raised its alert for the period. A submit with no such project costs no extra statement.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

import httpx
from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.config import Settings
from gateway.core.clock import utcnow
from gateway.core.usd import format_usd
from gateway.db.session import autocommit, dialect_name, transaction
from gateway.errors import BudgetExhausted
from gateway.ledger import repository
from gateway.ledger.models import BudgetAlert
from gateway.ledger.quotas import Level, PeriodBalance, TeamQuota
from gateway.tenancy import repository as tenancy
from gateway.tenancy.models import Team
from gateway.webhooks import events as webhook_events

logger = logging.getLogger(__name__)

SOFT_LIMIT = "soft_limit"
HARD_LIMIT = "hard_limit"
_MAX_BACKOFF = timedelta(hours=1)
_TEAM_OWNER = ""
"""``BudgetAlert.owner`` of the team's own alerts (``team_id`` names the team)."""


@dataclass(frozen=True)
class DeliveryOutcome:
    delivered: int = 0
    failed: int = 0
    gave_up: int = 0


@dataclass(frozen=True)
class _Crossed:
    """A threshold one level crossed in a period: the alert to raise (micro-USD)."""

    team_id: int
    scope: str
    owner: str
    scope_name: str | None
    period: str
    threshold: str
    budget: int
    used: int
    limit: int

    @property
    def once(self) -> tuple[int, str, str, str, str]:
        """The alert's unique key."""
        return (self.team_id, self.scope, self.owner, self.period, self.threshold)


def _soft_limit(limit: int | None, percent: int | None) -> int | None:
    """The soft limit of a level that may spend ``limit``: None without one."""
    if limit is None or percent is None:
        return None
    return limit * percent // 100


class BudgetAlerts:
    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        settings: Settings,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.sessionmaker = sessionmaker
        self.settings = settings
        self.http = http
        # Alerts this process already raised: skip the insert (and a project's balance read)
        # on every later submit.
        self._raised: set[tuple[int, str, str, str, str]] = set()

    async def after_hold(
        self, team: TeamQuota, balance: PeriodBalance, levels: Sequence[Level] = ()
    ) -> None:
        """Raise the soft-limit alert of each level this hold took past it: the team (its
        ``balance`` after the hold) and the job's project (``levels``: the levels below the
        team the job is held on; a key has no soft limit)."""
        soft = _soft_limit(balance.limit, team.soft_limit_percent)
        if soft is not None and balance.held + balance.captured >= soft:
            assert balance.limit is not None
            await self._raise(
                _Crossed(
                    team.team_id,
                    "team",
                    _TEAM_OWNER,
                    None,
                    balance.period,
                    SOFT_LIMIT,
                    balance.limit,
                    balance.held + balance.captured,
                    soft,
                )
            )
        for level in levels:
            if level.soft_limit_percent is not None and level.monthly_budget_micro_usd is not None:
                await self._after_level_hold(team, level, balance.period)

    async def _after_level_hold(self, team: TeamQuota, level: Level, period: str) -> None:
        owner = str(level.account.owner)
        if (team.team_id, level.scope, owner, period, SOFT_LIMIT) in self._raised:
            return
        try:
            async with autocommit(self.sessionmaker) as session:
                row = await repository.get_balance(session, level.account, period)
        except Exception:
            # An alert must never fail the request that crossed the threshold.
            logger.exception("could not read a level's balance for its soft-limit alert")
            return
        if row is None:
            return
        soft = _soft_limit(row.limit_micro_usd, level.soft_limit_percent)
        used = row.held_micro_usd + row.captured_micro_usd
        if soft is None or used < soft:
            return
        assert row.limit_micro_usd is not None
        await self._raise(
            _Crossed(
                team.team_id,
                level.scope,
                owner,
                level.name,
                period,
                SOFT_LIMIT,
                row.limit_micro_usd,
                used,
                soft,
            )
        )

    async def after_budget_refusal(self, team: TeamQuota, refused: BudgetExhausted) -> None:
        """A submit did not fit a level's budget: that level (``refused.scope``, the team, its
        project or its key) is at its hard limit."""
        scope = refused.scope
        named = refused.details.get("scope_name")
        name = named if isinstance(named, str) else None
        owner: str | None = _TEAM_OWNER
        if scope == "key":
            owner = name
        elif scope == "project":
            owner = await self._project_owner(team.team_id, name)
        if owner is None:
            return
        await self._raise(
            _Crossed(
                team.team_id,
                scope,
                owner,
                None if scope == "team" else name,
                refused.period,
                HARD_LIMIT,
                refused.budget,
                refused.held + refused.captured,
                refused.budget,
            )
        )

    async def _project_owner(self, team_id: int, name: str | None) -> str | None:
        """The id of the team's project called ``name`` (a refusal names a level by name)."""
        if name is None:
            return None
        try:
            async with autocommit(self.sessionmaker) as session:
                project = await tenancy.get_project(session, team_id, name)
        except Exception:
            logger.exception("could not find the project of a hard-limit alert")
            return None
        return str(project.id) if project is not None else None

    async def _raise(self, crossed: _Crossed) -> None:
        if crossed.once in self._raised:
            return
        now = utcnow()
        try:
            async with transaction(self.sessionmaker) as session:
                insert = (
                    postgresql.insert if dialect_name(session) == "postgresql" else sqlite.insert
                )
                raised = await session.execute(
                    insert(BudgetAlert)
                    .values(
                        team_id=crossed.team_id,
                        scope=crossed.scope,
                        owner=crossed.owner,
                        scope_name=crossed.scope_name,
                        period=crossed.period,
                        threshold=crossed.threshold,
                        budget_micro_usd=crossed.budget,
                        used_micro_usd=crossed.used,
                        limit_micro_usd=crossed.limit,
                        created_at=now,
                        attempts=0,
                        next_attempt_at=now,
                    )
                    .on_conflict_do_nothing(
                        index_elements=["team_id", "scope", "owner", "period", "threshold"]
                    )
                    .returning(BudgetAlert.id)
                )
                alert_id = raised.scalar_one_or_none()
                if alert_id is not None:  # first raised here: the team's webhook event too
                    await webhook_events.budget_alert_raised(
                        session,
                        webhook_events.RaisedAlert(
                            alert_id=alert_id,
                            team_id=crossed.team_id,
                            threshold=crossed.threshold,
                            scope=crossed.scope,
                            scope_name=crossed.scope_name,
                            period=crossed.period,
                            budget=crossed.budget,
                            limit=crossed.limit,
                            used=crossed.used,
                        ),
                        now=now,
                    )
        except Exception:
            # An alert must never fail the request that crossed the threshold.
            logger.exception(
                "could not record a budget alert",
                extra={"threshold": crossed.threshold, "scope": crossed.scope},
            )
            return
        self._raised.add(crossed.once)

    async def deliver_due(self) -> DeliveryOutcome:
        """POST every alert whose next attempt is due; safe in several replicas at once."""
        if self.http is None or not self.settings.alert_webhook_url:
            return DeliveryOutcome()
        now = utcnow()
        async with transaction(self.sessionmaker) as session:
            due = (
                await session.execute(
                    select(BudgetAlert, Team.name, Team.cost_center)
                    .join(Team, Team.id == BudgetAlert.team_id)
                    .where(
                        BudgetAlert.delivered_at.is_(None),
                        BudgetAlert.gave_up_at.is_(None),
                        BudgetAlert.next_attempt_at <= now,
                    )
                    .order_by(BudgetAlert.id)
                    .limit(50)
                    .with_for_update(of=BudgetAlert, skip_locked=True)
                )
            ).all()
            # Claim them: push the next attempt out while this pass is sending.
            for alert, _, _ in due:
                await session.execute(
                    update(BudgetAlert)
                    .where(BudgetAlert.id == alert.id)
                    .values(next_attempt_at=now + self._backoff(alert.attempts))
                )
        delivered = failed = gave_up = 0
        for alert, team, cost_center in due:
            error = await self._post(alert, team, cost_center)
            async with transaction(self.sessionmaker) as session:
                attempts = alert.attempts + 1
                values: dict[str, object] = {"attempts": attempts}
                if error is None:
                    values["delivered_at"] = utcnow()
                    delivered += 1
                else:
                    values["last_error"] = error[:255]
                    if attempts >= self.settings.alert_webhook_max_attempts:
                        values["gave_up_at"] = utcnow()
                        gave_up += 1
                        logger.error(
                            "gave up delivering a budget alert",
                            extra={"alert_id": alert.id, "team": team, "error": error[:200]},
                        )
                    else:
                        failed += 1
                await session.execute(
                    update(BudgetAlert).where(BudgetAlert.id == alert.id).values(**values)
                )
        return DeliveryOutcome(delivered, failed, gave_up)

    async def _post(self, alert: BudgetAlert, team: str, cost_center: str | None) -> str | None:
        assert self.http is not None
        assert self.settings.alert_webhook_url
        body = json.dumps(
            {
                "type": "gateway.budget_alert",
                "alert_id": alert.id,
                "threshold": alert.threshold,
                "scope": alert.scope,
                "scope_name": alert.scope_name if alert.scope != "team" else team,
                "team": team,
                "cost_center": cost_center,
                "period": alert.period,
                "budget_usd": format_usd(alert.budget_micro_usd),
                "limit_usd": format_usd(alert.limit_micro_usd),
                "used_usd": format_usd(alert.used_micro_usd),
                "raised_at": alert.created_at.isoformat(),
            },
            separators=(",", ":"),
        ).encode()
        headers = {
            "Content-Type": "application/json",
            "Idempotency-Key": f"budget-alert-{alert.id}",
        }
        secret = self.settings.alert_webhook_secret.get_secret_value()
        if secret:
            signature = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
            headers["X-Gateway-Signature"] = f"sha256={signature}"
        try:
            response = await self.http.post(
                self.settings.alert_webhook_url, content=body, headers=headers
            )
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}"
        if response.is_success:
            return None
        return f"HTTP {response.status_code}"

    def _backoff(self, attempts: int) -> timedelta:
        base = self.settings.alert_webhook_retry_base_seconds
        return min(timedelta(seconds=base * 2**attempts), _MAX_BACKOFF)
