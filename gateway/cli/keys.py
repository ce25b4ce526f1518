"""``gateway keys create|list|revoke``."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import click
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.audit.service import Actor
from gateway.cli._common import echo_json, load_settings, run_in_session
from gateway.cli._output import Column, print_table
from gateway.tenancy import service
from gateway.tenancy.models import ApiKey
from gateway.tenancy.service import IssuedKey


def key_to_dict(key: ApiKey) -> dict[str, object]:
    return {
        "id": key.id,
        "name": key.name,
        "created_at": key.created_at.isoformat(),
        "expires_at": key.expires_at.isoformat() if key.expires_at else None,
        "revoked_at": key.revoked_at.isoformat() if key.revoked_at else None,
        "last_used_at": key.last_used_at.isoformat() if key.last_used_at else None,
    }


@click.group()
def keys() -> None:
    """Manage API keys (shown once at creation, stored only as a hash)."""


@keys.command("create")
@click.option("--team", "team_name", required=True, help="Team the key bills to.")
@click.option("--name", help="A label for the key (e.g. the service using it).")
@click.option("--expires-in-days", type=click.IntRange(min=1), help="Key stops working after this.")
@click.option("--json", "as_json", is_flag=True, help='Print {"id", "key", "team"} as JSON.')
def create(team_name: str, name: str | None, expires_in_days: int | None, as_json: bool) -> None:
    """Create a key for a team and print it (the only time it is shown)."""
    settings = load_settings()
    expires_at = datetime.now(UTC) + timedelta(days=expires_in_days) if expires_in_days else None

    async def _create(session: AsyncSession) -> IssuedKey:
        return await service.create_key(
            session,
            team_name,
            pepper=settings.key_pepper.get_secret_value(),
            actor=Actor.cli(),
            name=name,
            expires_at=expires_at,
        )

    _print_issued(run_in_session(settings, _create), as_json, label="key id")
    if not as_json:
        click.echo("Store this key now: it cannot be shown again.", err=True)


@keys.command("list")
@click.option("--team", "team_name", required=True)
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def list_keys(team_name: str, as_json: bool) -> None:
    """List a team's keys (never the keys themselves)."""
    settings = load_settings()

    async def _list(session: AsyncSession) -> Sequence[ApiKey]:
        return await service.list_keys(session, team_name)

    rows = [key_to_dict(k) for k in run_in_session(settings, _list)]
    if as_json:
        echo_json(rows)
        return
    print_table(
        [
            Column("ID"),
            Column("NAME"),
            Column("STATUS"),
            Column("CREATED"),
            Column("EXPIRES"),
            Column("LAST USED"),
        ],
        (
            [
                row["id"],
                row["name"],
                _status(row),
                _minute(row["created_at"]),
                _minute(row["expires_at"]),
                _minute(row["last_used_at"]),
            ]
            for row in rows
        ),
    )


def _status(row: dict[str, object]) -> str:
    if row["revoked_at"]:
        return "revoked"
    expires = row["expires_at"]
    if isinstance(expires, str) and datetime.fromisoformat(expires) <= datetime.now(UTC):
        return "expired"
    return "active"


def _minute(timestamp: object) -> str | None:
    """An ISO timestamp to the minute, in UTC, for a table cell."""
    if not isinstance(timestamp, str):
        return None
    return datetime.fromisoformat(timestamp).astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


@keys.command("revoke")
@click.argument("key_id")
@click.option("--json", "as_json", is_flag=True, help="Print the revoked key as JSON.")
def revoke(key_id: str, as_json: bool) -> None:
    """Revoke KEY_ID; it is refused from the next request on, on every replica."""
    settings = load_settings()

    async def _revoke(session: AsyncSession) -> ApiKey:
        return await service.revoke_key(session, key_id, actor=Actor.cli())

    key = run_in_session(settings, _revoke)
    if as_json:
        echo_json(key_to_dict(key))
        return
    click.echo(f"revoked key {key.id} at {key.revoked_at.isoformat() if key.revoked_at else '?'}")


@keys.command("rotate")
@click.argument("key_id")
@click.option(
    "--overlap-seconds",
    default=3600,
    show_default=True,
    type=click.IntRange(min=0),
    help="How long the old key keeps working.",
)
@click.option("--json", "as_json", is_flag=True, help='Print {"id", "key", "team"} as JSON.')
def rotate(key_id: str, overlap_seconds: int, as_json: bool) -> None:
    """Issue a new key for KEY_ID's team; KEY_ID expires after the overlap window."""
    settings = load_settings()

    async def _rotate(session: AsyncSession) -> IssuedKey:
        return await service.rotate_key(
            session,
            key_id,
            pepper=settings.key_pepper.get_secret_value(),
            actor=Actor.cli(),
            overlap=timedelta(seconds=overlap_seconds),
        )

    _print_issued(run_in_session(settings, _rotate), as_json, label="new key id")
    if not as_json:
        click.echo(f"{key_id} stops working in {overlap_seconds} s.", err=True)


def _print_issued(issued: IssuedKey, as_json: bool, *, label: str) -> None:
    """The new key, shown this once: as {"id", "key", "team"}, or as two lines."""
    if as_json:
        echo_json({"id": issued.key.id, "key": issued.token, "team": issued.team.name})
        return
    click.echo(f"{label}: {issued.key.id}  team: {issued.team.name}")
    click.echo(issued.token)
