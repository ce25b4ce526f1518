"""Soak: a long mixed run with a small rate of injected faults of every kind, then the books.

    .venv/bin/python benchmarks/soak.py                 # 10 minutes (the issue's soak)
    .venv/bin/python benchmarks/soak.py --seconds 60    # what CI runs (tests/faults/test_soak.py)

Two gateway replicas (real ``gateway serve`` processes, their own background reconcilers on)
share one Postgres, reached through a TCP proxy that can be cut, and one simulator in its own
process. Closed-loop clients send submits (with outcome markers: success, failure, moderation,
reported durations, upstream 500 and 429, a few hangs), polls of their jobs, ``/v1/usage`` and
admin reads, at a rate the machine sustains. Every ``--fault-every`` seconds one fault is
injected, in turn:

    db_terminate     every backend of the database terminated (pg_terminate_backend)
    db_refuse        the database refuses connections for 1 s (ALLOW_CONNECTIONS false)
    net_cut          the TCP proxy to Postgres killed, restarted 1 s later (failover)
    lock_contention  the balance rows locked for 1.5 s from outside (pool exhaustion)
    upstream_pause   the simulator SIGSTOPped for 1 s, then SIGCONT
    gateway_kill     replica 1 SIGKILLed, restarted

It prints requests served, answers by status, faults injected, the recovery time after each
database fault (first accepted submit after the database is back), RSS and open descriptors of
the replica that is never killed at start and end, and, after the reconciler has finished,
the ledger against the simulator's bill: jobs lost, double-billed, false refusals, 500s and
differences, which must all be 0 (exit status 1 otherwise). The same goes to
``benchmarks/results/soak-<UTC timestamp>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.api import MODEL, SUBMIT_PATH
from tests.support.database import (
    admin_sql,
    asyncpg_dsn,
    create_postgres_database,
    drop_postgres_database,
)
from tests.support.invariants import check_books, settle_everything
from tests.support.ledger import team_ledger
from tests.support.processes import (
    RESEND_AFTER_SLOW_ANSWERS,
    GatewayProcess,
    SimulatorProcess,
    as_environment,
)
from tests.support.simulator import UPSTREAM_KEY
from tests.support.tcp_proxy import TcpProxy
from tests.support.tenants import PEPPER, Tenant, make_tenant

ADMIN = "admin-token-soak-0123456789abcdef"
RESULTS = Path(__file__).parent / "results"
TIMING = RESEND_AFTER_SLOW_ANSWERS
MARKERS = [("", 62), (" #sim:fail", 8), (" #sim:moderated", 8), (" #sim:duration=4", 8)]
MARKERS += [(" #sim:http500", 6), (" #sim:http429", 6), (" #sim:hang", 1), (" #sim:duration=12", 1)]
FAULTS = [
    "db_terminate",
    "db_refuse",
    "net_cut",
    "lock_contention",
    "upstream_pause",
    "gateway_kill",
]


@dataclass
class Run:
    rng: random.Random
    replicas: list[GatewayProcess]
    tenants: list[Tenant]
    answers: Counter[str] = field(default_factory=Counter)
    jobs: dict[str, list[str]] = field(default_factory=dict)
    faults: Counter[str] = field(default_factory=Counter)
    recoveries: list[dict[str, Any]] = field(default_factory=list)
    false_refusals: list[dict[str, Any]] = field(default_factory=list)
    last_accepted: float = 0.0
    served: int = 0

    @property
    def told(self) -> set[str]:
        return {job_id for ids in self.jobs.values() for job_id in ids}


def process_figures(pid: int) -> dict[str, int]:
    status = Path(f"/proc/{pid}/status").read_text()
    rss_kib = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS"))
    return {"rss_kib": rss_kib, "open_fds": len(list(Path(f"/proc/{pid}/fd").iterdir()))}


def false_refusal(tenant_budget: int | None, error: dict[str, Any]) -> bool:
    """A quota refusal whose own figures show room (or a team without a budget)."""
    if error.get("code") != "quota_exceeded":
        return False
    if tenant_budget is None:
        return True
    used, requested = Decimal(error["used_usd"]), Decimal(error["requested_usd"])
    return used + requested <= Decimal(error["budget_usd"])


async def client(run: Run, index: int, deadline: float, budgets: dict[str, int | None]) -> None:
    rng = random.Random(run.rng.random())
    admin = {"Authorization": f"Bearer {ADMIN}"}
    limits = httpx.Limits(max_connections=4, max_keepalive_connections=4)
    async with httpx.AsyncClient(timeout=30, limits=limits) as http:
        for n in itertools.count():
            if time.monotonic() >= deadline:
                return
            replica = run.replicas[(index + n) % len(run.replicas)]
            tenant = rng.choice(run.tenants)
            jobs = run.jobs.setdefault(tenant.team, [])
            op = rng.choices(["submit", "poll", "usage", "admin"], weights=[50, 35, 10, 5])[0]
            if op == "poll" and not jobs:
                op = "submit"
            try:
                if op == "submit":
                    marker = rng.choices([m for m, _ in MARKERS], [w for _, w in MARKERS])[0]
                    body = {"model": MODEL, "prompt": f"soak {index}-{n}{marker}"}
                    if rng.random() < 0.5:
                        body["duration"] = rng.choice([1, 3, 5, 8, 10, 15, 2.5])
                    if rng.random() < 0.5:
                        body["resolution"] = rng.choice(["480p", "720p"])
                    response = await http.post(
                        replica.url + SUBMIT_PATH, json=body, headers=tenant.headers
                    )
                elif op == "poll":
                    job_id = rng.choice(jobs)
                    response = await http.get(
                        f"{replica.url}/v1/jobs/{job_id}", headers=tenant.headers
                    )
                elif op == "usage":
                    response = await http.get(f"{replica.url}/v1/usage", headers=tenant.headers)
                else:
                    path = rng.choice(["/admin/teams", "/admin/usage", "/admin/jobs?limit=20"])
                    response = await http.get(replica.url + path, headers=admin)
            except httpx.TransportError:
                run.answers[f"{op}:connection-lost"] += 1  # a replica killed under it
                await asyncio.sleep(0.05)
                continue
            run.served += 1
            run.answers[f"{op}:{response.status_code}"] += 1
            if op == "submit" and response.status_code == 200:
                jobs.append(response.json()["job_id"])
                run.last_accepted = time.monotonic()
            elif response.status_code == 429 and op == "submit":
                error = response.json().get("error", {})
                if false_refusal(budgets[tenant.team], error):
                    run.false_refusals.append(error)
            if response.status_code >= 500 and response.status_code not in (502, 503, 504):
                print(f"!! {op} answered {response.status_code}: {response.text[:300]}")


def measure_recovery(run: Run, kind: str, restored_at: float) -> None:
    """Seconds from the database's return to the first accepted submit after it."""

    def wait() -> None:
        deadline = restored_at + 30
        while time.monotonic() < deadline:
            if run.last_accepted >= restored_at:
                run.recoveries.append(
                    {"fault": kind, "seconds": round(run.last_accepted - restored_at, 3)}
                )
                return
            time.sleep(0.005)
        run.recoveries.append({"fault": kind, "seconds": None})

    threading.Thread(target=wait, daemon=True).start()


