"""Randomized simulation of the money core, replayable from its seed.

Two gateway replicas share one Postgres and one simulator. A seeded stream of operations runs in
concurrent batches: submits with random outcomes (success, failure, moderation, reported
durations, upstream 500/429, hangs), Idempotency-Key retries (replays and conflicting bodies),
polls or none, reconciler passes, and a replica killed with SIGKILL mid-batch and restarted.
Then the reconciler finishes the work and the invariants are checked:

- every job has exactly one hold and exactly one settlement: nothing is left open;
- each balance row equals the sums of its entries, and held + captured never exceeds the budget;
- per job, the ledger's capture (+ corrections) equals what the simulator billed, and every
  job the simulator billed is in the ledger: nothing lost, nothing billed twice, nothing billed
  that the upstream did not bill.

    GATEWAY_SIM_OPS=2000 GATEWAY_SIM_SEED=7 pytest tests/test_simulation.py   # longer / replay
"""

from __future__ import annotations

import asyncio
import os
import random
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.upstream.simulator import SimulatorConfig, create_simulator_app
from tests.support.api import MODEL, SUBMIT_PATH
from tests.support.database import create_postgres_database, drop_postgres_database
from tests.support.invariants import check_books, reconcile_pass, settle_everything
from tests.support.processes import RESEND_QUICKLY, GatewayProcess, as_environment, replica_env
from tests.support.servers import running
from tests.support.simulator import UPSTREAM_KEY
from tests.support.tenants import Tenant, make_tenant

OPS = int(os.environ.get("GATEWAY_SIM_OPS", "300"))
SEED = int(os.environ.get("GATEWAY_SIM_SEED", "20261124"))
BATCH = 8
OUTCOMES = [
    ("", 40),
    (" #sim:fail", 10),
    (" #sim:moderated", 10),
    (" #sim:duration={n}", 12),
    (" #sim:http500", 10),
    (" #sim:http429", 8),
    (" #sim:hang", 4),
]
# Short upstream timeouts (a call lasts at most 4 x 0.25 s), so that unanswered submits can
# be re-sent soon (after 2 s: a re-send must wait until the original call is surely over).
TIMING = RESEND_QUICKLY


@dataclass
class World:
    rng: random.Random
    database_url: str
    simulator_url: str
    replicas: list[GatewayProcess]
    tenants: list[Tenant]
    jobs: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    keys: dict[str, list[tuple[str, bytes]]] = field(default_factory=lambda: defaultdict(list))
    statuses: Counter[str] = field(default_factory=Counter)
    killed: int = 0


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    database_url = create_postgres_database()
    simulator = create_simulator_app(
        SimulatorConfig(api_key=UPSTREAM_KEY, latency=0.05, hang_seconds=1.0)
    )
    rng = random.Random(SEED)
    replicas: list[GatewayProcess] = []
    try:
        with running(simulator) as simulator_server:
            # Reconciler passes are operations of the simulation: none in the replicas.
            env = replica_env(database_url, simulator_server.url, **as_environment(TIMING))
            replicas = [GatewayProcess(env, tmp_path, f"replica-{n}") for n in range(2)]
            for replica in replicas:
                replica.start()
            tenants = [
                make_tenant(database_url, prefix="tight", budget_micro_usd=9_000_000),
                make_tenant(database_url, prefix="roomy", budget_micro_usd=200_000_000),
                make_tenant(
                    database_url, prefix="capped", budget_micro_usd=None, max_concurrent_jobs=3
                ),
            ]
            yield World(rng, database_url, simulator_server.url, replicas, tenants)
    finally:
        for replica in replicas:
            replica.stop()
        drop_postgres_database(database_url)


def random_body(rng: random.Random) -> bytes:
    marker = rng.choices([m for m, _ in OUTCOMES], weights=[w for _, w in OUTCOMES])[0]
    body: dict[str, Any] = {
        "model": MODEL,
        "prompt": "sim "
        + str(rng.randrange(10**6))
        + marker.format(n=rng.choice([2, 5, 9, 12, 2.5])),
    }
    if rng.random() < 0.6:
        body["duration"] = rng.choice([1, 3, 5, 8, 10, 15, 2.5])
    if rng.random() < 0.5:
        body["resolution"] = rng.choice(["480p", "720p"])
    if rng.random() < 0.3:
        body["image"] = "https://example.com/source.png"
    return httpx.Request("POST", "/", json=body).content


