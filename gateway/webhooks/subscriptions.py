"""Every query on webhook subscriptions and their deliveries (the events are written by
``gateway.webhooks.events``, in the transaction of what they report).

A delivery is claimed by one replica at a time: ``claim_due`` locks the due rows with
``FOR UPDATE SKIP LOCKED`` (rows another replica is claiming are skipped, not waited for) and
pushes their ``next_attempt_at`` out by a lease in the same transaction, so once it commits
no other replica finds them due until the lease ends. A replica that dies before recording
its attempt leaves the row to be claimed again when the lease ends: at least once.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.webhooks.models import (
    DeliveryState,
    WebhookDelivery,
    WebhookEvent,
    WebhookSubscription,
)

SECRET_PREFIX = "whsec_"  # noqa: S105 (a prefix, not a secret)
SUBSCRIPTION_DELETED = "subscription deleted"
"""``last_error`` of the deliveries a deleted subscription still had pending."""


def new_secret() -> str:
    """A signing secret as Standard Webhooks spells one: ``whsec_`` + base64 of 32 bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def new_subscription_id() -> str:
    return "wh_" + secrets.token_hex(8)


async def add_subscription(
    session: AsyncSession, *, team_id: int, url: str, events: list[str], created_by: str
) -> WebhookSubscription:
    row = WebhookSubscription(
        id=new_subscription_id(),
        team_id=team_id,
        url=url,
        events=events,
        secret=new_secret(),
        created_by=created_by[:160],
    )
    session.add(row)
    await session.flush()
    return row


async def list_subscriptions(
    session: AsyncSession, team_id: int, *, include_deleted: bool = False
) -> Sequence[WebhookSubscription]:
    """The team's subscriptions, oldest first (live ones only unless ``include_deleted``)."""
    stmt = select(WebhookSubscription).where(WebhookSubscription.team_id == team_id)
    if not include_deleted:
        stmt = stmt.where(WebhookSubscription.deleted_at.is_(None))
    stmt = stmt.order_by(WebhookSubscription.created_at, WebhookSubscription.id)
    return (await session.execute(stmt)).scalars().all()


async def get_subscription(
    session: AsyncSession, subscription_id: str
) -> WebhookSubscription | None:
    return await session.get(WebhookSubscription, subscription_id[:32])


async def mark_deleted(
    session: AsyncSession, subscription: WebhookSubscription, now: datetime
) -> int:
    """Delete ``subscription`` (its row stays, for its delivery log) and give up its pending
    deliveries; how many were pending."""
    subscription.deleted_at = now
    result = await session.execute(
        update(WebhookDelivery)
        .where(
            WebhookDelivery.subscription_id == subscription.id,
            WebhookDelivery.state == DeliveryState.PENDING,
        )
        .values(state=DeliveryState.FAILED, next_attempt_at=None, last_error=SUBSCRIPTION_DELETED)
        .execution_options(synchronize_session=False)
    )
    await session.flush()
    return int(getattr(result, "rowcount", 0) or 0)


async def list_deliveries(
    session: AsyncSession, subscription_id: str, *, limit: int, before_id: int | None = None
) -> Sequence[tuple[WebhookDelivery, WebhookEvent]]:
    """A subscription's deliveries, newest first; ``before_id`` continues after the last row
    of the previous page (keyset: the ``(subscription_id, id)`` index)."""
    stmt = (
        select(WebhookDelivery, WebhookEvent)
        .join(WebhookEvent, WebhookEvent.id == WebhookDelivery.event_id)
        .where(WebhookDelivery.subscription_id == subscription_id)
        .order_by(WebhookDelivery.id.desc())
        .limit(limit)
    )
    if before_id is not None:
        stmt = stmt.where(WebhookDelivery.id < before_id)
    return [(delivery, event) for delivery, event in await session.execute(stmt)]


