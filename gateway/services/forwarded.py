"""After the forward: the upstream's answer to a submit recorded in the ledger, retried briefly
if the database falters, and kept in the outbox if it still cannot be written."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from gateway.config import Settings
from gateway.core.clock import utcnow
from gateway.db.session import transaction
from gateway.errors import (
    GatewayError,
)
from gateway.jobs import repository as jobs
from gateway.jobs.idempotency import StoredResponse
from gateway.jobs.models import Job
from gateway.ledger.quotas import PeriodBalance
from gateway.services import settling
from gateway.services.proxy import ProxiedResponse, ProxyDeps
from gateway.services.recording import (
    AnswerKind,
    DuplicateJobId,
    Released,
    SubmitAnswer,
    duplicate_job_id_error,
    record_answer,
)
from gateway.upstream.client import UpstreamResponse

logger = logging.getLogger(__name__)

_RECORD_RETRY_DELAYS = (0.0, 0.2, 1.0)


@dataclass(frozen=True)
class Release:
    """A submit's own release: the team's new balance, or None if the job was not released
    (the reconciler had claimed it, or the database could not record it: left open)."""

    balance: PeriodBalance | None


@dataclass
class AfterForward:
    """Records the upstream's answer to a submit, retrying briefly if the database falters.
    If it still fails, the answer goes to the outbox (durable, retried until the database is
    back) and the client gets the upstream's answer anyway: the upstream has acted, and hiding
    its job id would only cause a retry and a second job."""

    deps: ProxyDeps
    job: Job
    team_name: str
    idempotency_key: str | None
    on_balance: Callable[[PeriodBalance], None]

    async def accepted(
        self, upstream_job_id: str, answer: UpstreamResponse, response: ProxiedResponse
    ) -> None:
        first_check = utcnow() + timedelta(
            seconds=self.deps.settings.reconciler_first_check_after_seconds
        )
        recorded = await self._record(
            self._answer(
                "accepted",
                http_status=answer.status_code,
                upstream_job_id=upstream_job_id,
                next_check_at=first_check,
                response=response,
            )
        )
        if isinstance(recorded, DuplicateJobId):
            self.deps.metrics.upstream_errors.labels("invalid_response").inc()
            raise duplicate_job_id_error()

    async def refused(self, reason: str, *, answer: UpstreamResponse | None = None) -> Release:
        """Nothing was created upstream: release the hold, let the key be used again. Not if
        the reconciler has claimed the job meanwhile (this request was held up for longer than
        the re-send delay): from then on the job is the reconciler's. Nor, for now, if the
        release cannot be recorded: it waits in the outbox, and until then the job is open."""
        released = await self._record(
            self._answer(
                "refused",
                http_status=answer.status_code if answer else None,
                release_reason=reason,
            )
        )
        if not isinstance(released, Released):
            return Release(None)
        settling.count_settlement(self.deps.metrics, self.team_name, self.job, released.plan)
        view = PeriodBalance.of(self.job.period, released.balance)
        self.on_balance(view)
        return Release(view)

    async def unknown(self, error: GatewayError) -> None:
        """Sent, outcome unknown: keep the hold, and replay this error to a retry with the same
        key rather than risk a second job."""
        stored = ProxiedResponse(
            error.status_code,
            json.dumps(error.to_body()).encode(),
            {"content-type": "application/json"},
        )
        await self._record(
            self._answer(
                "unknown",
                next_check_at=utcnow() + unanswered_recheck(self.deps.settings),
                response=stored,
            )
        )

    def _answer(
        self, kind: AnswerKind, *, response: ProxiedResponse | None = None, **fields: Any
    ) -> SubmitAnswer:
        stored = None
        if response is not None and self.idempotency_key is not None:
            stored = StoredResponse(response.status_code, response.body, dict(response.headers))
        return SubmitAnswer(
            kind=kind,
            job_id=self.job.id,
            team_id=self.job.team_id,
            answered_at=utcnow(),
            idempotency_key=self.idempotency_key,
            response=stored,
            request_kept=self.deps.settings.upstream_honors_idempotency_key,
            **fields,
        )

    async def _record(self, answer: SubmitAnswer) -> Released | DuplicateJobId | None:
        """Record ``answer`` in its own transaction, retried twice on a database error (each
        attempt rolls back entirely, so retrying is safe); kept in the outbox if all fail."""
        for attempt, delay in enumerate(_RECORD_RETRY_DELAYS):
            if delay:
                await asyncio.sleep(delay)
            try:
                return await self._record_once(answer)
            except (SQLAlchemyError, OSError) as exc:
                self.deps.db_health.observe(exc)
                if attempt == len(_RECORD_RETRY_DELAYS) - 1:
                    logger.exception(
                        "could not record the upstream's answer; keeping it in the outbox",
                        extra={"gateway_job_id": self.job.id, "outcome": answer.kind},
                    )
        await self.deps.outbox.keep(answer)
        return None

    async def _record_once(self, answer: SubmitAnswer) -> Released | DuplicateJobId | None:
        """The common answer (accepted, with no Idempotency-Key response to store) in one
        statement; any other, or one that statement could not move, through the ORM."""
        direct = self.deps.direct
        if (
            direct is not None
            and answer.kind == "accepted"
            and answer.response is None
            and answer.upstream_job_id is not None
            and answer.http_status is not None
            and await jobs.accept_pending_direct(
                direct,
                answer.job_id,
                upstream_http_status=answer.http_status,
                upstream_job_id=answer.upstream_job_id,
                next_check_at=answer.next_check_at,
                drop_request=answer.request_kept,
                now=answer.answered_at,
            )
        ):
            return None
        async with transaction(self.deps.sessionmaker) as session:
            return await record_answer(session, answer, self.job)


def unanswered_recheck(settings: Settings) -> timedelta:
    """When the reconciler should look again at a submit still without an answer."""
    if settings.upstream_honors_idempotency_key:
        return timedelta(seconds=settings.unanswered_submit_resend_after_seconds)
    return timedelta(seconds=settings.unanswered_submit_release_after_seconds)