async def random_submit(world: World, client: httpx.AsyncClient) -> None:
    """One submit of the simulation: a random tenant, body, key (or retry) and replica."""
    rng = world.rng
    tenant = rng.choice(world.tenants)
    headers = dict(tenant.headers)
    body = random_body(rng)
    if rng.random() < 0.35:
        reuse = world.keys[tenant.team] and rng.random() < 0.5
        if reuse:
            key, earlier = rng.choice(world.keys[tenant.team])
            body = earlier if rng.random() < 0.8 else body  # mostly a true retry
        else:
            key = f"k-{rng.randrange(10**9)}"
            world.keys[tenant.team].append((key, body))
        headers["Idempotency-Key"] = key
    replica = rng.choice(world.replicas)
    try:
        response = await client.post(
            replica.url + SUBMIT_PATH,
            content=body,
            headers={**headers, "Content-Type": "application/json"},
        )
    except httpx.TransportError:
        world.statuses["submit:connection-lost"] += 1
        return
    world.statuses[f"submit:{response.status_code}"] += 1
    assert response.status_code != 500, response.text
    if response.status_code == 200:
        world.jobs[tenant.team].append(response.json()["job_id"])


async def random_poll(world: World, client: httpx.AsyncClient) -> None:
    """One poll of the simulation: a random tenant's random job, through a random replica."""
    rng = world.rng
    tenant = rng.choice(world.tenants)
    if not world.jobs[tenant.team]:
        return
    job_id = rng.choice(world.jobs[tenant.team])
    try:
        response = await client.get(
            f"{rng.choice(world.replicas).url}/v1/jobs/{job_id}", headers=tenant.headers
        )
    except httpx.TransportError:
        world.statuses["poll:connection-lost"] += 1
        return
    world.statuses[f"poll:{response.status_code}"] += 1
    assert response.status_code in (200, 502, 504), response.text


async def kill_mid_batch(world: World) -> None:
    await asyncio.sleep(world.rng.uniform(0.0, 0.05))  # while the batch's requests are in flight
    world.replicas[0].kill()
    world.killed += 1


async def run_batch(world: World, batch: list[str]) -> None:
    limits = httpx.Limits(max_connections=BATCH * 2)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        work = []
        for op in batch:
            if op == "submit":
                work.append(random_submit(world, client))
            elif op == "poll":
                work.append(random_poll(world, client))
            elif op == "kill":
                work.append(kill_mid_batch(world))
        await asyncio.gather(*work)


@pytest.mark.slow
@pytest.mark.timeout(max(180, OPS // 2))
def test_randomized_money_simulation(world: World) -> None:
    rng = world.rng
    kill_at = {OPS // 3, (2 * OPS) // 3}
    ops_done = 0
    while ops_done < OPS:
        batch = rng.choices(["submit", "poll", "reconcile"], weights=[60, 32, 8], k=BATCH)
        if any(ops_done <= k < ops_done + BATCH for k in kill_at):
            batch.append("kill")
        if "reconcile" in batch:
            reconcile_pass(world.database_url, world.simulator_url, **TIMING)
            world.statuses["reconcile"] += 1
        asyncio.run(run_batch(world, [op for op in batch if op != "reconcile"]))
        if world.replicas[0].process is not None and world.replicas[0].process.poll() is not None:
            world.replicas[0].start()  # restarted after the kill
        ops_done += BATCH

    # Let the reconciler finish everything: recover unanswered submits (once due for a
    # re-send), settle finished jobs, and finally release the holds of submits the upstream
    # never created (the hangs).
    settle_everything(
        world.database_url,
        world.simulator_url,
        resend_after=float(TIMING["unanswered_submit_resend_after_seconds"]),
        **TIMING,
    )

    context = f"seed={SEED} ops={OPS} statuses={dict(world.statuses)}"
    assert world.killed == 2, context
    assert world.statuses["submit:200"] > 20, context
    books = check_books(world.database_url, world.simulator_url, context)
    upstream_billed = books.upstream_jobs
    print(f"simulation ok: {context}; upstream jobs {upstream_billed}")
