"""How fast is the portal's jobs page on a 1,000,000-job ledger? (issue 16: < 100 ms p95)

What is measured
    The wall time of ``GET /portal/jobs`` as a signed-in browser sees it (one connection,
    sequential requests, HTML included), against a real ``gateway serve`` process (one worker,
    PostgreSQL), for the team with the most jobs: the first page, deep pages reached by
    following the "older jobs" cursor, and each filter (state, project, tag, day, and all of
    them at once), p50/p95/max per scenario.

The ledger
    ``ledger_fill.py``'s bulk SQL: ``--jobs`` jobs (default 1,000,000) of last month spread
    over ``--teams`` teams (default 4: 250,000 jobs for the measured team), their ~1.95
    million ledger entries, then a third of the measured team's jobs charged to each of two
    projects; ``VACUUM ANALYZE``. With ``--database-url`` pointing at a database filled by an
    earlier run (``--keep``) the fill is skipped.

    .venv/bin/python benchmarks/portal_jobs.py [--jobs 1000000] [--teams 4] [--requests 100]
        [--keep] [--reuse-database URL] [--explain]

The machine is shared and noisy: absolute figures drift between runs; compare scenarios
within one run. Every answer must be 200; anything else stops the run (exit 1).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlencode

import httpx
from harness import (
    BENCH_DIR,
    BenchmarkError,
    ManagedProcess,
    free_port,
    gateway_cli,
    gateway_command,
    gateway_env,
    log,
    run_cleaned_up,
    scratch_database,
)
from ledger_fill import fill_ledger, vacuum_analyze
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

ROOT = BENCH_DIR.parent
TEAM_PREFIX = "portal"
TEAM = f"{TEAM_PREFIX}-01"
PROJECTS = ("p-north", "p-south")
NEXT = re.compile(r'<a href="([^"]+)" id="next-page">')


def _last_month(now: datetime) -> tuple[str, datetime, float]:
    first = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    start = (first - timedelta(days=1)).replace(day=1)
    return f"{start.year:04d}-{start.month:02d}", start, (first - start).total_seconds()


def _asyncpg(url: str) -> str:
    return url.replace("postgresql://", "postgresql+asyncpg://", 1)


async def _fill(url: str, jobs: int, teams: int) -> None:
    month, start, span = _last_month(datetime.now(UTC))
    engine = create_async_engine(_asyncpg(url))
    try:
        async with engine.begin() as connection:
            await fill_ledger(
                connection,
                jobs=jobs,
                teams=teams,
                month=month,
                start=start,
                span_seconds=span,
                team_prefix=TEAM_PREFIX,
                log=log,
            )
        async with engine.connect() as connection:
            await vacuum_analyze(connection)
    finally:
        await engine.dispose()


async def _assign_projects(url: str) -> None:
    """A third of the team's jobs to each project (``ledger_fill`` charges none to any)."""
    engine = create_async_engine(_asyncpg(url))
    try:
        async with engine.begin() as connection:
            ids = (
                await connection.execute(
                    text(
                        "SELECT p.id FROM projects p JOIN teams t ON t.id = p.team_id "
                        "WHERE t.name = :team ORDER BY p.name"
                    ),
                    {"team": TEAM},
                )
            ).scalars()
            north, south = list(ids)
            started = time.perf_counter()
            await connection.execute(
                text(
                    "UPDATE jobs SET project_id = CASE right(id, 12)::bigint % 3 "
                    "WHEN 0 THEN CAST(:north AS bigint) WHEN 1 THEN CAST(:south AS bigint) END "
                    "WHERE team_id = (SELECT id FROM teams WHERE name = :team)"
                ),
                {"north": north, "south": south, "team": TEAM},
            )
            log(f"charged the team's jobs to its projects in {time.perf_counter() - started:.1f} s")
        async with engine.connect() as connection:
            await vacuum_analyze(connection)
    finally:
        await engine.dispose()


async def _explain(url: str, team_id_sql: str, where: str) -> str:
    engine = create_async_engine(_asyncpg(url))
    try:
        async with engine.connect() as connection:
            plan = await connection.execute(
                text(
                    "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) SELECT * FROM jobs "
                    f"WHERE team_id = ({team_id_sql}) {where} "
                    "ORDER BY created_at DESC, id DESC LIMIT 51"
                )
            )
            return "\n".join(row[0] for row in plan)
    finally:
        await engine.dispose()


