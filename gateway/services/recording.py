"""Recording the upstream's answer to a submit in the ledger.

Three answers, each recorded by conditional moves only, so recording one twice (a retry, two
processes replaying one outbox) or after the reconciler has moved on changes nothing:

    accepted ... pending → submitted, with the upstream's job id. A job an operator released
                 meanwhile keeps the id and is flagged for review: the upstream will bill it.
    refused .... pending → released: the hold given back, the Idempotency-Key freed. Not if
                 the reconciler has claimed the job for a re-send: then it is the reconciler's.
    unknown .... pending → unknown: sent, but no usable answer; the hold waits for the
                 reconciler, and a retry with the same key replays the error.

The answer is plain data (``SubmitAnswer``), so one the database cannot take now is kept in the
outbox (``gateway.services.outbox``) and recorded later by this same code.
"""

from __future__ import annotations

import base64
import json
import logging
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.core.clock import utcnow
from gateway.errors import UpstreamInvalidResponse
from gateway.jobs import idempotency
from gateway.jobs import repository as jobs
from gateway.jobs.idempotency import StoredResponse
from gateway.jobs.models import Job, JobState
from gateway.ledger import settlement
from gateway.ledger.repository import PeriodAmounts

logger = logging.getLogger(__name__)

AnswerKind = Literal["accepted", "refused", "unknown"]


class UnknownJob(LookupError):
    """An answer for a job this database does not have (kept, never silently dropped)."""


@dataclass(frozen=True)
class SubmitAnswer:
    """What the upstream answered to one submit, as the ledger must record it."""

    kind: AnswerKind
    job_id: str
    """The gateway's job id."""
    team_id: int
    answered_at: datetime
    http_status: int | None = None
    upstream_job_id: str | None = None
    """Set when accepted: the id the client polls with."""
    release_reason: str | None = None
    """Set when refused: the release entry's reason."""
    next_check_at: datetime | None = None
    """When the reconciler should first look at the job."""
    idempotency_key: str | None = None
    response: StoredResponse | None = None
    """What a retry with the same Idempotency-Key is answered with."""
    request_kept: bool = True
    """Whether the submit's body was kept for a re-send (only when the upstream honours
    Idempotency-Key): only then is there a row to drop once the answer is recorded."""

    def to_json(self) -> bytes:
        response = self.response
        return json.dumps(
            {
                "kind": self.kind,
                "job_id": self.job_id,
                "team_id": self.team_id,
                "answered_at": self.answered_at.isoformat(),
                "http_status": self.http_status,
                "upstream_job_id": self.upstream_job_id,
                "release_reason": self.release_reason,
                "next_check_at": self.next_check_at.isoformat() if self.next_check_at else None,
                "idempotency_key": self.idempotency_key,
                "request_kept": self.request_kept,
                "response": None
                if response is None
                else {
                    "status_code": response.status_code,
                    "body": base64.b64encode(response.body).decode(),
                    "headers": response.headers,
                },
            },
            sort_keys=True,
        ).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> SubmitAnswer:
        data: dict[str, Any] = json.loads(raw)
        kind = data["kind"]
        if kind not in ("accepted", "refused", "unknown"):
            raise ValueError(f"unknown answer kind {kind!r}")
        stored = data.get("response")
        response = (
            None
            if stored is None
            else StoredResponse(
                int(stored["status_code"]),
                base64.b64decode(stored["body"]),
                {str(k): str(v) for k, v in stored["headers"].items()},
            )
        )
        next_check = data.get("next_check_at")
        return cls(
            kind=kind,
            job_id=str(data["job_id"]),
            team_id=int(data["team_id"]),
            answered_at=datetime.fromisoformat(data["answered_at"]),
            http_status=data.get("http_status"),
            upstream_job_id=data.get("upstream_job_id"),
            release_reason=data.get("release_reason"),
            next_check_at=datetime.fromisoformat(next_check) if next_check else None,
            idempotency_key=data.get("idempotency_key"),
            response=response,
            request_kept=bool(data.get("request_kept", True)),  # older files: drop, to be sure
        )


@dataclass(frozen=True)
class Released:
    """A refusal's release, when it happened: the job, what was settled, the new balance."""

    job: Job
    plan: settlement.SettlementPlan
    balance: PeriodAmounts


