"""Settling a job from a poll answer, and counting each settlement this process made.

The rules live in ``gateway.ledger.settlement`` (what a terminal answer bills, and applying it
exactly once in the caller's session); this module owns the transaction around them and
translates a settlement into the metrics."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.core.usd import format_usd
from gateway.db.session import transaction
from gateway.jobs.models import Job, JobState
from gateway.ledger.repository import PeriodAmounts
from gateway.ledger.settlement import (
    SettlementPlan,
    StatusVocabulary,
    apply_settlement,
    plan_from_outcome,
    read_terminal,
)
from gateway.observability.metrics import Metrics

logger = logging.getLogger(__name__)


def count_settlement(metrics: Metrics, team: str, job: Job, plan: SettlementPlan) -> None:
    """Count one settlement this process made (after its transaction committed)."""
    if plan.state is not JobState.CAPTURED:
        metrics.record_release()
        return
    video_ms = plan.video_ms if plan.video_ms is not None else job.duration_ms
    upstream_cost = plan.upstream_cost_micro_usd
    metrics.record_capture(
        team=team,
        model=job.model,
        resolution=job.resolution,
        moderated=plan.upstream_error_code is not None,
        captured_micro_usd=plan.captured,
        video_seconds=video_ms / 1000,
        excess_micro_usd=plan.excess,
        cost_mismatch=upstream_cost is not None and upstream_cost != plan.captured + plan.excess,
    )


@dataclass(frozen=True)
class Settled:
    plan: SettlementPlan
    balance: PeriodAmounts


async def settle_from_poll(
    sessionmaker: async_sessionmaker[AsyncSession],
    vocabulary: StatusVocabulary,
    job: Job,
    body: Mapping[str, Any],
    raw: bytes,
    *,
    now: datetime,
) -> Settled | None:
    """Settle ``job`` if this poll answer is terminal. Safe to call from any number of
    concurrent polls and replicas: exactly one settles, the others change nothing."""
    outcome = read_terminal(body, vocabulary)
    if outcome is None:
        return None
    async with transaction(sessionmaker) as session:
        plan = await plan_from_outcome(session, job, outcome, raw)
        balance = await apply_settlement(session, job, plan, now=now)
    if balance is None:
        return None
    logger.info(
        "job settled",
        extra={
            "gateway_job_id": job.id,
            "upstream_job_id": job.upstream_job_id,
            "outcome": plan.state.value,
            "captured_usd": format_usd(plan.captured),
        },
    )
    return Settled(plan, balance)
