"""Submit, in order: validate and price (a bad request is never recorded, forwarded or billed);
then one transaction claims the Idempotency-Key, reserves the hold against the team's budget
and records the job and its ``hold`` entry (if the database cannot be written: 503, nothing
forwarded); then forward; then record the upstream's answer: accepted (the hold stays until the
job settles), refused (released at once), or unknown (kept for the reconciler). The network
call always sits between two short transactions, never inside one."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from decimal import Decimal

from sqlalchemy.ext.asyncio import AsyncSession

from gateway.catalog.validation import ValidatedRequest, parse_submission
from gateway.config import Settings
from gateway.core.clock import utcnow
from gateway.core.periods import period_of
from gateway.core.pricing import ESTIMATE_HEADER, RateCard, price_request
from gateway.core.usd import format_usd
from gateway.db.session import transaction
from gateway.errors import (
    BudgetExhausted,
    CostCapExceeded,
    GatewayError,
    InvalidRequest,
    OutcomeUnknown,
    PermissionDenied,
    QuotaExceeded,
    ServiceUnavailable,
    UpstreamError,
    UpstreamInvalidResponse,
    UpstreamOutcomeUnknown,
)
from gateway.jobs import idempotency
from gateway.jobs import repository as jobs
from gateway.jobs.models import Job, JobState
from gateway.jobs.tags import canonical as canonical_tags
from gateway.jobs.tags import parse_tags
from gateway.ledger import settlement
from gateway.ledger.holds import KeyCheck, place_hold, place_hold_direct
from gateway.ledger.quotas import Level, PeriodBalance, TeamQuota, check_cost_caps
from gateway.ledger.rates import rate_card_in_force
from gateway.ledger.repository import Account
from gateway.services.forwarded import AfterForward, unanswered_recheck
from gateway.services.proxy import JOB_ID, ProxiedResponse, ProxyDeps, pass_through, team_quota
from gateway.tenancy import repository as tenancy
from gateway.tenancy.service import PROJECT_NAME, Principal, ProjectRef
from gateway.upstream.client import UpstreamResponse

logger = logging.getLogger(__name__)

REPLAYED_HEADER = "Idempotent-Replayed"
_PARSE_ON_LOOP_MAX_BYTES = 256 * 1024


@dataclass(frozen=True)
class Submitter:
    """Who submits. ``principal`` was confirmed by this request's own key lookup, unless
    ``key`` is set: then it is what the key was last confirmed as (``KeysSeen``), the hold's
    statement checks the key against the database, and ``confirm`` (the real lookup, raising
    its 401 or 403) runs before any other answer is given, so a revoked key learns nothing."""

    principal: Principal
    confirm: Callable[[], Awaitable[Principal]]
    key: KeyCheck | None = None


async def submit_generation(
    deps: ProxyDeps,
    submitter: Submitter,
    raw_body: bytes,
    *,
    request_id: str,
    idempotency_key: str | None = None,
    tags_header: str | None = None,
    project_header: str | None = None,
    on_balance: Callable[[PeriodBalance], None] = lambda _: None,
) -> ProxiedResponse:
    """Submit through the ledger. ``on_balance`` hears each change of the team's balance, so
    the response's quota header is right even when an error is raised after the hold."""
    try:
        request, tags = await validated(deps, raw_body, tags_header, idempotency_key)
    except InvalidRequest:
        if submitter.key is not None:
            await submitter.confirm()  # a 401 for a revoked key, not the 400
        raise
    try:
        project = project_of(submitter.principal, project_header)
    except GatewayError:
        if submitter.key is None:
            raise
        # Refused on what the key was last seen as: decided again on what it is now.
        submitter = Submitter(await submitter.confirm(), submitter.confirm)
        project = project_of(submitter.principal, project_header)
    submission = _Submission(
        principal=submitter.principal,
        quota=team_quota(submitter.principal),
        request=request,
        raw_body=raw_body,
        tags=tags,
        job_id=uuid.uuid4().hex,
        request_id=request_id,
        idempotency_key=idempotency_key,
        project=project,
    )
    opened: _Opened | ProxiedResponse | None = await _open_job_direct(
        deps, submission, submitter.key
    )
    if opened is None:
        if submitter.key is not None:
            principal = await submitter.confirm()
            submission = replace(
                submission,
                principal=principal,
                quota=team_quota(principal),
                project=project_of(principal, project_header),
            )
        opened = await _hold(deps, submission, on_balance)
    if isinstance(opened, ProxiedResponse):
        return opened  # the first answer for this Idempotency-Key, replayed
    team = submission.principal.team_name
    after = AfterForward(deps, opened.job, team, idempotency_key, on_balance)
    await _check_before_forwarding(deps, submission.quota, opened, after, on_balance)
    return await _forward(deps, opened, after, submission)


