"""Prometheus metrics (prefix ``gateway_``).

Two kinds, and dashboards must treat them differently:

- **Per-process counters and histograms** (requests, latencies, upstream errors, settlements,
  billed dollars, rejections, ...): each process counts what it did. Sum them across
  processes and replicas: ``sum by (team) (rate(gateway_billed_usd_total[5m]))``.
- **Ledger gauges** (budgets, spend, holds, jobs in flight, oldest hold, reconciler lag; per
  team and per project): read from the shared database on a schedule, so every replica
  reports the same truth. Take the ``max`` across replicas, never the sum:
  ``max by (team) (gateway_team_spend_usd)``. A budget gauge is what may be spent this
  period (the budget plus its one-off grants) and is absent for an unlimited level.

With ``gateway serve --workers N`` the workers share ``PROMETHEUS_MULTIPROC_DIR`` and
``/metrics`` aggregates them (prometheus-client's multiprocess mode): counters are summed,
ledger gauges keep the most recent value of a live worker.
"""

from __future__ import annotations

import logging
import os
from typing import Final

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

from gateway.core.usd import MICROS_PER_USD

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
logger = logging.getLogger(__name__)
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Ledger gauges: every worker writes the same database figures; keep the latest live one.
_LEDGER_GAUGE: Final = "livemostrecent"


def _usd(micro_usd: int) -> float:
    # Observability only: the ledger itself stays in integer micro-USD.
    return micro_usd / MICROS_PER_USD


