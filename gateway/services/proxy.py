"""The drop-in proxy: submit and poll, with the money kept right around each call.

Submit, in order: validate and price (a bad request is never recorded, forwarded or billed);
then one transaction claims the Idempotency-Key, reserves the hold against the team's budget
and records the job and its ``hold`` entry (if the database cannot be written: 503, nothing
forwarded); then forward; then record the upstream's answer: accepted (the hold stays until the
job settles), refused (released at once), or unknown (kept for the reconciler). The network
call always sits between two short transactions, never inside one.

Poll: only the owning team's jobs; a settled job is answered from the gateway's record without
calling upstream; a terminal answer from upstream settles the job, exactly once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.catalog.spec import Catalog
from gateway.catalog.validation import ValidatedRequest, parse_submission
from gateway.config import Settings
from gateway.core.clock import utcnow
from gateway.core.periods import period_of
from gateway.core.pricing import ESTIMATE_HEADER, price_request
from gateway.core.usd import format_usd
from gateway.db.health import DatabaseHealth
from gateway.db.session import read_only, transaction
from gateway.errors import (
    BudgetExhausted,
    GatewayError,
    InvalidRequest,
    NotFound,
    OutcomeUnknown,
    QuotaExceeded,
    ServiceUnavailable,
    UpstreamError,
    UpstreamInvalidResponse,
    UpstreamOutcomeUnknown,
)
from gateway.jobs import idempotency
from gateway.jobs import repository as jobs
from gateway.jobs.idempotency import StoredResponse
from gateway.jobs.models import Job, JobState
from gateway.jobs.tags import canonical as canonical_tags
from gateway.jobs.tags import parse_tags
from gateway.ledger import quotas, settlement
from gateway.ledger.holds import place_hold
from gateway.ledger.quotas import BalanceView, TeamQuota
from gateway.ledger.rates import rate_card_in_force
from gateway.observability.metrics import Metrics
from gateway.services import settling
from gateway.services.alerts import BudgetAlerts
from gateway.services.outbox import AnswerOutbox
from gateway.services.recording import (
    AnswerKind,
    DuplicateJobId,
    Released,
    SubmitAnswer,
    duplicate_job_id_error,
    record_answer,
)
from gateway.tenancy.service import Principal
from gateway.upstream.client import UpstreamClient, UpstreamResponse

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProxyDeps:
    """What the tenant routes' orchestration works with (built once by the runtime)."""

    settings: Settings
    catalog: Catalog
    sessionmaker: async_sessionmaker[AsyncSession]
    upstream: UpstreamClient
    metrics: Metrics
    alerts: BudgetAlerts
    outbox: AnswerOutbox
    db_health: DatabaseHealth


# What an upstream job id may look like before we use it in a query or an upstream URL.
_JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
_MAX_JOB_ID_LENGTH = 128
REPLAYED_HEADER = "Idempotent-Replayed"
_RECORD_RETRY_DELAYS = (0.0, 0.2, 1.0)
_PARSE_ON_LOOP_MAX_BYTES = 256 * 1024


@dataclass(frozen=True)
class ProxiedResponse:
    """What goes back to the client: the upstream's status and bytes, plus our headers."""

    status_code: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    job_id: str | None = None
    upstream_seconds: float | None = None
    balance: BalanceView | None = None
    captured_micro_usd: int | None = None
    """Set when this response settled its job with a capture (for the access log)."""


def team_quota(principal: Principal) -> TeamQuota:
    return TeamQuota(
        team_id=principal.team_id,
        monthly_budget_micro_usd=principal.monthly_budget_micro_usd,
        max_concurrent_jobs=principal.max_concurrent_jobs,
        soft_limit_percent=principal.soft_limit_percent,
    )


