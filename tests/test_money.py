"""Money through the real HTTP path: holds at submit, exactly one capture or release per job,
quotas and concurrency caps, Idempotency-Key, terminal polls from the record, the reconciler.
Where the simulator bills a job, the ledger must agree with it to the micro-dollar."""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.core.clock import utcnow
from gateway.core.periods import period_of
from gateway.core.usd import parse_usd
from gateway.db.engine import create_engine, create_sessionmaker
from gateway.db.session import transaction
from gateway.jobs import repository as jobs_repository
from gateway.jobs.models import IdempotencyKey
from gateway.ledger import quotas
from gateway.ledger.quotas import PeriodBalance, TeamQuota
from gateway.runtime import open_runtime
from gateway.services.reconciler import ReconcileReport
from gateway.tenancy import service as tenancy
from gateway.upstream.simulator import SimulatorConfig, create_simulator_app
from tests.support.api import MODEL, SUBMIT_PATH, submit, submit_to
from tests.support.commands import run_gateway
from tests.support.database import create_postgres_database, drop_postgres_database, migrate
from tests.support.invariants import reconcile_pass
from tests.support.ledger import team_ledger
from tests.support.servers import StartGateway, running
from tests.support.settings import RELEASE_AT_ONCE, gateway_settings
from tests.support.simulator import UPSTREAM_KEY, SimulatorProbe
from tests.support.tenants import Tenant, in_session, make_tenant


def simulator_cost(simulator: SimulatorProbe, job_id: str) -> int:
    (row,) = [r for r in simulator.usage()["jobs"] if r["job_id"] == job_id]
    return parse_usd(row["cost_usd"])


def test_hold_at_submit_capture_at_completion(
    gateway: httpx.Client, simulator: SimulatorProbe, postgres_url: str
) -> None:
    tenant = make_tenant(postgres_url, budget_micro_usd=10_000_000)
    submitted = submit(gateway, tenant, image="https://example.com/cat.png")
    assert submitted.headers["x-gateway-cost-estimate-usd"] == "1.730000"
    assert submitted.headers["x-quota-remaining-usd"] == "8.270000"
    usage = gateway.get("/v1/usage", headers=tenant.headers).json()
    assert usage["held_usd"] == "1.730000" and usage["captured_usd"] == "0.000000"

    job_id = submitted.json()["job_id"]
    polled = gateway.get(f"/v1/jobs/{job_id}", headers=tenant.headers)
    assert polled.json()["status"] == "completed"
    assert polled.headers["x-quota-remaining-usd"] == "8.270000"
    usage = gateway.get("/v1/usage", headers=tenant.headers).json()
    scopes = usage.pop("scopes")
    assert usage == {
        "team": tenant.team,
        "period": usage["period"],
        "budget_usd": "10.000000",
        "captured_usd": "1.730000",
        "held_usd": "0.000000",
        "remaining_usd": "8.270000",
    }
    # the team's level and the key's (every key's jobs are held on its own row too)
    assert [(s["scope"], s["captured_usd"], s["held_usd"], s["remaining_usd"]) for s in scopes] == [
        ("team", "1.730000", "0.000000", "8.270000"),
        ("key", "1.730000", "0.000000", None),
    ]
    ledger = team_ledger(postgres_url, tenant.team)
    assert ledger.entries_of(ledger.jobs[0].id) == [("hold", 1_730_000), ("capture", 1_730_000)]
    assert simulator_cost(simulator, job_id) == 1_730_000


@pytest.mark.parametrize(
    ("prompt", "state", "entries"),
    [
        ("ok", "captured", [("hold", 1_680_000), ("capture", 1_680_000)]),
        ("x #sim:fail", "released", [("hold", 1_680_000), ("release", 1_680_000)]),
        ("x #sim:moderated", "captured", [("hold", 1_680_000), ("capture", 1_680_000)]),
        ("x #sim:duration=4", "captured", [("hold", 1_680_000), ("capture", 672_000)]),
        ("x #sim:duration=2.5", "captured", [("hold", 1_680_000), ("capture", 420_000)]),
        (
            "x #sim:duration=12",
            "captured",
            [("hold", 1_680_000), ("capture", 1_680_000), ("correction", 336_000)],
        ),
    ],
)
def test_each_outcome_settles_as_the_upstream_billed(
    gateway: httpx.Client,
    simulator: SimulatorProbe,
    postgres_url: str,
    prompt: str,
    state: str,
    entries: list[tuple[str, int]],
) -> None:
    tenant = make_tenant(postgres_url)
    job_id = submit(gateway, tenant, prompt).json()["job_id"]
    gateway.get(f"/v1/jobs/{job_id}", headers=tenant.headers)
    ledger = team_ledger(postgres_url, tenant.team)
    job = ledger.job_by_upstream_id(job_id)
    assert job.state == state
    assert ledger.entries_of(job.id) == entries
    # capture + any correction = exactly what the upstream billed for this job
    billed = sum(amount for kind, amount in entries if kind in ("capture", "correction"))
    assert billed == simulator_cost(simulator, job_id)
    assert ledger.balance.held_micro_usd == 0