def inject(
    run: Run, kind: str, database: str, proxy: TcpProxy, upstream: SimulatorProcess, dsn: str
) -> None:
    run.faults[kind] += 1
    if kind == "db_terminate":
        admin_sql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            f"WHERE datname = '{database}' AND pid <> pg_backend_pid()"
        )
    elif kind == "db_refuse":
        admin_sql(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
        admin_sql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            f"WHERE datname = '{database}' AND pid <> pg_backend_pid()"
        )
        time.sleep(1.0)
        admin_sql(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
        measure_recovery(run, kind, time.monotonic())
    elif kind == "net_cut":
        proxy.kill()
        time.sleep(1.0)
        proxy.restart()
        measure_recovery(run, kind, time.monotonic())
    elif kind == "lock_contention":

        async def hold_locks() -> None:
            connection = await asyncpg.connect(dsn)
            try:
                async with connection.transaction():
                    await connection.execute("SELECT * FROM team_balances FOR UPDATE")
                    await asyncio.sleep(1.5)
            finally:
                await connection.close()

        asyncio.run(hold_locks())
    elif kind == "upstream_pause":
        upstream.pause()
        time.sleep(1.0)
        upstream.resume()
    elif kind == "gateway_kill":
        victim = run.replicas[1]
        victim.kill()
        time.sleep(0.5)
        victim.start()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument(
        "--fault-every", type=float, default=None, help="default: seconds/30, at least 4"
    )
    parser.add_argument("--seed", type=int, default=20261201)
    parser.add_argument("--json", type=Path, default=None, help="also write the summary here")
    args = parser.parse_args()
    fault_every = args.fault_every or max(args.seconds / 30, 4.0)
    rng = random.Random(args.seed)
    url = create_postgres_database()
    database = url.rsplit("/", 1)[-1]
    logs = Path(tempfile.mkdtemp(prefix="soak-"))
    started_at = datetime.now(UTC)
    try:
        with (
            SimulatorProcess(logs, "--api-key", UPSTREAM_KEY, "--latency", "0.5") as upstream,
            TcpProxy("127.0.0.1", 5432) as proxy,
        ):
            via_proxy = url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
            env = {
                "GATEWAY_DATABASE_URL": via_proxy,
                "GATEWAY_UPSTREAM_URL": upstream.url,
                "GATEWAY_UPSTREAM_API_KEY": UPSTREAM_KEY,
                "GATEWAY_KEY_PEPPER": PEPPER,
                "GATEWAY_ADMIN_TOKEN": ADMIN,
                "GATEWAY_LOG_LEVEL": "WARNING",
                "GATEWAY_DATABASE_POOL_SIZE": "8",
                "GATEWAY_DATABASE_POOL_TIMEOUT_SECONDS": "1",
                "GATEWAY_RECONCILER_INTERVAL_SECONDS": "2",
                "GATEWAY_RECONCILER_FIRST_CHECK_AFTER_SECONDS": "3",
                "GATEWAY_OUTBOX_DIR": str(logs / "outbox"),
                **as_environment(TIMING),
            }
            replicas = [GatewayProcess(env, logs, f"replica-{n}") for n in range(2)]
            for replica in replicas:
                replica.start()
            budgets: dict[str, int | None] = {}
            tenants = []
            for prefix, budget, cap in [
                ("tight", 15_000_000, None),
                ("roomy", 500_000_000, None),
                ("roomy", 500_000_000, None),
                ("unlimited", None, None),
                ("capped", None, 4),
            ]:
                tenant = make_tenant(
                    url, prefix=prefix, budget_micro_usd=budget, max_concurrent_jobs=cap
                )
                budgets[tenant.team] = budget
                tenants.append(tenant)
            run = Run(rng, replicas, tenants)
            survivor = replicas[0].process
            assert survivor is not None
            time.sleep(1.0)
            figures_start = process_figures(survivor.pid)
            deadline = time.monotonic() + args.seconds

            def faults() -> None:
                for kind in itertools.cycle(FAULTS):
                    if time.monotonic() + fault_every >= deadline:
                        return
                    time.sleep(fault_every)
                    inject(run, kind, database, proxy, upstream, asyncpg_dsn(url))

            injector = threading.Thread(target=faults)
            injector.start()

            async def load() -> None:
                await asyncio.gather(
                    *(client(run, i, deadline, budgets) for i in range(args.clients))
                )

            asyncio.run(load())
            injector.join()
            figures_end = process_figures(survivor.pid)
            for replica in replicas:
                replica.stop()
            # The reconciler finishes what the run left open (re-sends, settlements, releases).
            settle_everything(
                url,
                upstream.url,
                resend_after=float(TIMING["unanswered_submit_resend_after_seconds"]),
                **TIMING,
            )
            differences: int | str
            try:
                books = check_books(url, upstream.url)
                differences, jobs, upstream_jobs = (
                    books.differences,
                    books.jobs,
                    books.upstream_jobs,
                )
                double_billed = 0  # check_books asserts one settlement per job
            except AssertionError as problem:
                differences, jobs, upstream_jobs, double_billed = (
                    f"books do not balance: {problem}"[:500],
                    -1,
                    -1,
                    -1,
                )
            known = {j.upstream_job_id for t in tenants for j in team_ledger(url, t.team).jobs}
            lost = sorted(run.told - known)
    finally:
        drop_postgres_database(url)
    five_hundreds = sum(count for key, count in run.answers.items() if key.endswith(":500"))
    summary = {
        "started_at": started_at.isoformat(),
        "seconds": args.seconds,
        "clients": args.clients,
        "seed": args.seed,
        "requests_served": run.served,
        "answers": dict(sorted(run.answers.items())),
        "faults_injected": dict(run.faults),
        "recovery_after_database_returns_s": run.recoveries,
        "survivor_start": figures_start,
        "survivor_end": figures_end,
        "jobs": jobs,
        "upstream_jobs": upstream_jobs,
        "jobs_accepted_by_clients": len(run.told),
        "jobs_lost": len(lost),
        "double_billed": double_billed,
        "false_refusals": len(run.false_refusals),
        "http_500": five_hundreds,
        "differences": differences,
    }
    print(json.dumps(summary, indent=2))
    RESULTS.mkdir(exist_ok=True)
    stamp = started_at.strftime("%Y%m%dT%H%M%SZ")
    (RESULTS / f"soak-{stamp}.json").write_text(json.dumps(summary, indent=2) + "\n")
    if args.json is not None:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    clean = (
        differences == 0
        and not lost
        and not run.false_refusals
        and five_hundreds == 0
        and all(r["seconds"] is not None for r in run.recoveries)
    )
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
