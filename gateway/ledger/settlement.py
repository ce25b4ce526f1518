"""Settlement: every job ends in exactly one capture or release, however it is discovered.

A client's poll, the reconciler in any replica, or the submit path itself (an upstream refusal)
may all try to settle the same job at once. Only one wins: the job's state moves from open to
settled with a conditional update, and the ledger's unique index on (job, settlement) backs it.
The winner writes the entry, moves the amounts on the balance rows and writes the team's
webhook event (``gateway.webhooks.events``) in the same transaction.

What is billed: a success, and a failure whose code means "produced, then blocked
by moderation". The capture is the price of the seconds the upstream reports producing, priced
on the job's own rate card version and never more than the hold; an excess is written as a
``correction`` flagged for review. With no reported duration, the hold is captured.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import ColumnElement, and_, update
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.config import Settings
from gateway.core.pricing import BillableUnits, price_request
from gateway.core.usd import format_usd, parse_usd
from gateway.jobs.models import OPEN_STATES, Job, JobState
from gateway.ledger import repository
from gateway.ledger.models import EntryKind, LedgerEntry
from gateway.ledger.rates import rate_card_version
from gateway.ledger.repository import Account, PeriodAmounts
from gateway.webhooks import events as webhook_events

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StatusVocabulary:
    """How the upstream says "done": configurable, because upstreams disagree."""

    success: Collection[str]
    failure: Collection[str]
    moderation_codes: Collection[str]
    running: Collection[str] = ()
    """Words known to mean "not done yet"; any other non-terminal word is reported."""


def vocabulary_from(settings: Settings) -> StatusVocabulary:
    words = settings.success_status_words, settings.failure_status_words
    return StatusVocabulary(*words, settings.moderation_error_codes, settings.running_status_words)


def unknown_status_word(body: Mapping[str, Any], vocabulary: StatusVocabulary) -> str | None:
    """The poll answer's status word if it is none of the known ones (clipped for logs). Such
    a job is treated as still running (settling it on a guess could bill or release wrongly)
    and is polled again; the caller counts and logs the word so an operator can configure it."""
    status = body.get("status")
    word = status.strip().lower() if isinstance(status, str) else repr(status)
    known = (*vocabulary.success, *vocabulary.failure, *vocabulary.running)
    return None if word in known else word[:32]


@dataclass(frozen=True)
class TerminalOutcome:
    """What a terminal poll answer means for money."""

    billed: bool
    status_word: str
    error_code: str | None
    produced_seconds: Decimal | None
    upstream_cost_micro_usd: int | None


def read_terminal(body: Mapping[str, Any], vocabulary: StatusVocabulary) -> TerminalOutcome | None:
    """The outcome if ``body`` (a parsed poll answer) is terminal, else None."""
    status = body.get("status")
    if not isinstance(status, str):
        return None
    word = status.strip().lower()
    if word in vocabulary.success:
        billed, error_code = True, None
    elif word in vocabulary.failure:
        error = body.get("error")
        code = error.get("code") if isinstance(error, dict) else None
        error_code = code if isinstance(code, str) else None
        billed = error_code is not None and error_code in vocabulary.moderation_codes
    else:
        return None
    usage = _usage(body)
    return TerminalOutcome(
        billed=billed,
        status_word=word[:32],
        error_code=error_code[:64] if error_code else None,
        produced_seconds=_produced_seconds(body, usage) if billed else None,
        upstream_cost_micro_usd=_upstream_cost(usage) if billed else None,
    )


def parse_poll_body(raw: bytes) -> dict[str, Any] | None:
    try:
        body = json.loads(raw, parse_float=Decimal)
    except (ValueError, UnicodeDecodeError):
        return None
    return body if isinstance(body, dict) else None


def _usage(body: Mapping[str, Any]) -> Mapping[str, Any]:
    result = body.get("result")
    for holder in (result, body):
        if isinstance(holder, dict) and isinstance(holder.get("usage"), dict):
            usage: Mapping[str, Any] = holder["usage"]
            return usage
    return {}


# A reported length beyond this is not believed (it would price absurdly): the hold is captured.
_MAX_BELIEVABLE_SECONDS = Decimal(86_400)


def _number(value: Any) -> Decimal | None:
    if isinstance(value, bool) or not isinstance(value, int | Decimal):
        return None
    number = Decimal(value)
    if not number.is_finite() or not 0 <= number <= _MAX_BELIEVABLE_SECONDS:
        return None
    return number


def _produced_seconds(body: Mapping[str, Any], usage: Mapping[str, Any]) -> Decimal | None:
    result = body.get("result")
    candidates = [usage.get("video_seconds")]
    if isinstance(result, dict):
        candidates.append(result.get("duration"))
    for candidate in candidates:
        seconds = _number(candidate)
        if seconds is not None:
            return seconds
    return None


def _upstream_cost(usage: Mapping[str, Any]) -> int | None:
    cost = usage.get("cost_usd")
    if isinstance(cost, int | Decimal) and not isinstance(cost, bool):
        cost = str(cost)
    if not isinstance(cost, str):
        return None
    try:
        return parse_usd(cost)
    except ValueError:
        logger.warning("upstream reported an unreadable cost", extra={"cost": cost[:32]})
        return None


@dataclass(frozen=True)
class SettlementPlan:
    """How one job is to be settled: what to bill, why, and what the upstream said. A plan:
    ``apply_settlement`` carries it out, once."""

    state: JobState
    captured: int
    """Micro-USD billed (0 for a release); never more than the hold."""
    excess: int = 0
    """Micro-USD produced beyond the hold: written as a correction for review, not billed."""
    reason: str | None = None
    video_ms: int | None = None
    upstream_cost_micro_usd: int | None = None
    upstream_status: str | None = None
    upstream_error_code: str | None = None
    terminal_body: bytes | None = None
    needs_review: bool = False


def release(reason: str, *, needs_review: bool = False) -> SettlementPlan:
    return SettlementPlan(JobState.RELEASED, 0, reason=reason, needs_review=needs_review)


async def plan_from_outcome(
    session: AsyncSession, job: Job, outcome: TerminalOutcome, terminal_body: bytes
) -> SettlementPlan:
    common: dict[str, Any] = {
        "upstream_status": outcome.status_word,
        "upstream_error_code": outcome.error_code,
        "terminal_body": terminal_body,
    }
    if not outcome.billed:
        return SettlementPlan(JobState.RELEASED, 0, reason=outcome.error_code or "failed", **common)
    hold = job.estimate_micro_usd
    reason = "moderation_blocked" if outcome.error_code else "completed"
    if outcome.produced_seconds is None:
        price, video_ms = hold, None
    else:
        card = await rate_card_version(session, job.model, job.rate_card_version)
        units = BillableUnits(outcome.produced_seconds, job.resolution, job.image_count)
        price = price_request(units, card)
        video_ms = int(outcome.produced_seconds * 1000)
    captured = min(price, hold)
    return SettlementPlan(
        JobState.CAPTURED,
        captured,
        excess=price - captured,
        reason=reason,
        video_ms=video_ms,
        upstream_cost_micro_usd=outcome.upstream_cost_micro_usd,
        needs_review=price > hold,
        **common,
    )


async def apply_settlement(
    session: AsyncSession,
    job: Job,
    plan: SettlementPlan,
    *,
    now: datetime,
    unless_claimed: bool = False,
    from_states: tuple[JobState, ...] = OPEN_STATES,
) -> PeriodAmounts | None:
    """Settle ``job`` as planned, once. Returns the new balance, or None if it was already
    settled (by another poll, replica or the reconciler): then nothing is written.

    ``unless_claimed``: only a job still pending that the reconciler has never claimed (its
    claim counts an attempt, committed before it re-sends the submit) is settled.
    ``from_states``: the states the job may be settled from (any open one by default)."""
    if not await _close(
        session, job, plan, now=now, unless_claimed=unless_claimed, states=from_states
    ):
        return None
    await repository.add_entries(session, *_entries(job, plan, now=now))
    # The team's webhook event, in this transaction: sent if and only if this commits.
    await webhook_events.job_settled(session, job, plan, now=now)
    _compare_with_upstream_cost(job, plan)
    team = await repository.move_settled_amounts(
        session,
        Account.team(job.team_id),
        job.period,
        hold=job.estimate_micro_usd,
        captured=plan.captured,
        now=now,
    )
    for account in held_accounts(job):  # the levels the hold is on, in the lock order
        await repository.move_settled_amounts(
            session,
            account,
            job.period,
            hold=job.estimate_micro_usd,
            captured=plan.captured,
            now=now,
        )
    return team


def held_accounts(job: Job) -> list[Account]:
    """The levels below the team that ``job``'s hold is on: its project's, then its key's."""
    accounts = []
    if job.project_id is not None:
        accounts.append(Account("project", job.project_id))
    if job.key_held and job.api_key_id is not None:
        accounts.append(Account("key", job.api_key_id))
    return accounts


