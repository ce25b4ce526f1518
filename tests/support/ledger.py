"""Reading the ledger back for assertions (never writing it: tests go through the gateway)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.jobs.models import Job
from gateway.ledger.models import LedgerEntry, TeamBalance
from gateway.tenancy.models import Team
from tests.support.savepoint import Database
from tests.support.tenants import in_session


@dataclass(frozen=True)
class TeamLedger:
    jobs: list[Job]
    entries: list[LedgerEntry]
    balances: list[TeamBalance]

    def entries_of(self, job_id: str) -> list[tuple[str, int]]:
        return [(e.kind, e.amount_micro_usd) for e in self.entries if e.job_id == job_id]

    def job_by_upstream_id(self, upstream_job_id: str) -> Job:
        (job,) = [j for j in self.jobs if j.upstream_job_id == upstream_job_id]
        return job

    @property
    def balance(self) -> TeamBalance:
        (balance,) = self.balances
        return balance


def team_ledger(database: Database, team: str) -> TeamLedger:
    async def _read(session: AsyncSession) -> TeamLedger:
        team_id = (await session.execute(select(Team.id).where(Team.name == team))).scalar_one()
        jobs = (
            await session.execute(
                select(Job).where(Job.team_id == team_id).order_by(Job.created_at)
            )
        ).scalars()
        entries = (
            await session.execute(
                select(LedgerEntry).where(LedgerEntry.team_id == team_id).order_by(LedgerEntry.id)
            )
        ).scalars()
        balances = (
            await session.execute(select(TeamBalance).where(TeamBalance.team_id == team_id))
        ).scalars()
        return TeamLedger(list(jobs), list(entries), list(balances))

    return in_session(database, _read)
