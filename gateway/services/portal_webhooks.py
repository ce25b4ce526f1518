"""A team's webhook subscriptions from the portal: listing them (deleted ones too, never a
secret, never a URL's query string, which may carry a token), each one's delivery log, and,
for a ``manager`` key's session or the admin's, creating (the signing secret shown once) and
deleting them, through the same services as the admin API and the CLI
(``gateway.services.webhooks``; audited as ``portal:<key id>`` or the admin token). Refusals
are raised before anything changes; another team's subscription is not found."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from gateway.config import Settings
from gateway.errors import InvalidRequest, PermissionDenied
from gateway.services import webhooks
from gateway.services.portal import Viewer
from gateway.tenancy.models import Team
from gateway.webhooks import subscriptions as repository
from gateway.webhooks.models import (
    ALL_EVENT_TYPES,
    WebhookDelivery,
    WebhookEvent,
    WebhookSubscription,
)

EVENT_TYPES = ALL_EVENT_TYPES
"""The create form's checkboxes, in the order the events are documented."""
DELIVERIES_PER_PAGE = 50


@dataclass(frozen=True)
class WebhookView:
    """A subscription as a page shows it: its URL without the query (``?…`` marks one)."""

    id: str
    url: str
    events: tuple[str, ...]
    created_by: str
    created_at: datetime
    deleted_at: datetime | None

    @classmethod
    def of(cls, row: WebhookSubscription, *, path: bool = True) -> WebhookView:
        """``path`` false: the URL as ``https://host/…`` (for keys that cannot manage
        webhooks: a chat webhook's path is its secret)."""
        return cls(
            id=row.id,
            url=webhooks.shown_url(row.url, path=path),
            events=tuple(row.events),
            created_by=row.created_by,
            created_at=row.created_at,
            deleted_at=row.deleted_at,
        )


@dataclass(frozen=True)
class CreatedWebhook:
    """A new subscription and its signing secret: on the answer to the create form only."""

    webhook: WebhookView
    secret: str


@dataclass(frozen=True)
class DeliveryLog:
    """A page of a subscription's deliveries, newest first; ``next_before``: the ``before``
    of the next (older) page, None on the last."""

    webhook: WebhookView
    rows: Sequence[tuple[WebhookDelivery, WebhookEvent]]
    next_before: int | None
    first_page: bool


def require_manager(viewer: Viewer) -> None:
    if not viewer.can_manage:
        raise PermissionDenied(
            "only a key with the manager role can change the team's webhooks",
            code="manager_role_required",
        )


async def list_webhooks(session: AsyncSession, viewer: Viewer, team: Team) -> list[WebhookView]:
    """The team's subscriptions, oldest first, deleted ones included (their logs stay); their
    URLs' paths only for those who manage them."""
    rows = await repository.list_subscriptions(session, team.id, include_deleted=True)
    return [WebhookView.of(row, path=viewer.can_manage) for row in rows]


async def create_webhook(
    session: AsyncSession,
    viewer: Viewer,
    team: Team,
    *,
    url: str,
    events: Sequence[str],
    settings: Settings,
    request_id: str | None = None,
) -> CreatedWebhook:
    """Subscribe ``team`` to the checked ``events`` (none checked: refused) at ``url``."""
    require_manager(viewer)
    row, secret = await webhooks.create_subscription(
        session,
        team=team.name,
        url=url.strip(),
        events=list(events),
        actor=viewer.actor(request_id),
        settings=settings,
    )
    return CreatedWebhook(WebhookView.of(row), secret)


async def delete_webhook(
    session: AsyncSession,
    viewer: Viewer,
    team: Team,
    subscription_id: str,
    *,
    request_id: str | None = None,
) -> None:
    """Delete one of ``team``'s subscriptions (another team's, or a deleted one: 404)."""
    require_manager(viewer)
    await webhooks.delete_subscription(
        session, subscription_id, actor=viewer.actor(request_id), team_id=team.id
    )


async def delivery_log(
    session: AsyncSession, viewer: Viewer, team: Team, subscription_id: str, before: str = ""
) -> DeliveryLog:
    """A page of the delivery log of one of ``team``'s subscriptions (another team's: 404);
    ``before`` is the previous page's ``next_before`` (empty: the newest)."""
    before_id = _before_id(before)
    row = await webhooks.get_subscription(session, subscription_id, team_id=team.id)
    found = await webhooks.list_deliveries(
        session, row.id, limit=DELIVERIES_PER_PAGE + 1, before_id=before_id
    )
    page = list(found[:DELIVERIES_PER_PAGE])
    next_before = page[-1][0].id if len(found) > DELIVERIES_PER_PAGE else None
    view = WebhookView.of(row, path=viewer.can_manage)
    return DeliveryLog(view, page, next_before, first_page=before_id is None)


def _before_id(before: str) -> int | None:
    before = before.strip()
    if not before:
        return None
    digits = len(before) <= 19 and before.isascii() and before.isdigit()
    if not digits or not 0 < int(before) < 2**63:
        raise InvalidRequest(
            "before must be a delivery id (a positive whole number)",
            code="invalid_value",
            param="before",
        )
    return int(before)
