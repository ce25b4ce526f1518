"""Closed months in the reports: entries recorded for a job of an already closed month.

A closed month is frozen at the last ledger entry committed when it closed. An entry recorded
later for one of its jobs never changes it: it is reported, as a correction, in the month in
which it was recorded (the chargeback's correction lines, FOCUS's ``Correction`` rows).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, and_, select
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.core.periods import month_bounds
from gateway.jobs.models import Job
from gateway.ledger.models import ClosedPeriod, EntryKind, LedgerEntry
from gateway.tenancy.models import Team

SETTLEMENTS = (EntryKind.CAPTURE, EntryKind.RELEASE)
"""The kinds of entry that settle a job (at most one per job)."""


@dataclass(frozen=True)
class CorrectionLine:
    """An entry recorded this month for a job of an earlier, already closed month."""

    original_period: str
    team: str
    cost_center: str | None
    kind: EntryKind
    job_id: str
    upstream_job_id: str | None
    amount_micro_usd: int
    recorded_at: datetime

    @property
    def billed_micro_usd(self) -> int:
        return self.amount_micro_usd if self.kind == EntryKind.CAPTURE else 0


def recorded_late(month: str, mark: int | None) -> ColumnElement[bool]:
    """Entries recorded during ``month`` for another month's jobs after that month closed.

    The statement must join ``ClosedPeriod`` on the entry's period. ``mark``: the last entry
    that counts when ``month`` is itself closed (None when it is open).
    """
    start, end = month_bounds(month)
    late = and_(
        LedgerEntry.period != month,
        LedgerEntry.id > ClosedPeriod.last_entry_id,
        LedgerEntry.created_at >= start,
        LedgerEntry.created_at < end,
    )
    if mark is not None:
        late = and_(late, LedgerEntry.id <= mark)
    return late


async def corrections(
    session: AsyncSession, month: str, filters: list[ColumnElement[bool]], mark: int | None
) -> list[CorrectionLine]:
    """The settlements recorded late (``recorded_late``) in ``month``, oldest first."""
    stmt = (
        select(LedgerEntry, Job.upstream_job_id, Team.name, Team.cost_center)
        .join(Job, Job.id == LedgerEntry.job_id)
        .join(Team, Team.id == Job.team_id)
        .join(ClosedPeriod, ClosedPeriod.period == LedgerEntry.period)
        .where(LedgerEntry.kind.in_(SETTLEMENTS), recorded_late(month, mark), *filters)
        .order_by(LedgerEntry.created_at, LedgerEntry.id)
    )
    return [
        CorrectionLine(
            original_period=entry.period,
            team=team,
            cost_center=cost_center,
            kind=entry.kind,
            job_id=entry.job_id,
            upstream_job_id=upstream_job_id,
            amount_micro_usd=entry.amount_micro_usd,
            recorded_at=entry.created_at,
        )
        for entry, upstream_job_id, team, cost_center in (await session.execute(stmt)).all()
    ]
