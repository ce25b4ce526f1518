"""The gateway's own record of every job a team submitted, and the ``Idempotency-Key`` claims
that tie a client's retries to one job."""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import JSON, BigInteger, Boolean, ForeignKey, Index, Integer, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from gateway.core.clock import utcnow
from gateway.db.base import Base, StrEnumColumn, UTCDateTime


class JobState(enum.StrEnum):
    """Where a job is in its money life. Only the moves below exist, each a conditional update:

    pending ──► submitted ──► captured | released
       │   └──► unknown ────► captured | released
       └──────────────────► released
    """

    PENDING = "pending"
    """Hold placed and committed; the upstream has not answered yet."""
    SUBMITTED = "submitted"
    """The upstream accepted it and gave a job id; the hold is outstanding."""
    UNKNOWN = "unknown"
    """Sent, but whether the upstream accepted it is unknown (timeout, unreadable answer)."""
    CAPTURED = "captured"
    """Settled and billed (a video was produced, even if then blocked by moderation)."""
    RELEASED = "released"
    """Settled and not billed: refused, failed before any video, or never reached upstream."""


OPEN_STATES = (JobState.PENDING, JobState.SUBMITTED, JobState.UNKNOWN)
SETTLED_STATES = (JobState.CAPTURED, JobState.RELEASED)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_team_id_created_at", "team_id", "created_at"),
        Index("ix_jobs_team_id_state", "team_id", "state"),
        Index("ix_jobs_state_next_check_at", "state", "next_check_at"),
        Index("ix_jobs_period_team_id", "period", "team_id"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    """The gateway's own id (uuid4 hex); exists before the upstream answers."""
    team_id: Mapped[int] = mapped_column(ForeignKey("teams.id"))
    api_key_id: Mapped[str | None] = mapped_column(ForeignKey("api_keys.id"))
    project_id: Mapped[int | None] = mapped_column(ForeignKey("projects.id"))
    """The project the job is charged to (never forwarded upstream); its hold is on the
    project's balance too."""
    key_held: Mapped[bool] = mapped_column(Boolean, default=False)
    """The hold is on the key's balance too (every job of a gateway key since budget levels
    exist; older jobs and JWT callers' are not), so its settlement moves that balance."""
    upstream_job_id: Mapped[str | None] = mapped_column(String(128), unique=True)
    """The id the upstream returned; the one clients poll with."""
    state: Mapped[JobState] = mapped_column(StrEnumColumn(JobState, 16), default=JobState.PENDING)
    model: Mapped[str] = mapped_column(String(128))
    duration_ms: Mapped[int] = mapped_column(BigInteger)
    """Requested video length in milliseconds (defaults applied)."""
    resolution: Mapped[str] = mapped_column(String(16))
    image_count: Mapped[int] = mapped_column(Integer)
    estimate_micro_usd: Mapped[int] = mapped_column(BigInteger)
    """Price of the request at submit, micro-USD, >= 0; also the amount held."""
    rate_card_version: Mapped[str] = mapped_column(String(64))
    period: Mapped[str] = mapped_column(String(7))
    """Billing period (``YYYY-MM``, UTC) of the submit; the job's cost belongs to it."""
    request_id: Mapped[str | None] = mapped_column(String(128))
    tags: Mapped[dict[str, str] | None] = mapped_column(JSON)
    """Cost-allocation tags from ``X-Gateway-Tags`` (``{"project": "atlas"}``); never forwarded."""
    upstream_http_status: Mapped[int | None] = mapped_column(Integer)
    upstream_status: Mapped[str | None] = mapped_column(String(32))
    """The upstream's terminal status word (``completed``, ``failed``, ...)."""
    upstream_error_code: Mapped[str | None] = mapped_column(String(64))
    terminal_body: Mapped[bytes | None] = mapped_column(LargeBinary)
    """The upstream's terminal poll answer, replayed to later polls without calling upstream."""
    check_attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_check_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    """When the reconciler should poll this job next (only open jobs)."""
    needs_review: Mapped[bool] = mapped_column(Boolean, default=False)
    flagged_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    """Set when the hold outlived the configured maximum age."""
    settled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class JobRequest(Base):
    """The client's submit body, kept only while the upstream's answer is unknown, so the
    reconciler can re-send it (see ``Settings.upstream_honors_idempotency_key``)."""

    __tablename__ = "job_requests"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), primary_key=True)
    body: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class IdempotencyKey(Base):
    __tablename__ = "idempotency_keys"

    team_id: Mapped[int] = mapped_column(ForeignKey("teams.id"), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    """SHA-256 of the request body (and its tags, if any): the same key with another request
    is refused."""
    state: Mapped[str] = mapped_column(String(16))
    """``in_flight`` until the first request's answer is stored, then ``completed``."""
    job_id: Mapped[str | None] = mapped_column(String(32))
    status_code: Mapped[int | None] = mapped_column(Integer)
    response_body: Mapped[bytes | None] = mapped_column(LargeBinary)
    response_headers: Mapped[dict[str, str] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
