"""``gateway webhooks create|list|delete|deliveries``: a team's signed webhook subscriptions
and their delivery log (README "Webhooks")."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import click
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.audit.service import Actor
from gateway.cli._common import echo_json, load_settings, run_in_session
from gateway.cli._output import Column, print_table
from gateway.services import webhooks as service
from gateway.tenancy.service import require_team
from gateway.webhooks.models import WebhookDelivery, WebhookEvent, WebhookSubscription


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def subscription_to_dict(row: WebhookSubscription, team: str) -> dict[str, object]:
    return {
        "id": row.id,
        "team": team,
        "url": row.url,
        "events": list(row.events),
        "created_by": row.created_by,
        "created_at": row.created_at.isoformat(),
        "deleted_at": _iso(row.deleted_at),
    }


def delivery_to_dict(delivery: WebhookDelivery, event: WebhookEvent) -> dict[str, object]:
    return {
        "id": delivery.id,
        "event_id": event.id,
        "type": event.type,
        "state": delivery.state.value,
        "attempts": delivery.attempts,
        "last_status_code": delivery.last_status_code,
        "last_error": delivery.last_error,
        "last_attempt_at": _iso(delivery.last_attempt_at),
        "next_attempt_at": _iso(delivery.next_attempt_at),
        "delivered_at": _iso(delivery.delivered_at),
        "created_at": delivery.created_at.isoformat(),
    }


def _event_list(value: str | None) -> list[str] | None:
    return None if value is None else [e for e in value.split(",") if e.strip()]


@click.group("webhooks")
def webhooks_group() -> None:
    """Signed webhooks a team receives when its jobs end or its budget runs low."""


@webhooks_group.command("create")
@click.option("--team", "team_name", required=True, help="The team whose events are sent.")
@click.option("--url", required=True, help="Where to POST them (http or https).")
@click.option(
    "--events",
    help="Comma-separated: job.succeeded, job.failed, job.moderated, budget.soft_limit, "
    "budget.exhausted (job.* and budget.* for a family); default: all five.",
)
@click.option("--json", "as_json", is_flag=True, help="Print id, url, events and secret as JSON.")
def create(team_name: str, url: str, events: str | None, as_json: bool) -> None:
    """Subscribe a team; prints the signing secret, shown only this once."""
    settings = load_settings()

    async def _create(session: AsyncSession) -> tuple[WebhookSubscription, str]:
        return await service.create_subscription(
            session,
            team=team_name,
            url=url,
            events=_event_list(events),
            actor=Actor.cli(),
            settings=settings,
        )

    row, secret = run_in_session(settings, _create)
    if as_json:
        echo_json({"id": row.id, "url": row.url, "events": list(row.events), "secret": secret})
        return
    click.echo(f"created webhook {row.id} for team {team_name}: {', '.join(row.events)}")
    click.echo(f"signing secret (shown only now): {secret}")


@webhooks_group.command("list")
@click.option("--team", "team_name", required=True)
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def list_webhooks(team_name: str, as_json: bool) -> None:
    """List a team's subscriptions (never their secrets)."""
    settings = load_settings()

    async def _list(session: AsyncSession) -> Sequence[WebhookSubscription]:
        team = await require_team(session, team_name)
        return await service.list_subscriptions(session, team.id)

    rows = run_in_session(settings, _list)
    if as_json:
        echo_json([subscription_to_dict(r, team_name) for r in rows])
        return
    print_table(
        [Column("ID"), Column("URL"), Column("EVENTS"), Column("CREATED")],
        ([r.id, r.url, ",".join(r.events), r.created_at.isoformat()] for r in rows),
    )


@webhooks_group.command("delete")
@click.argument("webhook_id")
@click.option("--json", "as_json", is_flag=True, help="Print the deleted subscription as JSON.")
def delete(webhook_id: str, as_json: bool) -> None:
    """Delete subscription WEBHOOK_ID: nothing more is sent to it; its log stays."""
    settings = load_settings()

    async def _delete(session: AsyncSession) -> dict[str, object]:
        row = await service.delete_subscription(session, webhook_id, actor=Actor.cli())
        return subscription_to_dict(row, await service.team_name(session, row))

    data = run_in_session(settings, _delete)
    if as_json:
        echo_json(data)
    else:
        click.echo(f"deleted webhook {webhook_id}")


@webhooks_group.command("deliveries")
@click.argument("webhook_id")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 1000))
@click.option("--before", type=click.IntRange(min=1), help="Only deliveries older than this id.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def deliveries(webhook_id: str, limit: int, before: int | None, as_json: bool) -> None:
    """Subscription WEBHOOK_ID's delivery log, newest first."""
    settings = load_settings()

    async def _list(session: AsyncSession) -> list[dict[str, object]]:
        rows = await service.list_deliveries(session, webhook_id, limit=limit, before_id=before)
        return [delivery_to_dict(d, e) for d, e in rows]

    data = run_in_session(settings, _list)
    if as_json:
        echo_json(data)
        return
    print_table(
        [
            Column("ID", "right"),
            Column("EVENT"),
            Column("TYPE"),
            Column("STATE"),
            Column("ATTEMPTS", "right"),
            Column("LAST STATUS", "right"),
            Column("LAST ERROR"),
            Column("NEXT ATTEMPT"),
        ],
        (
            [
                r["id"],
                r["event_id"],
                r["type"],
                r["state"],
                r["attempts"],
                r["last_status_code"],
                r["last_error"],
                r["next_attempt_at"],
            ]
            for r in data
        ),
    )
