"""A gateway replica SIGKILLed (no cleanup at all) at random points of a load run, and at the
three points that matter most: with holds committed but not yet forwarded, with submits on the
wire (forwarded, answer not yet recorded), and while polls are settling jobs. It is restarted
each time; afterwards the reconciler finishes the work. Every job a client was told about is
in the ledger, every job is settled exactly once, and the ledger equals the simulator's bill.

The simulator honours ``Idempotency-Key`` and so is the gateway told, as a deployment whose
upstream honours keys would be: a submit left unanswered by a killed replica is re-sent and
its job recovered (without that, the gateway cannot learn such a job's id: README, "What is
not built yet").
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

from tests.support.api import submit_async
from tests.support.database import OwnDatabase
from tests.support.invariants import check_books, settle_everything
from tests.support.ledger import team_ledger
from tests.support.load import Load, run_load
from tests.support.processes import (
    RESEND_AFTER_SLOW_ANSWERS,
    GatewayProcess,
    SimulatorProcess,
    as_environment,
    replica_env,
)
from tests.support.simulator import UPSTREAM_KEY
from tests.support.tenants import Tenant, make_tenant

TIMING = RESEND_AFTER_SLOW_ANSWERS
SEED = 20261201


def env_for(database_url: str, upstream_url: str, **extra: str) -> dict[str, str]:
    return replica_env(database_url, upstream_url, **(as_environment(TIMING) | extra))


async def submits(url: str, tenant: Tenant, prompts: list[str], load: Load) -> None:
    async with httpx.AsyncClient(timeout=30) as client:

        async def one(prompt: str) -> None:
            try:
                response = await submit_async(client, tenant, prompt, url=url)
            except httpx.TransportError:
                return  # the replica died under it: no answer, as the client sees it
            assert response.status_code != 500, response.text
            if response.status_code == 200:
                load.jobs.setdefault(tenant.team, []).append(response.json()["job_id"])

        await asyncio.gather(*(one(p) for p in prompts))


def kill_after(replica: GatewayProcess, seconds: float, kills: Counter[str], kind: str) -> None:
    time.sleep(seconds)
    replica.kill()
    kills[kind] += 1


def test_replicas_killed_at_every_point_lose_and_double_bill_nothing(
    own_database: OwnDatabase, tmp_path: Path
) -> None:
    rng = random.Random(SEED)
    kills: Counter[str] = Counter()
    load = Load()
    with SimulatorProcess(tmp_path, "--api-key", UPSTREAM_KEY, "--latency", "0.3") as upstream:
        tenants = [make_tenant(own_database.url) for _ in range(3)]
        # Replica 0 gets two upstream connections only, so submits can be held up between
        # their hold and their forward, waiting for one.
        narrow = env_for(
            own_database.url,
            upstream.url,
            GATEWAY_UPSTREAM_MAX_CONNECTIONS="2",
            GATEWAY_UPSTREAM_POOL_TIMEOUT_SECONDS="0.25",
        )
        victim = GatewayProcess(narrow, tmp_path, "victim").start()
        survivor = GatewayProcess(env_for(own_database.url, upstream.url), tmp_path, "survivor")
        survivor.start()
        urls = [victim.url, survivor.url]
        try:
            # 1. random points of a mixed load on both replicas
            for _ in range(3):
                killer = threading.Thread(
                    target=kill_after, args=(victim, rng.uniform(0.3, 1.5), kills, "random")
                )
                killer.start()
                run = run_load(urls, tenants, seconds=2.0, workers=6, load=load)
                asyncio.run(run)
                killer.join()
                victim.start()

            # 2. forwarded, answer not recorded yet: the simulator answers after 1 s
            killer = threading.Thread(
                target=kill_after, args=(victim, 0.5, kills, "between forward and record")
            )
            killer.start()
            asyncio.run(
                submits(victim.url, tenants[0], [f"w {n} #sim:slow=1" for n in range(6)], load)
            )
            killer.join()
            victim.start()

            # 3. held, not forwarded: two slow submits take both upstream connections, the
            # next ones wait for one (their holds committed) when the replica dies
            killer = threading.Thread(
                target=kill_after, args=(victim, 0.15, kills, "between hold and forward")
            )
            killer.start()
            prompts = [f"h {n} #sim:slow=1" for n in range(2)] + [f"h {n}" for n in range(2, 8)]
            asyncio.run(submits(victim.url, tenants[1], prompts, load))
            killer.join()
            victim.start()

            # 4. during settlement: jobs finish, many polls settle them on the victim
            finished = [j for team_jobs in load.jobs.values() for j in team_jobs]
            killer = threading.Thread(
                target=kill_after, args=(victim, 0.05, kills, "during settlement")
            )
            killer.start()
            asyncio.run(poll_all(victim.url, tenants, load))
            killer.join()
            victim.start()
        finally:
            victim.stop()
            survivor.stop()

        assert sum(kills.values()) == 6, kills
        assert len(finished) > 20, load.statuses()
        settle_everything(
            own_database.url,
            upstream.url,
            resend_after=float(TIMING["unanswered_submit_resend_after_seconds"]),
            **TIMING,
        )
        books = check_books(own_database.url, upstream.url, f"kills={dict(kills)}")
    assert books.differences == 0
    # Every job a client was answered 200 for is in the ledger under its upstream id.
    known = {
        job.upstream_job_id
        for tenant in tenants
        for job in team_ledger(own_database.url, tenant.team).jobs
    }
    told = {job_id for team_jobs in load.jobs.values() for job_id in team_jobs}
    assert told <= known, told - known
    print(f"kills {dict(kills)}; jobs {books.jobs}; upstream jobs {books.upstream_jobs}")


async def poll_all(url: str, tenants: list[Tenant], load: Load) -> None:
    async with httpx.AsyncClient(timeout=30) as client:

        async def poll(tenant: Tenant, job_id: str) -> None:
            try:
                response = await client.get(f"{url}/v1/jobs/{job_id}", headers=tenant.headers)
            except httpx.TransportError:
                return
            assert response.status_code in (200, 502, 503, 504), response.text

        await asyncio.gather(
            *(
                poll(tenant, job_id)
                for tenant in tenants
                for job_id in load.jobs.get(tenant.team, [])
            )
        )
