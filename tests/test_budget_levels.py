"""Budget levels held in one transaction (issue 15): a submit reserves its price at its team,
its project and its key at once, or at none, across replicas. Two gateway processes share one
Postgres; in three runs a budget that fits exactly K jobs sits at the key, then the project,
then the team (the other levels with room to spare), and 200 concurrent submits through both
processes are accepted exactly K times. After settlement every level's captured total equals
the simulator's own bill for that level's jobs, to the micro-dollar, and nothing stays held."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal

import asyncpg
import httpx
import pytest
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.core.usd import format_usd, parse_usd
from gateway.tenancy import service
from gateway.tenancy.models import ApiKey, Project
from tests.support.api import SUBMIT_PATH, submit_async
from tests.support.database import asyncpg_dsn
from tests.support.processes import GatewayProcess, replica_env
from tests.support.servers import ServerThread
from tests.support.simulator import SimulatorProbe
from tests.support.tenants import PEPPER, TEST_ACTOR, Tenant, in_session

PRICE = 1_680_000  # 10 s at 720p, the defaults
ADMIN = "levels-admin-token-0123456789"
FITS = 5
ROOMY = 1_000 * PRICE


@pytest.fixture(scope="module")
def two_replicas(
    postgres_url: str,
    simulator_server: ServerThread,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[list[GatewayProcess]]:
    env = replica_env(postgres_url, simulator_server.url, GATEWAY_ADMIN_TOKEN=ADMIN)
    logs = tmp_path_factory.mktemp("levels")
    processes = [GatewayProcess(env, logs, f"replica-{n}") for n in range(2)]
    try:
        for process in processes:
            process.start()
        yield processes
    finally:
        for process in processes:
            process.stop()


@dataclass(frozen=True)
class Setup:
    team: str
    team_id: int
    projects: dict[str, int]
    keys: list[tuple[Tenant, str]]
    """Each key as a tenant, with the name of its project."""


def make_levels(
    database: str,
    *,
    team_budget: int,
    projects: dict[str, int | None],
    keys: list[tuple[str, int | None]],
    max_concurrent_jobs: int | None = None,
) -> Setup:
    """A team with ``projects`` (name → budget) and ``keys`` (bound project, key budget)."""
    name = f"levels-{uuid.uuid4().hex[:10]}"

    async def _create(session: AsyncSession) -> Setup:
        team = await service.create_team(
            session,
            name,
            actor=TEST_ACTOR,
            monthly_budget_micro_usd=team_budget,
            max_concurrent_jobs=max_concurrent_jobs,
        )
        ids = {}
        for project, budget in projects.items():
            row = Project(team_id=team.id, name=project, monthly_budget_micro_usd=budget)
            session.add(row)
            await session.flush()
            ids[project] = row.id
        issued = []
        for project, key_budget in keys:
            key = await service.create_key(session, name, pepper=PEPPER, actor=TEST_ACTOR)
            await session.execute(
                update(ApiKey)
                .where(ApiKey.id == key.key.id)
                .values(project_id=ids[project], monthly_budget_micro_usd=key_budget)
            )
            issued.append((Tenant(team=name, key=key.token, key_id=key.key.id), project))
        return Setup(name, team.id, ids, issued)

    return in_session(database, _create)


async def _storm(replicas: list[GatewayProcess], setup: Setup) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        return list(
            await asyncio.gather(
                *(
                    submit_async(
                        client,
                        setup.keys[i % len(setup.keys)][0],
                        f"level storm {i}",
                        url=replicas[i % len(replicas)].url,
                    )
                    for i in range(200)
                )
            )
        )


async def _balances(dsn: str, setup: Setup) -> dict[tuple[str, str], tuple[int, int]]:
    """(scope, name) → (held, captured) for every level of ``setup`` this period."""
    connection = await asyncpg.connect(dsn)
    try:
        found: dict[tuple[str, str], tuple[int, int]] = {}
        row = await connection.fetchrow(
            "SELECT held_micro_usd, captured_micro_usd FROM team_balances WHERE team_id = $1",
            setup.team_id,
        )
        found["team", setup.team] = (row[0], row[1]) if row else (0, 0)
        for project, project_id in setup.projects.items():
            row = await connection.fetchrow(
                "SELECT held_micro_usd, captured_micro_usd FROM project_balances "
                "WHERE project_id = $1",
                project_id,
            )
            found["project", project] = (row[0], row[1]) if row else (0, 0)
        for tenant, _ in setup.keys:
            row = await connection.fetchrow(
                "SELECT held_micro_usd, captured_micro_usd FROM key_balances WHERE api_key_id = $1",
                tenant.key_id,
            )
            found["key", tenant.key_id] = (row[0], row[1]) if row else (0, 0)
        return found
    finally:
        await connection.close()


LEVEL_RUNS = {
    # run: (binding level, team budget, project budgets, keys as (project, key budget), cap)
    "key": ("key", ROOMY, {"launch": ROOMY}, [("launch", FITS * PRICE)], None),
    "project": (
        "project",
        ROOMY,
        {"launch": FITS * PRICE, "other": ROOMY},
        [("launch", None)] * 2,
        None,
    ),
    "team": (
        "team",
        FITS * PRICE,
        {"launch": ROOMY, "other": ROOMY},
        [("launch", None), ("other", None)],
        None,
    ),
    # A concurrency cap sends every submit through the transactional path (the team row
    # locked first, then team, project and key balances): the lock order under contention,
    # two projects and their keys in one team. A deadlock would show as 5xx answers.
    "project, transactional path": (
        "project",
        ROOMY,
        {"launch": FITS * PRICE, "other": ROOMY},
        [("launch", None), ("other", None), ("launch", ROOMY)],
        10_000,
    ),
}


@pytest.mark.parametrize("run", list(LEVEL_RUNS))
def test_each_level_binds_exactly_across_two_replicas(
    run: str,
    two_replicas: list[GatewayProcess],
    simulator: SimulatorProbe,
    postgres_url: str,
) -> None:
    binding, team_budget, projects, keys, cap = LEVEL_RUNS[run]
    setup = make_levels(
        postgres_url,
        team_budget=team_budget,
        projects=projects,
        keys=keys,
        max_concurrent_jobs=cap,
    )

    responses = asyncio.run(_storm(two_replicas, setup))
    statuses = Counter(r.status_code for r in responses)
    if binding == "project" and len({p for _, p in setup.keys}) > 1:
        # the other project's keys are not bound by "launch": every one of theirs fits
        other = sum(1 for i in range(200) if setup.keys[i % len(setup.keys)][1] != "launch")
        assert statuses == {200: FITS + other, 429: 200 - FITS - other}, statuses
    else:
        assert statuses == {200: FITS, 429: 200 - FITS}, statuses
    refusals = [r.json()["error"] for r in responses if r.status_code == 429]
    assert {(e["code"], e["scope"]) for e in refusals} == {("quota_exceeded", binding)}
    assert all(e["resets_at"].endswith("T00:00:00Z") for e in refusals)
    assert len(simulator.submits()) == statuses[200]  # the refused ones never reached upstream

    dsn = asyncpg_dsn(postgres_url)
    held = asyncio.run(_balances(dsn, setup))
    bound_key = setup.keys[0][0].key_id
    binding_row = {
        "key": ("key", bound_key),
        "project": ("project", "launch"),
        "team": ("team", setup.team),
    }[binding]
    assert held[binding_row] == (FITS * PRICE, 0)  # exactly to the budget, and no further

    # Settle every accepted job through the other replica than the one that took it.
    accepted = [(i, r.json()["job_id"]) for i, r in enumerate(responses) if r.status_code == 200]
    by_job: dict[str, Tenant] = {}
    for i, job_id in accepted:
        tenant = setup.keys[i % len(setup.keys)][0]
        by_job[job_id] = tenant
        polled = httpx.get(
            f"{two_replicas[(i + 1) % 2].url}/v1/jobs/{job_id}", headers=tenant.headers, timeout=30
        )
        assert polled.json()["status"] == "completed"

    billed = {
        job["job_id"]: parse_usd(str(Decimal(job["cost_usd"])))
        for job in simulator.usage()["jobs"]
        if job["job_id"] in by_job
    }
    assert len(billed) == statuses[200]
    project_of = {tenant.key_id: project for tenant, project in setup.keys}
    expected: Counter[tuple[str, str]] = Counter()
    for job_id, cost in billed.items():
        key_id = by_job[job_id].key_id
        expected["team", setup.team] += cost
        expected["project", project_of[key_id]] += cost
        expected["key", key_id] += cost
    settled = asyncio.run(_balances(dsn, setup))
    for level, (held_after, captured) in settled.items():
        assert held_after == 0, level
        assert captured == expected[level], level  # each level's bill, to the micro-dollar


def test_a_submit_over_a_lower_level_holds_nothing_anywhere(
    two_replicas: list[GatewayProcess], simulator: SimulatorProbe, postgres_url: str
) -> None:
    """The direct statement's key reservation fails on the key's CHECK: the team's and the
    project's reservations in the same statement are rolled back with it."""
    setup = make_levels(
        postgres_url, team_budget=ROOMY, projects={"launch": ROOMY}, keys=[("launch", PRICE)]
    )
    tenant = setup.keys[0][0]
    url = two_replicas[0].url
    first = httpx.post(
        url + SUBMIT_PATH,
        json={"model": "grok-imagine-video-1-5", "prompt": "a"},
        headers=tenant.headers,
        timeout=30,
    )
    assert first.status_code == 200
    second = httpx.post(
        url + SUBMIT_PATH,
        json={"model": "grok-imagine-video-1-5", "prompt": "b"},
        headers=tenant.headers,
        timeout=30,
    )
    assert second.status_code == 429
    # the quota header is the team's, whichever level refused
    assert second.headers["x-quota-remaining-usd"] == format_usd(ROOMY - PRICE)
    error = second.json()["error"]
    assert (error["scope"], error["scope_name"], error["budget_usd"], error["used_usd"]) == (
        "key",
        tenant.key_id,
        "1.680000",
        "1.680000",
    )
    balances = asyncio.run(_balances(asyncpg_dsn(postgres_url), setup))
    assert balances == {
        ("team", setup.team): (PRICE, 0),
        ("project", "launch"): (PRICE, 0),
        ("key", tenant.key_id): (PRICE, 0),
    }


