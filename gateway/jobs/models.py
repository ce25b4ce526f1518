"""The gateway's own record of every job a team submitted."""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from gateway.db.base import Base, UTCDateTime, utcnow


class JobState(enum.StrEnum):
    PENDING = "pending"
    """Recorded before forwarding; the upstream has not answered yet."""
    SUBMITTED = "submitted"
    """The upstream accepted it and gave a job id."""
    REJECTED = "rejected"
    """Never accepted: the upstream refused it (4xx/5xx) or could not be reached."""
    UNKNOWN = "unknown"
    """Sent, but we do not know whether the upstream accepted it (timeout, unreadable answer)."""


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_team_id_created_at", "team_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    """The gateway's own id (uuid4 hex); exists before the upstream answers."""
    team_id: Mapped[int] = mapped_column(ForeignKey("teams.id"))
    api_key_id: Mapped[str | None] = mapped_column(ForeignKey("api_keys.id"))
    upstream_job_id: Mapped[str | None] = mapped_column(String(128), unique=True)
    """The id the upstream returned; the one clients poll with."""
    state: Mapped[str] = mapped_column(String(16), default=JobState.PENDING.value)
    model: Mapped[str] = mapped_column(String(128))
    duration_ms: Mapped[int] = mapped_column(BigInteger)
    """Requested video length in milliseconds (defaults applied)."""
    resolution: Mapped[str] = mapped_column(String(16))
    image_count: Mapped[int] = mapped_column(Integer)
    estimate_micro_usd: Mapped[int] = mapped_column(BigInteger)
    """Price of the request at submit, micro-USD, >= 0."""
    rate_card_version: Mapped[str] = mapped_column(String(64))
    request_id: Mapped[str | None] = mapped_column(String(128))
    upstream_http_status: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