def _sign_in(client: httpx.Client, key: str) -> None:
    form = client.get("/portal/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
    if token is None:
        raise BenchmarkError("the sign-in form has no CSRF field")
    answer = client.post("/portal/login", data={"csrf_token": token.group(1), "api_key": key})
    if answer.status_code != 303:
        raise BenchmarkError(f"sign-in answered {answer.status_code}")


def _timed(client: httpx.Client, url: str) -> tuple[float, str]:
    started = time.perf_counter()
    answer = client.get(url)
    elapsed = (time.perf_counter() - started) * 1000
    if answer.status_code != 200:
        raise BenchmarkError(f"GET {url} answered {answer.status_code}: {answer.text[:300]}")
    return elapsed, answer.text


def _rows(html: str) -> int:
    return html.count("<tr data-job-id=")


def _measure(client: httpx.Client, url: str, requests: int) -> tuple[list[float], int]:
    for _ in range(5):  # warm-up: connection, statement caches
        _timed(client, url)
    samples = []
    rows = 0
    for _ in range(requests):
        elapsed, html = _timed(client, url)
        samples.append(elapsed)
        rows = _rows(html)
    return samples, rows


def _deep_pages(client: httpx.Client, pages: int) -> tuple[list[float], str]:
    """Follow the next-page link ``pages`` times, timing each page; returns the last URL."""
    samples = []
    url = "/portal/jobs"
    for _ in range(pages):
        elapsed, html = _timed(client, url)
        samples.append(elapsed)
        found = NEXT.search(html)
        if found is None:
            break
        url = found.group(1).replace("&amp;", "&")
    return samples, url


def _summary(name: str, samples: list[float], rows: int) -> dict[str, object]:
    ordered = sorted(samples)
    p95 = ordered[max(int(len(ordered) * 0.95) - 1, 0)]
    return {
        "scenario": name,
        "requests": len(samples),
        "rows": rows,
        "p50_ms": round(statistics.median(ordered), 1),
        "p95_ms": round(p95, 1),
        "max_ms": round(ordered[-1], 1),
    }


def run(args: argparse.Namespace, stack: contextlib.ExitStack) -> int:
    work_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="portal-bench-")))
    if args.reuse_database:
        url = args.reuse_database
    else:
        url = stack.enter_context(scratch_database(args.admin_url)) if not args.keep else None
        if url is None:  # --keep: a database of its own that outlives the run
            from harness import _admin, database_url_for

            name = f"gw_bench_portal_{int(time.time())}"
            asyncio.run(_admin(args.admin_url, f'CREATE DATABASE "{name}"'))
            url = database_url_for(args.admin_url, name)
            log(f"created database {name} (kept: reuse it with --reuse-database {url})")
    env = gateway_env(url, "http://127.0.0.1:9")  # the jobs page never calls the upstream
    gateway_cli(env, ROOT, "db", "upgrade")
    if not args.reuse_database:
        asyncio.run(_fill(url, args.jobs, args.teams))
        for project in PROJECTS:
            gateway_cli(env, ROOT, "projects", "create", "--team", TEAM, project)
        asyncio.run(_assign_projects(url))
    issued = json.loads(gateway_cli(env, ROOT, "keys", "create", "--team", TEAM, "--json"))
    port = free_port()
    server = ManagedProcess(
        "gateway",
        [*gateway_command(), "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        cwd=ROOT,
        log_dir=work_dir,
    )
    stack.callback(server.stop)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(base + "/readyz", timeout=2).status_code == 200:
                break
        if time.monotonic() > deadline or not server.running():
            raise BenchmarkError(f"the gateway did not become ready (log: {server.log_path})")
        time.sleep(0.2)
    _, start, _ = _last_month(datetime.now(UTC))
    mid_day = (start + timedelta(days=14)).strftime("%Y-%m-%d")
    scenarios = {
        "first page": {},
        "state=submitted (5 %)": {"state": "submitted"},
        "state=released (~13 %)": {"state": "released"},
        "state=pending (none)": {"state": "pending"},
        f"project={PROJECTS[0]} (1/3)": {"project": PROJECTS[0]},
        "tag project=p1 (1/10)": {"tag": "project=p1"},
        "tag project=nosuch (none)": {"tag": "project=nosuch"},
        f"day={mid_day}": {"day": mid_day},
        "state+project+tag+day": {
            "state": "captured",
            "project": PROJECTS[1],
            "tag": "project=p2",
            "day": mid_day,
        },
    }
    results = []
    with httpx.Client(base_url=base, timeout=30, follow_redirects=False) as client:
        _sign_in(client, issued["key"])
        for name, params in scenarios.items():
            page_url = "/portal/jobs" + (f"?{urlencode(params)}" if params else "")
            samples, rows = _measure(client, page_url, args.requests)
            results.append(_summary(name, samples, rows))
            log(f"{name}: p95 {results[-1]['p95_ms']} ms")
        samples, deep_url = _deep_pages(client, args.deep_pages)
        deep = len(samples)
        results.append(_summary(f"pages 1-{deep} by cursor", samples, 50))
        samples, rows = _measure(client, deep_url, args.requests)
        results.append(_summary(f"page {deep + 1} again (its cursor)", samples, rows))
    if args.explain:
        team_id = f"SELECT id FROM teams WHERE name = '{TEAM}'"
        for where in ("", "AND state = 'pending'", "AND tags ->> 'project' = 'nosuch'"):
            plan = asyncio.run(_explain(url, team_id, where))
            log(f"--- EXPLAIN {where or '(first page)'}\n{plan}")
    _print_table(results, args)
    return 0


def _print_table(results: list[dict[str, object]], args: argparse.Namespace) -> None:
    print(
        f"\nGET /portal/jobs, {args.jobs:,} jobs over {args.teams} teams "
        f"(the measured team: ~{args.jobs // args.teams:,}), one connection, sequential"
    )
    header = (
        f"{'scenario':<36} {'requests':>8} {'rows':>5} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r['scenario']!s:<36} {r['requests']!s:>8} {r['rows']!s:>5} "
            f"{r['p50_ms']!s:>8} {r['p95_ms']!s:>8} {r['max_ms']!s:>8}"
        )
    worst = max(float(str(r["p95_ms"])) for r in results)
    print(f"\nworst p95: {worst} ms (target < 100 ms)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--teams", type=int, default=4)
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--deep-pages", type=int, default=200)
    parser.add_argument("--keep", action="store_true", help="keep the filled database")
    parser.add_argument("--reuse-database", help="a database an earlier --keep run filled")
    parser.add_argument("--explain", action="store_true", help="print the query plans")
    args = parser.parse_args()
    return run_cleaned_up(lambda stack: run(args, stack))


if __name__ == "__main__":
    sys.exit(main())
