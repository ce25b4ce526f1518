"""The reconciler: settles jobs nobody polls, so every job is settled whether or not anyone
asks. One runs in each replica; they share the work safely (rows are claimed with
``FOR UPDATE SKIP LOCKED`` and settlement itself is exactly-once). ``gateway reconcile`` runs
one pass now.

Each pass:
1. resolves submits that never got an answer (the replica died between recording the job and
   recording the upstream's answer, or the submit timed out). Where the upstream honours
   ``Idempotency-Key`` (``GATEWAY_UPSTREAM_HONORS_IDEMPOTENCY_KEY``), their kept request is
   re-sent with the same key: the upstream answers with the job it already created (or creates
   it now), so nothing is lost and nothing runs twice. Holds still unanswered after
   ``GATEWAY_UNANSWERED_SUBMIT_RELEASE_AFTER_SECONDS`` are released; those whose outcome is
   unknown are flagged for review, since the upstream may have run them;
2. polls submitted jobs whose next check is due, with exponential backoff per job, and pauses
   for the upstream's ``Retry-After`` when it answers 429;
3. flags jobs held longer than ``GATEWAY_HOLD_MAX_AGE_SECONDS`` (they keep being polled);
4. purges expired idempotency keys, portal sessions a day after they ended, and webhook
   events whose deliveries are all done once ``GATEWAY_WEBHOOK_LOG_RETENTION_DAYS`` old.

Shutdown waits for the pass in progress; each settlement is one transaction, so a cancelled
pass leaves nothing half-written.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.config import Settings
from gateway.core.clock import utcnow
from gateway.core.pricing import ESTIMATE_HEADER
from gateway.core.usd import format_usd
from gateway.db.health import DatabaseHealth
from gateway.db.session import transaction
from gateway.errors import UpstreamError
from gateway.jobs import idempotency
from gateway.jobs import repository as jobs
from gateway.jobs.models import Job, JobState
from gateway.ledger import settlement
from gateway.observability.metrics import Metrics
from gateway.services import settling
from gateway.tenancy import portal_sessions
from gateway.tenancy.repository import team_names
from gateway.upstream.client import UpstreamClient, UpstreamResponse
from gateway.webhooks import events as webhook_events

logger = logging.getLogger(__name__)

UNANSWERED = (JobState.PENDING, JobState.UNKNOWN)
"""A re-sent submit's job may be released only while no acceptance of it is recorded."""
_DEFAULT_PAUSE_SECONDS = 30.0
_KEEP_FINISHED_SESSIONS = timedelta(days=1)
"""A portal session that ended (or expired) is deleted a day later."""


@dataclass
class ReconcileReport:
    polled: int = 0
    recovered: int = 0
    settled: int = 0
    still_running: int = 0
    released_unanswered: int = 0
    flagged: int = 0
    upstream_errors: int = 0
    rate_limited: bool = False
    purged_idempotency_keys: int = 0
    purged_portal_sessions: int = 0
    purged_webhook_events: int = 0


