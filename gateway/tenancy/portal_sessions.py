"""Portal sessions: a signed-in browser, kept in the database so every replica knows it.

The cookie carries a random token; the row's id is its SHA-256 (a copy of the table gives no
usable cookie). A session ends when signed out, after ``idle`` without a request, at its
absolute ``expires_at``, or as soon as its key is revoked or expires or its team is disabled:
the key and its team are read with the session on every request (one statement, primary
keys only), so nothing is cached to invalidate. ``last_seen_at`` is written at most once per
``TOUCH_EVERY``: a busy page must not cost a write per request.

Only flushes; the caller's transaction commits (``gateway.db.session``).
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.tenancy.models import ApiKey, PortalSession, Project, Team

SessionKind = Literal["key", "admin"]
TOUCH_EVERY = timedelta(seconds=60)
"""How stale ``last_seen_at`` may get before a request writes it (bounds the idle expiry's
precision to a minute, and the writes to one per minute per session)."""


def session_id_of(token: str) -> str:
    """The row id of a cookie's token (SHA-256, hex)."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    """A fresh unguessable token (256 bits), for a cookie or a CSRF field."""
    return secrets.token_urlsafe(32)


@dataclass(frozen=True)
class ActiveSession:
    """A session that is still valid, with what its pages need of its key and team."""

    row: PortalSession
    team: Team | None
    """The key's team (None for the admin token's session)."""
    key: ApiKey | None
    project: Project | None
    """The project the key is bound to, if any."""

    @property
    def kind(self) -> SessionKind:
        return "admin" if self.row.kind == "admin" else "key"


async def start_session(
    session: AsyncSession,
    *,
    kind: SessionKind,
    now: datetime,
    lifetime: timedelta,
    csrf_token: str,
    token: str | None = None,
    team_id: int | None = None,
    api_key_id: str | None = None,
) -> str:
    """A new session row; returns the cookie's token (only here: the row keeps its hash)."""
    token = token or new_token()
    session.add(
        PortalSession(
            id=session_id_of(token),
            kind=kind,
            team_id=team_id,
            api_key_id=api_key_id,
            csrf_token=csrf_token,
            created_at=now,
            last_seen_at=now,
            expires_at=now + lifetime,
        )
    )
    await session.flush()
    return token


async def find_active(
    session: AsyncSession, token: str, *, now: datetime, idle: timedelta
) -> ActiveSession | None:
    """The session ``token`` stands for if it is still valid at ``now``; None otherwise. A
    session found invalid because of its key or team is ended on the way (flushed)."""
    stmt = (
        select(PortalSession, ApiKey, Team, Project)
        .outerjoin(ApiKey, ApiKey.id == PortalSession.api_key_id)
        .outerjoin(Team, Team.id == PortalSession.team_id)
        .outerjoin(Project, Project.id == ApiKey.project_id)
        .where(PortalSession.id == session_id_of(token))
    )
    found = (await session.execute(stmt)).first()
    if found is None:
        return None
    row, key, team, project = found
    if row.ended_at is not None or row.expires_at <= now or row.last_seen_at <= now - idle:
        return None
    if row.kind != "admin" and not _key_usable(key, team, now):
        await end_session(session, row.id, now)
        return None
    if row.last_seen_at <= now - TOUCH_EVERY:
        await session.execute(
            update(PortalSession)
            .where(PortalSession.id == row.id, PortalSession.last_seen_at < now)
            .values(last_seen_at=now)
            .execution_options(synchronize_session=False)
        )
    return ActiveSession(row, team, key, project)


def _key_usable(key: ApiKey | None, team: Team | None, now: datetime) -> bool:
    """The rules a key's requests follow (``tenancy.authentication.check_key``), minus the
    secret: checked at sign-in."""
    if key is None or team is None or key.team_id != team.id:
        return False
    if key.revoked_at is not None or team.disabled_at is not None:
        return False
    return key.expires_at is None or key.expires_at > now


async def end_session(session: AsyncSession, session_id: str, now: datetime) -> None:
    """Sign out: the row stays (when it ended is worth keeping), its cookie no longer works."""
    await session.execute(
        update(PortalSession)
        .where(PortalSession.id == session_id, PortalSession.ended_at.is_(None))
        .values(ended_at=now)
        .execution_options(synchronize_session=False)
    )


async def purge_finished(
    session: AsyncSession, *, now: datetime, idle: timedelta, keep: timedelta
) -> int:
    """Delete sessions that ended (signed out, past their absolute or idle expiry) more than
    ``keep`` ago; returns how many."""
    cutoff = now - keep
    finished = (
        (PortalSession.ended_at < cutoff)
        | (PortalSession.expires_at < cutoff)
        | (PortalSession.last_seen_at < cutoff - idle)
    )
    result = await session.execute(
        delete(PortalSession).where(finished).execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0) or 0)
