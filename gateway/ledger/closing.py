"""Closing a month: finance freezes its chargeback. The ledger is never edited; entries for
the month's jobs recorded after the close are reported as corrections in the month in which
they are recorded (``reports.chargeback``)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.audit import service as audit
from gateway.audit.service import Actor
from gateway.core.periods import month_bounds, period_of
from gateway.db.session import dialect_name
from gateway.errors import Conflict, InvalidRequest
from gateway.ledger.models import ClosedPeriod, LedgerEntry


async def close_period(
    session: AsyncSession, period: str, *, actor: Actor, now: datetime
) -> ClosedPeriod:
    month_bounds(period)
    if period >= period_of(now):
        raise InvalidRequest(
            f"{period} has not ended yet; only past months can be closed",
            code="period_not_ended",
            param="month",
        )
    if await session.get(ClosedPeriod, period) is not None:
        raise Conflict(f"{period} is already closed", code="period_closed", param="month")
    if dialect_name(session) == "postgresql":
        # Waits for entries being written to commit and holds new ones back until this close
        # commits (milliseconds): every entry up to the mark is committed, every later one is
        # after it. (SQLite: one process, writes are serialised anyway.)
        await session.execute(text("LOCK TABLE ledger_entries IN SHARE MODE"))
    last_entry_id = (
        await session.execute(select(func.coalesce(func.max(LedgerEntry.id), 0)))
    ).scalar_one()
    closed = ClosedPeriod(
        period=period, closed_at=now, closed_by=actor.name[:160], last_entry_id=last_entry_id
    )
    session.add(closed)
    await session.flush()
    await audit.record(
        session,
        actor,
        "period.close",
        "period",
        period,
        after={"closed_at": now.isoformat(), "last_entry_id": last_entry_id},
    )
    return closed


async def closed_periods(session: AsyncSession) -> Sequence[ClosedPeriod]:
    return (
        (await session.execute(select(ClosedPeriod).order_by(ClosedPeriod.period))).scalars().all()
    )
