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

from ledger_fill import fill_ledger, vacuum_analyze  # noqa: E402
from sqlalchemy import text  # noqa: E402
from sqlalchemy.ext.asyncio import AsyncSession  # noqa: E402

from gateway.config import Settings  # noqa: E402
from gateway.db.engine import create_engine, create_sessionmaker  # noqa: E402
from gateway.db.migrations import upgrade_to_head  # noqa: E402
from gateway.db.session import transaction  # noqa: E402
from gateway.reports.chargeback import ReportQuery, chargeback, parse_group_by  # noqa: E402
from gateway.reports.render import focus_csv_chunks, render_report  # noqa: E402

MONTH = "2026-11"
MONTH_START = datetime(2026, 11, 1, tzinfo=UTC)
MONTH_SPAN_SECONDS = (29 * 24 + 23) * 3600  # submit times spread over 29 days 23 hours
TEAMS = 40
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
    """The month, in SQL (``ledger_fill.py``): 40 teams in 6 cost centers, their jobs, entries
    and balance rows; then ``VACUUM ANALYZE``."""
    engine = create_engine(url)
    try:
        await upgrade_to_head(engine)
        async with engine.begin() as connection:
            await fill_ledger(
                connection,
                jobs=jobs,
                teams=TEAMS,
                month=MONTH,
                start=MONTH_START,
                span_seconds=MONTH_SPAN_SECONDS,
                log=log,
            )
        async with engine.connect() as connection:
            await vacuum_analyze(connection)
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
