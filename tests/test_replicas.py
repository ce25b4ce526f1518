"""Gateway processes (real replicas, not app objects) sharing one Postgres and one simulator,
in three shapes: two replicas, three replicas, and one process with four workers. In each, no
interleaving of concurrent requests overspends a budget, a job polled by many clients through
every replica at once is settled exactly once, one Idempotency-Key sent to every replica at
once creates one job, and a key revoked or a team disabled through one replica is refused by
the others on the next request."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator

import asyncpg
import httpx
import pytest

from tests.support.api import submit_async, submit_to
from tests.support.database import asyncpg_dsn
from tests.support.ledger import team_ledger
from tests.support.processes import GatewayProcess, replica_env
from tests.support.servers import ServerThread
from tests.support.simulator import SimulatorProbe
from tests.support.tenants import Tenant, make_tenant

ADMIN_TOKEN = "replica-admin-token-0123456789"
PRICE = 1_680_000  # 10 s at 720p, the defaults


TOPOLOGIES = {
    "two replicas": (1, 1),
    "three replicas": (1, 1, 1),
    "one process, four workers": (4,),
}


@pytest.fixture(scope="module", params=list(TOPOLOGIES), ids=list(TOPOLOGIES))
def replicas(
    request: pytest.FixtureRequest,
    postgres_url: str,
    simulator_server: ServerThread,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[list[GatewayProcess]]:
    env = replica_env(postgres_url, simulator_server.url, GATEWAY_ADMIN_TOKEN=ADMIN_TOKEN)
    logs = tmp_path_factory.mktemp("replicas")
    processes = [
        # Four workers' default pools (4 x 20) and the rest of the run would pass the test
        # server's max_connections (100): each worker gets a pool of 8, the budget the README's
        # "Production" section asks for (replicas x workers x pool below the server's limit).
        GatewayProcess(
            {**env, "GATEWAY_DATABASE_POOL_SIZE": "8"} if workers > 1 else env,
            logs,
            f"replica-{n}",
            workers=workers,
        )
        for n, workers in enumerate(TOPOLOGIES[request.param])
    ]
    try:
        for process in processes:
            process.start()
        yield processes
    finally:
        for process in processes:
            process.stop()


async def sample_usage(
    dsn: str, team: str, samples: list[tuple[int, int]], stop: asyncio.Event
) -> None:
    connection = await asyncpg.connect(dsn)
    try:
        while not stop.is_set():
            row = await connection.fetchrow(
                "SELECT b.budget_micro_usd, b.held_micro_usd + b.captured_micro_usd AS used "
                "FROM team_balances b JOIN teams t ON t.id = b.team_id WHERE t.name = $1",
                team,
            )
            if row is not None:
                samples.append((row["budget_micro_usd"], row["used"]))
            await asyncio.sleep(0.002)
    finally:
        await connection.close()


def test_concurrent_submits_across_replicas_never_overspend(
    replicas: list[GatewayProcess], simulator: SimulatorProbe, postgres_url: str
) -> None:
    fits = 7
    budget = fits * PRICE
    tenant = make_tenant(postgres_url, budget_micro_usd=budget)
    samples: list[tuple[int, int]] = []

    async def storm() -> list[httpx.Response]:
        stop = asyncio.Event()
        sampler = asyncio.create_task(
            sample_usage(asyncpg_dsn(postgres_url), tenant.team, samples, stop)
        )
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
        async with httpx.AsyncClient(limits=limits, timeout=60) as client:
            responses = await asyncio.gather(
                *(
                    submit_async(client, tenant, f"storm {i}", url=replicas[i % len(replicas)].url)
                    for i in range(200)
                )
            )
        stop.set()
        await sampler
        return list(responses)

    responses = asyncio.run(storm())
    statuses = Counter(r.status_code for r in responses)
    assert statuses == {200: fits, 429: 200 - fits}
    assert {r.json()["error"]["code"] for r in responses if r.status_code == 429} == {
        "quota_exceeded"
    }
    assert len(simulator.submits()) == fits  # the refused ones never reached the upstream

    assert len(samples) > 20
    assert all(used <= sample_budget == budget for sample_budget, used in samples)
    ledger = team_ledger(postgres_url, tenant.team)
    assert (ledger.balance.held_micro_usd, ledger.balance.captured_micro_usd) == (budget, 0)
    assert [e.kind for e in ledger.entries] == ["hold"] * fits
    assert len(ledger.jobs) == fits


def test_fifty_concurrent_polls_through_every_replica_settle_once(
    replicas: list[GatewayProcess], simulator: SimulatorProbe, postgres_url: str
) -> None:
    tenant: Tenant = make_tenant(postgres_url)
    job_id = submit_to(replicas[0].url, tenant, "poll me").json()["job_id"]

    async def poll_storm() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=50)
        async with httpx.AsyncClient(limits=limits, timeout=60) as client:
            return list(
                await asyncio.gather(
                    *(
                        client.get(
                            f"{replicas[i % len(replicas)].url}/v1/jobs/{job_id}",
                            headers=tenant.headers,
                        )
                        for i in range(50)
                    )
                )
            )

    responses = asyncio.run(poll_storm())
    assert {r.status_code for r in responses} == {200}
    assert {r.json()["status"] for r in responses} == {"completed"}
    assert len({r.content for r in responses}) == 1  # the record replays the upstream's bytes
    ledger = team_ledger(postgres_url, tenant.team)
    assert ledger.entries_of(ledger.jobs[0].id) == [("hold", PRICE), ("capture", PRICE)]
    assert (ledger.balance.held_micro_usd, ledger.balance.captured_micro_usd) == (0, PRICE)


def test_revocation_on_one_replica_is_refused_by_the_other_at_once(
    replicas: list[GatewayProcess], simulator: SimulatorProbe, postgres_url: str
) -> None:
    """Keys and teams are read from the shared database on every request: the key a process
    remembers for its submits is checked by the hold's own statement, so the documented bound
    is zero (the next request after the change commits)."""
    tenant = make_tenant(postgres_url)
    first, second = replicas[0], replicas[-1]  # with four workers: any two of them
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    assert submit_to(second.url, tenant, "x").status_code == 200
    revoked = httpx.post(f"{first.url}/admin/keys/{tenant.key_id}/revoke", headers=admin)
    assert revoked.status_code == 200
    refused = submit_to(second.url, tenant, "x")
    assert (refused.status_code, refused.json()["error"]["code"]) == (401, "api_key_revoked")

    other = make_tenant(postgres_url)
    assert submit_to(second.url, other, "x").status_code == 200
    disabled = httpx.patch(
        f"{first.url}/admin/teams/{other.team}", json={"disabled": True}, headers=admin
    )
    assert disabled.status_code == 200
    refused = submit_to(second.url, other, "x")
    assert (refused.status_code, refused.json()["error"]["code"]) == (403, "team_disabled")
    assert len(simulator.submits()) == 2


def test_one_idempotency_key_sent_to_every_replica_at_once_makes_one_job(
    replicas: list[GatewayProcess], simulator: SimulatorProbe, postgres_url: str
) -> None:
    tenant = make_tenant(postgres_url)
    key = {"Idempotency-Key": f"replicas-{tenant.team}"}

    async def storm() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60) as client:
            return list(
                await asyncio.gather(
                    *(
                        submit_async(
                            client, tenant, "once", url=replicas[i % len(replicas)].url, headers=key
                        )
                        for i in range(30)
                    )
                )
            )

    responses = asyncio.run(storm())
    statuses = Counter(r.status_code for r in responses)
    assert set(statuses) <= {200, 409}, statuses
    assert statuses[200] >= 1
    assert {r.json()["error"]["code"] for r in responses if r.status_code == 409} <= {
        "idempotency_key_in_use"
    }
    job_ids = {r.json()["job_id"] for r in responses if r.status_code == 200}
    replay = submit_to(replicas[-1].url, tenant, "once", headers=key)
    assert replay.status_code == 200
    assert replay.headers["idempotent-replayed"] == "true"
    assert job_ids == {replay.json()["job_id"]}
    assert len(simulator.submits()) == 1
    job = replay.json()["job_id"]
    polled = httpx.get(f"{replicas[0].url}/v1/jobs/{job}", headers=tenant.headers, timeout=30)
    assert polled.json()["status"] == "completed"  # settled: nothing left open
    ledger = team_ledger(postgres_url, tenant.team)
    assert len(ledger.jobs) == 1
    assert ledger.entries_of(ledger.jobs[0].id) == [("hold", PRICE), ("capture", PRICE)]
