"""Who is using the portal: signing in (a gateway key or the admin token), the session each
request resolves to (``Viewer``), signing out. Sessions live in the database
(``tenancy.portal_sessions``), so any replica serves any request of a browser.

An admin session is bound to the admin token it signed in with: its CSRF token is an HMAC of
the session's id under that token, so changing ``GATEWAY_ADMIN_TOKEN`` ends every admin
session on its next request (and the CSRF token cannot be forged without the admin token).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.audit.service import Actor
from gateway.config import Settings
from gateway.core.clock import utcnow
from gateway.db.session import transaction
from gateway.errors import AuthenticationFailed
from gateway.tenancy import portal_sessions
from gateway.tenancy.authentication import authenticate_key
from gateway.tenancy.models import ApiKey, Project, Team
from gateway.tenancy.portal_sessions import ActiveSession, SessionKind
from gateway.tenancy.service import Principal, ProjectRef

logger = logging.getLogger(__name__)

ADMIN_ACTOR = "admin-token"
"""The audit actor of changes made in an admin session (as the admin API's token)."""


@dataclass(frozen=True)
class Viewer:
    """The signed-in browser of a request: a key's session (its team only) or the admin
    token's (every team)."""

    session_id: str
    csrf_token: str
    kind: SessionKind
    team: Team | None
    key: ApiKey | None
    project: Project | None

    @property
    def is_admin(self) -> bool:
        return self.kind == "admin"

    @property
    def read_token(self) -> str:
        """The ``csrf_token`` of the forms that only read (GET: the jobs filters, the team
        picker), which puts it in a URL: derived from the session's token, and no POST
        accepts it, so a URL in a history or a proxy's log authorises nothing."""
        digest = hmac.new(self.csrf_token.encode(), b"portal read-only form", hashlib.sha256)
        return digest.hexdigest()

    @property
    def can_manage(self) -> bool:
        """May create and revoke keys (of its own team): a ``manager`` key, or the admin."""
        return self.is_admin or (self.key is not None and self.key.role == "manager")

    def actor(self, request_id: str | None = None) -> Actor:
        """The audit log's actor: ``portal:<key id>``, or the admin token's own name."""
        if self.key is not None:
            return Actor(f"portal:{self.key.id}", request_id)
        return Actor(ADMIN_ACTOR, request_id)

    def principal(self) -> Principal | None:
        """The key's principal (its budget levels), as a tenant request of it would have."""
        key, team = self.key, self.team
        if key is None or team is None:
            return None
        project = self.project
        return Principal(
            team_id=team.id,
            team_name=team.name,
            key_id=key.id,
            monthly_budget_micro_usd=team.monthly_budget_micro_usd,
            max_concurrent_jobs=team.max_concurrent_jobs,
            soft_limit_percent=team.soft_limit_percent,
            max_cost_per_job_micro_usd=team.max_cost_per_job_micro_usd,
            project=ProjectRef.of(project) if project is not None else None,
            key_monthly_budget_micro_usd=key.monthly_budget_micro_usd,
            key_max_cost_per_job_micro_usd=key.max_cost_per_job_micro_usd,
            key_role=key.role,
        )

    @classmethod
    def of(cls, active: ActiveSession) -> Viewer:
        return cls(
            session_id=active.row.id,
            csrf_token=active.row.csrf_token,
            kind=active.kind,
            team=active.team,
            key=active.key,
            project=active.project,
        )


class PortalSessions:
    """Signing in and out, and each request's ``Viewer``; every call its own transaction."""

    def __init__(
        self, sessionmaker: async_sessionmaker[AsyncSession], settings: Settings, pepper: str
    ) -> None:
        self._sessionmaker = sessionmaker
        self._settings = settings
        self._pepper = pepper

    @property
    def _lifetime(self) -> timedelta:
        return timedelta(hours=self._settings.portal_session_max_hours)

    @property
    def _idle(self) -> timedelta:
        return timedelta(minutes=self._settings.portal_session_idle_minutes)

    async def sign_in_with_key(self, token: str) -> str:
        """A session for a gateway key (the rules of every tenant request: revoked, expired,
        disabled team refused); returns the cookie's token. ``AuthenticationFailed`` or
        ``PermissionDenied`` otherwise."""
        now = utcnow()
        async with transaction(self._sessionmaker) as session:
            principal = await authenticate_key(
                session,
                token,
                pepper=self._pepper,
                last_used_resolution=self._settings.key_last_used_resolution_seconds,
                previous_pepper=self._settings.key_pepper_previous.get_secret_value() or None,
            )
            cookie = await portal_sessions.start_session(
                session,
                kind="key",
                now=now,
                lifetime=self._lifetime,
                csrf_token=portal_sessions.new_token(),
                team_id=principal.team_id,
                api_key_id=principal.key_id,
            )
        logger.info(
            "portal sign-in", extra={"team": principal.team_name, "key_id": principal.key_id}
        )
        return cookie

    async def sign_in_with_admin_token(self, token: str) -> str:
        """A session for the admin token (compared in constant time; refused when none is
        configured); returns the cookie's token."""
        configured = self._settings.admin_token.get_secret_value()
        if not configured or not hmac.compare_digest(token.encode(), configured.encode()):
            raise AuthenticationFailed("invalid admin credentials", code="invalid_admin_token")
        cookie = portal_sessions.new_token()
        session_id = portal_sessions.session_id_of(cookie)
        async with transaction(self._sessionmaker) as session:
            await portal_sessions.start_session(
                session,
                kind="admin",
                now=utcnow(),
                lifetime=self._lifetime,
                csrf_token=_admin_csrf(configured, session_id),
                token=cookie,
            )
        logger.info("portal sign-in", extra={"actor": ADMIN_ACTOR})
        return cookie

    async def viewer(self, cookie: str | None) -> Viewer | None:
        """Who the cookie signs in, or None (no cookie, or a session that has ended)."""
        if not cookie:
            return None
        now = utcnow()
        async with transaction(self._sessionmaker) as session:
            active = await portal_sessions.find_active(session, cookie, now=now, idle=self._idle)
            if active is None:
                return None
            if active.kind == "admin" and not self._admin_token_unchanged(active):
                await portal_sessions.end_session(session, active.row.id, now)
                return None
        return Viewer.of(active)

    async def sign_out(self, viewer: Viewer) -> None:
        async with transaction(self._sessionmaker) as session:
            await portal_sessions.end_session(session, viewer.session_id, utcnow())

    def _admin_token_unchanged(self, active: ActiveSession) -> bool:
        configured = self._settings.admin_token.get_secret_value()
        if not configured:
            return False
        expected = _admin_csrf(configured, active.row.id)
        return hmac.compare_digest(active.row.csrf_token.encode(), expected.encode())


def _admin_csrf(admin_token: str, session_id: str) -> str:
    return hmac.new(admin_token.encode(), session_id.encode(), hashlib.sha256).hexdigest()