async def submit_generation(
    deps: ProxyDeps,
    principal: Principal,
    raw_body: bytes,
    *,
    request_id: str,
    idempotency_key: str | None = None,
    tags_header: str | None = None,
    on_balance: Callable[[BalanceView], None] = lambda _: None,
) -> ProxiedResponse:
    """Submit through the ledger. ``on_balance`` hears each change of the team's balance, so
    the response's quota header is right even when an error is raised after the hold."""
    metrics = deps.metrics
    try:
        if len(raw_body) > _PARSE_ON_LOOP_MAX_BYTES:
            # A 14 MB data-URI body takes ~0.2 s of CPU to check: on a worker thread, the
            # event loop keeps serving other requests meanwhile.
            request = await asyncio.to_thread(parse_submission, raw_body, deps.catalog)
        else:
            request = parse_submission(raw_body, deps.catalog)
        tags = parse_tags(tags_header)
        if idempotency_key is not None:
            idempotency.check_key(idempotency_key)
    except InvalidRequest as exc:
        metrics.validation_rejections.labels(exc.code).inc()
        raise
    quota = team_quota(principal)
    job_id = uuid.uuid4().hex
    try:
        opened = await _open_job(
            deps, principal, quota, request, raw_body, tags, job_id, request_id, idempotency_key
        )
    except BudgetExhausted as exc:
        metrics.quota_rejections.labels(principal.team_name).inc()
        refused_at = BalanceView(exc.period, exc.budget, exc.held, exc.captured)
        await deps.alerts.after_budget_refusal(quota, refused_at)
        raise
    except QuotaExceeded:
        metrics.concurrency_rejections.labels(principal.team_name).inc()
        raise
    if isinstance(opened, ProxiedResponse):
        metrics.idempotent_replays.inc()
        return opened
    job, balance = opened.job, opened.balance
    after = _AfterForward(deps, job, principal.team_name, idempotency_key, on_balance)
    try:
        on_balance(balance)
        await deps.alerts.after_hold(quota, balance)
    except Exception:
        # Nothing was sent: give the hold back now, so the job is never forwarded later.
        await after.refused("not_forwarded")
        raise
    if _forward_window_passed(deps.settings, job.created_at):
        # Held up after its hold was recorded (a slow commit, a slow alert write): given back,
        # unless the reconciler has already taken the job over (or the release cannot be
        # recorded): then, as after a crash, the reconciler decides and the outcome is open.
        if (await after.refused("not_forwarded")).balance is None:
            raise _outcome_unknown()
        raise _not_forwarded()
    estimate = job.estimate_micro_usd
    estimate_header = {ESTIMATE_HEADER: format_usd(estimate)}
    try:
        answer = await deps.upstream.submit(raw_body, request_id=request_id, idempotency_key=job_id)
    except UpstreamOutcomeUnknown as exc:
        # Sent, but no answer: the upstream may have started the job, so the hold stays.
        await after.unknown(exc)
        raise
    except UpstreamError:
        await after.refused("upstream_unreachable")
        raise

    if answer.status_code >= 400:
        released = (await after.refused("upstream_refused", answer=answer)).balance
        if released is None:  # left open, to be re-sent or released: no longer a plain refusal
            raise _outcome_unknown()
        return _pass_through(answer, extra=estimate_header, balance=released)
    try:
        upstream_job_id = _accepted_job_id(answer)
    except UpstreamInvalidResponse as exc:
        metrics.upstream_errors.labels("invalid_response").inc()
        await after.unknown(exc)
        raise
    response = _pass_through(answer, extra=estimate_header, job_id=upstream_job_id, balance=balance)
    await after.accepted(upstream_job_id, answer, response)
    return response


@dataclass(frozen=True)
class _Opened:
    job: Job
    balance: BalanceView


