"""Webhook subscriptions, events and deliveries.

- ``WebhookSubscription``: a team's destination URL, the event types it wants, and the secret
  its deliveries are signed with (Standard Webhooks, ``whsec_`` + base64). Deleting one keeps
  its row (``deleted_at``) so its delivery log stays readable.
- ``WebhookEvent``: what happened, written in the same transaction as what it reports (a job's
  settlement, a budget alert), so an event exists if and only if that happened. Its id is
  derived from what it reports (``evt_job_<job id>``, ``evt_alert_<alert id>``): the primary
  key makes "one event per settlement" hold whoever writes it. ``payload`` is the exact JSON
  body sent on every attempt.
- ``WebhookDelivery``: one event to one subscription: its attempts, when the next is due, the
  last answer. Claimed by any replica with ``FOR UPDATE SKIP LOCKED`` and a lease.
"""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import JSON, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from gateway.core.clock import utcnow
from gateway.db.base import Base, BigIntPK, StrEnumColumn, UTCDateTime


class EventType(enum.StrEnum):
    JOB_SUCCEEDED = "job.succeeded"
    JOB_FAILED = "job.failed"
    JOB_MODERATED = "job.moderated"
    BUDGET_SOFT_LIMIT = "budget.soft_limit"
    BUDGET_EXHAUSTED = "budget.exhausted"


ALL_EVENT_TYPES: tuple[str, ...] = tuple(t.value for t in EventType)


class DeliveryState(enum.StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"
    """Given up: still failing ``GATEWAY_WEBHOOK_RETRY_FOR_HOURS`` after the event."""


class WebhookSubscription(Base):
    __tablename__ = "webhook_subscriptions"
    __table_args__ = (Index("ix_webhook_subscriptions_team_id", "team_id"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    """``wh_`` + 16 hex characters."""
    team_id: Mapped[int] = mapped_column(ForeignKey("teams.id"))
    url: Mapped[str] = mapped_column(String(2048))
    events: Mapped[list[str]] = mapped_column(JSON)
    secret: Mapped[str] = mapped_column(String(64))
    """``whsec_`` + base64 of 32 random bytes; shown once, kept to sign deliveries."""
    created_by: Mapped[str] = mapped_column(String(160))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class WebhookEvent(Base):
    __tablename__ = "webhook_events"
    __table_args__ = (
        Index("ix_webhook_events_team_id_created_at", "team_id", "created_at"),
        Index("ix_webhook_events_created_at", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    team_id: Mapped[int] = mapped_column(ForeignKey("teams.id"))
    type: Mapped[str] = mapped_column(String(32))
    payload: Mapped[str] = mapped_column(Text)
    """The JSON body, byte for byte what every attempt sends."""
    job_id: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class WebhookDelivery(Base):
    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        UniqueConstraint(
            "event_id", "subscription_id", name="uq_webhook_deliveries_event_id_subscription"
        ),
        Index("ix_webhook_deliveries_state_next_attempt_at", "state", "next_attempt_at"),
        Index("ix_webhook_deliveries_subscription_id_id", "subscription_id", "id"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(ForeignKey("webhook_events.id"))
    subscription_id: Mapped[str] = mapped_column(ForeignKey("webhook_subscriptions.id"))
    state: Mapped[DeliveryState] = mapped_column(
        StrEnumColumn(DeliveryState, 12), default=DeliveryState.PENDING
    )
    """``pending``, ``delivered`` or ``failed`` (CHECK)."""
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    """When the next attempt is due (pushed out by a lease while one is under way); None once
    delivered or given up."""
    last_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(String(255))
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