@dataclass(frozen=True)
class _Submission:
    """One submit, checked: who sends it, what it asks for, and the ids it goes by."""

    principal: Principal
    quota: TeamQuota
    request: ValidatedRequest
    raw_body: bytes
    tags: dict[str, str] | None
    job_id: str
    """The gateway's id for the job, chosen before anything is written."""
    request_id: str
    idempotency_key: str | None
    project: ProjectRef | str | None = None
    """The job's project: known (the key's own), a name to look up (a header), or none."""


def project_of(principal: Principal, header: str | None) -> ProjectRef | str | None:
    """Which project a job belongs to: the key's, if it is bound to one (a header naming
    another is refused, 403); else the one ``X-Gateway-Project`` names (looked up when the
    job is held: unknown is a 400); else none."""
    name = header.strip() if header is not None else None
    bound = principal.project
    if bound is not None:
        if name and name != bound.name:
            raise PermissionDenied(
                f"this key is bound to project {bound.name!r}; it cannot submit for {name!r}",
                code="project_not_allowed",
                param="X-Gateway-Project",
            )
        return bound
    if not name:
        return None
    if not PROJECT_NAME.fullmatch(name):
        raise InvalidRequest(
            "X-Gateway-Project must be a project name (letters, digits, '.', '_', '-')",
            code="unknown_project",
            param="X-Gateway-Project",
        )
    return name


def levels_of(principal: Principal, project: ProjectRef | None) -> list[Level]:
    """The levels below the team a job of ``principal`` is held on: its project's (if any),
    then its key's (a gateway key's jobs always, so the key's spend is known even without a
    budget of its own)."""
    levels = []
    if project is not None:
        levels.append(
            Level(
                Account("project", project.id),
                project.name,
                project.monthly_budget_micro_usd,
                project.max_cost_per_job_micro_usd,
                project.soft_limit_percent,
            )
        )
    if principal.key_id is not None:
        levels.append(
            Level(
                Account("key", principal.key_id),
                principal.key_id,
                principal.key_monthly_budget_micro_usd,
                principal.key_max_cost_per_job_micro_usd,
            )
        )
    return levels


async def resolved_project(
    session: AsyncSession, team_id: int, project: ProjectRef | str | None
) -> ProjectRef | None:
    """``project_of``'s answer made definite: a name (from the header) looked up in the team
    (400 ``unknown_project`` if it has none of that name). The quote resolves it the same way."""
    if not isinstance(project, str):
        return project
    found = await tenancy.get_project(session, team_id, project)
    if found is None:
        raise InvalidRequest(
            f"the team has no project named {project!r}",
            code="unknown_project",
            param="X-Gateway-Project",
        )
    return ProjectRef.of(found)


async def validated(
    deps: ProxyDeps, raw_body: bytes, tags_header: str | None, idempotency_key: str | None
) -> tuple[ValidatedRequest, dict[str, str] | None]:
    """The request checked against the model's rules, its tags and its key: a 400 here is
    never recorded, forwarded or billed."""
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
        deps.metrics.validation_rejections.labels(exc.code).inc()
        raise
    return request, tags