@pytest.mark.parametrize(("prompt", "status"), [("#sim:http500", 502), ("#sim:http429", 429)])
def test_upstream_refusal_releases_the_hold(
    gateway: httpx.Client, simulator: SimulatorProbe, postgres_url: str, prompt: str, status: int
) -> None:
    tenant = make_tenant(postgres_url, budget_micro_usd=2_000_000)
    response = submit(gateway, tenant, prompt)
    assert response.status_code == status
    assert response.headers["x-quota-remaining-usd"] == "2.000000"
    ledger = team_ledger(postgres_url, tenant.team)
    assert ledger.entries_of(ledger.jobs[0].id) == [("hold", 1_680_000), ("release", 1_680_000)]
    assert (ledger.balance.held_micro_usd, ledger.balance.captured_micro_usd) == (0, 0)
    assert submit(gateway, tenant).status_code == 200  # the budget is whole again


def test_over_budget_is_429_with_figures_and_not_forwarded(
    gateway: httpx.Client, simulator: SimulatorProbe, postgres_url: str
) -> None:
    tenant = make_tenant(postgres_url, budget_micro_usd=3_000_000)
    assert submit(gateway, tenant).status_code == 200
    refused = submit(gateway, tenant)
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert (error["type"], error["code"]) == ("quota_error", "quota_exceeded")
    assert (error["budget_usd"], error["used_usd"], error["requested_usd"]) == (
        "3.000000",
        "1.680000",
        "1.680000",
    )
    assert "3.000000" in error["message"] and "1.680000" in error["message"]
    assert refused.headers["x-quota-remaining-usd"] == "1.320000"
    assert len(simulator.submits()) == 1
    cheaper = submit(gateway, tenant, resolution="480p", duration=5)  # 0.48 still fits
    assert cheaper.status_code == 200
    ledger = team_ledger(postgres_url, tenant.team)
    assert len(ledger.jobs) == 2 and [e.kind for e in ledger.entries] == ["hold", "hold"]


def test_concurrency_cap_is_429_until_a_job_finishes(
    gateway: httpx.Client, simulator: SimulatorProbe, postgres_url: str
) -> None:
    tenant = make_tenant(postgres_url, max_concurrent_jobs=1)
    first = submit(gateway, tenant).json()["job_id"]
    refused = submit(gateway, tenant)
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "concurrency_limit"
    gateway.get(f"/v1/jobs/{first}", headers=tenant.headers)  # completes and settles it
    assert submit(gateway, tenant).status_code == 200
    assert len(simulator.submits()) == 2


def test_settled_job_is_answered_from_the_record(
    gateway: httpx.Client, simulator: SimulatorProbe, postgres_url: str
) -> None:
    tenant = make_tenant(postgres_url)
    job_id = submit(gateway, tenant).json()["job_id"]
    first = gateway.get(f"/v1/jobs/{job_id}", headers=tenant.headers)
    polls_before = len(simulator.requests())
    again = [gateway.get(f"/v1/jobs/{job_id}", headers=tenant.headers) for _ in range(3)]
    assert len(simulator.requests()) == polls_before  # the upstream was not asked again
    assert all(r.status_code == 200 and r.content == first.content for r in again)
    ledger = team_ledger(postgres_url, tenant.team)
    assert [e.kind for e in ledger.entries] == ["hold", "capture"]


def test_usage_for_an_unlimited_team(gateway: httpx.Client, postgres_url: str) -> None:
    tenant = make_tenant(postgres_url, budget_micro_usd=None)
    usage = gateway.get("/v1/usage", headers=tenant.headers)
    body = usage.json()
    assert (body["budget_usd"], body["remaining_usd"], body["held_usd"]) == (None, None, "0.000000")
    assert usage.headers["x-quota-remaining-usd"] == "unlimited"
    assert gateway.get("/v1/usage").status_code == 401


def test_quota_header_on_every_tenant_response(
    gateway: httpx.Client, simulator: SimulatorProbe, postgres_url: str
) -> None:
    tenant = make_tenant(postgres_url, budget_micro_usd=5_000_000)
    invalid = gateway.post(SUBMIT_PATH, json={"model": MODEL}, headers=tenant.headers)
    unknown = gateway.get("/v1/jobs/job_nope", headers=tenant.headers)
    assert invalid.status_code == 400 and unknown.status_code == 404
    assert (
        invalid.headers["x-quota-remaining-usd"]
        == unknown.headers["x-quota-remaining-usd"]
        == "5.000000"
    )


# Idempotency-Key


def test_a_budget_change_and_a_capped_submit_opening_the_period_do_not_deadlock(
    postgres_url: str,
) -> None:
    """An admin's budget change opens the period's balance row and updates the team's row; a
    submit under a concurrency cap locks the team's row, then opens the balance row. Taken
    in opposite orders, each would wait for the other until Postgres aborts one."""
    tenant = make_tenant(postgres_url, budget_micro_usd=None, max_concurrent_jobs=2)
    period = period_of(utcnow())

    async def scenario() -> PeriodBalance:
        engine = create_engine(postgres_url)
        sessions = create_sessionmaker(engine)
        try:
            async with sessions() as admin_session:
                team = await tenancy.require_team(admin_session, tenant.team)
                team_id = team.id
                await quotas.set_period_budget(admin_session, team_id, period, 5_000_000, utcnow())

                async def capped_submit() -> PeriodBalance:
                    async with transaction(sessions) as session:
                        return await quotas.reserve_hold(
                            session,
                            TeamQuota(team_id, None, max_concurrent_jobs=2),
                            period=period,
                            amount=1_680_000,
                            now=utcnow(),
                            policy="unlimited",
                        )

                submit = asyncio.create_task(capped_submit())
                await asyncio.sleep(0.5)  # the submit now waits on the admin's transaction
                assert not submit.done()
                # What the admin's team update writes next, then its commit.
                await admin_session.execute(
                    text("UPDATE teams SET monthly_budget_micro_usd = 5000000 WHERE id = :id"),
                    {"id": team_id},
                )
                await admin_session.commit()
            return await asyncio.wait_for(submit, 10)
        finally:
            await engine.dispose()

    balance = asyncio.run(scenario())
    assert (balance.budget, balance.held) == (5_000_000, 1_680_000)


