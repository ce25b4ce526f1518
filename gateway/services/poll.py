"""Poll: only the owning team's jobs (another team's job and an unknown id get the same 404);
a settled job is answered from the gateway's record without calling upstream; a terminal answer
from upstream settles the job, exactly once; an acceptance still waiting in the outbox (the
database was away when it came) is recorded on the spot, so the job is its owner's at once."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from gateway.core.clock import utcnow
from gateway.core.periods import period_of
from gateway.db.session import autocommit
from gateway.errors import (
    NotFound,
    UpstreamInvalidResponse,
)
from gateway.jobs import repository as jobs
from gateway.jobs.models import Job, JobState
from gateway.ledger import settlement
from gateway.ledger.quotas import PeriodBalance
from gateway.services import settling
from gateway.services.proxy import JOB_ID, ProxiedResponse, ProxyDeps, pass_through
from gateway.tenancy.service import Principal

logger = logging.getLogger(__name__)

_MAX_JOB_ID_LENGTH = 128


@dataclass(frozen=True)
class FinishedJob:
    """A settled job, as a poll of it needs it: the upstream's terminal answer on record."""

    terminal_body: bytes


@dataclass(frozen=True)
class OpenJob:
    """An open job as one statement read it (column name to value): most polls of it find it
    still running, so its ORM object is built only for the poll that settles it."""

    columns: Mapping[str, Any]
    terminal_body: None = None

    @property
    def id(self) -> str:
        job_id: str = self.columns["id"]
        return job_id

    def to_job(self) -> Job:
        return Job(**self.columns)


async def find_job(session: AsyncSession, job_id: str, principal: Principal) -> Job | None:
    """The caller's job with that upstream id, read in the session that authenticated the
    caller (one pool checkout per poll); None for a malformed id without a query."""
    if not JOB_ID.fullmatch(job_id):
        return None
    return await jobs.find_for_team(session, job_id, principal.team_id)


async def poll_job(
    deps: ProxyDeps,
    principal: Principal,
    job_id: str,
    job: Job | FinishedJob | OpenJob | None,
    *,
    request_id: str,
) -> ProxiedResponse:
    """Answer a poll of ``job_id``; ``job`` is what ``find_job`` found for it."""
    outbox = deps.outbox
    if (
        job is None
        and JOB_ID.fullmatch(job_id)
        and await outbox.record_upstream_job(job_id, principal.team_id)
    ):
        # Accepted while the database was away: recorded just now from the outbox.
        async with autocommit(deps.sessionmaker) as session:
            job = await jobs.find_for_team(session, job_id, principal.team_id)
    if job is None:
        # Another team's job and an unknown id get the same answer, by design.
        raise NotFound(f"no job with id {job_id[:_MAX_JOB_ID_LENGTH]!r}", code="job_not_found")
    recorded = job.terminal_body
    if recorded is not None:
        # Settled: the gateway's own record answers; the upstream is not asked again.
        return ProxiedResponse(200, recorded, {"content-type": "application/json"}, job_id=job_id)
    assert not isinstance(job, FinishedJob)
    answer = await deps.upstream.get_job(job_id, request_id=request_id)
    if answer.status_code >= 400:
        return pass_through(answer, job_id=job_id)
    body = settlement.parse_poll_body(answer.body)
    if body is None:
        logger.warning("upstream answered a poll with a body that is not a JSON object")
        deps.metrics.upstream_errors.labels("invalid_response").inc()
        raise UpstreamInvalidResponse("the upstream answered with an unreadable body")
    vocabulary = deps.vocabulary
    response = pass_through(answer, job_id=job_id)
    if settlement.read_terminal(body, vocabulary) is None:  # still running (the usual poll)
        word = settlement.unknown_status_word(body, vocabulary)
        if word is not None:
            deps.metrics.unknown_status(word, job.id)
        return response
    job = job.to_job() if isinstance(job, OpenJob) else job
    settled = await settling.settle_from_poll(
        deps.sessionmaker, vocabulary, job, body, answer.body, now=utcnow()
    )
    if settled is None:  # settled meanwhile by another poll, replica or the reconciler
        return response
    settling.count_settlement(deps.metrics, principal.team_name, job, settled.plan)
    captured = settled.plan.captured if settled.plan.state is JobState.CAPTURED else None
    if job.period != period_of(utcnow()):
        # A job of an earlier month: the header keeps showing the current period's balance.
        return replace(response, captured_micro_usd=captured)
    return replace(
        response,
        balance=PeriodBalance.of(job.period, settled.balance),
        captured_micro_usd=captured,
    )
