"""Team webhooks: managing a team's subscriptions (CLI, admin API, portal), and delivering the
events settlements and budget alerts wrote for them (README "Webhooks").

Delivery (``WebhookDeliverer.deliver_due``, every ``GATEWAY_WEBHOOK_DELIVERY_INTERVAL_SECONDS``
on every replica): claim the due deliveries (``gateway.webhooks.subscriptions.claim_due``:
``SKIP LOCKED`` and a lease, so replicas share the work and never send one delivery twice in
a pass), commit, then POST each outside any transaction, at most
``GATEWAY_WEBHOOK_CONCURRENCY`` at once, and record each result in a transaction of its own.

Each attempt is signed as Standard Webhooks says, with the attempt's own timestamp (verifiers
refuse timestamps more than five minutes old, and a retry may come hours later)::

    webhook-id: evt_job_3f2a...            (the event's id: the same on every attempt)
    webhook-timestamp: 1764583200          (seconds, when this attempt was made)
    webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body" with the secret>

The body is the event's stored payload, byte for byte. A 2xx answer delivers it; anything
else (a 3xx included: redirects are not followed) is a failed attempt, retried after
``GATEWAY_WEBHOOK_RETRY_BASE_SECONDS`` x 2^(attempts-1) (at most
``GATEWAY_WEBHOOK_RETRY_MAX_SECONDS``, an hour by default, less up to a fifth for jitter)
until ``GATEWAY_WEBHOOK_RETRY_FOR_HOURS`` after the event, then given up (``failed``). A
replica that dies mid-attempt leaves the delivery leased; when the lease ends any replica
sends it again. Delivery is therefore at least once: receivers drop duplicates by
``webhook-id``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import httpx
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from standardwebhooks import Webhook

from gateway.audit import service as audit
from gateway.audit.service import Actor
from gateway.config import Settings
from gateway.core.clock import utcnow
from gateway.db.session import transaction
from gateway.errors import Conflict, InvalidRequest, NotFound, WebhookDestinationNotAllowed
from gateway.services.alerts import DeliveryOutcome
from gateway.tenancy.repository import get_team_by_id
from gateway.tenancy.service import require_team
from gateway.webhooks import subscriptions as repository
from gateway.webhooks.destinations import (
    Address,
    Destination,
    Resolver,
    check_destination,
    parse_url,
    resolve_host,
)
from gateway.webhooks.models import (
    ALL_EVENT_TYPES,
    DeliveryState,
    WebhookDelivery,
    WebhookEvent,
    WebhookSubscription,
)

logger = logging.getLogger(__name__)

USER_AGENT = "video-billing-gateway-webhooks/0.1"
LEASE_MARGIN_SECONDS = 30.0
"""Beyond the longest a pass can take to reach and finish a claimed delivery."""
ANSWER_BYTES_READ = 4096
"""Of a receiver's answer, at most this much is read (then the connection is dropped)."""
WILDCARDS = {
    prefix + "*": tuple(t for t in ALL_EVENT_TYPES if t.startswith(prefix))
    for prefix in ("job.", "budget.")
}
"""``job.*`` and ``budget.*``: every event type of that family (stored expanded)."""


# Managing subscriptions


def parse_events(events: Sequence[str] | None) -> list[str]:
    """The event types a subscription asks for, in their canonical order; None: all five."""
    if events is None:
        return list(ALL_EVENT_TYPES)
    chosen: set[str] = set()
    for name in events:
        name = name.strip()
        if name in WILDCARDS:
            chosen.update(WILDCARDS[name])
        elif name in ALL_EVENT_TYPES:
            chosen.add(name)
        else:
            raise InvalidRequest(
                f"unknown event type {name[:64]!r}: use {', '.join(ALL_EVENT_TYPES)} "
                f"(or {', '.join(WILDCARDS)})",
                code="invalid_webhook_events",
                param="events",
            )
    if not chosen:
        raise InvalidRequest(
            "give at least one event type", code="invalid_webhook_events", param="events"
        )
    return [t for t in ALL_EVENT_TYPES if t in chosen]


