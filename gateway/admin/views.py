"""Domain rows → admin API bodies (amounts as USD decimal strings)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from gateway.admin.schemas import (
    AuditOut,
    JobDetailOut,
    JobOut,
    KeyOut,
    LedgerEntryOut,
    RateCardOut,
    TeamOut,
)
from gateway.audit.models import AuditEntry
from gateway.core.usd import format_usd
from gateway.jobs.models import Job
from gateway.ledger.models import LedgerEntry, RateCardRow
from gateway.tenancy.models import ApiKey, Team


def _usd(micro: int | None) -> str | None:
    return format_usd(micro) if micro is not None else None


def _seconds(ms: int | None) -> str | None:
    return str(Decimal(ms) / 1000) if ms is not None else None


def team_out(team: Team) -> TeamOut:
    return TeamOut(
        id=team.id,
        name=team.name,
        cost_center=team.cost_center,
        monthly_budget_usd=_usd(team.monthly_budget_micro_usd),
        max_concurrent_jobs=team.max_concurrent_jobs,
        soft_limit_percent=team.soft_limit_percent,
        disabled=team.disabled_at is not None,
        created_at=team.created_at,
    )


def key_out(key: ApiKey, team: str, now: datetime) -> KeyOut:
    expired = key.expires_at is not None and key.expires_at <= now
    return KeyOut(
        id=key.id,
        team=team,
        name=key.name,
        created_at=key.created_at,
        expires_at=key.expires_at,
        revoked_at=key.revoked_at,
        last_used_at=key.last_used_at,
        active=key.revoked_at is None and not expired,
    )


def rate_card_out(row: RateCardRow) -> RateCardOut:
    return RateCardOut(
        model=row.model,
        version=row.version,
        effective_from=row.effective_from,
        image_fee_usd=format_usd(row.image_fee_micro_usd),
        per_second_usd={k: format_usd(v) for k, v in sorted(row.per_second_micro_usd.items())},
    )


def job_out(job: Job, team: str) -> JobOut:
    return JobOut(
        id=job.id,
        upstream_job_id=job.upstream_job_id,
        team=team,
        state=job.state,
        model=job.model,
        duration_seconds=_seconds(job.duration_ms) or "0",
        resolution=job.resolution,
        image_count=job.image_count,
        estimate_usd=format_usd(job.estimate_micro_usd),
        rate_card_version=job.rate_card_version,
        period=job.period,
        needs_review=job.needs_review,
        upstream_status=job.upstream_status,
        upstream_error_code=job.upstream_error_code,
        created_at=job.created_at,
        settled_at=job.settled_at,
    )


def entry_out(entry: LedgerEntry) -> LedgerEntryOut:
    return LedgerEntryOut(
        id=entry.id,
        kind=entry.kind,
        amount_usd=format_usd(entry.amount_micro_usd),
        rate_card_version=entry.rate_card_version,
        reason=entry.reason,
        video_seconds=_seconds(entry.video_ms),
        upstream_cost_usd=_usd(entry.upstream_cost_micro_usd),
        needs_review=entry.needs_review,
        created_at=entry.created_at,
    )


def job_detail_out(job: Job, team: str, entries: list[LedgerEntry]) -> JobDetailOut:
    return JobDetailOut(**job_out(job, team).model_dump(), entries=[entry_out(e) for e in entries])


def audit_out(entry: AuditEntry) -> AuditOut:
    return AuditOut.model_validate(entry, from_attributes=True)  # the same fields, as stored
