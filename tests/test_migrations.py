"""Migrations: the same scripts on Postgres and SQLite, up and down, and rows written under
0001 carried into the ledger by 0002."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from alembic import command
from sqlalchemy import Connection, text

from gateway.db.engine import create_engine
from gateway.db.migrations import alembic_config, schema_is_current
from tests.support.database import create_postgres_database, drop_postgres_database


@pytest.fixture(params=["postgres", "sqlite"])
def empty_database(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    if request.param == "postgres":
        request.getfixturevalue("postgres_url")  # skips (or fails in CI) without a server
        url = create_postgres_database(migrated=False)
        yield url
        drop_postgres_database(url)
    else:
        yield f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('mig') / 'm.db'}"


def migrate_to(url: str, revision: str, *, down: bool = False) -> None:
    async def _run() -> None:
        engine = create_engine(url)

        def _apply(connection: Connection) -> None:
            config = alembic_config(connection)
            if down:
                command.downgrade(config, revision)
            else:
                command.upgrade(config, revision)

        async with engine.begin() as connection:
            await connection.run_sync(_apply)
        await engine.dispose()

    asyncio.run(_run())


def execute(url: str, *statements: str) -> list[tuple[object, ...]]:
    async def _run() -> list[tuple[object, ...]]:
        engine = create_engine(url)
        rows: list[tuple[object, ...]] = []
        async with engine.begin() as connection:
            for statement in statements:
                result = await connection.execute(text(statement))
                if result.returns_rows:
                    rows = [tuple(r) for r in result]
        await engine.dispose()
        return rows

    return asyncio.run(_run())


def test_0001_rows_are_carried_into_the_ledger(empty_database: str) -> None:
    url = empty_database
    migrate_to(url, "0001")
    now = "'2026-11-20 10:00:00+00:00'"
    execute(
        url,
        "INSERT INTO teams (id, name, monthly_budget_micro_usd, created_at) "
        f"VALUES (1, 'legacy', 2000000, {now})",
        f"INSERT INTO api_keys (id, team_id, secret_hash, created_at) VALUES ('k1', 1, 'h', {now})",
        *[
            "INSERT INTO jobs (id, team_id, upstream_job_id, state, model, duration_ms, "
            "resolution, image_count, estimate_micro_usd, rate_card_version, created_at, "
            "updated_at) VALUES "
            f"('{job_id}', 1, '{upstream}', '{state}', 'grok-imagine-video-1-5', 10000, '720p', 0, "
            f"1680000, 'seed-2026-11', {now}, {now})"
            for job_id, upstream, state in (
                ("j1", "up1", "submitted"),
                ("j2", "up2", "rejected"),
                ("j3", "up3", "submitted"),
            )
        ],
    )
    migrate_to(url, "head")
    assert asyncio.run(_current(url))
    states = execute(url, "SELECT id, state, period FROM jobs ORDER BY id")
    assert states == [
        ("j1", "submitted", "2026-11"),
        ("j2", "released", "2026-11"),
        ("j3", "submitted", "2026-11"),
    ]
    holds = execute(
        url, "SELECT job_id, kind, amount_micro_usd FROM ledger_entries ORDER BY job_id"
    )
    assert holds == [("j1", "hold", 1680000), ("j3", "hold", 1680000)]
    # Two open holds exceed the 2.00 budget: the period's budget is raised to what is held,
    # so the CHECK holds and nothing more can be spent this month.
    balance = execute(
        url,
        "SELECT period, budget_micro_usd, held_micro_usd, captured_micro_usd FROM team_balances",
    )
    assert balance == [("2026-11", 3360000, 3360000, 0)]
    versions = execute(url, "SELECT model, version FROM rate_cards")
    assert versions == [("grok-imagine-video-1-5", "seed-2026-11")]


def test_downgrade_and_upgrade_again(empty_database: str) -> None:
    url = empty_database
    migrate_to(url, "head")
    migrate_to(url, "base", down=True)
    assert execute(url, "SELECT COUNT(*) FROM alembic_version") == [(0,)]
    migrate_to(url, "head")
    assert asyncio.run(_current(url))


async def _current(url: str) -> bool:
    engine = create_engine(url)
    try:
        return await schema_is_current(engine)
    finally:
        await engine.dispose()


def test_0006_freezes_months_closed_earlier_at_their_closing_time(empty_database: str) -> None:
    """Months closed before entry marks existed stay frozen as they were: at the last entry
    recorded up to their closing time."""
    url = empty_database
    migrate_to(url, "0005")
    at = "'2026-10-{day} 10:00:00+00:00'".format
    execute(
        url,
        f"INSERT INTO teams (id, name, created_at) VALUES (1, 'old', {at(day='01')})",
        *[
            "INSERT INTO jobs (id, team_id, upstream_job_id, state, model, duration_ms, "
            "resolution, image_count, estimate_micro_usd, rate_card_version, period, "
            "check_attempts, needs_review, created_at, updated_at) VALUES "
            f"('{job}', 1, 'up-{job}', 'submitted', 'grok-imagine-video-1-5', 10000, '720p', 0, "
            f"1680000, 'seed-2026-11', '2026-10', 0, false, {at(day='02')}, {at(day='02')})"
            for job in ("j1", "j2")
        ],
        *[
            "INSERT INTO ledger_entries (id, job_id, team_id, period, kind, amount_micro_usd, "
            f"rate_card_version, needs_review, created_at) VALUES ({entry_id}, '{job}', 1, "
            f"'2026-10', '{kind}', 1680000, 'seed-2026-11', false, {at(day=day)})"
            for entry_id, job, kind, day in (
                (1, "j1", "hold", "02"),
                (2, "j1", "capture", "03"),
                (3, "j2", "hold", "20"),
            )
        ],
        "INSERT INTO closed_periods (period, closed_at, closed_by) "
        f"VALUES ('2026-09', {at(day='10')}, 'finance')",
    )
    migrate_to(url, "head")
    assert execute(url, "SELECT period, last_entry_id FROM closed_periods") == [("2026-09", 2)]
