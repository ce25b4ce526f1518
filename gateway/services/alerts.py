"""Budget alerts: a team crossing its soft limit, or hitting its hard limit (a submit refused
for budget), raises one alert per team, period and threshold (a unique key makes "once" hold
across replicas). Alerts are always recorded; with ``GATEWAY_ALERT_WEBHOOK_URL`` set they are
also POSTed as JSON, retried with backoff until delivered or ``GATEWAY_ALERT_WEBHOOK_MAX_ATTEMPTS``
is reached. For teams without Prometheus alerting.

Webhook body::

    {"type": "gateway.budget_alert", "alert_id": 7, "threshold": "soft_limit",
     "team": "video-lab", "cost_center": "CC-1", "period": "2026-11",
     "budget_usd": "500.000000", "limit_usd": "400.000000", "used_usd": "401.680000",
     "raised_at": "2026-11-24T09:30:00+00:00"}

Headers: ``Idempotency-Key: budget-alert-<id>`` (the same on every retry, so receivers can
drop duplicates) and, when ``GATEWAY_ALERT_WEBHOOK_SECRET`` is set,
``X-Gateway-Signature: sha256=<hex HMAC of the body>``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from dataclasses import dataclass
from datetime import timedelta

import httpx
from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.config import Settings
from gateway.core.clock import utcnow
from gateway.core.usd import format_usd
from gateway.db.session import dialect_name, transaction
from gateway.ledger.models import BudgetAlert
from gateway.ledger.quotas import PeriodBalance, TeamQuota
from gateway.tenancy.models import Team

logger = logging.getLogger(__name__)

SOFT_LIMIT = "soft_limit"
HARD_LIMIT = "hard_limit"
_MAX_BACKOFF = timedelta(hours=1)


@dataclass(frozen=True)
class DeliveryOutcome:
    delivered: int = 0
    failed: int = 0
    gave_up: int = 0


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
        # Thresholds this process already raised: skip the insert on every later submit.
        self._raised: set[tuple[int, str, str]] = set()

    async def after_hold(self, team: TeamQuota, balance: PeriodBalance) -> None:
        """Raise the soft-limit alert if this hold took the team past it."""
        if team.soft_limit_percent is None or balance.budget is None:
            return
        limit = balance.budget * team.soft_limit_percent // 100
        used = balance.held + balance.captured
        if used >= limit:
            await self._raise(team.team_id, balance, SOFT_LIMIT, limit)

    async def after_budget_refusal(self, team: TeamQuota, balance: PeriodBalance) -> None:
        """A submit did not fit the budget: the team is at its hard limit."""
        if balance.budget is not None:
            await self._raise(team.team_id, balance, HARD_LIMIT, balance.budget)

    async def _raise(
        self, team_id: int, balance: PeriodBalance, threshold: str, limit: int
    ) -> None:
        key = (team_id, balance.period, threshold)
        if key in self._raised:
            return
        now = utcnow()
        try:
            async with transaction(self.sessionmaker) as session:
                insert = (
                    postgresql.insert if dialect_name(session) == "postgresql" else sqlite.insert
                )
                await session.execute(
                    insert(BudgetAlert)
                    .values(
                        team_id=team_id,
                        period=balance.period,
                        threshold=threshold,
                        budget_micro_usd=balance.budget or 0,
                        used_micro_usd=balance.held + balance.captured,
                        limit_micro_usd=limit,
                        created_at=now,
                        attempts=0,
                        next_attempt_at=now,
                    )
                    .on_conflict_do_nothing(index_elements=["team_id", "period", "threshold"])
                )
        except Exception:
            # An alert must never fail the request that crossed the threshold.
            logger.exception("could not record a budget alert", extra={"threshold": threshold})
            return
        self._raised.add(key)

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