def test_idempotent_retry_replays_the_first_answer(
    gateway: httpx.Client, simulator: SimulatorProbe, postgres_url: str
) -> None:
    tenant = make_tenant(postgres_url)
    key = {"Idempotency-Key": "order-42"}
    first = submit(gateway, tenant, "once only", headers=key)
    replay = submit(gateway, tenant, "once only", headers=key)
    assert first.status_code == replay.status_code == 200
    assert replay.content == first.content
    assert replay.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert replay.headers["x-gateway-cost-estimate-usd"] == "1.680000"
    assert len(simulator.submits()) == 1
    ledger = team_ledger(postgres_url, tenant.team)
    assert len(ledger.jobs) == 1 and [e.kind for e in ledger.entries] == ["hold"]

    other_body = submit(gateway, tenant, "once only", headers=key, duration=5)
    assert other_body.status_code == 422
    assert other_body.json()["error"]["code"] == "idempotency_key_reused"
    other_team = make_tenant(postgres_url)  # keys are per team
    assert (
        submit(gateway, other_team, "once only", headers=key).headers.get("idempotent-replayed")
        is None
    )


def test_a_key_stored_before_tags_existed_still_replays_after_an_upgrade(
    gateway: httpx.Client, simulator: SimulatorProbe, postgres_url: str
) -> None:
    """Keys claimed by a version without cost-allocation tags hashed the body alone: the same
    body is still the same request, and the same key with tags is another one (422)."""
    tenant = make_tenant(postgres_url)
    raw = json.dumps({"model": MODEL, "prompt": "before the upgrade"}).encode()
    stored = b'{"job_id": "job_before_upgrade", "status": "queued"}'

    async def store(session: AsyncSession) -> None:
        team = await tenancy.require_team(session, tenant.team)
        session.add(
            IdempotencyKey(
                team_id=team.id,
                key="claimed-before",
                request_hash=hashlib.sha256(raw).hexdigest(),
                state="completed",
                status_code=200,
                response_body=stored,
                response_headers={"content-type": "application/json"},
                expires_at=utcnow() + timedelta(hours=1),
            )
        )

    in_session(postgres_url, store)
    headers = {
        **tenant.headers,
        "Idempotency-Key": "claimed-before",
        "Content-Type": "application/json",
    }
    replay = gateway.post(SUBMIT_PATH, content=raw, headers=headers)
    assert replay.status_code == 200 and replay.content == stored
    assert replay.headers["idempotent-replayed"] == "true"
    tagged = gateway.post(SUBMIT_PATH, content=raw, headers={**headers, "X-Gateway-Tags": "a=b"})
    assert tagged.status_code == 422
    assert tagged.json()["error"]["code"] == "idempotency_key_reused"
    assert simulator.submits() == []


def test_idempotent_duplicate_in_flight_is_409(
    gateway_server: Any, simulator: SimulatorProbe, postgres_url: str
) -> None:
    tenant = make_tenant(postgres_url)
    key = {"Idempotency-Key": "slow-1"}
    prompt = "take your time #sim:slow=1.5"
    results: dict[str, httpx.Response] = {}

    def first() -> None:
        results["first"] = submit_to(gateway_server.url, tenant, prompt, headers=key)

    thread = threading.Thread(target=first)
    thread.start()
    time.sleep(0.5)
    concurrent = submit_to(gateway_server.url, tenant, prompt, headers=key)
    thread.join()
    assert concurrent.status_code == 409
    assert concurrent.json()["error"]["code"] == "idempotency_key_in_use"
    assert results["first"].status_code == 200
    later = submit_to(gateway_server.url, tenant, prompt, headers=key)
    assert later.status_code == 200 and later.content == results["first"].content
    assert len(simulator.submits()) == 1


def test_idempotency_key_may_be_reused_after_an_upstream_refusal(
    gateway: httpx.Client, simulator: SimulatorProbe, tenant: Tenant
) -> None:
    """Nothing was created or billed, so a retry with the same key must really retry."""
    key = {"Idempotency-Key": "retry-me"}
    refused = submit(gateway, tenant, "#sim:http500", headers=key)
    assert refused.status_code == 502
    again = submit(gateway, tenant, "#sim:http500", headers=key)
    assert again.status_code == 502 and "idempotent-replayed" not in again.headers
    assert len(simulator.submits()) == 2


def test_invalid_idempotency_key_is_400(gateway: httpx.Client, tenant: Tenant) -> None:
    response = submit(gateway, tenant, "x", headers={"Idempotency-Key": "x" * 256})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_idempotency_key"


# The reconciler


