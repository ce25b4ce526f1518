"""The drop-in proxy: submit and poll, with the gateway's record kept around each call.

Submit order matters for money: validate and price first (nothing is forwarded or recorded for
a bad request), then record the job *before* forwarding (a database that cannot be written
means 503 and nothing forwarded: fail closed), then forward, then record the upstream's answer.
The network call sits between two short transactions, never inside one.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from dataclasses import dataclass, field
from decimal import Decimal

from sqlalchemy.exc import SQLAlchemyError

from gateway.catalog.validation import parse_submission
from gateway.db.base import utcnow
from gateway.db.session import transaction
from gateway.errors import NotFound, UpstreamError, UpstreamInvalidResponse, UpstreamTimeout
from gateway.jobs import repository as jobs
from gateway.jobs.models import Job, JobState
from gateway.ledger.pricing import format_usd, price_request
from gateway.runtime import Runtime
from gateway.tenancy.service import Principal
from gateway.upstream.client import UpstreamResponse

logger = logging.getLogger(__name__)

# What an upstream job id may look like before we use it in a query or an upstream URL.
_JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
_MAX_JOB_ID_LENGTH = 128


@dataclass(frozen=True)
class ProxiedResponse:
    """What goes back to the client: the upstream's status and bytes, plus our headers."""

    status_code: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    job_id: str | None = None
    upstream_seconds: float | None = None


async def submit_generation(
    runtime: Runtime, principal: Principal, raw_body: bytes, *, request_id: str
) -> ProxiedResponse:
    request = parse_submission(raw_body, runtime.catalog)
    units = request.billable_units()
    card = request.model.pricing.rate_card.to_rate_card()
    estimate = price_request(units, card)
    job = Job(
        id=uuid.uuid4().hex,
        team_id=principal.team_id,
        api_key_id=principal.key_id,
        state=JobState.PENDING.value,
        model=request.model.id,
        duration_ms=_to_milliseconds(units.duration_seconds),
        resolution=units.resolution,
        image_count=units.image_count,
        estimate_micro_usd=estimate,
        rate_card_version=card.version,
        request_id=request_id,
        created_at=utcnow(),
    )
    async with transaction(runtime.sessionmaker) as session:
        await jobs.insert(session, job)

    try:
        answer = await runtime.upstream.submit(raw_body, request_id=request_id)
    except UpstreamTimeout:
        # The upstream may or may not have started the job: keep it visible for review.
        await _record_answer(runtime, job.id, JobState.UNKNOWN, None)
        raise
    except UpstreamError:
        await _record_answer(runtime, job.id, JobState.REJECTED, None)
        raise

    estimate_header = {"X-Gateway-Cost-Estimate-USD": format_usd(estimate)}
    if answer.status_code >= 400:
        await _record_answer(runtime, job.id, JobState.REJECTED, answer.status_code)
        return _pass_through(answer, extra=estimate_header)
    try:
        upstream_job_id = _accepted_job_id(answer)
    except UpstreamInvalidResponse:
        await _record_answer(runtime, job.id, JobState.UNKNOWN, answer.status_code)
        raise
    await _record_answer(
        runtime, job.id, JobState.SUBMITTED, answer.status_code, upstream_job_id=upstream_job_id
    )
    return _pass_through(answer, extra=estimate_header, job_id=upstream_job_id)


async def poll_job(
    runtime: Runtime, principal: Principal, job_id: str, *, request_id: str
) -> ProxiedResponse:
    # Another team's job and an unknown id get the same answer, by design.
    not_found = NotFound(f"no job with id {job_id[:_MAX_JOB_ID_LENGTH]!r}", code="job_not_found")
    if not _JOB_ID.fullmatch(job_id):
        raise not_found
    async with transaction(runtime.sessionmaker) as session:
        job = await jobs.find_for_team(session, job_id, principal.team_id)
    if job is None:
        raise not_found
    answer = await runtime.upstream.get_job(job_id, request_id=request_id)
    if answer.status_code < 400:
        _json_object(answer)
    return _pass_through(answer, job_id=job_id)


def _pass_through(
    answer: UpstreamResponse, *, extra: dict[str, str] | None = None, job_id: str | None = None
) -> ProxiedResponse:
    headers = dict(answer.headers)
    if extra:
        headers.update(extra)
    return ProxiedResponse(
        status_code=answer.status_code,
        body=answer.body,
        headers=headers,
        job_id=job_id,
        upstream_seconds=answer.elapsed_seconds,
    )


def _json_object(answer: UpstreamResponse) -> dict[str, object]:
    try:
        body = json.loads(answer.body)
    except (ValueError, UnicodeDecodeError):
        body = None
    if not isinstance(body, dict):
        logger.warning(
            "upstream answered HTTP %s with a body that is not a JSON object", answer.status_code
        )
        raise UpstreamInvalidResponse("the upstream answered with an unreadable body")
    return body


def _accepted_job_id(answer: UpstreamResponse) -> str:
    job_id = _json_object(answer).get("job_id")
    if not isinstance(job_id, str) or not _JOB_ID.fullmatch(job_id):
        logger.warning("upstream accepted a submit without a usable job_id")
        raise UpstreamInvalidResponse("the upstream's answer has no usable job_id")
    return job_id


async def _record_answer(
    runtime: Runtime,
    job_id: str,
    state: JobState,
    http_status: int | None,
    *,
    upstream_job_id: str | None = None,
) -> None:
    """Record the upstream's answer. The client still gets that answer if this write fails:
    the upstream has already acted, and hiding its job id would only cause a duplicate."""
    try:
        async with transaction(runtime.sessionmaker) as session:
            await jobs.move_from_pending(
                session,
                job_id,
                state,
                upstream_http_status=http_status,
                upstream_job_id=upstream_job_id,
            )
    except (SQLAlchemyError, OSError):
        logger.exception(
            "could not record the upstream's answer; job left pending",
            extra={
                "gateway_job_id": job_id,
                "upstream_job_id": upstream_job_id,
                "state": state.value,
            },
        )


def _to_milliseconds(seconds: Decimal | int) -> int:
    # Durations are validated to at most 3 decimal places, so this is exact.
    return int(Decimal(seconds) * 1000)
