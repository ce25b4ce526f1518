"""Every query on the jobs table. State moves are conditional updates, never blind writes."""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Select,
    Update,
    and_,
    bindparam,
    cast,
    delete,
    exists,
    func,
    literal,
    select,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from gateway.core.clock import utcnow
from gateway.db.direct import DirectStatements
from gateway.db.session import dialect_name
from gateway.jobs.models import OPEN_STATES, Job, JobRequest, JobState
from gateway.tenancy.models import Team


async def insert(session: AsyncSession, job: Job) -> None:
    session.add(job)
    await session.flush()


async def find_for_team(session: AsyncSession, upstream_job_id: str, team_id: int) -> Job | None:
    """The team's job with that upstream id; None for unknown ids and other teams' jobs alike."""
    stmt = select(Job).where(Job.upstream_job_id == upstream_job_id, Job.team_id == team_id)
    return (await session.execute(stmt)).scalar_one_or_none()


# Built once: a fresh alias costs its column proxies on first use (a seventh of a submit's CPU).
_OTHER_JOB = aliased(Job)


async def job_exists(session: AsyncSession, job_id: str) -> bool:
    stmt = select(Job.id).where(Job.id == job_id)
    return (await session.execute(stmt)).first() is not None


async def upstream_id_taken(
    session: AsyncSession, upstream_job_id: str, *, by_other_than: str
) -> bool:
    stmt = select(Job.id).where(Job.upstream_job_id == upstream_job_id, Job.id != by_other_than)
    return (await session.execute(stmt)).first() is not None


async def move_from_pending(
    session: AsyncSession,
    job_id: str,
    state: JobState,
    *,
    upstream_http_status: int | None,
    upstream_job_id: str | None = None,
    next_check_at: datetime | None = None,
    from_states: tuple[JobState, ...] = (JobState.PENDING,),
) -> bool:
    """Record the upstream's answer to the submit. Only a job still in ``from_states`` moves
    (True if it did), so a late answer never overrides a settlement; nor one whose
    ``upstream_job_id`` another job already has (same statement: no extra round trip)."""
    stmt = _move_statement(tuple(from_states), upstream_job_id is not None)
    params: dict[str, object] = {
        "move_job_id": job_id,
        "new_state": state,
        "new_http_status": upstream_http_status,
        "new_next_check_at": next_check_at,
        "new_updated_at": utcnow(),
    }
    if upstream_job_id is not None:
        params["new_upstream_job_id"] = upstream_job_id
    result = await session.execute(stmt, params)
    return bool(getattr(result, "rowcount", 0))


@functools.cache
def _move_statement(from_states: tuple[JobState, ...], with_upstream_id: bool) -> Update:
    """Built once per shape (it runs for every submit; SQLAlchemy's construction of a
    statement costs more CPU than its execution). No session synchronisation: the subquery
    cannot be evaluated in Python, and "fetch" would add a RETURNING; no caller reads a Job
    object of this session afterwards."""
    stmt = update(Job).where(Job.id == bindparam("move_job_id"), Job.state.in_(from_states))
    values: dict[str, Any] = {
        "state": bindparam("new_state"),
        "upstream_http_status": bindparam("new_http_status"),
        "next_check_at": bindparam("new_next_check_at"),
        "updated_at": bindparam("new_updated_at"),
    }
    if with_upstream_id:
        taken = exists().where(_OTHER_JOB.upstream_job_id == bindparam("new_upstream_job_id"))
        stmt = stmt.where(~taken)
        values["upstream_job_id"] = bindparam("new_upstream_job_id")
    return stmt.values(**values).execution_options(synchronize_session=False)


async def record_late_acceptance(session: AsyncSession, job_id: str, upstream_job_id: str) -> bool:
    """If the job was released before any acceptance of it was recorded, remember the
    upstream's id and flag the job (True). A job recorded as accepted meanwhile (by a
    re-send, or a retried write), whatever became of it since, is left alone (False)."""
    result = await session.execute(
        update(Job)
        .where(
            Job.id == job_id,
            Job.state == JobState.RELEASED,
            Job.upstream_job_id.is_(None),
        )
        .values(upstream_job_id=upstream_job_id, needs_review=True)
    )
    return bool(getattr(result, "rowcount", 0))


