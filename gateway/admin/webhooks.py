"""``/admin/`` routes of team webhooks: a team's subscriptions, and each one's delivery log
(HTTP only: the rules, the destination check and the audit entries live in
``gateway.services.webhooks``, which the CLI and the portal call too)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from gateway.admin.auth import AdminActor
from gateway.admin.schemas import (
    ERROR_RESPONSES,
    WebhookCreate,
    WebhookCreatedOut,
    WebhookDeliveryOut,
    WebhookDeliveryPage,
    WebhookOut,
)
from gateway.kit.strict_route import StrictJSONRoute
from gateway.services import webhooks
from gateway.tenancy.service import require_team
from gateway.web.deps import RuntimeDep, UnitOfWorkDep
from gateway.webhooks.models import WebhookDelivery, WebhookEvent, WebhookSubscription

router = APIRouter(
    prefix="/admin", tags=["admin"], route_class=StrictJSONRoute, responses=ERROR_RESPONSES
)

Limit = Annotated[int, Query(ge=1, le=200, description="Page size")]
Before = Annotated[
    int | None, Query(ge=1, description="next_before of the previous page: older deliveries")
]


def webhook_out(row: WebhookSubscription, team: str) -> WebhookOut:
    return WebhookOut(
        id=row.id,
        team=team,
        url=row.url,
        events=list(row.events),
        created_by=row.created_by,
        created_at=row.created_at,
        deleted_at=row.deleted_at,
    )


def delivery_out(delivery: WebhookDelivery, event: WebhookEvent) -> WebhookDeliveryOut:
    return WebhookDeliveryOut(
        id=delivery.id,
        event_id=event.id,
        type=event.type,
        state=delivery.state.value,
        attempts=delivery.attempts,
        last_status_code=delivery.last_status_code,
        last_error=delivery.last_error,
        last_attempt_at=delivery.last_attempt_at,
        next_attempt_at=delivery.next_attempt_at,
        delivered_at=delivery.delivered_at,
        created_at=delivery.created_at,
    )


@router.post(
    "/teams/{name}/webhooks",
    status_code=201,
    summary="Subscribe a team to webhook events (the signing secret is shown once)",
)
async def create_webhook(
    name: str, body: WebhookCreate, admin: AdminActor, runtime: RuntimeDep, work: UnitOfWorkDep
) -> WebhookCreatedOut:
    row, secret = await webhooks.create_subscription(
        work.session,
        team=name,
        url=body.url,
        events=body.events,
        actor=admin,
        settings=runtime.settings,
    )
    return WebhookCreatedOut(**webhook_out(row, name).model_dump(), secret=secret)


@router.get(
    "/teams/{name}/webhooks",
    summary="A team's webhook subscriptions, oldest first (never their secrets)",
)
async def list_webhooks(name: str, admin: AdminActor, work: UnitOfWorkDep) -> list[WebhookOut]:
    session = work.session
    team = await require_team(session, name)
    return [webhook_out(r, team.name) for r in await webhooks.list_subscriptions(session, team.id)]


@router.delete(
    "/webhooks/{webhook_id}",
    summary="Delete a webhook subscription: nothing more is sent to it, its log stays",
)
async def delete_webhook(webhook_id: str, admin: AdminActor, work: UnitOfWorkDep) -> WebhookOut:
    session = work.session
    row = await webhooks.delete_subscription(session, webhook_id, actor=admin)
    return webhook_out(row, await webhooks.team_name(session, row))


@router.get(
    "/webhooks/{webhook_id}/deliveries",
    summary="A webhook subscription's delivery log, newest first",
)
async def list_webhook_deliveries(
    webhook_id: str,
    admin: AdminActor,
    work: UnitOfWorkDep,
    limit: Limit = 50,
    before: Before = None,
) -> WebhookDeliveryPage:
    rows = await webhooks.list_deliveries(
        work.session, webhook_id, limit=limit + 1, before_id=before
    )
    page = list(rows[:limit])
    next_before = page[-1][0].id if len(rows) > limit else None
    return WebhookDeliveryPage(data=[delivery_out(d, e) for d, e in page], next_before=next_before)
