"""A large ledger in bulk SQL (``INSERT ... SELECT generate_series``), not through the API.

Shared by ``chargeback.py`` (one month of 1,000,000 jobs to report on) and ``routes.py`` (the
same ledger under a live gateway, to see whether its hot path slows down as the tables grow).

``fill_ledger`` creates ``teams`` new teams (``<prefix>-01``, ...; in 6 cost centers, no budget)
and, spread over them and over ``[start, start + span)``, ``jobs`` jobs: both resolutions,
1-15 s, an image on a third, a ``project`` tag on half; captured, released (failed),
moderated-and-billed, and 5 % still open. Each gets its hold entry and, once settled, its
capture or release entry (~1.95 entries per job); then the new teams' balance rows. Every
figure is derived from the job's number, so the same arguments give the same ledger. Rows of
other teams already in the database are left alone.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

# Seed rate card (migration 0002): image $0.05, 480p $0.096/s, 720p $0.168/s.
RATE_CARD_VERSION = "seed-2026-11"
IMAGE_FEE = 50_000
PER_SECOND = {"480p": 96_000, "720p": 168_000}

# The teams the ledger is generated for: those named "<prefix>-NN".
_GENERATED_TEAMS = "SELECT id FROM teams WHERE name LIKE CAST(:team_prefix AS varchar) || '-%'"

GENERATE_TEAMS = """
INSERT INTO teams (name, cost_center, monthly_budget_micro_usd, created_at)
SELECT CAST(:team_prefix AS varchar) || '-' || lpad(n::text, 2, '0'), 'CC-' || (n % 6), NULL,
       now()
FROM generate_series(1, CAST(:teams AS integer)) AS n
"""

# One row per job, every figure derived from the job's number ``n``.
GENERATE_JOBS = f"""
INSERT INTO jobs (id, team_id, api_key_id, upstream_job_id, state, model, duration_ms,
                  resolution, image_count, estimate_micro_usd, rate_card_version, period,
                  request_id, tags, upstream_http_status, upstream_status, upstream_error_code,
                  check_attempts, needs_review, settled_at, created_at, updated_at)
SELECT CAST(:job_prefix AS varchar) || lpad(n::text, 12, '0'),
       t.id,
       NULL,
       CAST(:upstream_prefix AS varchar) || n,
       CASE WHEN n % 20 = 0 THEN 'submitted' WHEN n % 7 = 0 THEN 'released' ELSE 'captured' END,
       'grok-imagine-video-1-5',
       d * 1000,
       r,
       img,
       img * CAST(:image_fee AS bigint)
         + d * CASE WHEN r = '720p' THEN CAST(:p720 AS bigint) ELSE CAST(:p480 AS bigint) END,
       CAST(:rate_card_version AS varchar),
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
                           CAST(:start AS timestamptz)
                             + (n::double precision / CAST(:jobs AS integer))
                               * make_interval(secs => CAST(:span_seconds AS double precision))
                             AS at) AS f
JOIN (SELECT id, row_number() OVER (ORDER BY id) - 1 AS slot FROM teams
      WHERE id IN ({_GENERATED_TEAMS})) AS t
  ON t.slot = n % CAST(:teams AS integer)
"""

GENERATE_ENTRIES = f"""
INSERT INTO ledger_entries (job_id, team_id, period, kind, amount_micro_usd, rate_card_version,
                            reason, video_ms, upstream_cost_micro_usd, needs_review, tags,
                            created_at)
SELECT id, team_id, period, 'hold', estimate_micro_usd, rate_card_version, NULL::varchar,
       NULL::bigint, NULL::bigint, false, tags, created_at
FROM jobs WHERE team_id IN ({_GENERATED_TEAMS})
UNION ALL
SELECT id, team_id, period,
       CASE WHEN state = 'captured' THEN 'capture' ELSE 'release' END,
       estimate_micro_usd, rate_card_version,
       CASE WHEN state = 'released' THEN upstream_error_code
            WHEN upstream_error_code = 'content_moderated' THEN 'moderation_blocked'
            ELSE 'completed' END,
       CASE WHEN state = 'captured' THEN duration_ms END,
       NULL, false, tags, settled_at
FROM jobs WHERE state IN ('captured', 'released') AND team_id IN ({_GENERATED_TEAMS})
"""

GENERATE_BALANCES = f"""
INSERT INTO team_balances (team_id, period, budget_micro_usd, held_micro_usd,
                           captured_micro_usd, updated_at)
SELECT team_id, period, NULL,
       sum(CASE WHEN state = 'submitted' THEN estimate_micro_usd ELSE 0 END),
       sum(CASE WHEN state = 'captured' THEN estimate_micro_usd ELSE 0 END),
       now()
FROM jobs WHERE team_id IN ({_GENERATED_TEAMS}) GROUP BY team_id, period
"""


async def fill_ledger(
    connection: AsyncConnection,
    *,
    jobs: int,
    teams: int,
    month: str,
    start: datetime,
    span_seconds: float,
    team_prefix: str = "team",
    job_prefix: str = "bench",
    upstream_prefix: str = "up",
    log: Callable[[str], None] = lambda _: None,
) -> dict[str, int]:
    """Generate the ledger in ``connection``'s transaction (the caller commits); returns the
    counts inserted. ``month`` is the period (``YYYY-MM``) the jobs belong to; ``start`` and
    ``span_seconds`` the window their submit times are spread over (evenly, by number).
    ``job_prefix`` + 12 digits must fit a job id (32 characters) and, like the upstream ids
    (``upstream_prefix`` + the number), be unused."""
    names = {"team_prefix": team_prefix}
    await connection.execute(text(GENERATE_TEAMS), {**names, "teams": teams})
    started = time.perf_counter()
    inserted_jobs = await connection.execute(
        text(GENERATE_JOBS),
        {
            **names,
            "jobs": jobs,
            "teams": teams,
            "job_prefix": job_prefix,
            "upstream_prefix": upstream_prefix,
            "month": month,
            "rate_card_version": RATE_CARD_VERSION,
            "start": start,
            "span_seconds": float(span_seconds),
            "image_fee": IMAGE_FEE,
            "p480": PER_SECOND["480p"],
            "p720": PER_SECOND["720p"],
        },
    )
    log(f"inserted {inserted_jobs.rowcount:,} jobs in {time.perf_counter() - started:.1f} s")
    started = time.perf_counter()
    entries = await connection.execute(text(GENERATE_ENTRIES), names)
    await connection.execute(text(GENERATE_BALANCES), names)
    log(
        f"inserted their {entries.rowcount:,} ledger entries in "
        f"{time.perf_counter() - started:.1f} s"
    )
    return {"teams": teams, "jobs": inserted_jobs.rowcount, "entries": entries.rowcount}


async def vacuum_analyze(connection: AsyncConnection) -> None:
    """``VACUUM ANALYZE`` (outside a transaction): fresh statistics and visibility map."""
    await connection.execution_options(isolation_level="AUTOCOMMIT")
    await connection.execute(text("VACUUM ANALYZE"))