def test_reconciler_settles_jobs_nobody_polls(
    gateway: httpx.Client, simulator: SimulatorProbe, postgres_url: str
) -> None:
    tenant = make_tenant(postgres_url)
    ids = [
        submit(gateway, tenant, p).json()["job_id"]
        for p in ("ok", "#sim:fail", "#sim:moderated", "#sim:duration=3")
    ]
    report = reconcile_pass(postgres_url, simulator.url)
    assert report.settled >= 4
    ledger = team_ledger(postgres_url, tenant.team)
    assert {j.state for j in ledger.jobs} == {"captured", "released"}
    for upstream_id in ids:
        job = ledger.job_by_upstream_id(upstream_id)
        billed = sum(a for k, a in ledger.entries_of(job.id) if k in ("capture", "correction"))
        assert billed == simulator_cost(simulator, upstream_id)
    assert ledger.balance.held_micro_usd == 0
    # A later client poll is answered from the record the reconciler wrote.
    polls_before = len(simulator.requests())
    assert gateway.get(f"/v1/jobs/{ids[0]}", headers=tenant.headers).json()["status"] == "completed"
    assert len(simulator.requests()) == polls_before


def test_reconciler_releases_a_submit_that_never_got_an_answer(
    start_gateway: StartGateway, simulator: SimulatorProbe, postgres_url: str
) -> None:
    tenant = make_tenant(postgres_url, budget_micro_usd=2_000_000)
    server = start_gateway(upstream_read_timeout_seconds=0.3)
    key = {"Idempotency-Key": "hung-submit"}
    timed_out = submit_to(server.url, tenant, "#sim:hang", headers=key)
    assert timed_out.status_code == 504
    assert timed_out.headers["x-quota-remaining-usd"] == "0.320000"  # the hold stays...
    not_yet = reconcile_pass(postgres_url, simulator.url)
    assert not_yet.released_unanswered == 0  # ...until the timeout
    report = reconcile_pass(postgres_url, simulator.url, **RELEASE_AT_ONCE)
    assert report.released_unanswered == 1
    ledger = team_ledger(postgres_url, tenant.team)
    assert [e.kind for e in ledger.entries] == ["hold", "release"]
    assert ledger.jobs[0].needs_review is True  # the upstream might have run it: look at it
    assert ledger.balance.held_micro_usd == 0
    # A retry with the same key learns that, rather than silently submitting a second job.
    retry = submit_to(server.url, tenant, "#sim:hang", headers=key)
    assert retry.status_code == 504 and retry.headers["idempotent-replayed"] == "true"
    assert retry.json()["error"]["code"] == "upstream_outcome_unknown"
    assert len(simulator.submits()) == 1


FORWARD_WINDOW_HALF_SECOND = {
    # Calls take at most 4 x 0.25 s, a hold is released after 1.5 s: a submit must leave
    # within 0.5 s of its hold.
    **{f"upstream_{phase}_timeout_seconds": 0.25 for phase in ("connect", "write", "read", "pool")},
    "unanswered_submit_release_after_seconds": 1.5,
}


def submit_while_locked(
    postgres_url: str,
    url: str,
    tenant: Tenant,
    statement: str,
    params: dict[str, Any],
    *,
    seconds: float = 1.5,
    headers: dict[str, str] | None = None,
    meanwhile: Callable[[], None] = lambda: None,
) -> httpx.Response:
    """Submit while another transaction holds the lock ``statement`` takes, for ``seconds``;
    ``meanwhile`` runs while the submit waits."""
    locked = threading.Event()

    async def hold_the_lock(session: AsyncSession) -> None:
        await session.execute(text(statement), params)
        locked.set()
        await asyncio.sleep(seconds)

    answers: list[httpx.Response] = []

    def send() -> None:
        answers.append(submit_to(url, tenant, headers=headers))

    blocker = threading.Thread(target=in_session, args=(postgres_url, hold_the_lock))
    blocker.start()
    assert locked.wait(10)
    sender = threading.Thread(target=send)
    sender.start()
    try:
        meanwhile()
    finally:
        blocker.join()
        sender.join()
    (answer,) = answers
    return answer


RAISE_SOFT_LIMIT_ALERT = (
    "INSERT INTO budget_alerts (team_id, period, threshold, budget_micro_usd,"
    " used_micro_usd, limit_micro_usd, created_at, attempts, next_attempt_at)"
    " SELECT id, :period, 'soft_limit', 0, 0, 0, now(), 0, now() FROM teams WHERE name = :name"
)


def submit_while_alert_is_raised(
    postgres_url: str, url: str, tenant: Tenant, **options: Any
) -> httpx.Response:
    """Submit while another transaction raises the team's soft-limit alert: a submit that
    crosses the soft limit waits for it after its hold is committed, before forwarding."""
    params = {"name": tenant.team, "period": period_of(utcnow())}
    return submit_while_locked(postgres_url, url, tenant, RAISE_SOFT_LIMIT_ALERT, params, **options)


def test_a_submit_held_up_past_its_forward_window_is_refused_unsent(
    start_gateway: StartGateway, simulator: SimulatorProbe, postgres_url: str
) -> None:
    """Sent late, a submit could still be on the wire when the reconciler releases its hold
    (or re-sends it): the upstream would run a job the ledger gave up on. Refused instead;
    held up inside the hold's own transaction, nothing at all is recorded."""
    tenant = make_tenant(postgres_url, budget_micro_usd=2_000_000)
    server = start_gateway(**FORWARD_WINDOW_HALF_SECOND)
    # The job's foreign key needs a share lock on its team's row: the hold waits 1.5 s.
    response = submit_while_locked(
        postgres_url,
        server.url,
        tenant,
        "SELECT id FROM teams WHERE name = :name FOR UPDATE",
        {"name": tenant.team},
    )
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "forward_window_passed"
    assert simulator.submits() == []
    ledger = team_ledger(postgres_url, tenant.team)
    assert (ledger.jobs, ledger.entries) == ([], [])
    # Without the wait, the same submit goes through.
    with httpx.Client(base_url=server.url) as client:
        assert submit(client, tenant).status_code == 200


