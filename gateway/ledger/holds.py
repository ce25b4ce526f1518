"""Opening a job's account: reserve its price against the budget, record the job and its hold
entry, all in the caller's transaction (so they commit together or not at all).

The job and its entry are written first and the reservation last: the reservation locks the
team's balance row until commit, and every concurrent submit of that team queues on that lock,
so it must be the transaction's final statement (a refused reservation rolls the rows back)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from gateway.jobs.models import Job, JobState
from gateway.ledger import quotas
from gateway.ledger.models import EntryKind, LedgerEntry
from gateway.ledger.quotas import BudgetPolicy, PeriodBalance, TeamQuota


async def place_hold(
    session: AsyncSession, team: TeamQuota, job: Job, *, policy: BudgetPolicy, now: datetime
) -> PeriodBalance:
    """Hold ``job.estimate_micro_usd`` for the new ``job`` in its period, or raise
    ``QuotaExceeded``. The job is inserted ``pending``; nothing is committed here."""
    assert job.state == JobState.PENDING
    assert job.team_id == team.team_id
    session.add(job)
    session.add(LedgerEntry.for_job(job, EntryKind.HOLD, job.estimate_micro_usd, now=now))
    await session.flush()
    return await quotas.reserve_hold(
        session, team, period=job.period, amount=job.estimate_micro_usd, now=now, policy=policy
    )
