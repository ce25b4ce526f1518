"""Settlements an operator makes by hand, after reviewing a job the gateway could not settle
itself (a job the upstream never finishes, or one left open by a fault). Audited, and the same
exactly-once rule as every other settlement: a job already settled is refused (409)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from gateway.audit import service as audit
from gateway.audit.service import Actor
from gateway.core.clock import utcnow
from gateway.core.usd import format_usd
from gateway.errors import Conflict, NotFound
from gateway.jobs import idempotency
from gateway.jobs import repository as jobs
from gateway.jobs.models import Job, JobState
from gateway.ledger import settlement
from gateway.ledger.settlement import SettlementPlan

ADMIN_RELEASE_REASON = "released_by_admin"


@dataclass(frozen=True)
class ManualRelease:
    job: Job
    team: str
    plan: SettlementPlan


async def release_job(
    session: AsyncSession, job_id: str, *, actor: Actor, note: str | None
) -> ManualRelease:
    """Give an open job's hold back to its team. The job is no longer polled or billed by the
    gateway; if the upstream does run it, the upstream usage reconciliation shows it."""
    found = await jobs.find_any(session, job_id)
    if found is None:
        raise NotFound(f"no job with id {job_id!r}", code="job_not_found")
    job, team = found
    plan = settlement.release(ADMIN_RELEASE_REASON)
    before = {"state": job.state, "held_usd": format_usd(job.estimate_micro_usd)}
    if await settlement.apply_settlement(session, job, plan, now=utcnow()) is None:
        raise Conflict(
            f"job {job.id!r} is already settled ({job.state}); nothing to release",
            code="job_already_settled",
        )
    await jobs.drop_request(session, job.id)
    if job.upstream_job_id is None:
        # Never confirmed by the upstream: a retry with the client's key must not replay a
        # claim that no longer holds anything (nor silently submit a second job).
        await idempotency.resolve_for_job(session, job.id, idempotency.OUTCOME_UNKNOWN)
    after = {"state": JobState.RELEASED, "reason": ADMIN_RELEASE_REASON, "note": note}
    await audit.record(session, actor, "job.release", "job", job.id, before=before, after=after)
    return ManualRelease(job, team, plan)