def test_a_submit_held_up_after_its_hold_is_released_unsent(
    start_gateway: StartGateway, simulator: SimulatorProbe, postgres_url: str
) -> None:
    """Held up after the hold is recorded (here: the soft-limit alert it raises waits on a
    lock), the submit is not sent and its hold is given back."""
    tenant = make_tenant(postgres_url, budget_micro_usd=2_000_000, soft_limit_percent=1)
    server = start_gateway(**FORWARD_WINDOW_HALF_SECOND)
    # Another transaction is raising the same alert: the submit's own insert waits for it.
    response = submit_while_alert_is_raised(postgres_url, server.url, tenant)
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "forward_window_passed"
    assert simulator.submits() == []
    ledger = team_ledger(postgres_url, tenant.team)
    assert ledger.entries_of(ledger.jobs[0].id) == [("hold", 1_680_000), ("release", 1_680_000)]
    assert ledger.balance.held_micro_usd == 0


def test_a_submit_held_up_until_the_reconciler_took_it_over_is_left_to_it(
    start_gateway: StartGateway, simulator: SimulatorProbe, postgres_url: str
) -> None:
    """Held up after its hold for longer than the re-send delay, a submit finds its job
    already re-sent by the reconciler: it must not release it (the upstream runs it) but
    answer "outcome unknown"; a retry with the same key then learns the job."""
    settings = {
        **{f"upstream_{p}_timeout_seconds": 0.25 for p in ("connect", "write", "read", "pool")},
        "upstream_honors_idempotency_key": True,
        "unanswered_submit_resend_after_seconds": 1.5,
    }
    tenant = make_tenant(postgres_url, budget_micro_usd=2_000_000, soft_limit_percent=1)
    server = start_gateway(**settings)
    key = {"Idempotency-Key": "held-up"}

    def reconciler_takes_over() -> None:
        deadline = time.monotonic() + 10
        while not (held := team_ledger(postgres_url, tenant.team).jobs):  # the hold committed
            assert time.monotonic() < deadline, "the submit never placed its hold"
            time.sleep(0.02)
        # The pass runs as if 2 s had gone by since the hold: the re-send is due 1.5 s after it.
        start = held[0].created_at + timedelta(seconds=2.0)
        times = iter([start])

        async def resend_only() -> None:  # the recovered job's first poll is due after the pass
            gateway = gateway_settings(postgres_url, simulator.url, **settings)
            async with open_runtime(gateway) as runtime:
                clock = lambda: next(times, start + timedelta(seconds=1))  # noqa: E731
                assert (await runtime.reconciler(clock=clock).run_once()).recovered >= 1

        asyncio.run(resend_only())
        assert len(simulator.submits()) == 1  # re-sent while the request still waits

    response = submit_while_alert_is_raised(
        postgres_url,
        server.url,
        tenant,
        seconds=3.0,
        headers=key,
        meanwhile=reconciler_takes_over,
    )
    assert response.status_code == 504, response.text
    assert response.json()["error"]["code"] == "upstream_outcome_unknown"
    (upstream_job,) = simulator.usage()["jobs"]
    ledger = team_ledger(postgres_url, tenant.team)
    (job,) = ledger.jobs
    # Not released: the upstream runs it, and the ledger still holds it...
    assert (job.state, job.upstream_job_id) == ("submitted", upstream_job["job_id"])
    assert ledger.entries_of(job.id) == [("hold", 1_680_000)]
    # ...until it is billed, once, as the upstream billed it.
    reconcile_pass(postgres_url, simulator.url, **settings)
    ledger = team_ledger(postgres_url, tenant.team)
    assert ledger.entries_of(job.id) == [("hold", 1_680_000), ("capture", 1_680_000)]
    assert simulator_cost(simulator, upstream_job["job_id"]) == 1_680_000
    retry = submit_to(server.url, tenant, headers=key)
    assert retry.status_code == 200 and retry.headers["idempotent-replayed"] == "true"
    assert retry.json()["job_id"] == upstream_job["job_id"]


