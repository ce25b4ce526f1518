"""``gateway audit list``: the audit log of admin changes, newest first."""

from __future__ import annotations

from collections.abc import Sequence

import click
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.audit import service
from gateway.audit.models import AuditEntry
from gateway.cli._common import echo_json, load_settings, run_in_session
from gateway.cli._output import Column, print_table


def entry_to_dict(entry: AuditEntry) -> dict[str, object]:
    return {
        "id": entry.id,
        "at": entry.at.isoformat(),
        "actor": entry.actor,
        "action": entry.action,
        "target_type": entry.target_type,
        "target_id": entry.target_id,
        "before": entry.before,
        "after": entry.after,
        "request_id": entry.request_id,
    }


@click.group("audit")
def audit_group() -> None:
    """The audit log (append-only) of every admin change."""


@audit_group.command("list")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 1000))
@click.option("--actor", help="Only changes by this actor (e.g. admin-token, cli:alice).")
@click.option("--action", help="Only this action (e.g. team.update, key.revoke).")
@click.option("--target", "target_id", help="Only changes to this team name or key id.")
@click.option("--json", "as_json", is_flag=True)
def list_entries(
    limit: int, actor: str | None, action: str | None, target_id: str | None, as_json: bool
) -> None:
    """List audit entries, newest first."""
    settings = load_settings()

    async def _list(session: AsyncSession) -> Sequence[AuditEntry]:
        rows, _ = await service.list_entries(
            session, limit=limit, actor=actor, action=action, target_id=target_id
        )
        return rows

    rows = [entry_to_dict(e) for e in run_in_session(settings, _list)]
    if as_json:
        echo_json(rows)
        return
    print_table(
        [Column("AT"), Column("ACTOR"), Column("ACTION"), Column("TARGET")],
        (
            [row["at"], row["actor"], row["action"], f"{row['target_type']}:{row['target_id']}"]
            for row in rows
        ),
    )
