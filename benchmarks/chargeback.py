"""Chargeback reports on a large ledger: one month of 1,000,000 jobs on PostgreSQL.

Generates the month in SQL (``INSERT ... SELECT generate_series``: jobs, their hold and
settlement entries, the balance rows), then times each report the way ``gateway report
chargeback`` and ``GET /admin/reports/chargeback`` build them, through the same code:

    baseline      SELECT sum(amount) of the month's captures: one scan of the entries, the
                  least any report of the month can cost (ratios are against it)
    csv, json     the report per team (aggregated in SQL)
    cost_center   grouped by cost center
    tag           grouped by the ``project`` tag within each team
    html          with the per-day breakdown and its charts
    focus         the FinOps FOCUS 1.2 export: every price line of every job, streamed

Each is run ``--repeat`` times (the best and the median are printed); the report's total is
checked against the ledger to the micro-dollar. Results also go to
``benchmarks/results/chargeback-<UTC timestamp>.json`` (git-ignored).

    .venv/bin/python benchmarks/chargeback.py                 # 1,000,000 jobs, ~3 minutes
    .venv/bin/python benchmarks/chargeback.py --jobs 100000   # quicker
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import text  # noqa: E402
from sqlalchemy.ext.asyncio import AsyncSession  # noqa: E402

from gateway.config import Settings  # noqa: E402
from gateway.db.engine import create_engine, create_sessionmaker  # noqa: E402
from gateway.db.migrations import upgrade_to_head  # noqa: E402
from gateway.db.session import transaction  # noqa: E402
from gateway.reports.chargeback import ReportQuery, chargeback, parse_group_by  # noqa: E402
from gateway.reports.render import focus_csv_chunks, render_report  # noqa: E402

MONTH = "2026-11"
TEAMS = 40
# Seed rate card (migration 0002): image $0.05, 480p $0.096/s, 720p $0.168/s.
IMAGE_FEE = 50_000
PER_SECOND = {"480p": 96_000, "720p": 168_000}

# One row per job, every figure derived from the job's number ``n`` so the month is the same
# on every run: 10 teams' worth of outcomes, both resolutions, durations 1-15 s, an image on a
# third of the jobs, a project tag on half, submit times spread over the month.
GENERATE_JOBS = """
INSERT INTO jobs (id, team_id, api_key_id, upstream_job_id, state, model, duration_ms,
                  resolution, image_count, estimate_micro_usd, rate_card_version, period,
                  request_id, tags, upstream_http_status, upstream_status, upstream_error_code,
                  check_attempts, needs_review, settled_at, created_at, updated_at)
SELECT 'bench' || lpad(n::text, 12, '0'),
       t.id,
       NULL,
       'up' || n,
       CASE WHEN n % 20 = 0 THEN 'submitted' WHEN n % 7 = 0 THEN 'released' ELSE 'captured' END,
       'grok-imagine-video-1-5',
       d * 1000,
       r,
       img,
       img * CAST(:image_fee AS bigint)
         + d * CASE WHEN r = '720p' THEN CAST(:p720 AS bigint) ELSE CAST(:p480 AS bigint) END,
       'seed-2026-11',
       CAST(:month AS varchar),
       NULL,
       CASE WHEN n % 2 = 0 THEN json_build_object('project', 'p' || (n % 5)) END,
       200,
       CASE WHEN n % 20 = 0 THEN 'processing' WHEN n % 7 = 0 THEN 'failed' ELSE 'completed' END,
       CASE WHEN n % 20 <> 0 AND n % 7 = 0 THEN 'generation_failed'
            WHEN n % 20 <> 0 AND n % 13 = 0 THEN 'content_moderated' END,
       0,
       false,
       CASE WHEN n % 20 = 0 THEN NULL ELSE at + interval '90 seconds' END,
       at,
       at
FROM generate_series(1, CAST(:jobs AS integer)) AS n
CROSS JOIN LATERAL (SELECT 1 + n % 15 AS d,
                           CASE WHEN n % 3 = 0 THEN '720p' ELSE '480p' END AS r,
                           CASE WHEN n % 3 = 1 THEN 1 ELSE 0 END AS img,
                           timestamptz '2026-11-01 00:00:00+00'
                             + (n::double precision / CAST(:jobs AS integer))
                               * interval '29 days 23 hours' AS at) AS f