def keep_request(session: AsyncSession, job_id: str, body: bytes, now: datetime) -> None:
    """Stage the request body; it is written with the job at the next flush."""
    session.add(JobRequest(job_id=job_id, body=body, created_at=now))


async def drop_request(session: AsyncSession, job_id: str) -> None:
    await session.execute(delete(JobRequest).where(JobRequest.job_id == job_id))


async def unanswered_due_for_resend(
    session: AsyncSession, *, now: datetime, created_after: datetime, limit: int
) -> Sequence[tuple[Job, bytes]]:
    """Unanswered submits created after ``created_after`` whose body is kept and whose next
    try is due, locked for this pass."""
    stmt = (
        select(Job, JobRequest.body)
        .join(JobRequest, JobRequest.job_id == Job.id)
        .where(
            Job.state.in_([JobState.PENDING, JobState.UNKNOWN]),
            Job.next_check_at <= now,
            Job.created_at > created_after,
        )
        .order_by(Job.next_check_at)
        .limit(limit)
        .with_for_update(of=Job, skip_locked=True)
    )
    return [(job, body) for job, body in (await session.execute(stmt)).all()]


async def record_http_status(session: AsyncSession, job_id: str, status: int | None) -> None:
    if status is not None:
        await session.execute(
            update(Job).where(Job.id == job_id).values(upstream_http_status=status)
        )


