"""Opening a job's account: reserve its price against the budget, record the job and its hold
entry, all in the caller's transaction (so they commit together or not at all).

The job and its entry are written first and the reservation last: the reservation locks the
team's balance row until commit, and every concurrent submit of that team queues on that lock,
so it must be the transaction's final statement (a refused reservation rolls the rows back)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.core.pricing import RateCard
from gateway.db.direct import DirectStatements
from gateway.jobs.models import Job, JobState
from gateway.ledger import quotas
from gateway.ledger.models import EntryKind, LedgerEntry
from gateway.ledger.quotas import BudgetPolicy, Level, PeriodBalance, TeamQuota
from gateway.ledger.repository import PeriodAmounts
from gateway.ledger.settlement import held_accounts


async def place_hold(
    session: AsyncSession,
    team: TeamQuota,
    job: Job,
    *,
    policy: BudgetPolicy,
    now: datetime,
    levels: Sequence[Level] = (),
) -> PeriodBalance:
    """Hold ``job.estimate_micro_usd`` for the new ``job`` in its period at its team and at
    ``levels`` (its project's, its key's: the ones ``held_accounts(job)`` settles), or raise
    ``QuotaExceeded``. The job is inserted ``pending``; nothing is committed here."""
    assert job.state == JobState.PENDING
    assert job.team_id == team.team_id
    assert [level.account for level in levels] == held_accounts(job)
    session.add(job)
    session.add(LedgerEntry.for_job(job, EntryKind.HOLD, job.estimate_micro_usd, now=now))
    await session.flush()
    return await quotas.reserve_hold(
        session,
        team,
        period=job.period,
        amount=job.estimate_micro_usd,
        now=now,
        policy=policy,
        levels=levels,
    )


class RateCardsSeen:
    """The rate card last seen in force, per model: a hint for ``place_hold_direct``, never
    trusted on its own (its statement checks that the version is still the one in force, and
    a version's prices are never edited), so a card added meanwhile prices the next submit."""

    def __init__(self) -> None:
        self._cards: dict[str, RateCard] = {}

    def get(self, model: str) -> RateCard | None:
        return self._cards.get(model)

    def saw(self, model: str, card: RateCard) -> None:
        self._cards[model] = card


# One statement, so one round trip and the balance rows locked only for its own execution
# (autocommit). Every part but the team's reservation selects from the reservation's
# RETURNING: if the card in force is not the one priced with, or the team's budget has no
# room, or the period has no balance row yet at a level the job is held on, or (when a key is
# to be checked) the key, its team or its project is no longer as the caller was seen, nothing
# at all is written and the caller takes ``place_hold``'s path. The project's and the key's
# reservations run after the team's and in that order (each reads the one before: the
# documented lock order) and are unconditional increments: over that level's budget, its
# CHECK constraint fails the whole statement (nothing written) and the caller takes
# ``place_hold``'s path, which refuses with the level's figures. The same rows as
# ``place_hold`` writes (the job ``pending``, its ``hold`` entry, the kept request).
_HOLD = """
WITH card AS (
    SELECT version FROM rate_cards
    WHERE model = $1 AND effective_from <= $2
    ORDER BY effective_from DESC, id DESC
    LIMIT 1
), caller AS (
    SELECT k.id FROM api_keys k JOIN teams t ON t.id = k.team_id
    LEFT JOIN projects p ON p.id = k.project_id
    WHERE k.id = $8 AND k.team_id = $4 AND k.secret_hash = $16
      AND k.revoked_at IS NULL AND (k.expires_at IS NULL OR k.expires_at > $2)
      AND t.disabled_at IS NULL AND t.name = $17 AND t.max_concurrent_jobs IS NULL
      AND t.monthly_budget_micro_usd IS NOT DISTINCT FROM $18
      AND t.soft_limit_percent IS NOT DISTINCT FROM $19
      AND k.project_id IS NOT DISTINCT FROM $21::bigint
      AND t.max_cost_per_job_micro_usd IS NOT DISTINCT FROM $23::bigint
      AND k.max_cost_per_job_micro_usd IS NOT DISTINCT FROM $24::bigint
      AND p.max_cost_per_job_micro_usd IS NOT DISTINCT FROM $25::bigint
), reserved AS (
    UPDATE team_balances
    SET held_micro_usd = held_micro_usd + $3, updated_at = $2
    WHERE team_id = $4 AND period = $5
      AND (budget_micro_usd IS NULL
           OR held_micro_usd + captured_micro_usd + $3
              <= budget_micro_usd + granted_micro_usd)
      AND (SELECT version FROM card) = $6
      AND ($16::text IS NULL OR EXISTS (SELECT 1 FROM caller))
      AND ($21::bigint IS NULL OR EXISTS (
            SELECT 1 FROM project_balances WHERE project_id = $21::bigint AND period = $5))
      AND (NOT $22::boolean OR EXISTS (
            SELECT 1 FROM key_balances WHERE api_key_id = $8 AND period = $5))
    RETURNING budget_micro_usd, held_micro_usd, captured_micro_usd, granted_micro_usd
), project_reserved AS (
    UPDATE project_balances
    SET held_micro_usd = held_micro_usd + $3, updated_at = $2
    WHERE project_id = $21::bigint AND period = $5 AND EXISTS (SELECT 1 FROM reserved)
    RETURNING 1
), key_reserved AS (
    UPDATE key_balances
    SET held_micro_usd = held_micro_usd + $3, updated_at = $2
    WHERE $22::boolean AND api_key_id = $8 AND period = $5
      AND EXISTS (SELECT 1 FROM reserved)
      AND ($21::bigint IS NULL OR EXISTS (SELECT 1 FROM project_reserved))
    RETURNING 1
), job AS (
    INSERT INTO jobs (
        id, team_id, api_key_id, state, model, duration_ms, resolution, image_count,
        estimate_micro_usd, rate_card_version, period, request_id, tags, check_attempts,
        needs_review, next_check_at, created_at, updated_at, project_id, key_held
    )
    SELECT $7, $4, $8, 'pending', $1, $9, $10, $11, $3, $6, $5, $12, $13::json, 0,
           false, $14, $2, $2, $21::bigint, $22::boolean
    FROM reserved
    WHERE ($21::bigint IS NULL OR EXISTS (SELECT 1 FROM project_reserved))
      AND (NOT $22::boolean OR EXISTS (SELECT 1 FROM key_reserved))
    RETURNING id
), entry AS (
    INSERT INTO ledger_entries (
        job_id, team_id, period, kind, amount_micro_usd, rate_card_version, needs_review,
        tags, created_at
    )
    SELECT id, $4, $5, 'hold', $3, $6, false, $13::json, $2 FROM job
), kept AS (
    INSERT INTO job_requests (job_id, body, created_at)
    SELECT id, $15::bytea, $2 FROM job WHERE $15::bytea IS NOT NULL
), used AS (
    UPDATE api_keys SET last_used_at = $2
    WHERE id = (SELECT id FROM caller) AND EXISTS (SELECT 1 FROM job)
      AND (last_used_at IS NULL OR last_used_at < $20)
)
SELECT budget_micro_usd, held_micro_usd, captured_micro_usd, granted_micro_usd FROM reserved
WHERE EXISTS (SELECT 1 FROM job)
"""


@dataclass(frozen=True)
class KeyCheck:
    """A key not yet checked by this request, as it was last seen: the hold's statement
    checks it still is (not revoked or expired, its team enabled and unchanged), and records
    its use at most once per ``stale_before`` window."""

    secret_hash: str
    team_name: str
    monthly_budget_micro_usd: int | None
    soft_limit_percent: int | None
    stale_before: datetime
    team_max_cost_per_job_micro_usd: int | None = None
    key_max_cost_per_job_micro_usd: int | None = None
    project_max_cost_per_job_micro_usd: int | None = None


async def place_hold_direct(
    direct: DirectStatements,
    job: Job,
    *,
    keep_request: bytes | None,
    key: KeyCheck | None,
    now: datetime,
) -> PeriodBalance | None:
    """``place_hold`` in one committed statement, for a team without a concurrency cap, when
    the period's rows exist at every level the job is held on (``held_accounts(job)``) and
    have room, ``job`` was priced by the card in force and ``key`` (if given) still holds;
    None (and nothing written) otherwise. ``keep_request``: the body to keep for a re-send,
    if any."""
    assert job.state == JobState.PENDING
    try:
        row = await direct.fetchrow(*_hold_statement(job, keep_request, key, now))
    except IntegrityError as exc:
        if not _over_a_budget(exc):
            raise
        return None  # a level below the team has no room: place_hold refuses with its figures
    if row is None:
        return None
    return PeriodBalance.of(job.period, PeriodAmounts(row[0], row[1], row[2], row[3]))


def _over_a_budget(exc: IntegrityError) -> bool:
    constraint = getattr(exc.orig, "constraint_name", None) or ""
    return constraint.endswith("_within_budget")


def _hold_statement(
    job: Job, keep_request: bytes | None, key: KeyCheck | None, now: datetime
) -> tuple[Any, ...]:
    return (
        _HOLD,
        job.model,
        now,
        job.estimate_micro_usd,
        job.team_id,
        job.period,
        job.rate_card_version,
        job.id,
        job.api_key_id,
        job.duration_ms,
        job.resolution,
        job.image_count,
        job.request_id,
        json.dumps(job.tags),
        job.next_check_at,
        keep_request,
        key.secret_hash if key else None,
        key.team_name if key else None,
        key.monthly_budget_micro_usd if key else None,
        key.soft_limit_percent if key else None,
        key.stale_before if key else now,
        job.project_id,
        bool(job.key_held),
        key.team_max_cost_per_job_micro_usd if key else None,
        key.key_max_cost_per_job_micro_usd if key else None,
        key.project_max_cost_per_job_micro_usd if key else None,
    )