def shown_url(url: str, *, path: bool = True) -> str:
    """A URL as it may be shown: never its query (it may carry a token) and, with ``path``
    false, not its path either (chat webhooks carry their secret in it): ``https://host/…``."""
    base, question, _ = url.partition("?")
    if not path:
        parts = urlsplit(base)
        rest = "/…" if parts.path not in ("", "/") else ""
        return f"{parts.scheme}://{parts.netloc}{rest}" + ("?…" if question else "")
    return base + ("?…" if question else "")


async def create_subscription(
    session: AsyncSession,
    *,
    team: str,
    url: str,
    events: Sequence[str] | None,
    actor: Actor,
    settings: Settings,
) -> tuple[WebhookSubscription, str]:
    """Subscribe ``team`` to ``events`` at ``url``: the row and its signing secret (shown once).
    The destination is checked (DNS included) before the session's first statement, so the
    lookup holds no database connection."""
    destination = parse_url(url)
    chosen = parse_events(events)
    await _check(destination, settings, resolve_host)
    team_row = await require_team(session, team)
    live = await repository.list_subscriptions(session, team_row.id)
    if len(live) >= settings.webhook_max_subscriptions_per_team:
        raise Conflict(
            f"team {team_row.name!r} has {len(live)} webhook subscriptions, the most allowed "
            "(GATEWAY_WEBHOOK_MAX_SUBSCRIPTIONS_PER_TEAM): delete one first",
            code="webhook_limit_reached",
        )
    row = await repository.add_subscription(
        session, team_id=team_row.id, url=destination.url, events=chosen, created_by=actor.name
    )
    await audit.record(
        session,
        actor,
        "webhook.create",
        "webhook",
        row.id,
        after={"team": team_row.name, "url": shown_url(row.url, path=False), "events": chosen},
    )
    return row, row.secret


async def list_subscriptions(session: AsyncSession, team_id: int) -> Sequence[WebhookSubscription]:
    """The team's live subscriptions, oldest first."""
    return await repository.list_subscriptions(session, team_id)


async def get_subscription(
    session: AsyncSession, subscription_id: str, *, team_id: int | None = None
) -> WebhookSubscription:
    """The subscription (deleted ones too: their log stays readable); with ``team_id``,
    another team's is not found either."""
    row = await repository.get_subscription(session, subscription_id)
    if row is None or (team_id is not None and row.team_id != team_id):
        raise NotFound(
            f"no webhook subscription {subscription_id[:64]!r}",
            code="webhook_not_found",
            param="id",
        )
    return row


async def delete_subscription(
    session: AsyncSession, subscription_id: str, *, actor: Actor, team_id: int | None = None
) -> WebhookSubscription:
    """Stop sending to a subscription: its row stays (``deleted_at``) with its delivery log;
    its pending deliveries are given up (``subscription deleted``)."""
    row = await get_subscription(session, subscription_id, team_id=team_id)
    if row.deleted_at is not None:
        raise NotFound(
            f"webhook subscription {row.id!r} is already deleted",
            code="webhook_not_found",
            param="id",
        )
    pending = await repository.mark_deleted(session, row, utcnow())
    await audit.record(
        session,
        actor,
        "webhook.delete",
        "webhook",
        row.id,
        before={"url": shown_url(row.url, path=False), "events": list(row.events)},
        after={"pending_deliveries_dropped": pending},
    )
    return row


async def list_deliveries(
    session: AsyncSession, subscription_id: str, *, limit: int = 50, before_id: int | None = None
) -> Sequence[tuple[WebhookDelivery, WebhookEvent]]:
    """A subscription's delivery log, newest first; ``before_id`` pages on."""
    row = await get_subscription(session, subscription_id)
    return await repository.list_deliveries(session, row.id, limit=limit, before_id=before_id)


async def team_name(session: AsyncSession, subscription: WebhookSubscription) -> str:
    """The name of the team a subscription belongs to."""
    team = await get_team_by_id(session, subscription.team_id)
    assert team is not None  # a foreign key
    return team.name