def test_one_job_the_ledger_refuses_does_not_stall_the_other_releases(
    start_gateway: StartGateway, simulator: SimulatorProbe
) -> None:
    """A job whose release the database refuses (here: a settlement written behind the
    gateway's back) is flagged for review; the other unanswered submits are still released."""
    url = create_postgres_database()
    try:
        tenant = make_tenant(url, budget_micro_usd=2_000_000)
        server = start_gateway(database_url=url, upstream_read_timeout_seconds=0.3)
        for prompt in ("first #sim:hang", "second #sim:hang"):
            answer = submit_to(server.url, tenant, prompt, duration=1)
            assert answer.status_code == 504
        poisoned, healthy = sorted(team_ledger(url, tenant.team).jobs, key=lambda j: j.created_at)

        async def settle_behind_the_gateways_back(session: AsyncSession) -> None:
            await session.execute(
                text(
                    "INSERT INTO ledger_entries (job_id, team_id, period, kind, amount_micro_usd,"
                    " rate_card_version, needs_review, created_at) SELECT id, team_id, period,"
                    " 'capture', 1, rate_card_version, false, now() FROM jobs WHERE id = :id"
                ),
                {"id": poisoned.id},
            )

        in_session(url, settle_behind_the_gateways_back)
        report = reconcile_pass(url, simulator.url, **RELEASE_AT_ONCE)
        assert report.released_unanswered == 1
        ledger = team_ledger(url, tenant.team)
        after = {job.id: job for job in ledger.jobs}
        assert after[healthy.id].state == "released"
        assert after[poisoned.id].state == "unknown" and after[poisoned.id].needs_review
        assert ledger.entries_of(poisoned.id) == [("hold", 168_000), ("capture", 1)]

        # A later one is released even when each pass takes a single job: the flagged job,
        # older as it is, no longer takes the batch's only place.
        late = submit_to(server.url, tenant, "third #sim:hang", duration=1)
        assert late.status_code == 504
        reconcile_pass(url, simulator.url, reconciler_batch_size=1, **RELEASE_AT_ONCE)
        states = {job.id: job.state for job in team_ledger(url, tenant.team).jobs}
        assert sorted(states.values()) == ["released", "released", "unknown"]
        assert states[poisoned.id] == "unknown"
    finally:
        drop_postgres_database(url)


