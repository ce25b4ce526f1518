"""The ledger's rules, enforced where they must hold even if code were wrong: in the database.
Every test here runs on Postgres and on SQLite."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
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
from tests.support.database import create_postgres_database, drop_postgres_database, migrate
from tests.support.jobs import pending_job
from tests.support.ledger import team_ledger
from tests.support.rates import add_rates
from tests.support.tenants import TEST_ACTOR, in_session, make_tenant

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
PERIOD = "2026-11"
VOCABULARY = settlement.StatusVocabulary(
    success={"completed", "succeeded", "done"},
    failure={"failed", "error", "expired"},
    moderation_codes={"content_moderated", "content_policy_violation", "moderation_blocked"},
)


@pytest.fixture(scope="module", params=["postgres", "sqlite"])
def database_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """This module's own databases: it writes jobs at fixed times and deliberately breaks
    ledger rules, which other tests' reconciler passes over the shared database must not see."""
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('ledger') / 'ledger.db'}"
        migrate(url)
        yield url
        return
    request.getfixturevalue("postgres_url")  # skips, or fails in CI, without Postgres
    url = create_postgres_database()
    yield url
    drop_postgres_database(url)


def team_quota(url: str, team: str) -> TeamQuota:
    async def _quota(session: AsyncSession) -> TeamQuota:
        row = (await session.execute(select(Team).where(Team.name == team))).scalar_one()
        return TeamQuota(row.id, row.monthly_budget_micro_usd, row.max_concurrent_jobs)

    return in_session(url, _quota)


def new_job(quota: TeamQuota, estimate: int, *, period: str = PERIOD, **fields: object) -> Job:
    return pending_job(quota.team_id, estimate, period=period, at=NOW, **fields)


def hold(
    url: str, quota: TeamQuota, estimate: int, policy: BudgetPolicy = "unlimited", **fields: object
) -> Job:
    job = new_job(quota, estimate, **fields)

    async def _hold(session: AsyncSession) -> Job:
        await place_hold(session, quota, job, policy=policy, now=NOW)
        return job

    return in_session(url, _hold)


def settle(url: str, job: Job, plan: settlement.SettlementPlan) -> bool:
    async def _settle(session: AsyncSession) -> bool:
        return await settlement.apply_settlement(session, job, plan, now=NOW) is not None

    return in_session(url, _settle)


def test_holds_within_budget_then_429_with_the_figures(database_url: str) -> None:
    tenant = make_tenant(database_url, budget_micro_usd=5_000_000)
    quota = team_quota(database_url, tenant.team)
    hold(database_url, quota, 2_000_000)
    hold(database_url, quota, 2_000_000)
    with pytest.raises(QuotaExceeded) as refused:
        hold(database_url, quota, 1_000_001)
    assert refused.value.code == "quota_exceeded"
    assert refused.value.details == {
        "period": PERIOD,
        "budget_usd": "5.000000",
        "used_usd": "4.000000",
        "requested_usd": "1.000001",
    }
    hold(database_url, quota, 1_000_000)  # exactly to the budget is allowed
    ledger = team_ledger(database_url, tenant.team)
    assert (ledger.balance.held_micro_usd, ledger.balance.captured_micro_usd) == (5_000_000, 0)
    assert [e.kind for e in ledger.entries] == ["hold"] * 3
    assert len(ledger.jobs) == 3  # the refused one left no job behind


def test_the_database_itself_refuses_overspend(database_url: str) -> None:
    tenant = make_tenant(database_url, budget_micro_usd=1_000_000)
    quota = team_quota(database_url, tenant.team)
    hold(database_url, quota, 600_000)

    async def _overspend(session: AsyncSession) -> None:
        await session.execute(
            text(
                "UPDATE team_balances SET held_micro_usd = held_micro_usd + 400001 "
                "WHERE team_id = :t"
            ),
            {"t": quota.team_id},
        )

    with pytest.raises(IntegrityError):
        in_session(database_url, _overspend)