async def due_for_check(session: AsyncSession, *, now: datetime, limit: int) -> Sequence[Job]:
    """Submitted jobs whose next check is due, locked so other replicas skip them."""
    stmt = (
        select(Job)
        .where(Job.state == JobState.SUBMITTED, Job.next_check_at <= now)
        .order_by(Job.next_check_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return (await session.execute(stmt)).scalars().all()


async def submitted_after(session: AsyncSession, after: str, *, limit: int) -> Sequence[Job]:
    """One page of every submitted job, due or not, by id after ``after`` (a full sweep),
    locked so other replicas skip them."""
    stmt = (
        select(Job)
        .where(Job.state == JobState.SUBMITTED, Job.id > after)
        .order_by(Job.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return (await session.execute(stmt)).scalars().all()


async def count_submitted(session: AsyncSession) -> int:
    stmt = select(func.count()).select_from(Job).where(Job.state == JobState.SUBMITTED)
    return int((await session.execute(stmt)).scalar_one())


async def schedule_next_check(
    session: AsyncSession, job_id: str, *, at: datetime, attempts: int
) -> None:
    await session.execute(
        update(Job)
        .where(Job.id == job_id, Job.state == JobState.SUBMITTED)
        .values(next_check_at=at, check_attempts=attempts)
    )


async def schedule_unanswered_check(
    session: AsyncSession, job_id: str, *, at: datetime, attempts: int
) -> None:
    await session.execute(
        update(Job)
        .where(Job.id == job_id, Job.state.in_([JobState.PENDING, JobState.UNKNOWN]))
        .values(next_check_at=at, check_attempts=attempts)
    )


async def unanswered_before(session: AsyncSession, cutoff: datetime, limit: int) -> Sequence[Job]:
    """Pending or unknown jobs created before ``cutoff``: their submit never got an answer."""
    stmt = (
        select(Job)
        .where(
            Job.state.in_([JobState.PENDING, JobState.UNKNOWN]),
            Job.created_at < cutoff,
        )
        # Jobs already flagged (one the ledger refused to release, say) last, so a batch of
        # them never keeps the others waiting.
        .order_by(Job.needs_review, Job.created_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return (await session.execute(stmt)).scalars().all()


async def lock_unanswered(session: AsyncSession, job_id: str) -> Job | None:
    """The job, locked, if it is still pending or unknown (else None: skip it)."""
    stmt = (
        select(Job)
        .where(
            Job.id == job_id,
            Job.state.in_([JobState.PENDING, JobState.UNKNOWN]),
        )
        .with_for_update(skip_locked=True)
    )
    return (await session.execute(stmt)).scalar_one_or_none()


async def flag_for_review(session: AsyncSession, job_id: str, now: datetime) -> None:
    await session.execute(
        update(Job)
        .where(Job.id == job_id)
        .values(flagged_at=func.coalesce(Job.flagged_at, now), needs_review=True)
    )


async def flag_old_holds(session: AsyncSession, cutoff: datetime, now: datetime) -> Sequence[str]:
    stmt = (
        update(Job)
        .where(
            Job.state.in_([JobState.PENDING, JobState.SUBMITTED, JobState.UNKNOWN]),
            Job.created_at < cutoff,
            Job.flagged_at.is_(None),
        )
        .values(flagged_at=now, needs_review=True)
        .returning(Job.id)
    )
    return (await session.execute(stmt)).scalars().all()


async def list_jobs(
    session: AsyncSession,
    *,
    limit: int,
    after: tuple[datetime, str] | None = None,
    team_id: int | None = None,
    state: str | None = None,
    period: str | None = None,
) -> Sequence[tuple[Job, str]]:
    """Jobs newest first with their team's name; ``after`` is the (created_at, id) of the last
    job of the previous page (keyset pagination: stable and fast on big tables)."""
    stmt = (
        select(Job, Team.name)
        .join(Team, Team.id == Job.team_id)
        .order_by(Job.created_at.desc(), Job.id.desc())
        .limit(limit)
    )
    if after is not None:
        created_at, job_id = after
        stmt = stmt.where(
            (Job.created_at < created_at) | ((Job.created_at == created_at) & (Job.id < job_id))
        )
    if team_id is not None:
        stmt = stmt.where(Job.team_id == team_id)
    if state is not None:
        stmt = stmt.where(Job.state == state)
    if period is not None:
        stmt = stmt.where(Job.period == period)
    return [(job, name) for job, name in (await session.execute(stmt)).all()]


async def find_any(session: AsyncSession, job_id: str) -> tuple[Job, str] | None:
    """A job by the gateway's id or the upstream's, with its team's name (admin view)."""
    stmt = (
        select(Job, Team.name)
        .join(Team, Team.id == Job.team_id)
        .where((Job.id == job_id) | (Job.upstream_job_id == job_id))
    )
    row = (await session.execute(stmt)).first()
    return (row[0], row[1]) if row is not None else None


# ``move_from_pending`` to ``submitted`` with the upstream's id, and ``drop_request``, in one
# committed statement: nothing moves if another job has that id already or the job is no
# longer pending (then the caller records the answer through the ORM, which tells the cases
# apart).
_ACCEPT = """
WITH moved AS (
    UPDATE jobs
    SET state = 'submitted', upstream_http_status = $2, upstream_job_id = $3,
        next_check_at = $4, updated_at = $5
    WHERE id = $1 AND state = 'pending'
      AND NOT EXISTS (SELECT 1 FROM jobs other WHERE other.upstream_job_id = $3)
    RETURNING id
), dropped AS (
    DELETE FROM job_requests WHERE $6::boolean AND job_id IN (SELECT id FROM moved)
)
SELECT count(*) FROM moved
"""


async def accept_pending_direct(
    direct: DirectStatements,
    job_id: str,
    *,
    upstream_http_status: int,
    upstream_job_id: str,
    next_check_at: datetime | None,
    drop_request: bool,
    now: datetime,
) -> bool:
    """True if the pending job moved to ``submitted`` (and its kept request was dropped)."""
    row = await direct.fetchrow(
        _ACCEPT, job_id, upstream_http_status, upstream_job_id, next_check_at, now, drop_request
    )
    return row is not None and row[0] == 1


async def list_team_jobs(
    session: AsyncSession,
    team_id: int,
    *,
    limit: int,
    before: tuple[datetime, str] | None = None,
    state: str | None = None,
    project_id: int | None = None,
    tag: tuple[str, str] | None = None,
    created_from: datetime | None = None,
    created_before: datetime | None = None,
) -> Sequence[Job]:
    """One team's jobs newest first on ``(created_at, id)``; ``before`` is that pair of the
    last job of the previous page (keyset pagination: a deep page costs what the first does).
    ``tag`` is a ``(key, value)`` the job's tags must hold; ``created_from`` and
    ``created_before`` bound the submit time (a UTC day, say).

    With a tag, on Postgres: the newest ``_TAG_WINDOW`` jobs in range are looked at first (a
    page of a common tag is among them); if they do not fill the page, the jobs carrying the
    tag are read from its index (``ix_jobs_tags``) and sorted instead. A walk newest first
    under a LIMIT (the planner's own choice) would read every job of the team for a tag that
    few or none carry."""
    in_range: list[ColumnElement[bool]] = [Job.team_id == team_id]
    if before is not None:
        in_range.append(tuple_(Job.created_at, Job.id) < tuple_(*before))
    if created_from is not None:
        in_range.append(Job.created_at >= created_from)
    if created_before is not None:
        in_range.append(Job.created_at < created_before)

    def page(source: Any) -> Select[Job]:
        """A page of ``source`` (the jobs table, or a subquery of it) with the filters."""
        stmt = select(source).order_by(source.created_at.desc(), source.id.desc()).limit(limit)
        if state is not None:
            stmt = stmt.where(source.state == state)
        if project_id is not None:
            stmt = stmt.where(source.project_id == project_id)
        if tag is not None:
            stmt = stmt.where(_has_tag(session, *tag, tags=source.tags))
        return stmt

    if tag is None or dialect_name(session) != "postgresql":
        return (await session.execute(page(Job).where(*in_range))).scalars().all()
    newest = (
        select(Job)
        .where(*in_range)
        .order_by(Job.created_at.desc(), Job.id.desc())
        .limit(_TAG_WINDOW)
        .subquery("newest")
    )
    found = (await session.execute(page(aliased(Job, newest)))).scalars().all()
    if len(found) == limit:
        return found
    tagged = (select(Job.id).where(*in_range, _has_tag(session, *tag)).cte("tagged")).prefix_with(
        "MATERIALIZED"
    )
    stmt = page(Job).join(tagged, tagged.c.id == Job.id)
    return (await session.execute(stmt)).scalars().all()


_TAG_WINDOW = 2000
"""How many of the newest jobs in range a tag filter looks at before it turns to the tag's
index."""


def _has_tag(
    session: AsyncSession, key: str, value: str, *, tags: Any = Job.tags
) -> ColumnElement[bool]:
    """On Postgres, containment on the tags as ``jsonb``: what the partial GIN index
    ``ix_jobs_tags`` (migration 0009) answers, so a tag no job has costs an index lookup.
    ``tags``: the column (of the table, or of a subquery of it)."""
    if dialect_name(session) == "postgresql":
        wanted = cast(literal(json.dumps({key: value})), JSONB)
        return and_(tags.is_not(None), cast(tags, JSONB).op("@>")(wanted))
    matches: ColumnElement[bool] = tags[key].as_string() == value
    return matches


async def get_team_job(session: AsyncSession, job_id: str, team_id: int) -> Job | None:
    """The team's job by the gateway's own id; None for unknown ids and other teams' jobs."""
    stmt = select(Job).where(Job.id == job_id, Job.team_id == team_id)
    return (await session.execute(stmt)).scalar_one_or_none()


async def open_needing_review(session: AsyncSession, *, limit: int) -> Sequence[tuple[Job, str]]:
    """Open jobs flagged for review (a hold too old, a late acceptance...), oldest first, with
    their team's name."""
    stmt = (
        select(Job, Team.name)
        .join(Team, Team.id == Job.team_id)
        .where(Job.needs_review.is_(True), Job.state.in_(OPEN_STATES))
        .order_by(Job.created_at)
        .limit(limit)
    )
    return [(job, name) for job, name in (await session.execute(stmt)).all()]