JOIN (SELECT id, row_number() OVER (ORDER BY id) - 1 AS slot FROM teams) AS t
  ON t.slot = n % CAST(:teams AS integer)
"""

GENERATE_ENTRIES = """
INSERT INTO ledger_entries (job_id, team_id, period, kind, amount_micro_usd, rate_card_version,
                            reason, video_ms, upstream_cost_micro_usd, needs_review, tags,
                            created_at)
SELECT id, team_id, period, 'hold', estimate_micro_usd, rate_card_version, NULL::varchar,
       NULL::bigint, NULL::bigint, false, tags, created_at
FROM jobs
UNION ALL
SELECT id, team_id, period,
       CASE WHEN state = 'captured' THEN 'capture' ELSE 'release' END,
       estimate_micro_usd, rate_card_version,
       CASE WHEN state = 'released' THEN upstream_error_code
            WHEN upstream_error_code = 'content_moderated' THEN 'moderation_blocked'
            ELSE 'completed' END,
       CASE WHEN state = 'captured' THEN duration_ms END,
       NULL, false, tags, settled_at
FROM jobs WHERE state IN ('captured', 'released')
"""

GENERATE_BALANCES = """
INSERT INTO team_balances (team_id, period, budget_micro_usd, held_micro_usd,
                           captured_micro_usd, updated_at)
SELECT team_id, period, NULL,
       sum(CASE WHEN state = 'submitted' THEN estimate_micro_usd ELSE 0 END),
       sum(CASE WHEN state = 'captured' THEN estimate_micro_usd ELSE 0 END),
       now()
