"""Money tables: rate card versions, the per-team per-period balance, the append-only ledger."""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    String,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from gateway.core.clock import utcnow
from gateway.db.base import Base, BigIntPK, StrEnumColumn, UTCDateTime
from gateway.jobs.models import Job


class RateCardRow(Base):
    """One version of a model's prices. Versions are only ever added, never edited."""

    __tablename__ = "rate_cards"
    __table_args__ = (
        UniqueConstraint("model", "version", name="uq_rate_cards_model_version"),
        Index("ix_rate_cards_model_effective_from", "model", "effective_from"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    model: Mapped[str] = mapped_column(String(128))
    version: Mapped[str] = mapped_column(String(64))
    effective_from: Mapped[datetime] = mapped_column(UTCDateTime)
    image_fee_micro_usd: Mapped[int] = mapped_column(BigInteger)
    """Fee per source image, micro-USD, >= 0."""
    per_second_micro_usd: Mapped[dict[str, int]] = mapped_column(JSON)
    """Resolution → micro-USD per second of video, each >= 0."""
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


WITHIN_BUDGET = (
    "budget_micro_usd IS NULL "
    "OR held_micro_usd + captured_micro_usd <= budget_micro_usd + granted_micro_usd"
)


def _balance_checks() -> tuple[CheckConstraint, ...]:
    """The same three rules on every level's balance: the database itself refuses overspend."""
    return (
        CheckConstraint("held_micro_usd >= 0", name="held_non_negative"),
        CheckConstraint("captured_micro_usd >= 0", name="captured_non_negative"),
        CheckConstraint(WITHIN_BUDGET, name="within_budget"),
    )


class _PeriodMoney:
    """The columns every level's balance for one period has (micro-USD)."""

    period: Mapped[str] = mapped_column(String(7), primary_key=True)
    """``YYYY-MM`` (UTC)."""
    budget_micro_usd: Mapped[int | None] = mapped_column(BigInteger)
    """The period's budget, micro-USD; NULL = unlimited."""
    granted_micro_usd: Mapped[int] = mapped_column(BigInteger, default=0)
    """One-off increases granted for this period (``budget_grants``), on top of the budget."""
    held_micro_usd: Mapped[int] = mapped_column(BigInteger, default=0)
    """Sum of the holds of this period's jobs not yet settled, micro-USD."""
    captured_micro_usd: Mapped[int] = mapped_column(BigInteger, default=0)
    """Sum of this period's captures, micro-USD."""
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class TeamBalance(_PeriodMoney, Base):
    """A team's money for one period. The database itself refuses overspend (the CHECK)."""

    __tablename__ = "team_balances"
    __table_args__ = _balance_checks()

    team_id: Mapped[int] = mapped_column(ForeignKey("teams.id"), primary_key=True)


class ProjectBalance(_PeriodMoney, Base):
    """A project's money for one period: moved in the same transactions as its team's."""

    __tablename__ = "project_balances"
    __table_args__ = _balance_checks()

    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), primary_key=True)


class KeyBalance(_PeriodMoney, Base):
    """A key's money for one period: moved in the same transactions as its team's."""

    __tablename__ = "key_balances"
    __table_args__ = _balance_checks()

    api_key_id: Mapped[str] = mapped_column(ForeignKey("api_keys.id"), primary_key=True)


