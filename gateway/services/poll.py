"""Poll: only the owning team's jobs (another team's job and an unknown id get the same 404);
a settled job is answered from the gateway's record without calling upstream; a terminal answer
from upstream settles the job, exactly once; an acceptance still waiting in the outbox (the
database was away when it came) is recorded on the spot, so the job is its owner's at once."""

from __future__ import annotations

import logging
from dataclasses import replace

from gateway.core.clock import utcnow
from gateway.db.session import autocommit
from gateway.errors import (
    NotFound,
    UpstreamInvalidResponse,
)
from gateway.jobs import repository as jobs
from gateway.jobs.models import JobState
from gateway.ledger import settlement
from gateway.ledger.quotas import PeriodBalance
from gateway.services import settling
from gateway.services.proxy import JOB_ID, ProxiedResponse, ProxyDeps, pass_through
from gateway.tenancy.service import Principal

logger = logging.getLogger(__name__)

_MAX_JOB_ID_LENGTH = 128


async def poll_job(
    deps: ProxyDeps, principal: Principal, job_id: str, *, request_id: str
) -> ProxiedResponse:
    # Another team's job and an unknown id get the same answer, by design.
    not_found = NotFound(f"no job with id {job_id[:_MAX_JOB_ID_LENGTH]!r}", code="job_not_found")
    if not JOB_ID.fullmatch(job_id):
        raise not_found
    async with autocommit(deps.sessionmaker) as session:
        job = await jobs.find_for_team(session, job_id, principal.team_id)
    if job is None and await deps.outbox.record_upstream_job(job_id, principal.team_id):
        # Accepted while the database was away: recorded just now from the outbox.
        async with autocommit(deps.sessionmaker) as session:
            job = await jobs.find_for_team(session, job_id, principal.team_id)
    if job is None:
        raise not_found
    if job.terminal_body is not None:
        # Settled: the gateway's own record answers; the upstream is not asked again.
        return ProxiedResponse(
            200, job.terminal_body, {"content-type": "application/json"}, job_id=job_id
        )
    answer = await deps.upstream.get_job(job_id, request_id=request_id)
    if answer.status_code >= 400:
        return pass_through(answer, job_id=job_id)
    body = settlement.parse_poll_body(answer.body)
    if body is None:
        logger.warning("upstream answered a poll with a body that is not a JSON object")
        deps.metrics.upstream_errors.labels("invalid_response").inc()
        raise UpstreamInvalidResponse("the upstream answered with an unreadable body")
    vocabulary = settlement.vocabulary_from(deps.settings)
    settled = await settling.settle_from_poll(
        deps.sessionmaker, vocabulary, job, body, answer.body, now=utcnow()
    )
    response = pass_through(answer, job_id=job_id)
    if settled is None:
        if settlement.read_terminal(body, vocabulary) is None:
            word = settlement.unknown_status_word(body, vocabulary)
            if word is not None:
                deps.metrics.unknown_status(word, job.id)
        return response
    settling.count_settlement(deps.metrics, principal.team_name, job, settled.plan)
    captured = settled.plan.captured if settled.plan.state is JobState.CAPTURED else None
    return replace(
        response,
        balance=PeriodBalance.of(job.period, settled.balance),
        captured_micro_usd=captured,
    )