@pytest.mark.parametrize(
    "statement", ["UPDATE ledger_entries SET amount_micro_usd = 1", "DELETE FROM ledger_entries"]
)
def test_ledger_entries_are_append_only(database_url: str, statement: str) -> None:
    tenant = make_tenant(database_url)
    hold(database_url, team_quota(database_url, tenant.team), 1_000)

    async def _tamper(session: AsyncSession) -> None:
        await session.execute(text(statement))

    with pytest.raises(DBAPIError, match="append-only"):
        in_session(database_url, _tamper)
    assert team_ledger(database_url, tenant.team).entries[0].amount_micro_usd == 1_000


def test_one_hold_and_one_settlement_per_job_in_the_schema(database_url: str) -> None:
    tenant = make_tenant(database_url)
    job = hold(database_url, team_quota(database_url, tenant.team), 1_000)

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

        in_session(database_url, _insert)

    with pytest.raises(IntegrityError):
        insert(EntryKind.HOLD)
    insert(EntryKind.CAPTURE)
    with pytest.raises(IntegrityError):
        insert(EntryKind.RELEASE)
    with pytest.raises(IntegrityError):
        insert(EntryKind.CAPTURE)
    insert(EntryKind.CORRECTION)  # corrections may be many


def test_settlement_happens_once_and_moves_the_money(database_url: str) -> None:
    tenant = make_tenant(database_url, budget_micro_usd=10_000_000)
    quota = team_quota(database_url, tenant.team)
    captured_job = hold(database_url, quota, 1_680_000)
    released_job = hold(database_url, quota, 960_000)
    capture = settlement.SettlementPlan(JobState.CAPTURED, 1_680_000, reason="completed")
    assert settle(database_url, captured_job, capture) is True
    assert settle(database_url, captured_job, capture) is False
    assert settle(database_url, captured_job, settlement.release("failed")) is False
    assert settle(database_url, released_job, settlement.release("generation_failed")) is True

    ledger = team_ledger(database_url, tenant.team)
    assert ledger.entries_of(captured_job.id) == [("hold", 1_680_000), ("capture", 1_680_000)]
    assert ledger.entries_of(released_job.id) == [("hold", 960_000), ("release", 960_000)]
    assert (ledger.balance.held_micro_usd, ledger.balance.captured_micro_usd) == (0, 1_680_000)
    states = {j.id: j.state for j in ledger.jobs}
    assert states == {captured_job.id: "captured", released_job.id: "released"}


def test_cost_belongs_to_the_period_of_submit(database_url: str) -> None:
    tenant = make_tenant(database_url)
    quota = team_quota(database_url, tenant.team)
    job = hold(
        database_url,
        quota,
        500_000,
        period="2026-10",
        created_at=datetime(2026, 10, 31, 23, 59, 59, tzinfo=UTC),
    )
    settle(database_url, job, settlement.SettlementPlan(JobState.CAPTURED, 500_000))
    ledger = team_ledger(database_url, tenant.team)
    assert [(b.period, b.captured_micro_usd) for b in ledger.balances] == [("2026-10", 500_000)]
    assert {e.period for e in ledger.entries} == {"2026-10"}


def test_concurrency_cap_counts_open_jobs(database_url: str) -> None:
    tenant = make_tenant(database_url, max_concurrent_jobs=2)
    quota = team_quota(database_url, tenant.team)
    first = hold(database_url, quota, 1_000)
    hold(database_url, quota, 1_000)
    with pytest.raises(QuotaExceeded) as refused:
        hold(database_url, quota, 1_000)
    assert refused.value.code == "concurrency_limit"
    settle(database_url, first, settlement.release("failed"))
    hold(database_url, quota, 1_000)  # a finished job frees a slot
    assert team_ledger(database_url, tenant.team).balance.held_micro_usd == 2_000


@pytest.mark.parametrize(("policy", "allowed"), [("unlimited", True), ("deny", False)])
def test_default_policy_for_teams_without_a_budget(
    database_url: str, policy: BudgetPolicy, allowed: bool
) -> None:
    tenant = make_tenant(database_url, budget_micro_usd=None)
    quota = team_quota(database_url, tenant.team)
    if allowed:
        hold(database_url, quota, 10**12, policy=policy)
        assert team_ledger(database_url, tenant.team).balance.budget_micro_usd is None
    else:
        with pytest.raises(QuotaExceeded):
            hold(database_url, quota, 1, policy=policy)