@dataclass(frozen=True)
class DuplicateJobId:
    """The upstream "accepted" the submit with the id of a job the ledger already has (for
    another submit): it cannot be both. The job is recorded as unknown (the hold waits for
    the reconciler) and flagged for review; the client is answered 502."""

    upstream_job_id: str


def duplicate_job_id_error() -> UpstreamInvalidResponse:
    return UpstreamInvalidResponse(
        "the upstream answered with the id of another job; the outcome of this request is unknown"
    )


async def record_answer(
    session: AsyncSession, answer: SubmitAnswer, job: Job | None = None
) -> Released | DuplicateJobId | None:
    """Record ``answer`` in the caller's transaction. ``job`` saves a read when the caller
    has it. Returns the release when a refusal gave the hold back, ``DuplicateJobId`` when an
    acceptance named another job's id, else None."""
    if answer.kind == "accepted":
        return await _record_acceptance(session, answer)
    if answer.kind == "unknown":
        await jobs.move_from_pending(
            session,
            answer.job_id,
            JobState.UNKNOWN,
            upstream_http_status=None,
            next_check_at=answer.next_check_at,
        )
        await _store_response(session, answer)
        return None
    if job is None:
        job = (await session.execute(select(Job).where(Job.id == answer.job_id))).scalar_one()
    plan = settlement.release(answer.release_reason or "upstream_refused")
    balance = await settlement.apply_settlement(
        session, job, plan, now=utcnow(), unless_claimed=True
    )
    if balance is None:
        return None
    await jobs.record_http_status(session, answer.job_id, answer.http_status)
    if answer.request_kept:
        await jobs.drop_request(session, answer.job_id)
    if answer.idempotency_key is not None:
        await idempotency.forget(
            session, team_id=answer.team_id, key=answer.idempotency_key, job_id=answer.job_id
        )
    return Released(job, plan, balance)


async def _record_acceptance(session: AsyncSession, answer: SubmitAnswer) -> DuplicateJobId | None:
    assert answer.upstream_job_id is not None
    moved = await jobs.move_from_pending(
        session,
        answer.job_id,
        JobState.SUBMITTED,
        upstream_http_status=answer.http_status,
        upstream_job_id=answer.upstream_job_id,
        next_check_at=answer.next_check_at,
    )
    if moved:
        pass
    elif await jobs.upstream_id_taken(session, answer.upstream_job_id, by_other_than=answer.job_id):
        logger.error(
            "the upstream accepted a submit with the id of another job; flagged for review",
            extra={"gateway_job_id": answer.job_id, "upstream_job_id": answer.upstream_job_id},
        )
        await jobs.move_from_pending(
            session,
            answer.job_id,
            JobState.UNKNOWN,
            upstream_http_status=answer.http_status,
            next_check_at=answer.next_check_at,
        )
        await jobs.flag_for_review(session, answer.job_id, utcnow())
        if answer.idempotency_key is not None:
            refusal = duplicate_job_id_error()
            error = StoredResponse(
                refusal.status_code,
                json.dumps(refusal.to_body()).encode(),
                {"content-type": "application/json"},
            )
            await _store_response(session, replace(answer, response=error))
        return DuplicateJobId(answer.upstream_job_id)
    elif not await jobs.job_exists(session, answer.job_id):
        # Never the case for the database this answer belongs to: refuse to drop it.
        raise UnknownJob(f"no job {answer.job_id!r} in this database")
    elif await jobs.record_late_acceptance(session, answer.job_id, answer.upstream_job_id):
        # Released meanwhile (by an operator): the upstream will bill a job the ledger
        # released. Its id is kept and it is flagged for review.
        logger.error(
            "the upstream accepted a submit whose hold was already released",
            extra={"gateway_job_id": answer.job_id, "upstream_job_id": answer.upstream_job_id},
        )
    if answer.request_kept:
        await jobs.drop_request(session, answer.job_id)
    await _store_response(session, answer)
    return None


async def _store_response(session: AsyncSession, answer: SubmitAnswer) -> None:
    if answer.idempotency_key is None or answer.response is None:
        return
    await idempotency.complete(
        session,
        team_id=answer.team_id,
        key=answer.idempotency_key,
        job_id=answer.job_id,
        response=answer.response,
    )