class BudgetGrant(Base):
    """A one-off increase of one level's budget for one period, with its reason (audited)."""

    __tablename__ = "budget_grants"
    __table_args__ = (
        CheckConstraint("amount_micro_usd > 0", name="amount_positive"),
        CheckConstraint("scope IN ('team', 'project', 'key')", name="scope_known"),
        Index("ix_budget_grants_team_id_period", "team_id", "period"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    team_id: Mapped[int] = mapped_column(ForeignKey("teams.id"))
    scope: Mapped[str] = mapped_column(String(8))
    project_id: Mapped[int | None] = mapped_column(ForeignKey("projects.id"))
    api_key_id: Mapped[str | None] = mapped_column(ForeignKey("api_keys.id"))
    period: Mapped[str] = mapped_column(String(7))
    amount_micro_usd: Mapped[int] = mapped_column(BigInteger)
    reason: Mapped[str] = mapped_column(String(255))
    granted_by: Mapped[str] = mapped_column(String(160))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class EntryKind(enum.StrEnum):
    HOLD = "hold"
    CAPTURE = "capture"
    RELEASE = "release"
    CORRECTION = "correction"


class LedgerEntry(Base):
    """Append-only: rows are inserted, never updated or deleted (triggers enforce it).

    Per job: exactly one ``hold``; at most one settlement (``capture`` or ``release``), both
    enforced by partial unique indexes; any number of ``correction`` entries for review.
    """

    __tablename__ = "ledger_entries"
    __table_args__ = (
        CheckConstraint("kind IN ('hold', 'capture', 'release', 'correction')", name="kind_known"),
        CheckConstraint("amount_micro_usd >= 0", name="amount_non_negative"),
        Index(
            "uq_ledger_entries_one_hold_per_job",
            "job_id",
            unique=True,
            postgresql_where=text("kind = 'hold'"),
            sqlite_where=text("kind = 'hold'"),
        ),
        Index(
            "uq_ledger_entries_one_settlement_per_job",
            "job_id",
            unique=True,
            postgresql_where=text("kind IN ('capture', 'release')"),
            sqlite_where=text("kind IN ('capture', 'release')"),
        ),
        Index("ix_ledger_entries_team_id_period", "team_id", "period"),
        Index("ix_ledger_entries_job_id", "job_id"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"))
    team_id: Mapped[int] = mapped_column(ForeignKey("teams.id"))
    period: Mapped[str] = mapped_column(String(7))
    kind: Mapped[EntryKind] = mapped_column(StrEnumColumn(EntryKind, 16))
    amount_micro_usd: Mapped[int] = mapped_column(BigInteger)
    """Non-negative micro-USD. hold: amount reserved; capture: amount billed; release: amount
    given back; correction: amount to review (e.g. produced beyond the hold)."""
    rate_card_version: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str | None] = mapped_column(String(64))
    video_ms: Mapped[int | None] = mapped_column(BigInteger)
    """On a capture: the video length the upstream reported producing, if it did."""
    upstream_cost_micro_usd: Mapped[int | None] = mapped_column(BigInteger)
    """On a capture: what the upstream says it charged, beside our own figure."""
    needs_review: Mapped[bool] = mapped_column(Boolean, default=False)
    tags: Mapped[dict[str, str] | None] = mapped_column(JSON)
    """The job's cost-allocation tags, copied so every entry can be grouped on its own."""
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    @classmethod
    def for_job(
        cls,
        job: Job,
        kind: EntryKind,
        amount_micro_usd: int,
        *,
        now: datetime,
        reason: str | None = None,
        video_ms: int | None = None,
        upstream_cost_micro_usd: int | None = None,
        needs_review: bool = False,
    ) -> LedgerEntry:
        """An entry of ``job``'s account, in its period, at its rate card version."""
        return cls(
            job_id=job.id,
            team_id=job.team_id,
            period=job.period,
            kind=kind,
            amount_micro_usd=amount_micro_usd,
            rate_card_version=job.rate_card_version,
            reason=reason,
            video_ms=video_ms,
            upstream_cost_micro_usd=upstream_cost_micro_usd,
            needs_review=needs_review,
            tags=job.tags,
            created_at=now,
        )


class BudgetAlert(Base):
    """A level (the team, one of its projects, one of its keys) crossed a threshold in a
    period: raised once per level, period and threshold (the unique key), delivered to the
    webhook with retries. ``threshold`` is ``soft_limit`` or ``hard_limit``."""

    __tablename__ = "budget_alerts"
    __table_args__ = (
        UniqueConstraint(
            "team_id", "scope", "owner", "period", "threshold", name="uq_budget_alerts_once"
        ),
        CheckConstraint("scope IN ('team', 'project', 'key')", name="scope_known"),
        Index("ix_budget_alerts_pending", "delivered_at", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    team_id: Mapped[int] = mapped_column(ForeignKey("teams.id"))
    """The team the level belongs to (or is)."""
    scope: Mapped[str] = mapped_column(String(8), default="team")
    """``team``, ``project`` or ``key``."""
    owner: Mapped[str] = mapped_column(String(32), default="")
    """Which level of the team: the project's id or the key's id; empty for the team itself
    (``team_id`` names it), so the unique key needs no NULL."""
    scope_name: Mapped[str | None] = mapped_column(String(64))
    """The project's name or the key's id when raised; NULL for the team (its name is the
    team's)."""
    period: Mapped[str] = mapped_column(String(7))
    threshold: Mapped[str] = mapped_column(String(16))
    budget_micro_usd: Mapped[int] = mapped_column(BigInteger)
    """What the level could spend in the period when raised (its budget plus grants)."""
    used_micro_usd: Mapped[int] = mapped_column(BigInteger)
    """Held + captured when the threshold was crossed, micro-USD."""
    limit_micro_usd: Mapped[int] = mapped_column(BigInteger)
    """The threshold's own figure (the soft limit, or the budget), micro-USD."""
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    gave_up_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(String(255))


class ClosedPeriod(Base):
    """A month finance has closed: its chargeback is frozen at ledger entry ``last_entry_id``
    (the last one committed when it closed, at ``closed_at``). Entries for its jobs recorded
    later are reported as corrections in the month they were recorded."""

    __tablename__ = "closed_periods"

    period: Mapped[str] = mapped_column(String(7), primary_key=True)
    closed_at: Mapped[datetime] = mapped_column(UTCDateTime)
    closed_by: Mapped[str] = mapped_column(String(160))
    last_entry_id: Mapped[int] = mapped_column(BigInteger)