async def _open_job(
    deps: ProxyDeps,
    principal: Principal,
    quota: TeamQuota,
    request: ValidatedRequest,
    raw_body: bytes,
    tags: dict[str, str] | None,
    job_id: str,
    request_id: str,
    idempotency_key: str | None,
) -> _Opened | ProxiedResponse:
    """One transaction: claim the key (or return the stored answer to replay), price by the
    rate card in force, reserve the hold, record the job and its hold entry."""
    settings = deps.settings
    units = request.billable_units()
    fingerprint = ""
    if idempotency_key is not None:
        fingerprint = await _fingerprint(raw_body, canonical_tags(tags))
    now = utcnow()
    async with transaction(deps.sessionmaker) as session:
        if idempotency_key is not None:
            stored = await idempotency.claim(
                session,
                team_id=principal.team_id,
                key=idempotency_key,
                fingerprint=fingerprint,
                job_id=job_id,
                now=now,
                ttl=timedelta(hours=settings.idempotency_key_ttl_hours),
            )
            if stored is not None:
                return ProxiedResponse(
                    stored.status_code, stored.body, {**stored.headers, REPLAYED_HEADER: "true"}
                )
        card = await rate_card_in_force(session, request.model.id, now)
        estimate = price_request(units, card)
        job = Job(
            id=job_id,
            team_id=principal.team_id,
            api_key_id=principal.key_id,
            state=JobState.PENDING.value,
            model=request.model.id,
            duration_ms=int(Decimal(units.duration_seconds) * 1000),
            resolution=units.resolution,
            image_count=units.image_count,
            estimate_micro_usd=estimate,
            rate_card_version=card.version,
            period=period_of(now),
            request_id=request_id,
            tags=tags,
            check_attempts=0,
            needs_review=False,
            next_check_at=now + _unanswered_recheck(settings),
            created_at=now,
            updated_at=now,
        )
        if settings.upstream_honors_idempotency_key:
            # Kept until the upstream's answer is recorded, so a crash can be recovered.
            jobs.keep_request(session, job_id, raw_body, now)
        balance = await place_hold(
            session, quota, job, policy=settings.default_budget_policy, now=now
        )
        if _forward_window_passed(settings, now):
            raise _not_forwarded()  # held up by database waits: rolled back, nothing recorded
    return _Opened(job, balance)


async def _fingerprint(raw_body: bytes, tags: str) -> str:
    if len(raw_body) > _PARSE_ON_LOOP_MAX_BYTES:  # hashing 14 MB takes ~10 ms
        return await asyncio.to_thread(idempotency.request_fingerprint, raw_body, tags)
    return idempotency.request_fingerprint(raw_body, tags)


def _not_forwarded() -> ServiceUnavailable:
    return ServiceUnavailable(
        "the gateway was too slow to forward this request in time; it was not sent upstream "
        "and nothing is billed: retry",
        code="forward_window_passed",
    )


def _outcome_unknown() -> OutcomeUnknown:
    """For a submit whose job the gateway could not give back (the reconciler has claimed it
    for a re-send, or the release could not be recorded): it may yet run upstream."""
    return OutcomeUnknown(
        "the gateway could not confirm whether this request will run upstream; retry with the "
        "same Idempotency-Key to learn its outcome"
    )


def _forward_window_passed(settings: Settings, held_at: datetime) -> bool:
    """Sent now, could the call still be on the wire when the reconciler re-sends the submit
    or releases its hold? Then it is not sent at all."""
    late = utcnow() - held_at > timedelta(seconds=settings.forward_window_seconds)
    if late:
        logger.error("a submit outlasted its forward window before being sent; not forwarded")
    return late


@dataclass(frozen=True)
class _Release:
    """A submit's own release: the team's new balance, or None if the job was not released
    (the reconciler had claimed it, or the database could not record it: left open)."""

    balance: BalanceView | None


