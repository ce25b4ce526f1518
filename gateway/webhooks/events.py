"""Writing webhook events: the outbox half of team webhooks.

Each function runs inside the caller's transaction, the one that makes the fact it reports
true: ``job_settled`` in the settlement's (``gateway.ledger.settlement.apply_settlement``, after
the conditional move that lets exactly one settler win), ``budget_alert_raised`` in the alert's
insert. So an event is written if and only if that transaction commits, whichever replica,
poll or reconciler pass settled the job; a rolled-back settlement leaves no event behind.

An event's id comes from what it reports (``evt_job_<gateway job id>``,
``evt_alert_<alert id>``), so the primary key would refuse a second event for one settlement
even if a bug tried to write it. One ``WebhookDelivery`` row per live subscription of the team
that wants the event's type is written beside it; the deliverer (``gateway.services.webhooks``)
sends those, in any replica, at least once.

A team without subscriptions pays one indexed read of an empty result per settlement, and
nothing is written.

Body (the ``payload`` column, sent byte for byte on every attempt)::

    {"id": "evt_job_…", "type": "job.succeeded", "created_at": "2026-12-01T10:00:00+00:00",
     "data": {"job_id": "<the upstream's job id, as the client knows it>",
              "gateway_job_id": "…", "team": "video-lab", "project": "launch" | null,
              "status": "<the upstream's terminal status word, or 'released'>",
              "billed_usd": "1.680000", "video_seconds": 6, "resolution": "720p",
              "reason": "completed", "upstream": {…the upstream's terminal answer…} | null}}

``job.moderated`` is a job the upstream produced and then blocked: billed like a success.
``job.failed`` is every other job that ended unbilled (an upstream failure, a refused or
unanswered submit released, an operator's release): its ``billed_usd`` is ``0.000000``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import delete, exists, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.core.usd import format_usd
from gateway.jobs.models import Job, JobState
from gateway.tenancy.models import Project, Team
from gateway.webhooks.models import (
    DeliveryState,
    EventType,
    WebhookDelivery,
    WebhookEvent,
    WebhookSubscription,
)


class SettlementPlan(Protocol):
    """What ``job_settled`` reads of ``gateway.ledger.settlement.SettlementPlan`` (the ledger
    imports this module, not the other way round)."""

    @property
    def state(self) -> JobState: ...
    @property
    def captured(self) -> int: ...
    @property
    def reason(self) -> str | None: ...
    @property
    def video_ms(self) -> int | None: ...
    @property
    def upstream_status(self) -> str | None: ...
    @property
    def upstream_error_code(self) -> str | None: ...
    @property
    def terminal_body(self) -> bytes | None: ...


async def purge_delivered(session: AsyncSession, *, before: datetime, limit: int = 1000) -> int:
    """Delete up to ``limit`` events written before ``before`` whose every delivery is done
    (delivered or given up), with those deliveries; returns how many events. The delivery log
    keeps ``GATEWAY_WEBHOOK_LOG_RETENTION_DAYS``, not the outbox for ever."""
    pending = exists().where(
        WebhookDelivery.event_id == WebhookEvent.id,
        WebhookDelivery.state == DeliveryState.PENDING,
    )
    ids = (
        (
            await session.execute(
                select(WebhookEvent.id)
                .where(WebhookEvent.created_at < before, ~pending)
                .order_by(WebhookEvent.created_at)
                .limit(limit)
            )
        )
        .scalars()
        .all()
    )
    if not ids:
        return 0
    await session.execute(delete(WebhookDelivery).where(WebhookDelivery.event_id.in_(ids)))
    await session.execute(delete(WebhookEvent).where(WebhookEvent.id.in_(ids)))
    return len(ids)


def job_event_id(job_id: str) -> str:
    return f"evt_job_{job_id}"


def alert_event_id(alert_id: int) -> str:
    return f"evt_alert_{alert_id}"


def job_event_type(plan: SettlementPlan) -> EventType:
    if plan.state is not JobState.CAPTURED:
        return EventType.JOB_FAILED
    return EventType.JOB_MODERATED if plan.upstream_error_code else EventType.JOB_SUCCEEDED


async def job_settled(
    session: AsyncSession, job: Job, plan: SettlementPlan, *, now: datetime
) -> str | None:
    """Write the job's event for the team's subscribers to its type, in the settlement's
    transaction. Returns the event id, or None when nobody subscribes."""
    event_type = job_event_type(plan)
    subscribers = await _subscribers(session, job.team_id, event_type)
    if not subscribers:
        return None
    team = (await session.execute(select(Team.name).where(Team.id == job.team_id))).scalar_one()
    project = None
    if job.project_id is not None:
        project = (
            await session.execute(select(Project.name).where(Project.id == job.project_id))
        ).scalar_one_or_none()
    captured = plan.state is JobState.CAPTURED
    video_ms = (plan.video_ms if plan.video_ms is not None else job.duration_ms) if captured else 0
    data = {
        "job_id": job.upstream_job_id,
        "gateway_job_id": job.id,
        "team": team,
        "project": project,
        "status": plan.upstream_status or plan.state.value,
        "billed_usd": format_usd(plan.captured if captured else 0),
        "video_seconds": _seconds(video_ms),
        "resolution": job.resolution,
        "reason": plan.reason,
        "upstream": _terminal_answer(plan.terminal_body),
    }
    event_id = job_event_id(job.id)
    await _write(
        session,
        _Event(event_id, job.team_id, event_type, data, now, job_id=job.id),
        subscribers,
    )
    return event_id


@dataclass(frozen=True)
class RaisedAlert:
    """A budget alert just recorded (``gateway.ledger.models.BudgetAlert``), as its event
    reports it (micro-USD)."""

    alert_id: int
    team_id: int
    threshold: str
    """``soft_limit`` or ``hard_limit``."""
    scope: str
    scope_name: str | None
    period: str
    budget: int
    limit: int
    used: int


async def budget_alert_raised(
    session: AsyncSession, alert: RaisedAlert, *, now: datetime
) -> str | None:
    """Write the alert's ``budget.soft_limit`` or ``budget.exhausted`` event for the team's
    subscribers, in the transaction that recorded the alert (once per level, period and
    threshold). Returns the event id, or None when nobody subscribes."""
    event_type = (
        EventType.BUDGET_SOFT_LIMIT
        if alert.threshold == "soft_limit"
        else EventType.BUDGET_EXHAUSTED
    )
    subscribers = await _subscribers(session, alert.team_id, event_type)
    if not subscribers:
        return None
    team = (await session.execute(select(Team.name).where(Team.id == alert.team_id))).scalar_one()
    data = {
        "team": team,
        "scope": alert.scope,
        "scope_name": alert.scope_name if alert.scope != "team" else team,
        "period": alert.period,
        "threshold": alert.threshold,
        "budget_usd": format_usd(alert.budget),
        "limit_usd": format_usd(alert.limit),
        "used_usd": format_usd(alert.used),
    }
    event_id = alert_event_id(alert.alert_id)
    await _write(session, _Event(event_id, alert.team_id, event_type, data, now), subscribers)
    return event_id


@dataclass(frozen=True)
class _Event:
    id: str
    team_id: int
    type: EventType
    data: dict[str, Any]
    created_at: datetime
    job_id: str | None = None


async def _subscribers(session: AsyncSession, team_id: int, event_type: EventType) -> list[str]:
    """The ids of the team's live subscriptions that want ``event_type``."""
    rows = await session.execute(
        select(WebhookSubscription.id, WebhookSubscription.events).where(
            WebhookSubscription.team_id == team_id, WebhookSubscription.deleted_at.is_(None)
        )
    )
    return [sid for sid, events in rows if event_type.value in (events or ())]


async def _write(session: AsyncSession, event: _Event, subscribers: Sequence[str]) -> None:
    body = {
        "id": event.id,
        "type": event.type.value,
        "created_at": event.created_at.isoformat(),
        "data": event.data,
    }
    await session.execute(
        insert(WebhookEvent).values(
            id=event.id,
            team_id=event.team_id,
            type=event.type.value,
            payload=json.dumps(body, separators=(",", ":")),
            job_id=event.job_id,
            created_at=event.created_at,
        )
    )
    await session.execute(
        insert(WebhookDelivery),
        [
            {
                "event_id": event.id,
                "subscription_id": subscription,
                "state": DeliveryState.PENDING,
                "attempts": 0,
                "next_attempt_at": event.created_at,
                "created_at": event.created_at,
            }
            for subscription in subscribers
        ],
    )


def _seconds(video_ms: int) -> int | float:
    whole, rest = divmod(video_ms, 1000)
    return whole if rest == 0 else video_ms / 1000


def _terminal_answer(raw: bytes | None) -> Any:
    """The upstream's terminal answer as JSON, or None without one (or if unreadable). Its
    numbers go through floats: a shortest round-trip repr keeps every figure an upstream
    writes with up to 15 significant digits exactly as written."""
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