FROM jobs GROUP BY team_id, period
"""

BASELINE = """
SELECT coalesce(sum(amount_micro_usd), 0) FROM ledger_entries
WHERE period = :month AND kind = 'capture'
"""


def log(message: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {message}", file=sys.stderr, flush=True)


def database_url_for(admin_url: str, name: str) -> str:
    parts = urlsplit(admin_url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


async def _admin(admin_url: str, statement: str) -> None:
    engine = create_engine(admin_url)
    try:
        async with engine.connect() as connection:
            await connection.execution_options(isolation_level="AUTOCOMMIT")
            await connection.execute(text(statement))
    finally:
        await engine.dispose()


async def generate(url: str, jobs: int) -> None:
    engine = create_engine(url)
    try:
        await upgrade_to_head(engine)
        async with engine.begin() as connection:
            await connection.execute(
                text(
                    "INSERT INTO teams (name, cost_center, monthly_budget_micro_usd, created_at)"
                    " SELECT 'team-' || lpad(n::text, 2, '0'), 'CC-' || (n % 6), NULL, now()"
                    " FROM generate_series(1, CAST(:teams AS integer)) AS n"
                ),
                {"teams": TEAMS},
            )
            started = time.perf_counter()
            await connection.execute(
                text(GENERATE_JOBS),
                {
                    "jobs": jobs,
                    "teams": TEAMS,
                    "month": MONTH,
                    "image_fee": IMAGE_FEE,
                    "p480": PER_SECOND["480p"],
                    "p720": PER_SECOND["720p"],
                },
            )
            log(f"inserted {jobs:,} jobs in {time.perf_counter() - started:.1f} s")
            started = time.perf_counter()
            await connection.execute(text(GENERATE_ENTRIES))
            await connection.execute(text(GENERATE_BALANCES))
            log(f"inserted their ledger entries in {time.perf_counter() - started:.1f} s")
        async with engine.connect() as connection:
            await connection.execution_options(isolation_level="AUTOCOMMIT")
            await connection.execute(text("VACUUM ANALYZE"))
    finally:
        await engine.dispose()


async def timed(
    url: str, repeat: int, work: Callable[[AsyncSession], Awaitable[Any]]
) -> tuple[list[float], Any]:
    """Each run in a fresh engine and transaction, as the CLI runs a report."""
    times, result = [], None
    for _ in range(repeat):
        engine = create_engine(url)
        try:
            started = time.perf_counter()
            async with transaction(create_sessionmaker(engine)) as session:
                result = await work(session)
            times.append(time.perf_counter() - started)
        finally:
            await engine.dispose()
    return times, result


async def measure(url: str, repeat: int) -> dict[str, Any]:
    settings = Settings(_env_file=None, database_url=url)

    async def baseline(session: AsyncSession) -> int:
        return int((await session.execute(text(BASELINE), {"month": MONTH})).scalar_one())

    def report(fmt: str, group_by: str = "team", daily: bool = False) -> Callable[..., Any]:
        query = ReportQuery(month=MONTH, group_by=parse_group_by(group_by), daily=daily)

        async def run(session: AsyncSession) -> str:
            return await render_report(session, query, fmt)  # type: ignore[arg-type]

        return run

    async def focus(session: AsyncSession) -> tuple[int, int]:
        lines = size = 0
        async for chunk in focus_csv_chunks(session, MONTH, settings):
            lines += chunk.count("\n")
            size += len(chunk)
        return lines - 1, size

    async def totals(session: AsyncSession) -> int:
        query = ReportQuery(month=MONTH)
        return (await chargeback(session, query)).totals.captured_micro_usd

    cases: dict[str, Callable[[AsyncSession], Awaitable[Any]]] = {
        "baseline": baseline,
        "csv": report("csv"),
        "json": report("json"),
        "cost_center": report("csv", group_by="cost_center"),
        "tag": report("csv", group_by="tag:project"),
        "html": report("html", daily=True),
        "focus": focus,
    }
    results: dict[str, Any] = {}
    for name, work in cases.items():
        times, result = await timed(url, 1 if name == "focus" else repeat, work)
        results[name] = {"seconds": times, "best": min(times), "median": statistics.median(times)}
        if name == "focus":
            results[name]["rows"], results[name]["bytes"] = result
        log(f"{name:<12} best {min(times):7.3f} s  median {statistics.median(times):7.3f} s")
    _, ledger_total = await timed(url, 1, baseline)
    _, report_total = await timed(url, 1, totals)
    if ledger_total != report_total:
        raise SystemExit(f"report total {report_total} != ledger's captures {ledger_total}")
    results["captured_micro_usd"] = report_total
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--database-url",
        default=os.environ.get(
            "GATEWAY_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
        help="A server to create the scratch database on (it is dropped afterwards).",
    )
    args = parser.parse_args()
    name = f"gw_bench_{secrets.token_hex(6)}"
    url = database_url_for(args.database_url, name)
    asyncio.run(_admin(args.database_url, f'CREATE DATABASE "{name}"'))
    log(f"created database {name}")
    try:
        asyncio.run(generate(url, args.jobs))
        results = asyncio.run(measure(url, args.repeat))
    finally:
        asyncio.run(_admin(args.database_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        log(f"dropped database {name}")

    base = results["baseline"]["median"]
    print(f"\nchargeback for {args.jobs:,} jobs in {MONTH} ({TEAMS} teams), PostgreSQL")
    print(f"{'report':<12} {'best s':>8} {'median s':>9} {'× baseline':>11}")
    for case in ("baseline", "csv", "json", "cost_center", "tag", "html", "focus"):
        figures = results[case]
        ratio = figures["median"] / base
        print(f"{case:<12} {figures['best']:8.3f} {figures['median']:9.3f} {ratio:11.1f}")
    print(f"focus rows: {results['focus']['rows']:,} ({results['focus']['bytes'] / 1e6:.0f} MB)")
    print(f"total captured: {results['captured_micro_usd'] / 1e6:,.6f} USD (= the ledger's)")
    out = ROOT / "benchmarks" / "results"
    out.mkdir(exist_ok=True)
    path = out / f"chargeback-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    record = {
        "jobs": args.jobs,
        "teams": TEAMS,
        "month": MONTH,
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()},
        "results": results,
    }
    path.write_text(json.dumps(record, indent=2))
    print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
