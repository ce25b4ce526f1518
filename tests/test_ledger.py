"""The ledger's rules, enforced where they must hold even if code were wrong: in the database.
Every test here runs on Postgres and on SQLite, in the fast tier (``db``: inside a transaction
rolled back after the test, so the jobs it writes at fixed times and the rules it deliberately
breaks are never seen by any other test)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.errors import Conflict, InvalidRequest, QuotaExceeded
from gateway.jobs.models import Job, JobState
from gateway.ledger import quotas, rates, settlement
from gateway.ledger.holds import place_hold
from gateway.ledger.models import EntryKind, LedgerEntry
from gateway.ledger.quotas import BudgetPolicy, TeamQuota
from gateway.tenancy.models import Team
from tests.support.api import MODEL
from tests.support.jobs import pending_job
from tests.support.ledger import team_ledger
from tests.support.rates import add_rates
from tests.support.savepoint import Database, SavepointDatabase
from tests.support.tenants import TEST_ACTOR, in_session, make_tenant

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
PERIOD = "2026-11"
VOCABULARY = settlement.StatusVocabulary(
    success={"completed", "succeeded", "done"},
    failure={"failed", "error", "expired"},
    moderation_codes={"content_moderated", "content_policy_violation", "moderation_blocked"},
)


def team_quota(db: Database, team: str) -> TeamQuota:
    async def _quota(session: AsyncSession) -> TeamQuota:
        row = (await session.execute(select(Team).where(Team.name == team))).scalar_one()
        return TeamQuota(
            row.id, row.monthly_budget_micro_usd, row.max_concurrent_jobs, name=row.name
        )

    return in_session(db, _quota)


def new_job(quota: TeamQuota, estimate: int, *, period: str = PERIOD, **fields: object) -> Job:
    return pending_job(quota.team_id, estimate, period=period, at=NOW, **fields)


def hold(
    db: Database,
    quota: TeamQuota,
    estimate: int,
    policy: BudgetPolicy = "unlimited",
    **fields: object,
) -> Job:
    job = new_job(quota, estimate, **fields)

    async def _hold(session: AsyncSession) -> Job:
        await place_hold(session, quota, job, policy=policy, now=NOW)
        return job

    return in_session(db, _hold)


def settle(db: Database, job: Job, plan: settlement.SettlementPlan) -> bool:
    async def _settle(session: AsyncSession) -> bool:
        return await settlement.apply_settlement(session, job, plan, now=NOW) is not None

    return in_session(db, _settle)


@pytest.mark.fast
def test_holds_within_budget_then_429_with_the_figures(db: SavepointDatabase) -> None:
    tenant = make_tenant(db, budget_micro_usd=5_000_000)
    quota = team_quota(db, tenant.team)
    hold(db, quota, 2_000_000)
    hold(db, quota, 2_000_000)
    with pytest.raises(QuotaExceeded) as refused:
        hold(db, quota, 1_000_001)
    assert refused.value.code == "quota_exceeded"
    assert refused.value.details == {
        "scope": "team",
        "scope_name": tenant.team,
        "period": PERIOD,
        "budget_usd": "5.000000",
        "granted_usd": "0.000000",
        "used_usd": "4.000000",
        "requested_usd": "1.000001",
        "resets_at": "2026-12-01T00:00:00Z",
    }
    hold(db, quota, 1_000_000)  # exactly to the budget is allowed
    ledger = team_ledger(db, tenant.team)
    assert (ledger.balance.held_micro_usd, ledger.balance.captured_micro_usd) == (5_000_000, 0)
    assert [e.kind for e in ledger.entries] == ["hold"] * 3
    assert len(ledger.jobs) == 3  # the refused one left no job behind


@pytest.mark.fast
def test_the_database_itself_refuses_overspend(db: SavepointDatabase) -> None:
    tenant = make_tenant(db, budget_micro_usd=1_000_000)
    quota = team_quota(db, tenant.team)
    hold(db, quota, 600_000)

    async def _overspend(session: AsyncSession) -> None:
        await session.execute(
            text(
                "UPDATE team_balances SET held_micro_usd = held_micro_usd + 400001 "
                "WHERE team_id = :t"
            ),
            {"t": quota.team_id},
        )

    with pytest.raises(IntegrityError):
        in_session(db, _overspend)


@pytest.mark.fast
@pytest.mark.parametrize(
    "statement", ["UPDATE ledger_entries SET amount_micro_usd = 1", "DELETE FROM ledger_entries"]
)
def test_ledger_entries_are_append_only(db: SavepointDatabase, statement: str) -> None:
    tenant = make_tenant(db)
    hold(db, team_quota(db, tenant.team), 1_000)

    async def _tamper(session: AsyncSession) -> None:
        await session.execute(text(statement))

    with pytest.raises(DBAPIError, match="append-only"):
        in_session(db, _tamper)
    assert team_ledger(db, tenant.team).entries[0].amount_micro_usd == 1_000


@pytest.mark.fast
def test_one_hold_and_one_settlement_per_job_in_the_schema(db: SavepointDatabase) -> None:
    tenant = make_tenant(db)
    job = hold(db, team_quota(db, tenant.team), 1_000)

    def insert(kind: EntryKind) -> None:
        async def _insert(session: AsyncSession) -> None:
            session.add(
                LedgerEntry(
                    job_id=job.id,
                    team_id=job.team_id,
                    period=job.period,
                    kind=kind.value,
                    amount_micro_usd=1_000,
                    rate_card_version="seed-2026-11",
                    needs_review=False,
                    created_at=NOW,
                )
            )

        in_session(db, _insert)

    with pytest.raises(IntegrityError):
        insert(EntryKind.HOLD)
    insert(EntryKind.CAPTURE)
    with pytest.raises(IntegrityError):
        insert(EntryKind.RELEASE)
    with pytest.raises(IntegrityError):
        insert(EntryKind.CAPTURE)
    insert(EntryKind.CORRECTION)  # corrections may be many


@pytest.mark.fast
def test_settlement_happens_once_and_moves_the_money(db: SavepointDatabase) -> None:
    tenant = make_tenant(db, budget_micro_usd=10_000_000)
    quota = team_quota(db, tenant.team)
    captured_job = hold(db, quota, 1_680_000)
    released_job = hold(db, quota, 960_000)
    capture = settlement.SettlementPlan(JobState.CAPTURED, 1_680_000, reason="completed")
    assert settle(db, captured_job, capture) is True
    assert settle(db, captured_job, capture) is False
    assert settle(db, captured_job, settlement.release("failed")) is False
    assert settle(db, released_job, settlement.release("generation_failed")) is True

    ledger = team_ledger(db, tenant.team)
    assert ledger.entries_of(captured_job.id) == [("hold", 1_680_000), ("capture", 1_680_000)]
    assert ledger.entries_of(released_job.id) == [("hold", 960_000), ("release", 960_000)]
    assert (ledger.balance.held_micro_usd, ledger.balance.captured_micro_usd) == (0, 1_680_000)
    states = {j.id: j.state for j in ledger.jobs}
    assert states == {captured_job.id: "captured", released_job.id: "released"}


@pytest.mark.fast
def test_cost_belongs_to_the_period_of_submit(db: SavepointDatabase) -> None:
    tenant = make_tenant(db)
    quota = team_quota(db, tenant.team)
    job = hold(
        db,
        quota,
        500_000,
        period="2026-10",
        created_at=datetime(2026, 10, 31, 23, 59, 59, tzinfo=UTC),
    )
    settle(db, job, settlement.SettlementPlan(JobState.CAPTURED, 500_000))
    ledger = team_ledger(db, tenant.team)
    assert [(b.period, b.captured_micro_usd) for b in ledger.balances] == [("2026-10", 500_000)]
    assert {e.period for e in ledger.entries} == {"2026-10"}


@pytest.mark.fast
def test_concurrency_cap_counts_open_jobs(db: SavepointDatabase) -> None:
    tenant = make_tenant(db, max_concurrent_jobs=2)
    quota = team_quota(db, tenant.team)
    first = hold(db, quota, 1_000)
    hold(db, quota, 1_000)
    with pytest.raises(QuotaExceeded) as refused:
        hold(db, quota, 1_000)
    assert refused.value.code == "concurrency_limit"
    settle(db, first, settlement.release("failed"))
    hold(db, quota, 1_000)  # a finished job frees a slot
    assert team_ledger(db, tenant.team).balance.held_micro_usd == 2_000


@pytest.mark.fast
@pytest.mark.parametrize(("policy", "allowed"), [("unlimited", True), ("deny", False)])
def test_default_policy_for_teams_without_a_budget(
    db: SavepointDatabase, policy: BudgetPolicy, allowed: bool
) -> None:
    tenant = make_tenant(db, budget_micro_usd=None)
    quota = team_quota(db, tenant.team)
    if allowed:
        hold(db, quota, 10**12, policy=policy)
        assert team_ledger(db, tenant.team).balance.budget_micro_usd is None
    else:
        with pytest.raises(QuotaExceeded):
            hold(db, quota, 1, policy=policy)


@pytest.mark.fast
def test_rate_card_versions_by_effective_time(db: SavepointDatabase) -> None:
    version = f"test-{uuid.uuid4().hex[:8]}"
    starts = datetime(2031, 1, 1, tzinfo=UTC)  # far enough not to disturb other tests

    async def _add(session: AsyncSession) -> None:
        per_second = {"480p": 90_000, "720p": 150_000}
        await add_rates(session, version, per_second, actor=TEST_ACTOR, effective_from=starts)

    in_session(db, _add)
    before = in_session(db, lambda s: rates.rate_card_in_force(s, MODEL, NOW))
    after = in_session(
        db, lambda s: rates.rate_card_in_force(s, MODEL, starts + timedelta(seconds=1))
    )
    assert before.version == "seed-2026-11"
    assert (after.version, after.per_second_micro_usd["720p"]) == (version, 150_000)
    with pytest.raises(Conflict):
        in_session(db, _add)

    async def _missing_resolution(session: AsyncSession) -> None:
        await add_rates(session, "partial", {"720p": 1}, image_fee_micro_usd=1, actor=TEST_ACTOR)

    with pytest.raises(InvalidRequest):
        in_session(db, _missing_resolution)


def outcome_of(body: dict[str, object]) -> settlement.TerminalOutcome | None:
    return settlement.read_terminal(body, VOCABULARY)


@pytest.mark.parametrize(
    ("body", "billed"),
    [
        ({"status": "completed"}, True),
        ({"status": "succeeded"}, True),
        ({"status": "DONE"}, True),
        ({"status": "failed", "error": {"code": "generation_failed"}}, False),
        ({"status": "error", "error": {"code": "internal"}}, False),
        ({"status": "expired"}, False),
        ({"status": "failed", "error": {"code": "content_moderated"}}, True),
        ({"status": "failed", "error": {"code": "content_policy_violation"}}, True),
        ({"status": "failed", "error": {"code": "moderation_blocked"}}, True),
        ({"status": "failed", "error": "content_moderated"}, False),  # no code: not billed
    ],
)
def test_status_vocabulary(body: dict[str, object], billed: bool) -> None:
    outcome = outcome_of(body)
    assert outcome is not None
    assert outcome.billed is billed


@pytest.mark.parametrize("status", ["queued", "processing", "running", None, 3])
def test_non_terminal_answers_settle_nothing(status: object) -> None:
    assert outcome_of({"status": status}) is None


@pytest.mark.fast
@pytest.mark.parametrize(
    ("result", "captured", "excess"),
    [
        (None, 1_680_000, 0),  # nothing reported: the hold is captured
        ({"duration": 10}, 1_680_000, 0),
        ({"duration": 4}, 672_000, 0),  # fewer seconds produced: fewer billed
        ({"usage": {"video_seconds": Decimal("2.5")}}, 420_000, 0),
        ({"duration": 12}, 1_680_000, 336_000),  # more than held: capped, excess for review
        ({"duration": -3}, 1_680_000, 0),  # unbelievable figures are ignored
        ({"duration": "7"}, 1_680_000, 0),
    ],
)
def test_capture_follows_reported_seconds_never_beyond_the_hold(
    db: SavepointDatabase, result: dict[str, object] | None, captured: int, excess: int
) -> None:
    tenant = make_tenant(db)
    job = hold(db, team_quota(db, tenant.team), 1_680_000)
    body: dict[str, object] = {"status": "completed", "result": result}
    outcome = outcome_of(body)
    assert outcome is not None
    plan = in_session(db, lambda s: settlement.plan_from_outcome(s, job, outcome, b"{}"))
    assert (plan.state, plan.captured, plan.excess) == (JobState.CAPTURED, captured, excess)
    assert settle(db, job, plan)
    ledger = team_ledger(db, tenant.team)
    expected = [("hold", 1_680_000), ("capture", captured)]
    if excess:
        expected.append(("correction", excess))
    assert ledger.entries_of(job.id) == expected
    assert ledger.balance.captured_micro_usd == captured
    assert ledger.jobs[0].needs_review is bool(excess)


@pytest.mark.fast
def test_upstream_reported_cost_is_kept_beside_ours(db: SavepointDatabase) -> None:
    tenant = make_tenant(db)
    job = hold(db, team_quota(db, tenant.team), 1_680_000)
    outcome = outcome_of(
        {"status": "completed", "result": {"duration": 10, "usage": {"cost_usd": "1.700000"}}}
    )
    assert outcome is not None
    plan = in_session(db, lambda s: settlement.plan_from_outcome(s, job, outcome, b"{}"))
    settle(db, job, plan)
    capture = [e for e in team_ledger(db, tenant.team).entries if e.kind == "capture"]
    assert (capture[0].amount_micro_usd, capture[0].upstream_cost_micro_usd) == (
        1_680_000,
        1_700_000,
    )


@pytest.mark.fast
def test_balance_view_for_usage(db: SavepointDatabase) -> None:
    tenant = make_tenant(db, budget_micro_usd=3_000_000)
    quota = team_quota(db, tenant.team)
    empty = in_session(db, lambda s: quotas.balance_view(s, quota, PERIOD, "unlimited"))
    assert (empty.budget, empty.held, empty.captured, empty.remaining) == (
        3_000_000,
        0,
        0,
        3_000_000,
    )
    job = hold(db, quota, 1_000_000)
    settle(db, job, settlement.SettlementPlan(JobState.CAPTURED, 700_000))
    hold(db, quota, 500_000)
    view = in_session(db, lambda s: quotas.balance_view(s, quota, PERIOD, "unlimited"))
    assert (view.held, view.captured, view.remaining) == (500_000, 700_000, 1_800_000)
    assert view.remaining_header() == "1.800000"
