"""Races at boundaries, forced into their losing interleaving every time (see
``tests.support.interleave``): a second request, as another replica would send it, commits at
exactly the moment between two statements of the code under test."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import cast

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.db.engine import create_engine, create_sessionmaker
from gateway.db.health import DatabaseHealth
from gateway.db.session import transaction
from gateway.errors import BudgetExhausted
from gateway.jobs import idempotency
from gateway.jobs import repository as jobs
from gateway.jobs.models import IdempotencyKey, Job, JobState
from gateway.ledger.holds import place_hold
from gateway.ledger.models import LedgerEntry
from gateway.ledger.quotas import TeamQuota
from gateway.observability.metrics import Metrics
from gateway.services.reconciler import Reconciler
from gateway.tenancy.models import Team
from gateway.upstream.client import UpstreamClient
from tests.support.api import submit_async
from tests.support.interleave import interleave, side_connection
from tests.support.jobs import pending_job
from tests.support.settings import gateway_settings
from tests.support.simulator import SimulatorProbe
from tests.support.tenants import Tenant, in_session, make_tenant

NOW = datetime(2026, 12, 1, 0, 0, 0, 1000, tzinfo=UTC)  # the first moment of a period
PERIOD = "2026-12"
PRICE = 1_680_000


def new_job(team_id: int, *, estimate: int = PRICE) -> Job:
    return pending_job(team_id, estimate, period=PERIOD, at=NOW)


def team_id_of(url: str, name: str) -> int:
    async def _id(session: AsyncSession) -> int:
        return int((await session.execute(select(Team.id).where(Team.name == name))).scalar_one())

    return in_session(url, _id)


@pytest.mark.parametrize("budget", [100_000_000_000, None], ids=["budgeted", "unlimited"])
def test_a_periods_first_submit_is_not_refused_when_another_opens_the_period(
    postgres_url: str, budget: int | None
) -> None:
    """Defect 1: the submit finds no balance row for the new period; before it looks again,
    a concurrent first submit (another replica) creates the row and commits. The budget has
    all the room in the world: the submit must be held, not refused with quota_exceeded."""
    tenant = make_tenant(postgres_url, budget_micro_usd=budget)
    team_id = team_id_of(postgres_url, tenant.team)
    quota = TeamQuota(team_id, budget, None)

    async def scenario() -> tuple[int, int, int]:
        engine = create_engine(postgres_url)
        sessionmaker = create_sessionmaker(engine)
        try:
            async with side_connection(postgres_url) as other:

                async def other_replica_opens_the_period() -> None:
                    # What a concurrent first submit commits: the period's row with its hold.
                    await other.execute(
                        "INSERT INTO team_balances (team_id, period, budget_micro_usd, "
                        "held_micro_usd, captured_micro_usd, updated_at) "
                        "VALUES ($1, $2, $3, $4, 0, now())",
                        team_id,
                        PERIOD,
                        budget,
                        PRICE,
                    )

                with interleave(
                    engine, after=r"^\s*UPDATE team_balances", action=other_replica_opens_the_period
                ) as hook:
                    async with transaction(sessionmaker) as session:
                        view = await place_hold(
                            session, quota, new_job(team_id), policy="unlimited", now=NOW
                        )
                assert hook.fired == 1
                row = await other.fetchrow(
                    "SELECT held_micro_usd, captured_micro_usd FROM team_balances "
                    "WHERE team_id = $1 AND period = $2",
                    team_id,
                    PERIOD,
                )
                return view.held, row["held_micro_usd"], row["captured_micro_usd"]
        finally:
            await engine.dispose()

    held_seen, held, captured = asyncio.run(scenario())
    assert (held_seen, held, captured) == (2 * PRICE, 2 * PRICE, 0)


def test_a_budget_refusal_never_shows_figures_with_room(postgres_url: str) -> None:
    """Found by the soak: a submit finds no room; before it reads the figures for its 429,
    another replica's settlement releases a hold and commits. The refusal must not then show
    figures with room for the request (a refusal its own numbers contradict): with room back,
    the submit is held."""
    budget = 10 * PRICE
    tenant = make_tenant(postgres_url, budget_micro_usd=budget)
    team_id = team_id_of(postgres_url, tenant.team)
    quota = TeamQuota(team_id, budget, None)

    async def scenario() -> tuple[str, int, int]:
        engine = create_engine(postgres_url)
        sessionmaker = create_sessionmaker(engine)
        try:
            async with side_connection(postgres_url) as other:
                # The period is full: nine jobs' holds and one job's capture.
                await other.execute(
                    "INSERT INTO team_balances (team_id, period, budget_micro_usd, "
                    "held_micro_usd, captured_micro_usd, updated_at) "
                    "VALUES ($1, $2, $3, $4, $5, now())",
                    team_id,
                    PERIOD,
                    budget,
                    9 * PRICE,
                    PRICE,
                )

                async def other_replica_releases_a_hold() -> None:
                    await other.execute(
                        "UPDATE team_balances SET held_micro_usd = held_micro_usd - $3 "
                        "WHERE team_id = $1 AND period = $2",
                        team_id,
                        PERIOD,
                        PRICE,
                    )

                with interleave(
                    engine,
                    before=r"^\s*SELECT\b.*\bFROM team_balances",
                    action=other_replica_releases_a_hold,
                ) as hook:
                    try:
                        async with transaction(sessionmaker) as session:
                            view = await place_hold(
                                session, quota, new_job(team_id), policy="unlimited", now=NOW
                            )
                        outcome, used = "held", view.held + view.captured
                    except BudgetExhausted as refused:
                        outcome, used = "refused", refused.held + refused.captured
                assert hook.fired == 1
                row = await other.fetchrow(
                    "SELECT held_micro_usd FROM team_balances WHERE team_id = $1 AND period = $2",
                    team_id,
                    PERIOD,
                )
                return outcome, used, row["held_micro_usd"]
        finally:
            await engine.dispose()

    outcome, used, held = asyncio.run(scenario())
    if outcome == "refused":
        assert used + PRICE > budget, f"refused with {used} of {budget} used, {PRICE} asked"
    assert (outcome, used, held) == ("held", budget, 9 * PRICE)


def test_a_retry_whose_key_was_just_freed_claims_it_instead_of_failing(postgres_url: str) -> None:
    """Defect 2: the retry's insert of its Idempotency-Key collides with the first request's
    claim; before the retry reads that claim, the first request (refused upstream) frees the
    key. The retry must claim the key and go on, not fail with a 500."""
    tenant = make_tenant(postgres_url)
    team_id = team_id_of(postgres_url, tenant.team)
    key = f"retry-{uuid.uuid4().hex}"
    now = datetime.now(UTC)
    first = new_job(team_id)

    async def claim(session: AsyncSession, job_id: str) -> idempotency.StoredResponse | None:
        return await idempotency.claim(
            session,
            team_id=team_id,
            key=key,
            fingerprint="f" * 64,
            job_id=job_id,
            now=now,
            ttl=timedelta(hours=24),
        )

    async def scenario() -> tuple[int, list[str | None]]:
        engine = create_engine(postgres_url)
        sessionmaker = create_sessionmaker(engine)
        try:
            async with transaction(sessionmaker) as session:
                session.add(first)
                await session.flush()
                assert await claim(session, first.id) is None
            async with side_connection(postgres_url) as other:

                async def first_request_forgets_its_key() -> None:
                    await other.execute(
                        "DELETE FROM idempotency_keys WHERE team_id = $1 AND key = $2",
                        team_id,
                        key,
                    )

                with interleave(
                    engine,
                    before=r"^\s*SELECT\b.*\bFROM idempotency_keys\b",
                    action=first_request_forgets_its_key,
                ) as hook:
                    async with transaction(sessionmaker) as session:
                        assert await claim(session, "retry-job") is None
                fired = hook.fired
            async with transaction(sessionmaker) as session:
                rows = (
                    await session.execute(
                        select(IdempotencyKey.job_id).where(
                            IdempotencyKey.team_id == team_id, IdempotencyKey.key == key
                        )
                    )
                ).scalars()
                return fired, list(rows)
        finally:
            await engine.dispose()

    fired, claims = asyncio.run(scenario())
    assert fired == 1
    assert claims == ["retry-job"]


def test_retries_racing_an_upstream_refusal_with_one_key_never_500(
    gateway: httpx.Client, simulator: SimulatorProbe, tenant: Tenant
) -> None:
    """Defect 2 as it was seen: 50 concurrent submits with one Idempotency-Key whose upstream
    refuses (429, 500), round after round. Each answer is the refusal itself, or 409 while
    another holds the key; never a 500."""

    async def storm(key: str, prompt: str) -> Counter[int]:
        async with httpx.AsyncClient(base_url=str(gateway.base_url), timeout=30) as client:
            answers = await asyncio.gather(
                *(
                    submit_async(client, tenant, prompt, headers={"Idempotency-Key": key})
                    for _ in range(50)
                )
            )
        return Counter(answer.status_code for answer in answers)

    seen: Counter[int] = Counter()
    for round_ in range(6):
        marker = "#sim:http429" if round_ % 2 else "#sim:http500"
        seen += asyncio.run(storm(f"storm-{uuid.uuid4().hex}", f"x {marker}"))
    assert 500 not in seen, seen
    assert set(seen) <= {409, 429, 502}, seen


def test_a_refused_resend_does_not_release_a_job_recorded_as_accepted_meanwhile(
    postgres_url: str,
) -> None:
    """The reconciler re-sends an unanswered submit and the upstream refuses the re-send;
    meanwhile the first answer, an acceptance, was recorded (an outbox replay): the job is
    running upstream. The refusal must not release it (unbilled) nor free its key."""
    tenant = make_tenant(postgres_url)
    team_id = team_id_of(postgres_url, tenant.team)
    quota = TeamQuota(team_id, None, None)
    job = new_job(team_id)

    async def scenario() -> tuple[str, int]:
        engine = create_engine(postgres_url)
        sessionmaker = create_sessionmaker(engine)
        try:
            async with transaction(sessionmaker) as session:
                await place_hold(session, quota, job, policy="unlimited", now=NOW)
            async with transaction(sessionmaker) as session:  # the replayed acceptance
                moved = await jobs.move_from_pending(
                    session,
                    job.id,
                    JobState.SUBMITTED,
                    upstream_http_status=200,
                    upstream_job_id=f"up-{job.id}",
                )
                assert moved
            reconciler = Reconciler(
                settings=gateway_settings(postgres_url, "http://127.0.0.1:1"),
                sessionmaker=sessionmaker,
                upstream=cast(UpstreamClient, None),  # not called: the re-send was answered
                metrics=Metrics(),
                db_health=DatabaseHealth(),
            )
            await reconciler._release_refused(job)
            async with transaction(sessionmaker) as session:
                state = (await session.execute(select(Job.state).where(Job.id == job.id))).one()
                entries = await session.execute(
                    select(LedgerEntry.kind).where(LedgerEntry.job_id == job.id)
                )
                return str(state[0]), len(entries.all())
        finally:
            await engine.dispose()

    state, entries = asyncio.run(scenario())
    assert (state, entries) == ("submitted", 1)  # still held, only its hold entry
