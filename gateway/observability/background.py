"""What the background loops of each replica do, and how each pass is counted."""

from __future__ import annotations

import logging

from gateway.core.clock import utcnow
from gateway.core.periods import period_of
from gateway.db.session import read_only
from gateway.ledger.reconciler import Reconciler
from gateway.ledger.snapshot import ledger_snapshot
from gateway.observability.metrics import Metrics
from gateway.runtime import Runtime

logger = logging.getLogger(__name__)


async def refresh_ledger_gauges(runtime: Runtime) -> None:
    """Re-read budgets, spend, holds and lags from the shared database."""
    now = utcnow()
    async with read_only(runtime.sessionmaker) as session:
        snapshot = await ledger_snapshot(
            session,
            period=period_of(now),
            now=now,
            policy=runtime.settings.default_budget_policy,
        )
    runtime.metrics.set_ledger_figures(snapshot)


async def reconcile_and_count(reconciler: Reconciler, metrics: Metrics) -> None:
    try:
        report = await reconciler.run_once()
    except Exception:
        metrics.reconciler_runs.labels("failed").inc()
        raise
    metrics.reconciler_runs.labels("ok").inc()
    if report.settled or report.released_unanswered or report.flagged or report.recovered:
        logger.info("reconciler pass", extra=vars(report))


async def deliver_alerts(runtime: Runtime) -> None:
    outcome = await runtime.alerts.deliver_due()
    counter = runtime.metrics.alerts_sent
    for result, count in (
        ("delivered", outcome.delivered),
        ("failed", outcome.failed),
        ("gave_up", outcome.gave_up),
    ):
        if count:
            counter.labels(result).inc(count)