@pytest.mark.parametrize("level", ["project", "key"])
def test_a_level_budget_changed_while_submits_race_it_is_never_overspent(
    level: str, two_replicas: list[GatewayProcess], simulator: SimulatorProbe, postgres_url: str
) -> None:
    """Budget changes at a project or a key through both replicas while 150 submits race them:
    every sample of that level's row stays within its budget, every change is applied or
    refused (409 below usage), nothing else fails."""
    key_budget = 20 * PRICE if level == "key" else None
    project_budget = 20 * PRICE if level == "project" else None
    setup = make_levels(
        postgres_url,
        team_budget=ROOMY,
        projects={"launch": project_budget},
        keys=[("launch", key_budget)],
    )
    tenant = setup.keys[0][0]
    admin = {"Authorization": f"Bearer {ADMIN}"}
    path = (
        f"/admin/teams/{setup.team}/projects/launch"
        if level == "project"
        else f"/admin/keys/{tenant.key_id}"
    )
    table, owner_column, owner = (
        ("project_balances", "project_id", setup.projects["launch"])
        if level == "project"
        else ("key_balances", "api_key_id", tenant.key_id)
    )
    samples: list[tuple[int, int]] = []

    async def race() -> tuple[list[httpx.Response], list[httpx.Response]]:
        stop = asyncio.Event()
        connection = await asyncpg.connect(asyncpg_dsn(postgres_url))

        async def sample() -> None:
            while not stop.is_set():
                row = await connection.fetchrow(
                    "SELECT budget_micro_usd + granted_micro_usd AS lim, "
                    f"held_micro_usd + captured_micro_usd AS used FROM {table} "
                    f"WHERE {owner_column} = $1",
                    owner,
                )
                if row is not None:
                    samples.append((row["lim"], row["used"]))
                await asyncio.sleep(0.002)

        async def change_budget(client: httpx.AsyncClient) -> list[httpx.Response]:
            changes = []
            for budget in [6, 30, 8, 12, 4, 25, 9, 40, 15] * 2:
                changes.append(
                    await client.patch(
                        two_replicas[len(changes) % 2].url + path,
                        json={"monthly_budget_usd": f"{budget * PRICE / 1_000_000:.6f}"},
                        headers=admin,
                    )
                )
                await asyncio.sleep(0.01)
            return changes

        async def submits(client: httpx.AsyncClient) -> list[httpx.Response]:
            async def one(i: int) -> httpx.Response:
                await asyncio.sleep(i * 0.002)
                return await submit_async(client, tenant, f"race {i}", url=two_replicas[i % 2].url)

            return list(await asyncio.gather(*(one(i) for i in range(150))))

        sampler = asyncio.create_task(sample())
        try:
            limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
            async with httpx.AsyncClient(limits=limits, timeout=60) as client:
                answered, changes = await asyncio.gather(submits(client), change_budget(client))
        finally:
            stop.set()
            await sampler
            await connection.close()
        return answered, changes

    answered, changes = asyncio.run(race())
    assert {r.status_code for r in answered} <= {200, 429}, Counter(r.status_code for r in answered)
    assert {r.status_code for r in changes} <= {200, 409}, [r.text for r in changes][:3]
    assert {r.json()["error"]["code"] for r in changes if r.status_code == 409} <= {
        "budget_below_usage"
    }
    assert {(r.json()["error"]["scope"]) for r in answered if r.status_code == 429} <= {level}
    assert len(samples) > 50
    assert all(used <= limit for limit, used in samples), max(samples, key=lambda s: s[1] - s[0])
    accepted = sum(1 for r in answered if r.status_code == 200)
    assert 4 <= accepted <= 40, accepted
