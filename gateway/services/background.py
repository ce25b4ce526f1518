"""What the background loops of each replica do, and how each pass is counted."""

from __future__ import annotations

import logging

from prometheus_client import Counter
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.core.clock import utcnow
from gateway.core.periods import period_of
from gateway.db.session import autocommit
from gateway.ledger.quotas import BudgetPolicy
from gateway.ledger.snapshot import ledger_snapshot
from gateway.observability.metrics import Metrics
from gateway.services.alerts import BudgetAlerts, DeliveryOutcome
from gateway.services.reconciler import Reconciler
from gateway.services.webhooks import WebhookDeliverer

logger = logging.getLogger(__name__)


async def refresh_ledger_gauges(
    sessionmaker: async_sessionmaker[AsyncSession], metrics: Metrics, policy: BudgetPolicy
) -> None:
    """Re-read budgets (plus grants), spend, holds and lags from the shared database, per team
    and per project."""
    now = utcnow()
    async with autocommit(sessionmaker) as session:
        snapshot = await ledger_snapshot(session, period=period_of(now), now=now, policy=policy)
    for figures in snapshot.teams:
        metrics.set_team_figures(
            figures.team,
            budget_micro_usd=figures.limit_micro_usd,
            soft_limit_micro_usd=figures.soft_limit_micro_usd,
            captured_micro_usd=figures.captured_micro_usd,
            held_micro_usd=figures.held_micro_usd,
            jobs_in_flight=figures.jobs_in_flight,
        )
    for project in snapshot.projects:
        metrics.set_project_figures(
            project.team,
            project.project,
            budget_micro_usd=project.limit_micro_usd,
            captured_micro_usd=project.captured_micro_usd,
        )
    metrics.set_ledger_totals(
        holds_outstanding_micro_usd=snapshot.holds_outstanding_micro_usd,
        oldest_hold_age_seconds=snapshot.oldest_hold_age_seconds,
        reconciler_lag_seconds=snapshot.reconciler_lag_seconds,
    )


async def reconcile_and_count(reconciler: Reconciler, metrics: Metrics) -> None:
    try:
        report = await reconciler.run_once()
    except Exception:
        metrics.reconciler_runs.labels("failed").inc()
        raise
    metrics.reconciler_runs.labels("ok").inc()
    if report.settled or report.released_unanswered or report.flagged or report.recovered:
        logger.info("reconciler pass", extra=vars(report))


async def deliver_alerts(alerts: BudgetAlerts, metrics: Metrics) -> None:
    _count_deliveries(metrics.alerts_sent, await alerts.deliver_due())


async def deliver_webhooks(deliverer: WebhookDeliverer, metrics: Metrics) -> None:
    """One pass of the team webhooks' deliverer, its attempts counted by outcome."""
    _count_deliveries(metrics.webhook_deliveries, await deliverer.deliver_due())


def _count_deliveries(counter: Counter, outcome: DeliveryOutcome) -> None:
    for result, count in (
        ("delivered", outcome.delivered),
        ("failed", outcome.failed),
        ("gave_up", outcome.gave_up),
    ):
        if count:
            counter.labels(result).inc(count)
