"""Races at the edges of time and configuration, through two real replicas: the first submits
of new teams, the month boundary under concurrent load (the replicas' clocks moved to just
before midnight UTC on the last day of a month with libfaketime), and a budget changed while
submits race it. Nothing is refused while its budget has room, nothing overspends, and the
books equal the simulator's bill afterwards."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.core.periods import period_of
from gateway.jobs.models import Job
from gateway.ledger.models import BudgetAlert
from tests.support.api import submit_async
from tests.support.database import OwnDatabase, asyncpg_dsn
from tests.support.environment import unavailable
from tests.support.invariants import check_books, settle_everything
from tests.support.processes import GatewayProcess, replica_env
from tests.support.servers import ServerThread
from tests.support.simulator import SimulatorProbe
from tests.support.tenants import Tenant, in_session, make_tenant

PRICE = 1_680_000  # 10 s at 720p, the defaults
ADMIN = "admin-token-boundaries-0123456789"
FAKETIME_LIBRARY = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1")


def env(database_url: str, simulator_url: str, **extra: str) -> dict[str, str]:
    return replica_env(database_url, simulator_url, GATEWAY_ADMIN_TOKEN=ADMIN, **extra)


def start_replicas(env: dict[str, str], logs: Path, count: int = 2) -> list[GatewayProcess]:
    replicas = [GatewayProcess(env, logs, f"replica-{n}") for n in range(count)]
    for replica in replicas:
        replica.start()
    return replicas


async def storm(requests: list[tuple[str, Tenant]], spacing: float = 0.001) -> list[httpx.Response]:
    """One submit per (replica URL, tenant), ``spacing`` seconds apart, all in flight at once."""
    limits = httpx.Limits(max_connections=400, max_keepalive_connections=400)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:

        async def one(index: int, url: str, tenant: Tenant) -> httpx.Response:
            await asyncio.sleep(index * spacing)
            return await submit_async(client, tenant, f"b {index}", url=url)

        return list(
            await asyncio.gather(*(one(i, url, tenant) for i, (url, tenant) in enumerate(requests)))
        )


@pytest.fixture
def logs(tmp_path: Path) -> Path:
    return tmp_path


def test_the_first_submits_of_new_teams_are_never_refused(
    own_database: OwnDatabase, simulator: SimulatorProbe, simulator_server: ServerThread, logs: Path
) -> None:
    """The race of defect 1 at scale: 20 fresh teams (half with a large budget, half
    unlimited), 12 first submits each, 1 ms apart, across two replicas."""
    replicas = start_replicas(env(own_database.url, simulator_server.url), logs)
    try:
        tenants = [
            make_tenant(own_database.url, budget_micro_usd=100_000_000_000 if n % 2 else None)
            for n in range(20)
        ]
        requests = [(replicas[i % 2].url, tenant) for i in range(12) for tenant in tenants]
        responses = asyncio.run(storm(requests))
    finally:
        for replica in replicas:
            replica.stop()
    statuses = Counter(r.status_code for r in responses)
    assert statuses == {200: len(requests)}, [r.text for r in responses if r.status_code != 200][:3]

    async def alerts(session: AsyncSession) -> int:
        return int(
            (await session.execute(select(func.count()).select_from(BudgetAlert))).scalar_one()
        )

    assert in_session(own_database.url, alerts) == 0  # no false hard-limit alert either


def faketime_env(offset: float) -> dict[str, str]:
    """Environment that shifts a process's wall clock by ``offset`` seconds (it runs at normal
    speed); the monotonic clock (timeouts, the event loop) is left alone."""
    if not FAKETIME_LIBRARY.exists() or shutil.which("faketime") is None:
        unavailable(
            "libfaketime is not installed (Debian package 'faketime', see README)",
            "month-boundary test SKIPPED",
        )
    return {
        "LD_PRELOAD": str(FAKETIME_LIBRARY),
        "FAKETIME": f"{offset:+.3f}s",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        "FAKETIME_DONT_RESET": "1",
        "TZ": "UTC",
    }


def test_the_month_boundary_under_concurrent_load(
    own_database: OwnDatabase, simulator: SimulatorProbe, simulator_server: ServerThread, logs: Path
) -> None:
    """Both replicas' clocks read 23:59:57 UTC on 30 November when the load starts; submits
    keep coming until after 00:00:00. Each job belongs to the month its hold was placed in,
    each month's budget is its own (5 jobs), the December budget opens untouched, and a
    refusal only ever comes from a month whose budget is really spent."""
    per_month = 5
    tenants = [make_tenant(own_database.url, budget_micro_usd=per_month * PRICE) for _ in range(4)]
    midnight = datetime(2026, 12, 1, tzinfo=UTC).timestamp()
    offset = midnight - 20 - time.time()  # 20 s before midnight: time to start the replicas
    environment = env(own_database.url, simulator_server.url, **faketime_env(offset))
    # Both replicas share one offset, so their clocks agree whenever each one started.
    replicas = start_replicas(environment, logs)
    try:
        seconds_left = midnight - (time.time() + offset)
        assert seconds_left > 3, "the replicas took too long to start"
        time.sleep(seconds_left - 3)

        async def across_midnight() -> list[httpx.Response]:
            answers: list[httpx.Response] = []
            for _ in range(16):  # a wave every 0.5 s, from before midnight to after it
                wave = [(replicas[i % 2].url, t) for i, t in enumerate(tenants * 2)]
                answers += await storm(wave, spacing=0.0005)
                await asyncio.sleep(0.5)
            return answers

        responses = asyncio.run(across_midnight())
    finally:
        for replica in replicas:
            replica.stop()
    assert {r.status_code for r in responses} <= {200, 429}, {r.status_code for r in responses}

    async def jobs_by_team_and_month(session: AsyncSession) -> list[tuple[int, str, datetime]]:
        rows = await session.execute(select(Job.team_id, Job.period, Job.created_at))
        return [(team, period, created) for team, period, created in rows]

    jobs = in_session(own_database.url, jobs_by_team_and_month)
    for _team, period, created in jobs:
        assert period == period_of(created), (period, created)  # the month of its hold
    counts = Counter((team, period) for team, period, _ in jobs)
    assert {period for _, period in counts} == {"2026-11", "2026-12"}, counts
    assert all(count <= per_month for count in counts.values()), counts
    refused_months = Counter(r.json()["error"]["period"] for r in responses if r.status_code == 429)
    teams = {team for team, _ in counts}
    for month in refused_months:  # refused only where every team had spent its month
        assert all(counts[(team, month)] == per_month for team in teams), (month, counts)
    assert all(counts[(team, "2026-12")] == per_month for team in teams), counts
    settle_everything(own_database.url, simulator.url)
    books = check_books(own_database.url, simulator.url)
    assert books.differences == 0 and books.upstream_jobs == len(jobs)


def test_a_budget_changed_while_submits_race_it_is_never_overspent(
    own_database: OwnDatabase, simulator: SimulatorProbe, simulator_server: ServerThread, logs: Path
) -> None:
    tenant = make_tenant(own_database.url, budget_micro_usd=20 * PRICE)
    replicas = start_replicas(env(own_database.url, simulator_server.url), logs)
    samples: list[tuple[int, int]] = []
    admin = {"Authorization": f"Bearer {ADMIN}"}

    async def race() -> tuple[list[httpx.Response], list[httpx.Response]]:
        stop = asyncio.Event()
        connection = await asyncpg.connect(asyncpg_dsn(own_database.url))

        async def sample() -> None:
            while not stop.is_set():
                row = await connection.fetchrow(
                    "SELECT budget_micro_usd, held_micro_usd + captured_micro_usd AS used "
                    "FROM team_balances"
                )
                if row is not None:
                    samples.append((row["budget_micro_usd"], row["used"]))
                await asyncio.sleep(0.002)

        async def change_budget(client: httpx.AsyncClient) -> list[httpx.Response]:
            changes = []
            for budget in [6, 30, 8, 12, 4, 25, 9, 40, 15] * 2:
                changes.append(
                    await client.patch(
                        f"{replicas[len(changes) % 2].url}/admin/teams/{tenant.team}",
                        json={"monthly_budget_usd": f"{budget * PRICE / 1_000_000:.6f}"},
                        headers=admin,
                    )
                )
                await asyncio.sleep(0.01)
            return changes

        sampler = asyncio.create_task(sample())
        try:
            async with httpx.AsyncClient(timeout=60) as client:
                submits, changes = await asyncio.gather(
                    storm([(replicas[i % 2].url, tenant) for i in range(150)], spacing=0.002),
                    change_budget(client),
                )
        finally:
            stop.set()
            await sampler
            await connection.close()
        return submits, changes

    try:
        submits, changes = asyncio.run(race())
    finally:
        for replica in replicas:
            replica.stop()
    assert {r.status_code for r in submits} <= {200, 429}, Counter(r.status_code for r in submits)
    assert {r.status_code for r in changes} <= {200, 409}, [r.text for r in changes][:3]
    assert {r.json()["error"]["code"] for r in changes if r.status_code == 409} <= {
        "budget_below_usage"
    }
    assert len(samples) > 50
    assert all(used <= budget for budget, used in samples), max(samples, key=lambda s: s[1] - s[0])
    accepted = sum(1 for r in submits if r.status_code == 200)
    assert len(simulator.submits()) == accepted
    settle_everything(own_database.url, simulator.url)
    assert check_books(own_database.url, simulator.url).differences == 0