async def _hold(
    deps: ProxyDeps, submission: _Submission, on_balance: Callable[[PeriodBalance], None]
) -> _Opened | ProxiedResponse:
    """Open the job's account (or find the key's first answer), counting refusals."""
    metrics = deps.metrics
    team = submission.principal.team_name
    try:
        opened = await _open_job_in_session(deps, submission)
    except BudgetExhausted as exc:
        metrics.quota_rejections.labels(team).inc()
        if exc.scope == "team":  # the quota header is the team's, whichever level refused
            on_balance(PeriodBalance(exc.period, exc.budget, exc.held, exc.captured))
        await deps.alerts.after_budget_refusal(submission.quota, exc)
        raise
    except QuotaExceeded:
        metrics.concurrency_rejections.labels(team).inc()
        raise
    if isinstance(opened, ProxiedResponse):
        metrics.idempotent_replays.inc()
    return opened


async def _check_before_forwarding(
    deps: ProxyDeps,
    quota: TeamQuota,
    opened: _Opened,
    after: AfterForward,
    on_balance: Callable[[PeriodBalance], None],
) -> None:
    """Between the hold and the forward: report the balance, raise a soft-limit alert, and
    make sure the submit is still inside its forward window. Any failure gives the hold back
    (nothing was sent), so the job is never forwarded later."""
    try:
        on_balance(opened.balance)
        await deps.alerts.after_hold(quota, opened.balance, opened.levels)
    except Exception:
        await after.refused("not_forwarded")
        raise
    if _forward_window_passed(deps.settings, opened.job.created_at):
        # Held up after its hold was recorded (a slow commit, a slow alert write): given back,
        # unless the reconciler has already taken the job over (or the release cannot be
        # recorded): then, as after a crash, the reconciler decides and the outcome is open.
        if (await after.refused("not_forwarded")).balance is None:
            raise _outcome_unknown()
        raise _not_forwarded()


async def _forward(
    deps: ProxyDeps, opened: _Opened, after: AfterForward, submission: _Submission
) -> ProxiedResponse:
    """Send the client's bytes with the real key, then record what the upstream answered."""
    job = opened.job
    estimate_header = {ESTIMATE_HEADER: format_usd(job.estimate_micro_usd)}
    try:
        answer = await deps.upstream.submit(
            submission.raw_body, request_id=submission.request_id, idempotency_key=job.id
        )
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
        return pass_through(answer, extra=estimate_header, balance=released)
    try:
        upstream_job_id = _accepted_job_id(answer)
    except UpstreamInvalidResponse as exc:
        deps.metrics.upstream_errors.labels("invalid_response").inc()
        await after.unknown(exc)
        raise
    response = pass_through(
        answer, extra=estimate_header, job_id=upstream_job_id, balance=opened.balance
    )
    await after.accepted(upstream_job_id, answer, response)
    return response


@dataclass(frozen=True)
class _Opened:
    job: Job
    balance: PeriodBalance
    levels: tuple[Level, ...] = ()
    """The levels below the team the job is held on (for their soft-limit alerts)."""


async def _open_job_direct(
    deps: ProxyDeps, submission: _Submission, key: KeyCheck | None
) -> _Opened | None:
    """The common case (no Idempotency-Key to claim, no concurrency cap, a card already seen
    in force and a period row there, room in the budget) as one statement, priced by the card
    last seen in force (the statement checks it still is); None when it wrote nothing, and
    any other case goes through the ORM (``_open_job_in_session``), the reference for every
    rule. A forward window passed meanwhile is caught after it, as for any hold
    (``_check_before_forwarding``)."""
    direct = deps.direct
    card = deps.rate_cards.get(submission.request.model.id)
    if (
        direct is None
        or card is None
        or submission.idempotency_key is not None
        or submission.quota.max_concurrent_jobs is not None
        or isinstance(submission.project, str)  # a project name to look up
    ):
        return None
    now = utcnow()
    project = submission.project
    job = _new_job(deps.settings, submission, card, now, project)
    levels = tuple(levels_of(submission.principal, project))
    try:
        check_cost_caps(submission.quota, levels, job.estimate_micro_usd)
    except CostCapExceeded:
        if key is None:
            raise  # the caps as this request's own lookup read them
        return None  # the caps as the key was last seen: decided again on what they are now
    keep = submission.raw_body if deps.settings.upstream_honors_idempotency_key else None
    balance = await place_hold_direct(direct, job, keep_request=keep, key=key, now=now)
    return _Opened(job, balance, levels) if balance is not None else None