async def _close(
    session: AsyncSession,
    job: Job,
    plan: SettlementPlan,
    *,
    now: datetime,
    unless_claimed: bool,
    states: tuple[JobState, ...],
) -> bool:
    """Move the job to its final state if it is still open: the one conditional update that
    makes a settlement happen once, whoever else tries."""
    open_job: ColumnElement[bool] = Job.state.in_(states)
    if unless_claimed:
        open_job = and_(Job.state == JobState.PENDING, Job.check_attempts == 0)
    moved = await session.execute(
        update(Job)
        .where(Job.id == job.id, open_job)
        .values(
            state=plan.state,
            settled_at=now,
            updated_at=now,
            next_check_at=None,
            upstream_status=plan.upstream_status,
            upstream_error_code=plan.upstream_error_code,
            terminal_body=plan.terminal_body,
            needs_review=Job.needs_review | plan.needs_review,
        )
    )
    return bool(getattr(moved, "rowcount", 0))


def _entries(job: Job, plan: SettlementPlan, *, now: datetime) -> list[LedgerEntry]:
    """The ledger lines of a settlement: the capture (what was billed) or the release (the
    whole hold), and a correction for review if the upstream produced more than was held."""
    captured = plan.state is JobState.CAPTURED
    entries = [
        LedgerEntry.for_job(
            job,
            EntryKind.CAPTURE if captured else EntryKind.RELEASE,
            plan.captured if captured else job.estimate_micro_usd,
            now=now,
            reason=plan.reason,
            video_ms=plan.video_ms,
            upstream_cost_micro_usd=plan.upstream_cost_micro_usd,
            needs_review=plan.needs_review,
        )
    ]
    if plan.excess:
        entries.append(
            LedgerEntry.for_job(
                job,
                EntryKind.CORRECTION,
                plan.excess,
                now=now,
                reason="produced_beyond_hold",
                video_ms=plan.video_ms,
                needs_review=True,
            )
        )
        logger.warning(
            "upstream produced more than was held; excess recorded for review",
            extra={"gateway_job_id": job.id, "excess_usd": format_usd(plan.excess)},
        )
    return entries


def _compare_with_upstream_cost(job: Job, plan: SettlementPlan) -> None:
    if plan.upstream_cost_micro_usd is None:
        return
    ours = plan.captured + plan.excess
    if plan.upstream_cost_micro_usd != ours:
        logger.warning(
            "upstream-reported cost differs from the gateway's price",
            extra={
                "gateway_job_id": job.id,
                "upstream_job_id": job.upstream_job_id,
                "gateway_usd": format_usd(ours),
                "upstream_usd": format_usd(plan.upstream_cost_micro_usd),
            },
        )