@dataclass(frozen=True)
class DueDelivery:
    """A claimed delivery, with what its attempt needs."""

    id: int
    attempts: int
    event_id: str
    event_created_at: datetime
    payload: str
    url: str
    secret: str
    lease_until: datetime
    """The claim: the attempt is recorded only while the row still carries this lease."""


async def claim_due(
    session: AsyncSession,
    *,
    now: datetime,
    limit: int,
    lease_until: datetime,
    retry_for: timedelta,
) -> list[DueDelivery]:
    """Lock up to ``limit`` pending deliveries due at ``now``, oldest due first, skipping rows
    another transaction holds, and lease the live ones until ``lease_until``. Those found due
    but not to be sent are closed on the way, so nothing stays pending for ever: a deleted
    subscription's (a settlement may have written one as the subscription was being deleted)
    and one past its event's retry window by more than a lease (its attempts never got
    recorded, say because each crashed its process; the last attempt due at the window's end
    is still made)."""
    rows = (
        await session.execute(
            select(
                WebhookDelivery.id,
                WebhookDelivery.attempts,
                WebhookEvent.id,
                WebhookEvent.created_at,
                WebhookEvent.payload,
                WebhookSubscription.url,
                WebhookSubscription.secret,
                WebhookSubscription.deleted_at,
            )
            .join(WebhookEvent, WebhookEvent.id == WebhookDelivery.event_id)
            .join(WebhookSubscription, WebhookSubscription.id == WebhookDelivery.subscription_id)
            .where(
                WebhookDelivery.state == DeliveryState.PENDING,
                WebhookDelivery.next_attempt_at <= now,
            )
            .order_by(WebhookDelivery.next_attempt_at, WebhookDelivery.id)
            .limit(limit)
            .with_for_update(skip_locked=True, of=WebhookDelivery)
        )
    ).all()
    due, closed = [], {}
    for row in rows:
        delivery_id, attempts, event_id, event_created_at, payload, url, secret, deleted_at = row
        delivery = DueDelivery(
            delivery_id, attempts, event_id, event_created_at, payload, url, secret, lease_until
        )
        if deleted_at is not None:
            closed[delivery.id] = SUBSCRIPTION_DELETED
        elif now >= delivery.event_created_at + retry_for + (lease_until - now):
            # Past the window by more than a lease: its last attempts never got recorded.
            closed[delivery.id] = "retry window over"
        else:
            due.append(delivery)
    for delivery_id, reason in closed.items():
        await session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id == delivery_id)
            .values(state=DeliveryState.FAILED, next_attempt_at=None, last_error=reason)
            .execution_options(synchronize_session=False)
        )
    if due:
        await session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id.in_([d.id for d in due]))
            .values(next_attempt_at=lease_until)
            .execution_options(synchronize_session=False)
        )
    return due


async def record_attempt(
    session: AsyncSession,
    delivery_id: int,
    *,
    lease_until: datetime,
    at: datetime,
    status_code: int | None,
    error: str | None,
    state: DeliveryState,
    next_attempt_at: datetime | None,
) -> bool:
    """Record one attempt's result; False if the delivery no longer carries this attempt's
    lease ``lease_until`` (the subscription was deleted meanwhile, or the lease ran out and
    another replica claimed the delivery, which records its own attempt), in which case
    nothing changes. ``error`` None keeps the previous one, so
    a delivered row still says what failed before."""
    values: dict[str, object] = {
        "attempts": WebhookDelivery.attempts + 1,
        "last_attempt_at": at,
        "last_status_code": status_code,
        "state": state,
        "next_attempt_at": next_attempt_at,
    }
    if error is not None:
        values["last_error"] = error[:255]
    if state is DeliveryState.DELIVERED:
        values["delivered_at"] = at
    result = await session.execute(
        update(WebhookDelivery)
        .where(
            WebhookDelivery.id == delivery_id,
            WebhookDelivery.state == DeliveryState.PENDING,
            WebhookDelivery.next_attempt_at == lease_until,
        )
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    return bool(getattr(result, "rowcount", 0))
