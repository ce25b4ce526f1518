"""Teams (tenants) and the API keys that authenticate them."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from gateway.core.clock import utcnow
from gateway.db.base import Base, BigIntPK, UTCDateTime


class Team(Base):
    __tablename__ = "teams"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    cost_center: Mapped[str | None] = mapped_column(String(64))
    monthly_budget_micro_usd: Mapped[int | None] = mapped_column(BigInteger)
    """Budget per calendar month (UTC), micro-USD, >= 0. NULL: the configured default policy."""
    max_concurrent_jobs: Mapped[int | None] = mapped_column(Integer)
    soft_limit_percent: Mapped[int | None] = mapped_column(Integer)
    """Percentage of the budget (1-100) past which an alert is raised; NULL: none."""
    max_cost_per_job_micro_usd: Mapped[int | None] = mapped_column(BigInteger)
    """A request priced above this is refused before anything is held; NULL: no cap."""
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    disabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Project(Base):
    """A product inside a team: its own optional monthly budget and per-job cap, charged
    within the team's (a job of a project is held against both)."""

    __tablename__ = "projects"
    __table_args__ = (UniqueConstraint("team_id", "name", name="uq_projects_team_id_name"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    team_id: Mapped[int] = mapped_column(ForeignKey("teams.id"))
    name: Mapped[str] = mapped_column(String(64))
    monthly_budget_micro_usd: Mapped[int | None] = mapped_column(BigInteger)
    """Budget per calendar month (UTC), micro-USD; NULL: none of its own (the team's applies)."""
    max_cost_per_job_micro_usd: Mapped[int | None] = mapped_column(BigInteger)
    soft_limit_percent: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ApiKey(Base):
    """A gateway-issued key. Only its HMAC is stored; the key itself is shown once."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    """Public key id; also the lookup part embedded in the key (``gwk_<id>_<secret>``)."""
    team_id: Mapped[int] = mapped_column(ForeignKey("teams.id"), index=True)
    secret_hash: Mapped[str] = mapped_column(String(64))
    """Hex HMAC-SHA256 of the whole key under the server-side pepper."""
    name: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    project_id: Mapped[int | None] = mapped_column(ForeignKey("projects.id"))
    """Bound to this project: its jobs are the project's (a header naming another is refused)."""
    role: Mapped[str] = mapped_column(String(16), default="member")
    """``member`` or ``manager`` (may manage the team's keys in the portal)."""
    monthly_budget_micro_usd: Mapped[int | None] = mapped_column(BigInteger)
    """The key's own budget per calendar month (UTC), micro-USD; NULL: none."""
    max_cost_per_job_micro_usd: Mapped[int | None] = mapped_column(BigInteger)


class PortalSession(Base):
    """A signed-in portal browser: the cookie ``gw_session`` carries a random token, this row
    its SHA-256 (a database leak gives no usable cookie). Kept in the database so every
    replica knows it. ``api_key_id`` is set for a key's session (its team's pages only);
    ``kind == "admin"`` for the admin token's."""

    __tablename__ = "portal_sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    """SHA-256 hex of the cookie's token."""
    kind: Mapped[str] = mapped_column(String(8))
    """``key`` or ``admin``."""
    team_id: Mapped[int | None] = mapped_column(ForeignKey("teams.id"))
    api_key_id: Mapped[str | None] = mapped_column(ForeignKey("api_keys.id"))
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    """Absolute end: sign-in + ``GATEWAY_PORTAL_SESSION_MAX_HOURS``."""
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    """Signed out (or the key revoked)."""