async def _open_job_in_session(
    deps: ProxyDeps, submission: _Submission
) -> _Opened | ProxiedResponse:
    """One transaction: claim the key (or return the stored answer to replay), price by the
    rate card in force, reserve the hold, record the job and its hold entry."""
    settings = deps.settings
    key = submission.idempotency_key
    fingerprint = ""
    if key is not None:
        fingerprint = await _fingerprint(submission.raw_body, canonical_tags(submission.tags))
    now = utcnow()
    async with transaction(deps.sessionmaker) as session:
        if key is not None:
            stored = await idempotency.claim(
                session,
                team_id=submission.principal.team_id,
                key=key,
                fingerprint=fingerprint,
                job_id=submission.job_id,
                now=now,
                ttl=timedelta(hours=settings.idempotency_key_ttl_hours),
            )
            if stored is not None:
                return ProxiedResponse(
                    stored.status_code, stored.body, {**stored.headers, REPLAYED_HEADER: "true"}
                )
        card = await rate_card_in_force(session, submission.request.model.id, now)
        deps.rate_cards.saw(submission.request.model.id, card)
        project = await resolved_project(session, submission.principal.team_id, submission.project)
        job = _new_job(settings, submission, card, now, project)
        levels = levels_of(submission.principal, project)
        check_cost_caps(submission.quota, levels, job.estimate_micro_usd)  # before any hold
        if settings.upstream_honors_idempotency_key:
            # Kept until the upstream's answer is recorded, so a crash can be recovered.
            jobs.keep_request(session, job.id, submission.raw_body, now)
        balance = await place_hold(
            session,
            submission.quota,
            job,
            policy=settings.default_budget_policy,
            now=now,
            levels=levels,
        )
        if _forward_window_passed(settings, now):
            raise _not_forwarded()  # held up by database waits: rolled back, nothing recorded
    return _Opened(job, balance, tuple(levels))


def _new_job(
    settings: Settings,
    submission: _Submission,
    card: RateCard,
    now: datetime,
    project: ProjectRef | None,
) -> Job:
    """The job as the hold records it: ``pending``, priced once, in the period of ``now``,
    held on its team, ``project`` (if any) and its key (if a gateway key)."""
    request = submission.request
    units = request.billable_units()
    return Job(
        id=submission.job_id,
        team_id=submission.principal.team_id,
        api_key_id=submission.principal.key_id,
        project_id=project.id if project is not None else None,
        key_held=submission.principal.key_id is not None,
        state=JobState.PENDING,
        model=request.model.id,
        duration_ms=int(Decimal(units.duration_seconds) * 1000),
        resolution=units.resolution,
        image_count=units.image_count,
        estimate_micro_usd=price_request(units, card),
        rate_card_version=card.version,
        period=period_of(now),
        request_id=submission.request_id,
        tags=submission.tags,
        check_attempts=0,
        needs_review=False,
        next_check_at=now + unanswered_recheck(settings),
        created_at=now,
        updated_at=now,
    )


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


def _accepted_job_id(answer: UpstreamResponse) -> str:
    body = settlement.parse_poll_body(answer.body)
    job_id = body.get("job_id") if body is not None else None
    if not isinstance(job_id, str) or not JOB_ID.fullmatch(job_id):
        logger.warning("upstream accepted a submit without a usable job_id")
        raise UpstreamInvalidResponse("the upstream's answer has no usable job_id")
    return job_id