class Reconciler:
    def __init__(
        self,
        *,
        settings: Settings,
        sessionmaker: async_sessionmaker[AsyncSession],
        upstream: UpstreamClient,
        metrics: Metrics,
        db_health: DatabaseHealth,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.settings = settings
        self.sessionmaker = sessionmaker
        self.upstream = upstream
        self.metrics = metrics
        self.db_health = db_health
        self.clock = clock
        self._paused_until: datetime | None = None
        self.last_run_at: datetime | None = None
        self._team_names: dict[int, str] = {}

    @property
    def _resend_window(self) -> timedelta:
        return timedelta(seconds=self.settings.resend_window_seconds)

    async def run_once(
        self, *, everything: bool = False, progress: Callable[[int, int], None] | None = None
    ) -> ReconcileReport:
        """One pass. ``everything`` polls every submitted job now, whatever its schedule, page
        by page (``reconciler_batch_size`` at a time), calling ``progress(checked, total)``
        after each job."""
        report = ReconcileReport()
        now = self.clock()
        async with transaction(self.sessionmaker) as session:
            self._team_names = await team_names(session)
        report.released_unanswered = await self._release_unanswered(now)
        if self.settings.upstream_honors_idempotency_key:
            await self._resend_unanswered(now, report)
        if self._paused_until is None or now >= self._paused_until:
            self._paused_until = None
            if everything:
                await self._poll_all(now, report, progress)
            else:
                async with transaction(self.sessionmaker) as session:
                    due = await jobs.due_for_check(
                        session, now=now, limit=self.settings.reconciler_batch_size
                    )
                    await self._schedule(session, due, now)
                await self._poll(due, report)
        else:
            report.rate_limited = True
        report.flagged = await self._flag_old_holds(now)
        async with transaction(self.sessionmaker) as session:
            report.purged_idempotency_keys = await idempotency.purge_expired(session, now)
            report.purged_portal_sessions = await portal_sessions.purge_finished(
                session,
                now=now,
                idle=timedelta(minutes=self.settings.portal_session_idle_minutes),
                keep=_KEEP_FINISHED_SESSIONS,
            )
            report.purged_webhook_events = await webhook_events.purge_delivered(
                session, before=now - timedelta(days=self.settings.webhook_log_retention_days)
            )
        self.last_run_at = now
        return report

    async def _release_unanswered(self, now: datetime) -> int:
        """Give back holds whose submit never got a usable answer. The upstream may still have
        run such a job (a replica died after forwarding), so each is flagged for review, and a
        retry with the client's Idempotency-Key replays "outcome unknown" instead of silently
        creating a second job. One transaction per job: replicas never lock rows in bulk."""
        grace = self.settings.release_grace_after_outage_seconds
        if self.db_health.failed_within(grace):
            # Right after an outage, replicas may still hold the upstream's answers to such
            # submits in their outboxes: releasing now could un-bill a job the upstream runs.
            logger.info("unanswered submits left alone for now: the database was just away")
            return 0
        cutoff = now - timedelta(seconds=self.settings.unanswered_submit_release_after_seconds)
        async with transaction(self.sessionmaker) as session:
            candidates = [
                job.id
                for job in await jobs.unanswered_before(
                    session, cutoff, self.settings.reconciler_batch_size
                )
            ]
        released = 0
        for job_id in candidates:
            try:
                if await self._release_one(job_id, now):
                    released += 1
            except Exception:  # one job the ledger refuses must not stall every other release
                logger.exception(
                    "could not release an unanswered submit; flagging it for review",
                    extra={"gateway_job_id": job_id},
                )
                try:
                    async with transaction(self.sessionmaker) as session:
                        await jobs.flag_for_review(session, job_id, now)
                except Exception:  # the database is failing: the rest of the pass still runs
                    logger.exception(
                        "could not flag the job for review either",
                        extra={"gateway_job_id": job_id},
                    )
        return released

    async def _release_one(self, job_id: str, now: datetime) -> bool:
        async with transaction(self.sessionmaker) as session:
            job = await jobs.lock_unanswered(session, job_id)
            if job is None:  # settled meanwhile, or another replica has it
                return False
            state = job.state
            unknown = state == JobState.UNKNOWN
            plan = settlement.release(
                "submit_outcome_unknown" if unknown else "submit_unanswered", needs_review=True
            )
            if not await settlement.apply_settlement(session, job, plan, now=now):
                return False
            await jobs.drop_request(session, job.id)
            await idempotency.resolve_for_job(session, job.id, idempotency.OUTCOME_UNKNOWN)
        self._record(job, plan)
        logger.warning(
            "released the hold of a submit that never got an answer; flagged for review",
            extra={"gateway_job_id": job.id, "state": state},
        )
        return True

    async def _resend_unanswered(self, now: datetime, report: ReconcileReport) -> None:
        # Always on schedule, even for ``gateway reconcile``: re-sending a submit that is still
        # in flight could turn a refusal the client already got into a job it never expects.
        async with transaction(self.sessionmaker) as session:
            due = list(
                await jobs.unanswered_due_for_resend(
                    session,
                    now=now,
                    created_after=now - self._resend_window,
                    limit=self.settings.reconciler_batch_size,
                )
            )
            for job, _ in due:
                await jobs.schedule_unanswered_check(
                    session,
                    job.id,
                    at=now + self._backoff(job.check_attempts),
                    attempts=job.check_attempts + 1,
                )
        for job, body in due:
            if await self._resend(job, body):
                report.recovered += 1

    async def _resend(self, job: Job, body: bytes) -> bool:
        """Re-send an unanswered submit under its original key; True if its job id is known now.

        Only while the re-send is sure to be over before the hold may be released (re-sends
        run one after another, so the window is checked again right before each)."""
        async with transaction(self.sessionmaker) as session:
            if await jobs.lock_unanswered(session, job.id) is None:
                return False  # settled or released (by an operator) since the pass claimed it
        # Checked last, after any database wait, so the re-send ends before the release.
        if self.clock() - job.created_at > self._resend_window:
            return False  # too late: the release takes it from here
        try:
            answer = await self.upstream.submit(
                body, request_id=f"recover-{job.id}", idempotency_key=job.id
            )
        except UpstreamError:
            return False
        if answer.status_code >= 400:
            if answer.status_code not in (409, 429):  # busy or rate-limited: try again later
                await self._release_refused(job)
            return False
        parsed = settlement.parse_poll_body(answer.body)
        upstream_job_id = parsed.get("job_id") if parsed else None
        if not isinstance(upstream_job_id, str) or not upstream_job_id:
            return False
        return await self._record_recovered(job, answer, upstream_job_id)

    async def _release_refused(self, job: Job) -> None:
        """The upstream refused the re-sent submit: it will never run, so its hold goes back."""
        plan = settlement.release("upstream_refused")
        async with transaction(self.sessionmaker) as session:
            settled = await settlement.apply_settlement(
                session, job, plan, now=self.clock(), from_states=UNANSWERED
            )
            if settled is None:
                return  # recorded as accepted meanwhile (an outbox replay): it may be running
            await jobs.drop_request(session, job.id)
            await idempotency.resolve_for_job(session, job.id, None)
        self._record(job, plan)

    async def _record_recovered(
        self, job: Job, answer: UpstreamResponse, upstream_job_id: str
    ) -> bool:
        """The re-send was accepted: the job is submitted now, and a client retrying with the
        original Idempotency-Key hears the answer it missed. True if the job moved."""
        async with transaction(self.sessionmaker) as session:
            moved = await jobs.move_from_pending(
                session,
                job.id,
                JobState.SUBMITTED,
                upstream_http_status=answer.status_code,
                upstream_job_id=upstream_job_id,
                next_check_at=self.clock(),
                from_states=(JobState.PENDING, JobState.UNKNOWN),
            )
            await jobs.drop_request(session, job.id)
            if not moved and await jobs.record_late_acceptance(session, job.id, upstream_job_id):
                # Released by an operator while the re-send was on the wire (the state was
                # checked just before sending): the upstream will bill it anyway.
                logger.error(
                    "a re-sent submit was accepted after its hold was released",
                    extra={"gateway_job_id": job.id, "upstream_job_id": upstream_job_id},
                )
            if moved:
                estimate = {ESTIMATE_HEADER: format_usd(job.estimate_micro_usd)}
                stored = idempotency.StoredResponse(
                    answer.status_code, answer.body, {**answer.headers, **estimate}
                )
                await idempotency.resolve_for_job(session, job.id, stored)
        if moved:
            logger.warning(
                "recovered the upstream job of a submit left unanswered",
                extra={"gateway_job_id": job.id, "upstream_job_id": upstream_job_id},
            )
        return moved

    async def _poll_all(
        self,
        now: datetime,
        report: ReconcileReport,
        progress: Callable[[int, int], None] | None,
    ) -> None:
        """Every submitted job, a page at a time by id (a job another replica holds locked is
        skipped: that replica is checking it). Stops early if the upstream rate-limits us."""
        async with transaction(self.sessionmaker) as session:
            total = await jobs.count_submitted(session)
        checked = 0
        after = ""
        while self._paused_until is None:
            async with transaction(self.sessionmaker) as session:
                page = await jobs.submitted_after(
                    session, after, limit=self.settings.reconciler_batch_size
                )
                await self._schedule(session, page, now)
            if not page:
                return

            def done(_job: Job) -> None:
                nonlocal checked
                checked += 1
                if progress is not None:
                    progress(checked, max(total, checked))

            await self._poll(page, report, on_checked=done)
            after = page[-1].id

    async def _schedule(self, session: AsyncSession, due: Sequence[Job], now: datetime) -> None:
        for job in due:
            await jobs.schedule_next_check(
                session,
                job.id,
                at=now + self._backoff(job.check_attempts),
                attempts=job.check_attempts + 1,
            )

    async def _poll(
        self,
        due: Sequence[Job],
        report: ReconcileReport,
        *,
        on_checked: Callable[[Job], None] | None = None,
    ) -> None:
        limit = asyncio.Semaphore(self.settings.reconciler_concurrency)

        async def check(job: Job) -> None:
            async with limit:
                if self._paused_until is not None:
                    return
                try:
                    await self._check(job, report)
                except Exception:  # one bad job must not stop the pass (flagging, purging)
                    report.upstream_errors += 1
                    logger.exception("reconciler check failed", extra={"gateway_job_id": job.id})
                if on_checked is not None:
                    on_checked(job)

        await asyncio.gather(*(check(job) for job in due))

    async def _check(self, job: Job, report: ReconcileReport) -> None:
        assert job.upstream_job_id is not None
        try:
            answer = await self.upstream.get_job(
                job.upstream_job_id, request_id=f"reconcile-{job.id}"
            )
        except UpstreamError:
            report.upstream_errors += 1
            return
        report.polled += 1
        if answer.status_code == 429:
            pause = _retry_after_seconds(answer.headers.get("retry-after"))
            self._paused_until = self.clock() + timedelta(seconds=pause)
            report.rate_limited = True
            logger.warning("upstream rate-limited the reconciler", extra={"pause_s": pause})
            return
        if answer.status_code >= 400:
            report.upstream_errors += 1
            logger.warning(
                "upstream does not know a held job",
                extra={"gateway_job_id": job.id, "http_status": answer.status_code},
            )
            return
        body = settlement.parse_poll_body(answer.body)
        if body is None:
            report.upstream_errors += 1
            return
        vocabulary = settlement.vocabulary_from(self.settings)
        settled = await settling.settle_from_poll(
            self.sessionmaker,
            vocabulary,
            job,
            body,
            answer.body,
            now=self.clock(),
        )
        if settled is not None:
            report.settled += 1
            self._record(job, settled.plan)
        elif settlement.read_terminal(body, vocabulary) is None:
            report.still_running += 1
            word = settlement.unknown_status_word(body, vocabulary)
            if word is not None:
                self.metrics.unknown_status(word, job.id)

    async def _flag_old_holds(self, now: datetime) -> int:
        cutoff = now - timedelta(seconds=self.settings.hold_max_age_seconds)
        async with transaction(self.sessionmaker) as session:
            flagged = await jobs.flag_old_holds(session, cutoff, now)
        for job_id in flagged:
            logger.warning("hold older than the maximum age", extra={"gateway_job_id": job_id})
        return len(flagged)

    def _record(self, job: Job, plan: settlement.SettlementPlan) -> None:
        team = self._team_names.get(job.team_id, str(job.team_id))
        settling.count_settlement(self.metrics, team, job, plan)

    def _backoff(self, attempts: int) -> timedelta:
        first = max(self.settings.reconciler_interval_seconds, 1.0)
        seconds = min(first * 2**attempts, self.settings.reconciler_max_backoff_seconds)
        return timedelta(seconds=seconds)


def _retry_after_seconds(value: str | None) -> float:
    if value is not None and value.strip().isdigit():
        return float(min(int(value.strip()), 3600))
    return _DEFAULT_PAUSE_SECONDS
