"""Every query on the jobs table. State moves are conditional updates, never blind writes."""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.db.base import utcnow
from gateway.jobs.models import Job, JobState


async def insert(session: AsyncSession, job: Job) -> None:
    session.add(job)
    await session.flush()


async def find_for_team(session: AsyncSession, upstream_job_id: str, team_id: int) -> Job | None:
    """The team's job with that upstream id; None for unknown ids and other teams' jobs alike."""
    stmt = select(Job).where(Job.upstream_job_id == upstream_job_id, Job.team_id == team_id)
    return (await session.execute(stmt)).scalar_one_or_none()


async def move_from_pending(
    session: AsyncSession,
    job_id: str,
    state: JobState,
    *,
    upstream_http_status: int | None,
    upstream_job_id: str | None = None,
) -> bool:
    """Record the upstream's answer to the submit. Only a pending job moves (True if it did)."""
    values: dict[str, object] = {
        "state": state.value,
        "upstream_http_status": upstream_http_status,
        "updated_at": utcnow(),
    }
    if upstream_job_id is not None:
        values["upstream_job_id"] = upstream_job_id
    stmt = update(Job).where(Job.id == job_id, Job.state == JobState.PENDING.value).values(**values)
    result = await session.execute(stmt)
    return bool(getattr(result, "rowcount", 0))