def test_rate_card_versions_by_effective_time(database_url: str) -> None:
    version = f"test-{uuid.uuid4().hex[:8]}"
    starts = datetime(2031, 1, 1, tzinfo=UTC)  # far enough not to disturb other tests

    async def _add(session: AsyncSession) -> None:
        per_second = {"480p": 90_000, "720p": 150_000}
        await add_rates(session, version, per_second, actor=TEST_ACTOR, effective_from=starts)

    in_session(database_url, _add)
    before = in_session(database_url, lambda s: rates.rate_card_in_force(s, MODEL, NOW))
    after = in_session(
        database_url, lambda s: rates.rate_card_in_force(s, MODEL, starts + timedelta(seconds=1))
    )
    assert before.version == "seed-2026-11"
    assert (after.version, after.per_second_micro_usd["720p"]) == (version, 150_000)
    with pytest.raises(Conflict):
        in_session(database_url, _add)

    async def _missing_resolution(session: AsyncSession) -> None:
        await add_rates(session, "partial", {"720p": 1}, image_fee_micro_usd=1, actor=TEST_ACTOR)

    with pytest.raises(InvalidRequest):
        in_session(database_url, _missing_resolution)


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
    database_url: str, result: dict[str, object] | None, captured: int, excess: int
) -> None:
    tenant = make_tenant(database_url)
    job = hold(database_url, team_quota(database_url, tenant.team), 1_680_000)
    body: dict[str, object] = {"status": "completed", "result": result}
    outcome = outcome_of(body)
    assert outcome is not None
    plan = in_session(database_url, lambda s: settlement.plan_from_outcome(s, job, outcome, b"{}"))
    assert (plan.state, plan.captured, plan.excess) == (JobState.CAPTURED, captured, excess)
    assert settle(database_url, job, plan)
    ledger = team_ledger(database_url, tenant.team)
    expected = [("hold", 1_680_000), ("capture", captured)]
    if excess:
        expected.append(("correction", excess))
    assert ledger.entries_of(job.id) == expected
    assert ledger.balance.captured_micro_usd == captured
    assert ledger.jobs[0].needs_review is bool(excess)


def test_upstream_reported_cost_is_kept_beside_ours(database_url: str) -> None:
    tenant = make_tenant(database_url)
    job = hold(database_url, team_quota(database_url, tenant.team), 1_680_000)
    outcome = outcome_of(
        {"status": "completed", "result": {"duration": 10, "usage": {"cost_usd": "1.700000"}}}
    )
    assert outcome is not None
    plan = in_session(database_url, lambda s: settlement.plan_from_outcome(s, job, outcome, b"{}"))
    settle(database_url, job, plan)
    capture = [e for e in team_ledger(database_url, tenant.team).entries if e.kind == "capture"]
    assert (capture[0].amount_micro_usd, capture[0].upstream_cost_micro_usd) == (
        1_680_000,
        1_700_000,
    )


def test_balance_view_for_usage(database_url: str) -> None:
    tenant = make_tenant(database_url, budget_micro_usd=3_000_000)
    quota = team_quota(database_url, tenant.team)
    empty = in_session(database_url, lambda s: quotas.balance_view(s, quota, PERIOD, "unlimited"))
    assert (empty.budget, empty.held, empty.captured, empty.remaining) == (
        3_000_000,
        0,
        0,
        3_000_000,
    )
    job = hold(database_url, quota, 1_000_000)
    settle(database_url, job, settlement.SettlementPlan(JobState.CAPTURED, 700_000))
    hold(database_url, quota, 500_000)
    view = in_session(database_url, lambda s: quotas.balance_view(s, quota, PERIOD, "unlimited"))
    assert (view.held, view.captured, view.remaining) == (500_000, 700_000, 1_800_000)
    assert view.remaining_header() == "1.800000"