class Metrics:
    """Every metric the gateway exports, in one registry per application."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.multiprocess = bool(os.environ.get(MULTIPROC_ENV))
        registry = self.registry
        self.requests = Counter(
            "gateway_requests_total",
            "HTTP requests answered, by route template, method, status and team.",
            ["route", "method", "status", "team"],
            registry=registry,
        )
        self.request_duration = Histogram(
            "gateway_request_duration_seconds",
            "Time to answer a request, by route template.",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.upstream_duration = Histogram(
            "gateway_upstream_request_duration_seconds",
            "Time the upstream took to answer, by the gateway route that called it.",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.upstream_errors = Counter(
            "gateway_upstream_errors_total",
            "Upstream calls that failed: connect, connection_lost, timeout, server_error, "
            "auth, invalid_response, rate_limited.",
            ["kind"],
            registry=registry,
        )
        self.upstream_unknown_status = Counter(
            "gateway_upstream_unknown_status_total",
            "Poll answers whose status word is none of the configured success, failure or "
            "running words (the job is treated as running; the word is logged).",
            registry=registry,
        )
        self.billed = Counter(
            "gateway_billed_usd_total",
            "USD captured by settlements this process made (sum across processes).",
            ["team", "model", "resolution"],
            registry=registry,
        )
        self.video_seconds = Counter(
            "gateway_video_seconds_total",
            "Seconds of video billed by settlements this process made.",
            ["team", "model", "resolution"],
            registry=registry,
        )
        self.settlements = Counter(
            "gateway_settlements_total",
            "Jobs settled by this process: captured, released, moderation_billed.",
            ["outcome"],
            registry=registry,
        )
        self.corrections = Counter(
            "gateway_corrections_total",
            "Settlements where the upstream produced more than was held (written for review).",
            registry=registry,
        )
        self.cost_mismatches = Counter(
            "gateway_cost_mismatch_total",
            "Settlements where the upstream's reported cost differs from the gateway's price.",
            registry=registry,
        )
        self.quota_rejections = Counter(
            "gateway_quota_rejections_total",
            "Submits refused (429) because the team's budget had no room.",
            ["team"],
            registry=registry,
        )
        self.concurrency_rejections = Counter(
            "gateway_concurrency_rejections_total",
            "Submits refused (429) by the team's cap on jobs in flight.",
            ["team"],
            registry=registry,
        )
        self.validation_rejections = Counter(
            "gateway_validation_rejections_total",
            "Submits refused by validation (400/413), by error code.",
            ["code"],
            registry=registry,
        )
        self.idempotent_replays = Counter(
            "gateway_idempotent_replays_total",
            "Submits answered by replaying the first answer for their Idempotency-Key.",
            registry=registry,
        )
        self.reconciler_runs = Counter(
            "gateway_reconciler_runs_total",
            "Reconciler passes by this process, by result (ok, failed).",
            ["result"],
            registry=registry,
        )
        self.alerts_sent = Counter(
            "gateway_alert_webhooks_total",
            "Soft/hard limit webhook deliveries, by result (delivered, failed, gave_up).",
            ["result"],
            registry=registry,
        )
        self.webhook_deliveries = Counter(
            "gateway_webhook_deliveries_total",
            "Team webhook delivery attempts by this process, by outcome (delivered, failed: "
            "to be retried, gave_up).",
            ["outcome"],
            registry=registry,
        )
        self.outbox_pending = Gauge(
            "gateway_outbox_pending",
            "Upstream answers this process keeps until the ledger can record them (should be "
            "0; above 0 while the database is away).",
            registry=registry,
            multiprocess_mode="livesum",
        )
        # Ledger gauges (read from the database; the same on every replica).
        self.team_budget = self._ledger_gauge(
            "gateway_team_budget_usd",
            "What the team may spend in the current period: its budget plus one-off grants "
            "(absent when unlimited).",
            ["team"],
        )
        self.team_soft_limit = self._ledger_gauge(
            "gateway_team_soft_limit_usd",
            "The team's soft limit for the current period (budget × soft-limit percentage).",
            ["team"],
        )
        self.team_spend = self._ledger_gauge(
            "gateway_team_spend_usd", "USD captured for the team in the current period.", ["team"]
        )
        self.team_held = self._ledger_gauge(
            "gateway_team_held_usd", "USD held for the team's unsettled jobs this period.", ["team"]
        )
        self.project_budget = self._ledger_gauge(
            "gateway_project_budget_usd",
            "What the project may spend in the current period: its budget plus one-off grants "
            "(absent when it has no budget of its own).",
            ["team", "project"],
        )
        self.project_spend = self._ledger_gauge(
            "gateway_project_spend_usd",
            "USD captured for the project in the current period.",
            ["team", "project"],
        )
        self.jobs_in_flight = self._ledger_gauge(
            "gateway_jobs_in_flight", "The team's jobs not yet settled.", ["team"]
        )
        self.holds_outstanding = self._ledger_gauge(
            "gateway_holds_outstanding_usd", "USD held for all unsettled jobs.", []
        )
        self.oldest_hold_age = self._ledger_gauge(
            "gateway_oldest_hold_age_seconds", "Age of the oldest unsettled job.", []
        )
        self.reconciler_lag = self._ledger_gauge(
            "gateway_reconciler_lag_seconds",
            "How overdue the most overdue reconciler check is (0 when none is due).",
            [],
        )

    def _ledger_gauge(self, name: str, documentation: str, labels: list[str]) -> Gauge:
        return Gauge(
            name,
            documentation,
            labels,
            registry=self.registry,
            multiprocess_mode=_LEDGER_GAUGE,
        )

    def record_release(self) -> None:
        """One settlement this process made that billed nothing."""
        self.settlements.labels("released").inc()

    def record_capture(
        self,
        *,
        team: str,
        model: str,
        resolution: str,
        moderated: bool,
        captured_micro_usd: int,
        video_seconds: float,
        excess_micro_usd: int,
        cost_mismatch: bool,
    ) -> None:
        """One billed settlement this process made (call after its transaction committed)."""
        self.settlements.labels("moderation_billed" if moderated else "captured").inc()
        self.billed.labels(team, model, resolution).inc(_usd(captured_micro_usd))
        self.video_seconds.labels(team, model, resolution).inc(video_seconds)
        if excess_micro_usd:
            self.corrections.inc()
        if cost_mismatch:
            self.cost_mismatches.inc()

    def unknown_status(self, word: str, job_id: str) -> None:
        self.upstream_unknown_status.inc()
        logger.warning(
            "upstream answered a status word the gateway does not know; treated as running",
            extra={"status_word": word, "gateway_job_id": job_id},
        )

    def set_team_figures(
        self,
        team: str,
        *,
        budget_micro_usd: int | None,
        soft_limit_micro_usd: int | None,
        captured_micro_usd: int,
        held_micro_usd: int,
        jobs_in_flight: int,
    ) -> None:
        """One team's ledger gauges, as read from the database. ``budget_micro_usd``: what it
        may spend (budget plus grants), None when unlimited."""
        if budget_micro_usd is not None:
            self.team_budget.labels(team).set(_usd(budget_micro_usd))
        if soft_limit_micro_usd is not None:
            self.team_soft_limit.labels(team).set(_usd(soft_limit_micro_usd))
        self.team_spend.labels(team).set(_usd(captured_micro_usd))
        self.team_held.labels(team).set(_usd(held_micro_usd))
        self.jobs_in_flight.labels(team).set(jobs_in_flight)

    def set_project_figures(
        self, team: str, project: str, *, budget_micro_usd: int | None, captured_micro_usd: int
    ) -> None:
        """One project's ledger gauges, as read from the database. ``budget_micro_usd``: what
        it may spend (budget plus grants), None when it has no budget of its own."""
        if budget_micro_usd is not None:
            self.project_budget.labels(team, project).set(_usd(budget_micro_usd))
        self.project_spend.labels(team, project).set(_usd(captured_micro_usd))

    def set_ledger_totals(
        self,
        *,
        holds_outstanding_micro_usd: int,
        oldest_hold_age_seconds: float,
        reconciler_lag_seconds: float,
    ) -> None:
        self.holds_outstanding.set(_usd(holds_outstanding_micro_usd))
        self.oldest_hold_age.set(oldest_hold_age_seconds)
        self.reconciler_lag.set(reconciler_lag_seconds)

    def exposition(self) -> tuple[bytes, str]:
        """The ``/metrics`` body and content type."""
        if self.multiprocess:
            registry = CollectorRegistry()
            MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