async def _check(destination: Destination, settings: Settings, resolve: Resolver) -> None:
    if settings.webhook_allow_private_networks:
        return  # any address will do: nothing to look up yet (each delivery resolves it)
    try:
        async with asyncio.timeout(settings.webhook_timeout_seconds):
            await check_destination(
                destination, allow_private=settings.webhook_allow_private_networks, resolve=resolve
            )
    except TimeoutError:
        raise WebhookDestinationNotAllowed(
            f"webhook destination {destination.shown} did not resolve in time", param="url"
        ) from None


# Delivering


@dataclass(frozen=True)
class _Attempt:
    status_code: int | None
    error: str | None
    """None: delivered."""


class WebhookDeliverer:
    """Sends due deliveries; safe in any number of replicas at once.

    >>> outcome = await WebhookDeliverer(sessionmaker, settings, http).deliver_due()
    """

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        settings: Settings,
        http: httpx.AsyncClient,
        *,
        resolve: Resolver = resolve_host,
    ) -> None:
        self.sessionmaker = sessionmaker
        self.settings = settings
        self.http = http
        self.resolve = resolve

    @property
    def lease(self) -> timedelta:
        """How long a claim keeps other replicas off a delivery: every attempt of a pass
        waiting its turn for a slot and taking its whole timeout, plus a margin."""
        settings = self.settings
        rounds = math.ceil(settings.webhook_batch_size / settings.webhook_concurrency)
        return timedelta(seconds=rounds * settings.webhook_timeout_seconds + LEASE_MARGIN_SECONDS)

    async def deliver_due(self) -> DeliveryOutcome:
        """Claim the due deliveries, send them, record each result."""
        now = utcnow()
        async with transaction(self.sessionmaker) as session:
            due = await repository.claim_due(
                session,
                now=now,
                limit=self.settings.webhook_batch_size,
                lease_until=now + self.lease,
                retry_for=timedelta(hours=self.settings.webhook_retry_for_hours),
            )
        if not due:
            return DeliveryOutcome()
        slots = asyncio.Semaphore(self.settings.webhook_concurrency)
        results = await asyncio.gather(*(self._deliver(d, slots) for d in due))
        return DeliveryOutcome(
            delivered=results.count(DeliveryState.DELIVERED),
            failed=results.count(DeliveryState.PENDING),
            gave_up=results.count(DeliveryState.FAILED),
        )

    async def _deliver(
        self, due: repository.DueDelivery, slots: asyncio.Semaphore
    ) -> DeliveryState | None:
        """One attempt and its record: the state it left, None if not recorded."""
        async with slots:
            started = utcnow()
            try:
                attempt = await self._attempt(due)
            except Exception as exc:  # a bug must not cost the other deliveries their record
                logger.exception("webhook delivery attempt failed unexpectedly")
                attempt = _Attempt(None, type(exc).__name__)
            try:
                return await self._record(due, attempt, started)
            except Exception:
                # Left leased: sent again when the lease ends (receivers dedup by webhook-id).
                logger.exception(
                    "could not record a webhook delivery attempt",
                    extra={"delivery_id": due.id, "event_id": due.event_id},
                )
                return None

    async def _attempt(self, due: repository.DueDelivery) -> _Attempt:
        timeout = self.settings.webhook_timeout_seconds
        try:
            destination = parse_url(due.url)
            async with asyncio.timeout(timeout):
                addresses = await check_destination(
                    destination,
                    allow_private=self.settings.webhook_allow_private_networks,
                    resolve=self.resolve,
                )
                status = await self._post(due, pinned_to(due.url, destination, addresses[0]))
        except (InvalidRequest, WebhookDestinationNotAllowed) as exc:
            return _Attempt(None, exc.message)
        except TimeoutError:
            return _Attempt(None, f"timed out after {timeout:g} s")
        except (httpx.HTTPError, httpx.InvalidURL, OSError) as exc:
            return _Attempt(None, type(exc).__name__)
        if 200 <= status < 300:
            return _Attempt(status, None)
        if 300 <= status < 400:
            return _Attempt(status, f"HTTP {status} (redirects are not followed)")
        return _Attempt(status, f"HTTP {status}")

    async def _post(self, due: repository.DueDelivery, target: PinnedTarget) -> int:
        """POST the payload, signed now, to the checked address; the answer's status (its
        body is not kept)."""
        stamp = datetime.fromtimestamp(int(time.time()), UTC)
        headers = {
            "host": target.host_header,
            "webhook-id": due.event_id,
            "webhook-timestamp": str(int(stamp.timestamp())),
            "webhook-signature": Webhook(due.secret).sign(due.event_id, stamp, due.payload),
            "content-type": "application/json",
            "user-agent": USER_AGENT,
        }
        async with self.http.stream(
            "POST",
            target.url,
            content=due.payload.encode(),
            headers=headers,
            extensions=target.extensions,
        ) as response:
            read = 0
            async for chunk in response.aiter_raw():
                read += len(chunk)
                if read >= ANSWER_BYTES_READ:
                    break
            return response.status_code

    async def _record(
        self, due: repository.DueDelivery, attempt: _Attempt, started: datetime
    ) -> DeliveryState | None:
        """Record the attempt, unless the claim has been lost meanwhile (its lease ran out and
        another replica claimed the delivery: then that replica records it)."""
        now = utcnow()
        attempts = due.attempts + 1
        next_attempt_at: datetime | None = None
        if attempt.error is None:
            state = DeliveryState.DELIVERED
        else:
            deadline = due.event_created_at + timedelta(hours=self.settings.webhook_retry_for_hours)
            if now >= deadline:
                state = DeliveryState.FAILED
            else:
                state = DeliveryState.PENDING
                next_attempt_at = min(now + self.backoff(attempts), deadline)
        async with transaction(self.sessionmaker) as session:
            recorded = await repository.record_attempt(
                session,
                due.id,
                lease_until=due.lease_until,
                at=started,
                status_code=attempt.status_code,
                error=attempt.error,
                state=state,
                next_attempt_at=next_attempt_at,
            )
        if not recorded:
            return None
        if state is DeliveryState.FAILED:
            logger.warning(
                "gave up delivering a webhook",
                extra={
                    "event_id": due.event_id,
                    "host": _host(due.url),
                    "attempts": attempts,
                    "error": attempt.error,
                },
            )
        return state

    def backoff(self, attempts: int) -> timedelta:
        """How long to wait after the ``attempts``-th failed attempt: base x 2^(attempts-1),
        at most ``GATEWAY_WEBHOOK_RETRY_MAX_SECONDS``, less up to a fifth at random (replicas
        and receivers coming back together do not all retry at the same instant)."""
        base = self.settings.webhook_retry_base_seconds
        longest = self.settings.webhook_retry_max_seconds
        delay = min(base * 2 ** min(attempts - 1, 32), longest)
        return timedelta(seconds=delay * (1 - 0.2 * random.random()))  # noqa: S311 (jitter)


@dataclass(frozen=True)
class PinnedTarget:
    """Where an attempt connects: the checked address in place of the host, the host in the
    ``Host`` header, and for ``https`` the host name for TLS (SNI and the certificate check)."""

    url: httpx.URL
    host_header: str
    extensions: dict[str, str]


def pinned_to(url: str, destination: Destination, address: Address) -> PinnedTarget:
    """The request to ``url`` sent to ``address``, one of its host's checked addresses: no
    second lookup, so what is connected to is what was checked (DNS rebinding)."""
    original = httpx.URL(url)
    extensions = {"sni_hostname": destination.host} if original.scheme == "https" else {}
    return PinnedTarget(
        url=original.copy_with(host=str(address)),
        host_header=original.netloc.decode("ascii"),
        extensions=extensions,
    )


def _host(url: str) -> str:
    try:
        return parse_url(url).shown
    except InvalidRequest:
        return "(invalid URL)"