def test_reconcile_command(
    gateway: httpx.Client, simulator: SimulatorProbe, postgres_url: str
) -> None:
    tenant = make_tenant(postgres_url)
    submit(gateway, tenant)
    env = {
        "GATEWAY_DATABASE_URL": postgres_url,
        "GATEWAY_UPSTREAM_URL": simulator.url,
        "GATEWAY_UPSTREAM_API_KEY": UPSTREAM_KEY,
        "PATH": "/usr/bin:/bin",
    }
    result = run_gateway("reconcile", "--json", env=env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["settled"] >= 1
    assert [e.kind for e in team_ledger(postgres_url, tenant.team).entries] == ["hold", "capture"]


# Other vocabularies, rate changes, and the embedded database


def test_succeeded_vocabulary_is_billed(start_gateway: StartGateway, postgres_url: str) -> None:
    app = create_simulator_app(SimulatorConfig(api_key=UPSTREAM_KEY, status_words="succeeded"))
    with running(app) as other_simulator:
        server = start_gateway(upstream_url=other_simulator.url)
        tenant = make_tenant(postgres_url)
        with httpx.Client(base_url=server.url) as client:
            job_id = submit(client, tenant).json()["job_id"]
            assert (
                client.get(f"/v1/jobs/{job_id}", headers=tenant.headers).json()["status"]
                == "succeeded"
            )
    assert [e.kind for e in team_ledger(postgres_url, tenant.team).entries] == ["hold", "capture"]


@pytest.mark.parametrize("backend", ["sqlite-file", "postgres-fresh"])
def test_rate_change_prices_new_jobs_only(
    start_gateway: StartGateway, simulator: SimulatorProbe, tmp_path: Path, backend: str
) -> None:
    from tests.support.database import create_postgres_database, drop_postgres_database

    if backend == "sqlite-file":
        url = f"sqlite+aiosqlite:///{tmp_path / 'rates.db'}"
        migrate(url)
    else:
        url = create_postgres_database()
    try:
        tenant = make_tenant(url)
        server = start_gateway(database_url=url)
        with httpx.Client(base_url=server.url) as client:
            before = submit(client, tenant)
            env = {"GATEWAY_DATABASE_URL": url, "PATH": "/usr/bin:/bin"}
            added = run_gateway(
                "rates",
                "set",
                "--version",
                "2026-12-promo",
                "--image-fee-usd",
                "0.04",
                "--per-second-usd",
                "480p=0.08",
                "--per-second-usd",
                "720p=0.15",
                env=env,
            )
            assert added.returncode == 0, added.stderr
            after = submit(client, tenant)
            client.get(f"/v1/jobs/{before.json()['job_id']}", headers=tenant.headers)
        assert before.headers["x-gateway-cost-estimate-usd"] == "1.680000"
        assert after.headers["x-gateway-cost-estimate-usd"] == "1.500000"
        ledger = team_ledger(url, tenant.team)
        assert [j.rate_card_version for j in ledger.jobs] == ["seed-2026-11", "2026-12-promo"]
        # The earlier job settles on its own version, whatever is in force now.
        assert ledger.entries_of(ledger.jobs[0].id)[-1] == ("capture", 1_680_000)
        listed = run_gateway("rates", "list", "--json", env=env, check=True)
        assert [r["version"] for r in json.loads(listed.stdout)] == [
            "seed-2026-11",
            "2026-12-promo",
        ]
    finally:
        if backend == "postgres-fresh":
            drop_postgres_database(url)


def test_money_flow_on_the_embedded_database(
    start_gateway: StartGateway, simulator: SimulatorProbe, sqlite_url: str
) -> None:
    tenant = make_tenant(sqlite_url, budget_micro_usd=4_000_000)
    server = start_gateway(database_url=sqlite_url)
    with httpx.Client(base_url=server.url) as client:
        ids = [submit(client, tenant, p).json()["job_id"] for p in ("a", "b #sim:fail")]
        assert submit(client, tenant).status_code == 429  # 3 x 1.68 > 4.00
        for job_id in ids:
            client.get(f"/v1/jobs/{job_id}", headers=tenant.headers)
        usage = client.get("/v1/usage", headers=tenant.headers).json()
    assert (usage["captured_usd"], usage["held_usd"], usage["remaining_usd"]) == (
        "1.680000",
        "0.000000",
        "2.320000",
    )


class AnswerLost(httpx.AsyncBaseTransport):
    """The network between gateway and upstream: delivers the submit, then loses the answer."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.lose_next_submit_answer = True

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if request.method == "POST" and self.lose_next_submit_answer:
            self.lose_next_submit_answer = False
            await response.aclose()
            raise httpx.ReadTimeout("answer lost", request=request)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.mark.parametrize("honors", [True, False])
def test_a_lost_submit_answer_is_recovered_when_the_upstream_honors_keys(
    start_gateway: StartGateway, simulator: SimulatorProbe, postgres_url: str, honors: bool
) -> None:
    """The upstream created (and will bill) the job but the gateway never heard its id."""
    tenant = make_tenant(postgres_url)
    overrides = {
        "upstream_honors_idempotency_key": honors,
        "unanswered_submit_release_after_seconds": 3600.0,
    }
    server = start_gateway(transport=AnswerLost(), **overrides)
    lost = submit_to(server.url, tenant, "lost")
    assert lost.status_code == 504
    (upstream_job,) = simulator.usage()["jobs"]
    (held,) = team_ledger(postgres_url, tenant.team).jobs
    resend_after = timedelta(seconds=120)  # the default
    not_yet = reconcile_pass(
        postgres_url, simulator.url, at=held.created_at + resend_after / 2, **overrides
    )
    assert not_yet.recovered == 0
    report = reconcile_pass(
        postgres_url, simulator.url, at=held.created_at + resend_after * 1.01, **overrides
    )
    ledger = team_ledger(postgres_url, tenant.team)
    if honors:
        assert report.recovered == 1
        # Re-sent under the gateway's job id as Idempotency-Key: the same upstream job, no new one.
        assert [j["job_id"] for j in simulator.usage()["jobs"]] == [upstream_job["job_id"]]
        reconcile_pass(postgres_url, simulator.url, **overrides)  # polls and settles it
        ledger = team_ledger(postgres_url, tenant.team)
        job = ledger.job_by_upstream_id(upstream_job["job_id"])
        assert ledger.entries_of(job.id) == [("hold", 1_680_000), ("capture", 1_680_000)]
        assert simulator_cost(simulator, upstream_job["job_id"]) == 1_680_000
        # Had the original answer come in late after all, it is no "late acceptance": only a
        # job the ledger released is flagged so.
        late = in_session(
            postgres_url,
            lambda session: jobs_repository.record_late_acceptance(session, job.id, "other-id"),
        )
        assert late is False
        (after,) = team_ledger(postgres_url, tenant.team).jobs
        assert (after.needs_review, after.upstream_job_id) == (False, upstream_job["job_id"])
    else:
        # Without that guarantee the gateway cannot find the job: the hold waits for review.
        assert report.recovered == 0
        assert ledger.jobs[0].state == "unknown"
        assert ledger.balance.held_micro_usd == 1_680_000


class NeverDelivered(httpx.AsyncBaseTransport):
    """The network loses every submit after it leaves: no answer, and nothing reaches the
    upstream (the gateway cannot tell this from an answer lost on the way back)."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            raise httpx.ReadTimeout("lost on the way", request=request)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


class SlowAnswer(httpx.AsyncBaseTransport):
    """Delivers each submit at once, but its answer comes back only after ``delay``."""

    def __init__(self, delay: float) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.delay = delay

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if request.method == "POST":
            await response.aread()
            await asyncio.sleep(self.delay)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


def test_a_submit_is_resent_only_while_the_resend_ends_before_the_release(
    start_gateway: StartGateway, simulator: SimulatorProbe, postgres_url: str
) -> None:
    """Re-sends run one after another and each may take the whole call deadline: one still on
    the wire when the hold is released could create a job the ledger gave up on."""
    honoring = {"upstream_honors_idempotency_key": True}
    settings = gateway_settings(postgres_url, simulator.url, **honoring)
    resend_after = timedelta(seconds=settings.unanswered_submit_resend_after_seconds)
    window = timedelta(seconds=settings.resend_window_seconds)
    release_after = timedelta(seconds=settings.unanswered_submit_release_after_seconds)
    assert resend_after < window < release_after
    assert release_after - window == timedelta(seconds=settings.upstream_exchange_limit_seconds)
    server = start_gateway(transport=NeverDelivered(), **honoring)
    tenant = make_tenant(postgres_url)
    for prompt in ("first", "second"):
        lost = submit_to(server.url, tenant, prompt)
        assert lost.status_code == 504
    assert simulator.submits() == []
    # The later of the two: both are due and inside the window at the claim, past it after.
    created = max(j.created_at for j in team_ledger(postgres_url, tenant.team).jobs)
    second = timedelta(seconds=1)

    # Both are due and inside the window when the pass claims them; by the time each would be
    # sent (earlier re-sends took long), the window has closed: neither is sent.
    times = iter([created + resend_after + second])
    settings = gateway_settings(postgres_url, simulator.url, **honoring)

    async def slow_pass() -> ReconcileReport:
        async with open_runtime(settings) as runtime:
            clock = lambda: next(times, created + window + second)  # noqa: E731
            return await runtime.reconciler(clock=clock).run_once()

    def states() -> set[tuple[str, bool]]:
        return {(j.state, j.needs_review) for j in team_ledger(postgres_url, tenant.team).jobs}

    asyncio.run(slow_pass())
    assert simulator.submits() == [] and states() == {("unknown", False)}
    # Past the window, they are no longer even claimed for a re-send...
    reconcile_pass(postgres_url, simulator.url, at=created + window + second, **honoring)
    assert simulator.submits() == [] and states() == {("unknown", False)}
    # ...and once due, released for review, never having been re-sent.
    reconcile_pass(postgres_url, simulator.url, at=created + release_after + second, **honoring)
    assert simulator.submits() == [] and states() == {("released", True)}
    after = team_ledger(postgres_url, tenant.team)
    assert [e.kind for e in after.entries] == ["hold", "hold", "release", "release"]
    assert after.balance.held_micro_usd == 0


def test_an_acceptance_after_an_operator_released_the_job_is_kept_and_flagged(
    start_gateway: StartGateway, simulator: SimulatorProbe, postgres_url: str
) -> None:
    """An operator releases a job whose submit is still waiting for its answer; the upstream
    then accepts it. The upstream will bill it: its id is kept and the job flagged."""
    admin_token = "admin-token-for-tests-0123456789"
    server = start_gateway(transport=SlowAnswer(1.5), admin_token=admin_token)
    tenant = make_tenant(postgres_url)
    answers: list[httpx.Response] = []
    sender = threading.Thread(target=lambda: answers.append(submit_to(server.url, tenant)))
    sender.start()
    deadline = time.monotonic() + 10
    while not (jobs := team_ledger(postgres_url, tenant.team).jobs):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    released = httpx.post(
        f"{server.url}/admin/jobs/{jobs[0].id}/release",
        headers={"Authorization": f"Bearer {admin_token}"},
    )
    assert released.status_code == 200, released.text
    sender.join()
    (answer,) = answers
    assert answer.status_code == 200  # the client learns the job the upstream runs
    ledger = team_ledger(postgres_url, tenant.team)
    (job,) = ledger.jobs
    assert (job.state, job.needs_review) == ("released", True)
    assert job.upstream_job_id == answer.json()["job_id"]  # found by reconciliation
    assert ledger.entries_of(job.id) == [("hold", 1_680_000), ("release", 1_680_000)]


class ReleasedOnTheWay(httpx.AsyncBaseTransport):
    """Delivers each submit, but an operator releases the job while it is on the wire."""

    def __init__(self, release: Callable[[], Awaitable[None]]) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.release = release

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            await self.release()
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.mark.parametrize("released", ["before the re-send", "during the re-send"])
def test_a_job_an_operator_released_is_not_resent_or_is_kept_and_flagged(
    start_gateway: StartGateway, simulator: SimulatorProbe, postgres_url: str, released: str
) -> None:
    """The reconciler claims unanswered submits, then re-sends them one by one. A job an
    operator releases meanwhile is not re-sent; released while its re-send is on the wire,
    the upstream's job is kept (its id) and the job flagged for review."""
    honoring = {"upstream_honors_idempotency_key": True}
    admin_token = "admin-token-for-tests-0123456789"
    server = start_gateway(transport=NeverDelivered(), admin_token=admin_token, **honoring)
    tenant = make_tenant(postgres_url)
    lost = submit_to(server.url, tenant)
    assert lost.status_code == 504
    (job,) = team_ledger(postgres_url, tenant.team).jobs
    body = json.dumps({"model": MODEL, "prompt": "a cat"}).encode()

    async def release() -> None:
        async with httpx.AsyncClient(base_url=server.url) as client:
            answer = await client.post(
                f"/admin/jobs/{job.id}/release",
                headers={"Authorization": f"Bearer {admin_token}"},
            )
            assert answer.status_code == 200, answer.text

    async def resend_claimed_before_the_release() -> bool:
        settings = gateway_settings(postgres_url, simulator.url, **honoring)
        if released == "before the re-send":
            await release()
            transport = None
        else:
            transport = ReleasedOnTheWay(release)
        async with open_runtime(settings, upstream_transport=transport) as runtime:
            return await runtime.reconciler()._resend(job, body)

    assert asyncio.run(resend_claimed_before_the_release()) is False
    (after,) = team_ledger(postgres_url, tenant.team).jobs
    if released == "before the re-send":
        assert simulator.usage()["jobs"] == []
        # Released after review, never sent: nothing left to look at.
        assert (after.state, after.needs_review, after.upstream_job_id) == ("released", False, None)
    else:
        (upstream_job,) = simulator.usage()["jobs"]
        assert (after.state, after.needs_review) == ("released", True)
        assert after.upstream_job_id == upstream_job["job_id"]


def test_background_reconciler_in_a_replica_settles_unpolled_jobs(
    start_gateway: StartGateway, simulator: SimulatorProbe, postgres_url: str
) -> None:
    tenant = make_tenant(postgres_url)
    server = start_gateway(
        reconciler_enabled=True,
        reconciler_interval_seconds=0.2,
        reconciler_first_check_after_seconds=0,
    )
    job_id = submit_to(server.url, tenant, "nobody polls").json()["job_id"]
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if team_ledger(postgres_url, tenant.team).jobs[0].state == "captured":
            break
        time.sleep(0.2)
    ledger = team_ledger(postgres_url, tenant.team)
    assert ledger.job_by_upstream_id(job_id).state == "captured"
    assert [e.kind for e in ledger.entries] == ["hold", "capture"]
