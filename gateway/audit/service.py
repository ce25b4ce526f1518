"""Recording admin changes. Called by the service that makes the change, in its transaction,
so a change and its audit entry commit together or not at all (HTTP admin API and CLI alike)."""

from __future__ import annotations

import base64
import getpass
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.audit.models import AuditEntry
from gateway.core.clock import utcnow
from gateway.errors import InvalidRequest


@dataclass(frozen=True)
class Actor:
    """Who makes an admin change: the admin token, an admin-role JWT's subject, or the CLI."""

    name: str
    request_id: str | None = None

    @classmethod
    def cli(cls) -> Actor:
        try:
            user = getpass.getuser()
        except (KeyError, OSError):
            user = "unknown"
        return cls(f"cli:{user}")


async def record(
    session: AsyncSession,
    actor: Actor,
    action: str,
    target_type: str,
    target_id: str,
    *,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
) -> None:
    session.add(
        AuditEntry(
            at=utcnow(),
            actor=actor.name[:160],
            action=action,
            target_type=target_type,
            target_id=target_id[:128],
            before=before,
            after=after,
            request_id=actor.request_id,
        )
    )
    await session.flush()


async def list_entries(
    session: AsyncSession,
    *,
    limit: int,
    cursor: str | None = None,
    actor: str | None = None,
    action: str | None = None,
    target_type: str | None = None,
    target_id: str | None = None,
) -> tuple[Sequence[AuditEntry], str | None]:
    """Newest first; ``cursor`` continues after the last entry of the previous page."""
    stmt = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit + 1)
    if cursor is not None:
        stmt = stmt.where(AuditEntry.id < _decode_cursor(cursor))
    for column, wanted in (
        (AuditEntry.actor, actor),
        (AuditEntry.action, action),
        (AuditEntry.target_type, target_type),
        (AuditEntry.target_id, target_id),
    ):
        if wanted is not None:
            stmt = stmt.where(column == wanted)
    rows = list((await session.execute(stmt)).scalars())
    next_cursor = _encode_cursor(rows[limit - 1].id) if len(rows) > limit else None
    return rows[:limit], next_cursor


def _encode_cursor(entry_id: int) -> str:
    return base64.urlsafe_b64encode(str(entry_id).encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> int:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        return int(base64.urlsafe_b64decode(padded.encode()).decode())
    except (ValueError, UnicodeDecodeError):
        raise InvalidRequest("cursor is not valid", code="invalid_cursor", param="cursor") from None
