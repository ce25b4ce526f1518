"""Delivering team webhooks (``gateway.services.webhooks.WebhookDeliverer``), service level,
against a real receiver on loopback that verifies every delivery with ``standardwebhooks``:
signatures and ids, retries with backoff, giving up after the retry window, redirects not
followed, the destination checked again at every attempt, deleted subscriptions, and two
deliverers racing over the same due rows (Postgres: ``SKIP LOCKED``)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession
from standardwebhooks import Webhook, WebhookVerificationError

from gateway.config import Settings
from gateway.core.clock import utcnow
from gateway.db.engine import create_engine, create_sessionmaker
from gateway.errors import Conflict
from gateway.services import webhooks
from gateway.services.alerts import DeliveryOutcome
from gateway.services.webhooks import WebhookDeliverer
from gateway.webhooks.models import (
    DeliveryState,
    WebhookDelivery,
    WebhookEvent,
    WebhookSubscription,
)
from gateway.webhooks.subscriptions import SUBSCRIPTION_DELETED, new_secret
from tests.support.database import create_postgres_database, drop_postgres_database
from tests.support.processes import free_port
from tests.support.savepoint import Database, SavepointDatabase
from tests.support.settings import gateway_settings
from tests.support.tenants import TEST_ACTOR, in_session, make_tenant
from tests.support.webhook_receiver import SignedReceiver, signed_receiver

fast = pytest.mark.fast


@pytest.fixture
def receiver() -> Iterator[SignedReceiver]:
    with signed_receiver() as receiver:
        yield receiver


def settings_for(url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "webhook_allow_private_networks": True,
        "webhook_concurrency": 1,  # the fast tier's one connection: one unit of work at a time
        "webhook_timeout_seconds": 5.0,
    }
    values.update(overrides)
    return gateway_settings(url, "http://127.0.0.1:9", **values)


def subscribe(database: Database, receiver: SignedReceiver, url: str | None = None) -> str:
    """A new team subscribed to every event at the receiver (or ``url``); its id."""
    tenant = make_tenant(database)
    settings = settings_for(database if isinstance(database, str) else database.url)

    async def _create(session: AsyncSession) -> tuple[WebhookSubscription, str]:
        return await webhooks.create_subscription(
            session,
            team=tenant.team,
            url=url or receiver.url,
            events=None,
            actor=TEST_ACTOR,
            settings=settings,
        )

    row, secret = in_session(database, _create)
    receiver.secrets.append(secret)
    return row.id


def add_events(
    database: Database, subscription_id: str, count: int = 1, *, created_at: datetime | None = None
) -> list[str]:
    """``count`` job events for the subscription, each with a pending delivery due now."""

    async def _add(session: AsyncSession) -> list[str]:
        row = await session.get(WebhookSubscription, subscription_id)
        assert row is not None
        now = utcnow()
        ids = []
        for _ in range(count):
            job = uuid.uuid4().hex
            event_id = f"evt_job_{job}"
            payload = json.dumps(
                {
                    "id": event_id,
                    "type": "job.succeeded",
                    "created_at": (created_at or now).isoformat(),
                    "data": {"job_id": job, "billed_usd": "1.680000", "note": "naïve ✓"},
                },
                separators=(",", ":"),
                ensure_ascii=False,
            )
            session.add(
                WebhookEvent(
                    id=event_id,
                    team_id=row.team_id,
                    type="job.succeeded",
                    payload=payload,
                    job_id=job,
                    created_at=created_at or now,
                )
            )
            await session.flush()
            session.add(
                WebhookDelivery(
                    event_id=event_id,
                    subscription_id=subscription_id,
                    state=DeliveryState.PENDING,
                    attempts=0,
                    next_attempt_at=now,
                    created_at=now,
                )
            )
            ids.append(event_id)
        await session.flush()
        return ids

    return in_session(database, _add)


def deliveries(database: Database, subscription_id: str) -> list[WebhookDelivery]:
    async def _read(session: AsyncSession) -> list[WebhookDelivery]:
        rows = await session.execute(
            select(WebhookDelivery)
            .where(WebhookDelivery.subscription_id == subscription_id)
            .order_by(WebhookDelivery.id)
        )
        return list(rows.scalars())

    return in_session(database, _read)


def make_due(database: Database, subscription_id: str) -> None:
    """Move every pending retry of the subscription to now (as if its backoff had passed)."""

    async def _due(session: AsyncSession) -> None:
        await session.execute(
            update(WebhookDelivery)
            .where(
                WebhookDelivery.subscription_id == subscription_id,
                WebhookDelivery.state == DeliveryState.PENDING,
            )
            .values(next_attempt_at=utcnow() - timedelta(seconds=1))
        )

    in_session(database, _due)


def deliver(db: SavepointDatabase, **overrides: Any) -> DeliveryOutcome:
    async def _pass() -> DeliveryOutcome:
        async with httpx.AsyncClient(trust_env=False, follow_redirects=False) as http:
            return await WebhookDeliverer(
                db.sessionmaker, settings_for(db.url, **overrides), http
            ).deliver_due()

    return db.run(_pass())


@fast
def test_a_delivery_is_signed_with_its_own_secret_and_carries_the_event_id(
    db: SavepointDatabase, receiver: SignedReceiver
) -> None:
    subscription = subscribe(db, receiver)
    [event_id] = add_events(db, subscription)

    assert deliver(db) == DeliveryOutcome(delivered=1)
    [got] = receiver.received
    assert receiver.bad_signatures == 0
    assert got.webhook_id == event_id == got.event["id"]
    assert got.headers["content-type"] == "application/json"
    assert got.headers["user-agent"].startswith("video-billing-gateway")
    assert abs(got.timestamp - utcnow().timestamp()) < 10  # the attempt's own time
    # The body is the stored payload byte for byte (UTF-8, not re-encoded).
    stored = db.in_session(lambda s: s.get(WebhookEvent, event_id))
    assert stored is not None and got.body == stored.payload.encode()
    # Another secret does not verify it; the right one does (the receiver already did).
    assert Webhook(receiver.secrets[0]).verify(got.body, got.headers)["id"] == event_id
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(got.body, got.headers)

    [row] = deliveries(db, subscription)
    assert (row.state, row.attempts, row.last_status_code) == (DeliveryState.DELIVERED, 1, 204)
    assert row.delivered_at is not None and row.next_attempt_at is None
    assert deliver(db) == DeliveryOutcome()  # nothing left to send


@fast
def test_failures_are_retried_with_backoff_until_delivered(
    db: SavepointDatabase, receiver: SignedReceiver
) -> None:
    subscription = subscribe(db, receiver)
    add_events(db, subscription)
    receiver.down = True

    for attempt, backoff in ((1, 5.0), (2, 10.0)):
        assert deliver(db, webhook_retry_base_seconds=5.0) == DeliveryOutcome(failed=1)
        [row] = deliveries(db, subscription)
        assert (row.state, row.attempts) == (DeliveryState.PENDING, attempt)
        assert (row.last_status_code, row.last_error) == (503, "HTTP 503")
        assert row.next_attempt_at is not None and row.last_attempt_at is not None
        waited = (row.next_attempt_at - row.last_attempt_at).total_seconds()
        assert backoff * 0.8 - 0.5 <= waited <= backoff + 0.5  # less up to a fifth: jitter
        assert deliver(db) == DeliveryOutcome()  # not due before its backoff
        make_due(db, subscription)

    receiver.down = False
    assert deliver(db) == DeliveryOutcome(delivered=1)
    [row] = deliveries(db, subscription)
    assert (row.state, row.attempts, row.last_status_code) == (DeliveryState.DELIVERED, 3, 204)
    assert row.last_error == "HTTP 503"  # what failed before stays readable
    assert receiver.refused_while_down == 2 and len(receiver.received) == 1


@fast
def test_a_receiver_that_was_not_listening_gets_the_delivery_once_it_is_back(
    db: SavepointDatabase, receiver: SignedReceiver
) -> None:
    """Down as in "nothing listens on the port" (connection refused), then back on it."""
    port = free_port()
    subscription = subscribe(db, receiver, url=f"http://127.0.0.1:{port}/hook")
    [event_id] = add_events(db, subscription)

    assert deliver(db) == DeliveryOutcome(failed=1)
    [row] = deliveries(db, subscription)
    assert (row.state, row.attempts, row.last_status_code) == (DeliveryState.PENDING, 1, None)
    assert row.last_error == "ConnectError"
    make_due(db, subscription)
    with signed_receiver(port, secrets=receiver.secrets) as back:
        assert deliver(db) == DeliveryOutcome(delivered=1)
    assert [got.webhook_id for got in back.received] == [event_id]
    assert back.bad_signatures == 0
    [row] = deliveries(db, subscription)
    assert (row.state, row.attempts, row.last_status_code) == (DeliveryState.DELIVERED, 2, 204)


@fast
def test_a_delivery_is_given_up_after_the_retry_window(
    db: SavepointDatabase, receiver: SignedReceiver
) -> None:
    subscription = subscribe(db, receiver)
    now = utcnow()
    old = add_events(db, subscription, created_at=now - timedelta(hours=24, seconds=1))
    nearly = add_events(db, subscription, created_at=now - timedelta(hours=23, minutes=59))
    receiver.down = True

    assert deliver(db, webhook_retry_base_seconds=600.0) == DeliveryOutcome(failed=1, gave_up=1)
    by_event = {row.event_id: row for row in deliveries(db, subscription)}
    given_up = by_event[old[0]]
    assert (given_up.state, given_up.next_attempt_at) == (DeliveryState.FAILED, None)
    assert given_up.last_error == "HTTP 503"
    retried = by_event[nearly[0]]
    assert retried.state is DeliveryState.PENDING and retried.next_attempt_at is not None
    # The last retry is due at the window's end, not after it (600 s would pass it).
    deadline = now - timedelta(hours=23, minutes=59) + timedelta(hours=24)
    assert retried.next_attempt_at <= deadline + timedelta(seconds=1)


@fast
def test_redirects_are_failures_and_are_not_followed(
    db: SavepointDatabase, receiver: SignedReceiver
) -> None:
    subscription = subscribe(db, receiver)
    moved = subscribe(db, receiver, url=receiver.moved_url)
    add_events(db, moved)

    assert deliver(db) == DeliveryOutcome(failed=1)
    [row] = deliveries(db, moved)
    assert row.last_status_code == 302
    assert row.last_error == "HTTP 302 (redirects are not followed)"
    assert receiver.hook_hits == 0  # the redirect's target was never asked
    assert deliveries(db, subscription) == []


@fast
def test_the_destination_is_checked_again_before_every_attempt(
    db: SavepointDatabase, receiver: SignedReceiver
) -> None:
    subscription = subscribe(db, receiver)  # accepted while private networks were allowed
    add_events(db, subscription)

    outcome = deliver(db, webhook_allow_private_networks=False)
    assert outcome == DeliveryOutcome(failed=1)
    [row] = deliveries(db, subscription)
    assert row.state is DeliveryState.PENDING and row.last_status_code is None
    assert row.last_error is not None
    assert row.last_error.startswith("webhook destination 127.0.0.1 is loopback")
    assert receiver.hook_hits == 0  # refused before any connection


@fast
def test_a_deleted_subscriptions_pending_deliveries_are_not_sent(
    db: SavepointDatabase, receiver: SignedReceiver
) -> None:
    subscription = subscribe(db, receiver)
    add_events(db, subscription, 2)

    async def _delete(session: AsyncSession) -> None:
        await webhooks.delete_subscription(session, subscription, actor=TEST_ACTOR)

    db.in_session(_delete)
    assert deliver(db) == DeliveryOutcome()
    assert receiver.hook_hits == 0
    rows = deliveries(db, subscription)
    assert [(r.state, r.last_error, r.next_attempt_at) for r in rows] == [
        (DeliveryState.FAILED, SUBSCRIPTION_DELETED, None)
    ] * 2


def test_two_deliverers_racing_over_the_same_rows_send_each_delivery_once(
    postgres_url: str, receiver: SignedReceiver
) -> None:
    """Real commits on Postgres, two engines (two replicas' pools): every pass claims with
    ``FOR UPDATE SKIP LOCKED`` and a lease, so no delivery is sent twice. In a database of
    its own: a pass claims every team's due deliveries, other tests' included."""
    own = create_postgres_database()
    try:
        _race_two_deliverers(own, receiver)
    finally:
        drop_postgres_database(own)


def _race_two_deliverers(postgres_url: str, receiver: SignedReceiver) -> None:
    subscription = subscribe(postgres_url, receiver)
    ids = add_events(postgres_url, subscription, 40)

    async def race() -> list[DeliveryOutcome]:
        engines = [create_engine(postgres_url) for _ in range(2)]
        settings = settings_for(postgres_url, webhook_concurrency=8, webhook_batch_size=50)
        try:
            async with httpx.AsyncClient(trust_env=False) as http:
                deliverers = [
                    WebhookDeliverer(create_sessionmaker(e), settings, http) for e in engines
                ]
                outcomes: list[DeliveryOutcome] = []
                for _ in range(3):  # several rounds of both at once
                    outcomes += await asyncio.gather(*(d.deliver_due() for d in deliverers))
                return outcomes
        finally:
            for engine in engines:
                await engine.dispose()

    outcomes = asyncio.run(race())
    mine = [r for r in receiver.received if r.webhook_id in set(ids)]
    assert sorted(r.webhook_id for r in mine) == sorted(ids)  # each exactly once
    assert sum(o.delivered for o in outcomes) >= len(ids)
    rows = deliveries(postgres_url, subscription)
    assert {(r.state, r.attempts) for r in rows} == {(DeliveryState.DELIVERED, 1)}


@fast
def test_an_attempt_connects_to_the_address_it_checked_not_to_a_second_lookup(
    db: SavepointDatabase, receiver: SignedReceiver
) -> None:
    """DNS rebinding: the host is resolved once per attempt, each address judged, and the
    request sent to the first one, with the host in ``Host`` and, for https, in TLS (SNI and
    the certificate check). No network: the client's transport records what it was asked."""
    subscription = subscribe(db, receiver, url="https://hooks.example.com:8443/in?t=1")
    add_events(db, subscription)
    answers = {"hooks.example.com": ["93.184.216.34"]}
    asked: list[httpx.Request] = []

    async def resolve(host: str, port: int) -> list[str]:
        assert port == 8443
        return answers[host]

    def handler(request: httpx.Request) -> httpx.Response:
        asked.append(request)
        return httpx.Response(204, stream=httpx.ByteStream(b""))

    async def _pass() -> DeliveryOutcome:
        transport = httpx.MockTransport(handler)
        async with httpx.AsyncClient(transport=transport, follow_redirects=False) as http:
            settings = settings_for(db.url, webhook_allow_private_networks=False)
            return await WebhookDeliverer(
                db.sessionmaker, settings, http, resolve=resolve
            ).deliver_due()

    assert db.run(_pass()) == DeliveryOutcome(delivered=1)
    [request] = asked
    assert str(request.url) == "https://93.184.216.34:8443/in?t=1"
    assert request.headers["host"] == "hooks.example.com:8443"
    assert request.extensions["sni_hostname"] == "hooks.example.com"

    # The name now answers a private address: refused before anything is sent.
    add_events(db, subscription)
    answers["hooks.example.com"] = ["10.1.2.3"]  # a private address: refused, never sent
    assert db.run(_pass()) == DeliveryOutcome(failed=1)
    assert len(asked) == 1
    last = deliveries(db, subscription)[-1]
    assert last.last_error is not None and "private" in last.last_error
    assert "10.1.2.3" not in last.last_error  # refused, and the company's DNS not told


@fast
def test_a_delivery_written_as_its_subscription_was_deleted_is_closed_not_left_pending(
    db: SavepointDatabase, receiver: SignedReceiver
) -> None:
    """A settlement that read the subscription as live commits its delivery after the delete
    committed: the next pass closes it (never sent), so it neither stays pending for ever
    nor keeps its event from being purged."""
    subscription = subscribe(db, receiver)

    async def _delete(session: AsyncSession) -> None:
        await session.execute(
            update(WebhookSubscription)
            .where(WebhookSubscription.id == subscription)
            .values(deleted_at=utcnow())
        )

    in_session(db, _delete)
    add_events(db, subscription)  # what the late settlement wrote
    assert deliver(db) == DeliveryOutcome()
    [row] = deliveries(db, subscription)
    assert (row.state, row.next_attempt_at, row.last_error) == (
        DeliveryState.FAILED,
        None,
        SUBSCRIPTION_DELETED,
    )
    assert receiver.received == []


@fast
def test_an_attempt_recorded_after_its_lease_was_lost_changes_nothing(
    db: SavepointDatabase, receiver: SignedReceiver
) -> None:
    """Only the holder of the current claim records: a replica whose lease ran out (and whose
    delivery another replica claimed since) cannot push the new claim's lease out."""
    subscription = subscribe(db, receiver)
    add_events(db, subscription)

    async def _claim(session: AsyncSession) -> list[Any]:
        from gateway.webhooks.subscriptions import claim_due

        now = utcnow()
        return await claim_due(
            session,
            now=now,
            limit=1,
            lease_until=now + timedelta(seconds=1),
            retry_for=timedelta(hours=24),
        )

    [first] = in_session(db, _claim)
    make_due(db, subscription)  # the lease ran out
    [second] = in_session(db, _claim)
    assert second.lease_until != first.lease_until

    async def _record(session: AsyncSession, lease: datetime) -> bool:
        from gateway.webhooks.subscriptions import record_attempt

        return await record_attempt(
            session,
            first.id,
            lease_until=lease,
            at=utcnow(),
            status_code=503,
            error="HTTP 503",
            state=DeliveryState.PENDING,
            next_attempt_at=utcnow() + timedelta(hours=1),
        )

    assert in_session(db, lambda s: _record(s, first.lease_until)) is False
    [row] = deliveries(db, subscription)
    assert (row.attempts, row.next_attempt_at) == (0, second.lease_until)
    assert in_session(db, lambda s: _record(s, second.lease_until)) is True


@fast
def test_a_team_has_at_most_its_share_of_subscriptions(db: SavepointDatabase) -> None:
    """Each settlement writes a delivery per subscriber inside its transaction, and each is a
    POST to a URL of the team's choice: a team gets GATEWAY_WEBHOOK_MAX_SUBSCRIPTIONS_PER_TEAM."""
    tenant = make_tenant(db)
    settings = settings_for(db.url, webhook_max_subscriptions_per_team=2)

    async def _create(session: AsyncSession) -> str:
        row, _ = await webhooks.create_subscription(
            session,
            team=tenant.team,
            url="http://127.0.0.1:9/hook",
            events=None,
            actor=TEST_ACTOR,
            settings=settings,
        )
        return row.id

    first = in_session(db, _create)
    in_session(db, _create)
    with pytest.raises(Conflict) as refused:
        in_session(db, _create)
    assert refused.value.code == "webhook_limit_reached"

    async def _delete(session: AsyncSession) -> None:
        await webhooks.delete_subscription(session, first, actor=TEST_ACTOR)

    in_session(db, _delete)
    in_session(db, _create)  # a deleted one leaves room
