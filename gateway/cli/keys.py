"""``gateway keys create|list|update|revoke|rotate``."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import click
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.audit.service import Actor
from gateway.cli._common import echo_json, load_settings, run_in_session
from gateway.cli._output import Column, print_table
from gateway.cli.teams import CAP_HELP, positive_usd_option, usd_change, usd_option, usd_or_none
from gateway.services import projects as level_changes
from gateway.tenancy import service
from gateway.tenancy.service import KEY_ROLES, IssuedKey, KeyDetails


def key_to_dict(details: KeyDetails) -> dict[str, object]:
    key = details.key
    return {
        "id": key.id,
        "team": details.team.name,
        "name": key.name,
        "project": details.project.name if details.project is not None else None,
        "role": key.role,
        "monthly_budget_usd": usd_or_none(key.monthly_budget_micro_usd),
        "max_cost_per_job_usd": usd_or_none(key.max_cost_per_job_micro_usd),
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
@click.option("--project", help="A project of the team: the key's jobs are charged to it.")
@click.option(
    "--role",
    type=click.Choice(KEY_ROLES),
    default="member",
    show_default=True,
    help="manager: may manage the team's keys.",
)
@click.option(
    "--monthly-budget-usd",
    callback=usd_option,
    help="The key's own budget per calendar month (UTC).",
)
@click.option("--max-cost-per-job-usd", callback=positive_usd_option, help=CAP_HELP)
@click.option("--json", "as_json", is_flag=True, help='Print {"id", "key", "team"} as JSON.')
def create(
    team_name: str,
    name: str | None,
    expires_in_days: int | None,
    project: str | None,
    role: str,
    monthly_budget_usd: int | None,
    max_cost_per_job_usd: int | None,
    as_json: bool,
) -> None:
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
            project=project,
            role=role,
            monthly_budget_micro_usd=monthly_budget_usd,
            max_cost_per_job_micro_usd=max_cost_per_job_usd,
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

    async def _list(session: AsyncSession) -> Sequence[KeyDetails]:
        return await service.list_key_details(session, team_name)

    rows = [key_to_dict(k) for k in run_in_session(settings, _list)]
    if as_json:
        echo_json(rows)
        return
    print_table(
        [
            Column("ID"),
            Column("NAME"),
            Column("PROJECT"),
            Column("ROLE"),
            Column("BUDGET/MONTH USD", "right"),
            Column("MAX/JOB USD", "right"),
            Column("STATUS"),
            Column("CREATED"),
            Column("EXPIRES"),
            Column("LAST USED"),
        ],
        (
            [
                row["id"],
                row["name"],
                row["project"],
                row["role"],
                row["monthly_budget_usd"],
                row["max_cost_per_job_usd"],
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

    async def _revoke(session: AsyncSession) -> KeyDetails:
        key = await service.revoke_key(session, key_id, actor=Actor.cli())
        return await service.describe_key(session, key)

    details = run_in_session(settings, _revoke)
    key = details.key
    if as_json:
        echo_json(key_to_dict(details))
        return
    click.echo(f"revoked key {key.id} at {key.revoked_at.isoformat() if key.revoked_at else '?'}")


@keys.command("update")
@click.argument("key_id")
@click.option("--project", help="Bind the key to this project of its team.")
@click.option("--no-project", is_flag=True, help="Unbind the key from its project.")
@click.option("--role", type=click.Choice(KEY_ROLES))
@click.option("--monthly-budget-usd", help="New budget per month (USD), or 'none' to clear it.")
@click.option("--max-cost-per-job-usd", help="New per-job cap (USD), or 'none' to clear it.")
@click.option("--json", "as_json", is_flag=True, help="Print the key as JSON.")
def update(
    key_id: str,
    project: str | None,
    no_project: bool,
    role: str | None,
    monthly_budget_usd: str | None,
    max_cost_per_job_usd: str | None,
    as_json: bool,
) -> None:
    """Change KEY_ID's project, role, budget or per-job cap (a budget applies to the month
    under way at once; jobs already held stay with their project)."""
    if project is not None and no_project:
        raise click.UsageError("--project and --no-project are mutually exclusive")
    changes: dict[str, object] = {}
    if project is not None or no_project:
        changes["project"] = project
    if role is not None:
        changes["role"] = role
    usd_change(changes, "monthly_budget_micro_usd", monthly_budget_usd, "--monthly-budget-usd")
    usd_change(
        changes,
        "max_cost_per_job_micro_usd",
        max_cost_per_job_usd,
        "--max-cost-per-job-usd",
        positive=True,
    )
    if not changes:
        raise click.UsageError("nothing to change: give at least one option")
    settings = load_settings()

    async def _update(session: AsyncSession) -> KeyDetails:
        return await level_changes.update_key(session, key_id, changes, actor=Actor.cli())

    details = run_in_session(settings, _update)
    if as_json:
        echo_json(key_to_dict(details))
    else:
        click.echo(f"updated key {details.key.id}")


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
    """The new key, shown this once: as {"id", "key", "team"} (a stable interface), or as
    two lines."""
    if as_json:
        echo_json({"id": issued.key.id, "key": issued.token, "team": issued.team.name})
        return
    project = f"  project: {issued.project.name}" if issued.project is not None else ""
    click.echo(f"{label}: {issued.key.id}  team: {issued.team.name}{project}")
    click.echo(issued.token)
