"""Team webhook events are an outbox written by the settlement itself (issue 16): a settlement
writes its job's event and one delivery per subscriber in its own transaction, so the event
exists if and only if the settlement committed, exactly once whoever settles; a budget alert
raised writes ``budget.soft_limit`` / ``budget.exhausted`` the same way. Fast tier, Postgres
and SQLite; the delivery of these rows is tested in ``test_webhook_delivery.py`` and end to end
in ``test_webhooks.py``."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from typing import Any, cast

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.config import Settings
from gateway.db.health import DatabaseHealth
from gateway.errors import BudgetExhausted
from gateway.jobs.models import Job, JobState
from gateway.ledger import settlement
from gateway.ledger.models import LedgerEntry
from gateway.ledger.quotas import PeriodBalance, TeamQuota
from gateway.observability.metrics import Metrics
from gateway.services.alerts import BudgetAlerts
from gateway.services.reconciler import Reconciler
from gateway.tenancy import portal_sessions
from gateway.tenancy.models import PortalSession
from gateway.upstream.client import UpstreamClient
from gateway.webhooks.models import (
    ALL_EVENT_TYPES,
    WebhookDelivery,
    WebhookEvent,
    WebhookSubscription,
)
from tests.support.savepoint import SavepointDatabase
from tests.support.tenants import in_session, make_tenant
from tests.test_ledger import NOW, PERIOD, hold, settle, team_quota

pytestmark = pytest.mark.fast

TERMINAL = b'{"status":"completed","result":{"url":"https://v.example/x.mp4","duration":6}}'


def subscribe(
    db: SavepointDatabase, team_id: int, events: tuple[str, ...] = ALL_EVENT_TYPES
) -> str:
    subscription_id = f"wh_{uuid.uuid4().hex[:16]}"

    async def _add(session: AsyncSession) -> None:
        session.add(
            WebhookSubscription(
                id=subscription_id,
                team_id=team_id,
                url="https://hooks.example/gateway",
                events=list(events),
                secret="whsec_" + "A" * 43 + "=",
                created_by="test",
                created_at=NOW,
            )
        )

    in_session(db, _add)
    return subscription_id


def outbox(db: SavepointDatabase, team_id: int) -> dict[str, tuple[str, dict[str, Any], set[str]]]:
    """Event id → (type, body, subscription ids with a delivery)."""

    async def _read(session: AsyncSession) -> dict[str, tuple[str, dict[str, Any], set[str]]]:
        events = (
            await session.execute(select(WebhookEvent).where(WebhookEvent.team_id == team_id))
        ).scalars()
        found = {}
        for event in events:
            deliveries = (
                await session.execute(
                    select(WebhookDelivery.subscription_id, WebhookDelivery.state).where(
                        WebhookDelivery.event_id == event.id
                    )
                )
            ).all()
            assert {state for _, state in deliveries} <= {"pending"}
            found[event.id] = (event.type, json.loads(event.payload), {s for s, _ in deliveries})
        return found

    return in_session(db, _read)


def captured(seconds_ms: int, *, error_code: str | None = None) -> settlement.SettlementPlan:
    return settlement.SettlementPlan(
        JobState.CAPTURED,
        1_680_000,
        reason="moderation_blocked" if error_code else "completed",
        video_ms=seconds_ms,
        upstream_status="failed" if error_code else "completed",
        upstream_error_code=error_code,
        terminal_body=TERMINAL,
    )


def test_each_settlement_writes_its_event_once_for_the_subscribers_to_its_type(
    db: SavepointDatabase,
) -> None:
    tenant = make_tenant(db)
    quota = team_quota(db, tenant.team)
    everything = subscribe(db, quota.team_id)
    failures_only = subscribe(db, quota.team_id, ("job.failed",))
    other = make_tenant(db)
    subscribe(db, team_quota(db, other.team).team_id)  # another team's: sees nothing of these

    succeeded = hold(db, quota, 1_680_000, upstream_job_id=f"up-{uuid.uuid4().hex}")
    moderated = hold(db, quota, 1_680_000)
    failed = hold(db, quota, 960_000)
    assert settle(db, succeeded, captured(6000)) is True
    assert settle(db, moderated, captured(6500, error_code="content_moderated")) is True
    assert settle(db, failed, settlement.release("generation_failed")) is True
    # Settling again (another poll, the reconciler) writes nothing more.
    assert settle(db, succeeded, captured(6000)) is False
    assert settle(db, failed, settlement.release("failed")) is False

    events = outbox(db, quota.team_id)
    assert set(events) == {f"evt_job_{j.id}" for j in (succeeded, moderated, failed)}
    kind, body, to = events[f"evt_job_{succeeded.id}"]
    assert (kind, to) == ("job.succeeded", {everything})
    assert body["id"] == f"evt_job_{succeeded.id}"
    assert body["type"] == "job.succeeded"
    assert body["created_at"] == NOW.isoformat()
    assert body["data"] == {
        "job_id": succeeded.upstream_job_id,
        "gateway_job_id": succeeded.id,
        "team": tenant.team,
        "project": None,
        "status": "completed",
        "billed_usd": "1.680000",
        "video_seconds": 6,
        "resolution": succeeded.resolution,
        "reason": "completed",
        "upstream": json.loads(TERMINAL),
    }
    kind, body, to = events[f"evt_job_{moderated.id}"]
    assert (kind, to) == ("job.moderated", {everything})
    assert (body["data"]["billed_usd"], body["data"]["video_seconds"]) == ("1.680000", 6.5)
    kind, body, to = events[f"evt_job_{failed.id}"]
    assert (kind, to) == ("job.failed", {everything, failures_only})
    assert (body["data"]["billed_usd"], body["data"]["video_seconds"]) == ("0.000000", 0)
    assert (body["data"]["status"], body["data"]["upstream"]) == ("released", None)


def test_a_settlement_rolled_back_leaves_no_event_and_one_committed_leaves_one(
    db: SavepointDatabase,
) -> None:
    tenant = make_tenant(db)
    quota = team_quota(db, tenant.team)
    subscribe(db, quota.team_id)
    job = hold(db, quota, 1_680_000)

    class Failed(Exception):
        pass

    async def _settle_then_fail(session: AsyncSession) -> None:
        assert await settlement.apply_settlement(session, job, captured(6000), now=NOW)
        assert (await session.execute(select(func.count()).select_from(WebhookEvent))).scalar()
        raise Failed  # e.g. the commit fails: the ledger entry and the event go together

    with pytest.raises(Failed):
        in_session(db, _settle_then_fail)
    assert outbox(db, quota.team_id) == {}
    assert settle(db, job, captured(6000)) is True
    assert set(outbox(db, quota.team_id)) == {f"evt_job_{job.id}"}

    async def _entries(session: AsyncSession) -> list[str]:
        rows = await session.execute(select(LedgerEntry.kind).where(LedgerEntry.job_id == job.id))
        return sorted(rows.scalars())

    assert in_session(db, _entries) == ["capture", "hold"]


def test_without_a_live_subscriber_nothing_is_written(db: SavepointDatabase) -> None:
    tenant = make_tenant(db)
    quota = team_quota(db, tenant.team)
    deleted = subscribe(db, quota.team_id)
    subscribe(db, quota.team_id, ("budget.exhausted",))  # wants no job event

    async def _delete(session: AsyncSession) -> None:
        row = await session.get(WebhookSubscription, deleted)
        assert row is not None
        row.deleted_at = NOW

    in_session(db, _delete)
    job = hold(db, quota, 1_680_000)
    assert settle(db, job, captured(6000)) is True
    assert outbox(db, quota.team_id) == {}

    async def _job_state(session: AsyncSession) -> str:
        return (await session.execute(select(Job.state).where(Job.id == job.id))).scalar_one()

    assert in_session(db, _job_state) == "captured"


def test_a_budget_alert_raised_writes_its_event_once(db: SavepointDatabase) -> None:
    tenant = make_tenant(db, budget_micro_usd=10_000_000, soft_limit_percent=50)
    quota = team_quota(db, tenant.team)
    subscription = subscribe(db, quota.team_id, ("budget.soft_limit", "budget.exhausted"))
    alerts = BudgetAlerts(db.sessionmaker, Settings())
    team = TeamQuota(quota.team_id, 10_000_000, None, soft_limit_percent=50, name=tenant.team)
    crossed = PeriodBalance(PERIOD, 10_000_000, held=1_680_000, captured=3_360_000)

    db.run(alerts.after_hold(team, crossed))
    db.run(BudgetAlerts(db.sessionmaker, Settings()).after_hold(team, crossed))  # another replica
    refused = BudgetExhausted(
        period=PERIOD, budget=10_000_000, held=1_680_000, captured=8_000_000, requested=1_680_000
    )
    db.run(alerts.after_budget_refusal(team, refused))

    events = sorted(outbox(db, quota.team_id).values(), key=lambda e: e[0])
    assert [(kind, to) for kind, _, to in events] == [
        ("budget.exhausted", {subscription}),
        ("budget.soft_limit", {subscription}),
    ]
    exhausted, soft = (body["data"] for _, body, _ in events)
    assert soft == {
        "team": tenant.team,
        "scope": "team",
        "scope_name": tenant.team,
        "period": PERIOD,
        "threshold": "soft_limit",
        "budget_usd": "10.000000",
        "limit_usd": "5.000000",
        "used_usd": "5.040000",
    }
    assert (exhausted["threshold"], exhausted["used_usd"]) == ("hard_limit", "9.680000")
    assert all(body["id"].startswith("evt_alert_") for _, body, _ in events)


def test_the_reconciler_pass_purges_done_events_and_finished_sessions_only(
    db: SavepointDatabase,
) -> None:
    """The outbox and the sessions do not grow for ever: the reconciler's pass deletes events
    whose deliveries are all done once ``GATEWAY_WEBHOOK_LOG_RETENTION_DAYS`` old (with their
    log), and portal sessions a day after they ended; nothing still pending, recent or live."""
    tenant = make_tenant(db)
    team_id = team_quota(db, tenant.team).team_id
    subscription = subscribe(db, team_id)
    now = NOW + timedelta(days=40)
    ages = {"old-done": 35, "old-gave-up": 31, "old-pending": 35, "recent-done": 5}

    async def _fill(session: AsyncSession) -> list[str]:
        for name, days in ages.items():
            written = now - timedelta(days=days)
            session.add(
                WebhookEvent(
                    id=f"evt_{name}_{subscription}",
                    team_id=team_id,
                    type="job.succeeded",
                    payload="{}",
                    created_at=written,
                )
            )
            await session.flush()
            state = {"old-pending": "pending", "old-gave-up": "failed"}.get(name, "delivered")
            session.add(
                WebhookDelivery(
                    event_id=f"evt_{name}_{subscription}",
                    subscription_id=subscription,
                    state=state,
                    attempts=1,
                    next_attempt_at=now if state == "pending" else None,
                    created_at=written,
                )
            )
        tokens = []
        for started, ended in ((now - timedelta(days=3), True), (now, False)):
            token = await portal_sessions.start_session(
                session,
                kind="key",
                now=started,
                lifetime=timedelta(hours=12),
                csrf_token="x" * 32,
                team_id=team_id,
                api_key_id=tenant.key_id,
            )
            if ended:
                await portal_sessions.end_session(
                    session, portal_sessions.session_id_of(token), started
                )
            tokens.append(portal_sessions.session_id_of(token))
        return tokens

    finished, live = in_session(db, _fill)
    reconciler = Reconciler(
        settings=Settings(),
        sessionmaker=db.sessionmaker,
        upstream=cast(UpstreamClient, None),  # no job is due: nothing is polled
        metrics=Metrics(),
        db_health=DatabaseHealth(),
        clock=lambda: now,
    )
    report = db.run(reconciler.run_once())
    assert (report.purged_webhook_events, report.purged_portal_sessions) == (2, 1)

    async def _left(session: AsyncSession) -> tuple[set[str], set[str], set[str]]:
        events = await session.execute(
            select(WebhookEvent.id).where(WebhookEvent.team_id == team_id)
        )
        deliveries = await session.execute(
            select(WebhookDelivery.event_id).where(WebhookDelivery.subscription_id == subscription)
        )
        sessions = await session.execute(
            select(PortalSession.id).where(PortalSession.id.in_([finished, live]))
        )
        return set(events.scalars()), set(deliveries.scalars()), set(sessions.scalars())

    events, deliveries, sessions = in_session(db, _left)
    kept = {f"evt_{name}_{subscription}" for name in ("old-pending", "recent-done")}
    assert (events, deliveries, sessions) == (kept, kept, {live})