@dataclass
class _AfterForward:
    """Records the upstream's answer to a submit, retrying briefly if the database falters.
    If it still fails, the answer goes to the outbox (durable, retried until the database is
    back) and the client gets the upstream's answer anyway: the upstream has acted, and hiding
    its job id would only cause a retry and a second job."""

    deps: ProxyDeps
    job: Job
    team_name: str
    idempotency_key: str | None
    on_balance: Callable[[BalanceView], None]

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

    async def refused(self, reason: str, *, answer: UpstreamResponse | None = None) -> _Release:
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
            return _Release(None)
        settling.count_settlement(self.deps.metrics, self.team_name, self.job, released.plan)
        view = BalanceView.of(self.job.period, released.balance)
        self.on_balance(view)
        return _Release(view)

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
                next_check_at=utcnow() + _unanswered_recheck(self.deps.settings),
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
            **fields,
        )

    async def _record(self, answer: SubmitAnswer) -> Released | DuplicateJobId | None:
        """Record ``answer`` in its own transaction, retried twice on a database error (each
        attempt rolls back entirely, so retrying is safe); kept in the outbox if all fail."""
        for attempt, delay in enumerate(_RECORD_RETRY_DELAYS):
            if delay:
                await asyncio.sleep(delay)
            try:
                async with transaction(self.deps.sessionmaker) as session:
                    return await record_answer(session, answer, self.job)
            except (SQLAlchemyError, OSError) as exc:
                self.deps.db_health.observe(exc)
                if attempt == len(_RECORD_RETRY_DELAYS) - 1:
                    logger.exception(
                        "could not record the upstream's answer; keeping it in the outbox",
                        extra={"gateway_job_id": self.job.id, "outcome": answer.kind},
                    )
        await self.deps.outbox.keep(answer)
        return None


async def poll_job(
    deps: ProxyDeps, principal: Principal, job_id: str, *, request_id: str
) -> ProxiedResponse:
    # Another team's job and an unknown id get the same answer, by design.
    not_found = NotFound(f"no job with id {job_id[:_MAX_JOB_ID_LENGTH]!r}", code="job_not_found")
    if not _JOB_ID.fullmatch(job_id):
        raise not_found
    async with read_only(deps.sessionmaker) as session:
        job = await jobs.find_for_team(session, job_id, principal.team_id)
    if job is None and await deps.outbox.record_upstream_job(job_id, principal.team_id):
        # Accepted while the database was away: recorded just now from the outbox.
        async with read_only(deps.sessionmaker) as session:
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
        return _pass_through(answer, job_id=job_id)
    body = settlement.parse_poll_body(answer.body)
    if body is None:
        logger.warning("upstream answered a poll with a body that is not a JSON object")
        deps.metrics.upstream_errors.labels("invalid_response").inc()
        raise UpstreamInvalidResponse("the upstream answered with an unreadable body")
    vocabulary = settlement.vocabulary_from(deps.settings)
    settled = await settling.settle_from_poll(
        deps.sessionmaker, vocabulary, job, body, answer.body, now=utcnow()
    )
    response = _pass_through(answer, job_id=job_id)
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
        balance=BalanceView.of(job.period, settled.balance),
        captured_micro_usd=captured,
    )


async def usage(deps: ProxyDeps, principal: Principal) -> BalanceView:
    async with read_only(deps.sessionmaker) as session:
        return await quotas.balance_view(
            session,
            team_quota(principal),
            period_of(utcnow()),
            deps.settings.default_budget_policy,
        )


def _unanswered_recheck(settings: Settings) -> timedelta:
    """When the reconciler should look again at a submit still without an answer."""
    if settings.upstream_honors_idempotency_key:
        return timedelta(seconds=settings.unanswered_submit_resend_after_seconds)
    return timedelta(seconds=settings.unanswered_submit_release_after_seconds)


def _pass_through(
    answer: UpstreamResponse,
    *,
    extra: dict[str, str] | None = None,
    job_id: str | None = None,
    balance: BalanceView | None = None,
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
        balance=balance,
    )


def _accepted_job_id(answer: UpstreamResponse) -> str:
    body = settlement.parse_poll_body(answer.body)
    job_id = body.get("job_id") if body is not None else None
    if not isinstance(job_id, str) or not _JOB_ID.fullmatch(job_id):
        logger.warning("upstream accepted a submit without a usable job_id")
        raise UpstreamInvalidResponse("the upstream's answer has no usable job_id")
    return job_id
