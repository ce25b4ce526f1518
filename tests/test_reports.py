"""The monthly chargeback on a generated month (thousands of jobs across teams, outcomes, both
resolutions, jobs crossing month boundaries, a rate change mid-month): totals equal the ledger
to the micro-dollar in every format, CSV and JSON read back exactly, tags group, FOCUS rows add
up, and the HTML page renders in headless Chromium without loading anything."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from collections.abc import Iterator
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.core.usd import format_usd, parse_usd
from gateway.ledger.models import LedgerEntry
from gateway.reports.chargeback import ChargebackReport, ReportQuery, chargeback
from gateway.reports.focus import COLUMNS, MANDATORY, focus_rows
from gateway.reports.formats import to_csv, to_json
from gateway.reports.html import dollars, to_html
from tests.support.database import create_postgres_database, drop_postgres_database, migrate
from tests.support.ledger_generator import MID_MONTH_VERSION, Expected, generate
from tests.support.tenants import in_session

MONTH = "2026-11"


def build(url: str, jobs: int, seed: int) -> tuple[list[str], Expected]:
    return in_session(url, lambda session: generate(session, jobs=jobs, seed=seed))


@pytest.fixture(scope="module")
def postgres_month(postgres_url: str) -> Iterator[tuple[str, list[str], Expected]]:
    url = create_postgres_database()
    try:
        names, expected = build(url, jobs=3000, seed=11)
        yield url, names, expected
    finally:
        drop_postgres_database(url)


@pytest.fixture(scope="module")
def sqlite_month(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, list[str], Expected]:
    url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('reports') / 'month.db'}"
    migrate(url)
    names, expected = build(url, jobs=600, seed=12)
    return url, names, expected


@pytest.fixture(params=["postgres", "sqlite"])
def month(request: pytest.FixtureRequest) -> tuple[str, list[str], Expected]:
    value: tuple[str, list[str], Expected] = request.getfixturevalue(f"{request.param}_month")
    return value


def report(url: str, **query: Any) -> ChargebackReport:
    return in_session(url, lambda s: chargeback(s, ReportQuery(**{"month": MONTH, **query})))


def ledger_captures(url: str, month: str) -> int:
    async def _sum(session: AsyncSession) -> int:
        stmt = select(func.coalesce(func.sum(LedgerEntry.amount_micro_usd), 0)).where(
            LedgerEntry.kind == "capture", LedgerEntry.period == month
        )
        return int((await session.execute(stmt)).scalar_one())

    return in_session(url, _sum)


def test_totals_equal_the_ledgers_captures_to_the_micro_dollar(
    month: tuple[str, list[str], Expected],
) -> None:
    url, names, expected = month
    result = report(url)
    assert result.totals.captured_micro_usd == ledger_captures(url, MONTH)
    assert result.totals.captured_micro_usd == sum(expected.captured.values())
    assert result.total_due_micro_usd == result.totals.captured_micro_usd  # nothing closed
    assert result.totals.held_micro_usd == sum(expected.held.values()) > 0
    rows = {row.team: row for row in result.rows}
    assert set(rows) == set(names)
    for name in names:
        row = rows[name]
        assert row.captured_micro_usd == expected.captured[name]
        assert row.held_micro_usd == expected.held[name]
        assert (
            row.jobs_submitted,
            row.jobs_billed,
            row.jobs_billed_moderated,
            row.jobs_released,
            row.jobs_open,
        ) == (
            expected.jobs[name],
            expected.billed[name],
            expected.moderated[name],
            expected.released[name],
            expected.open[name],
        )
        assert row.images == expected.images[name]
        assert {r: ms for r, ms in row.video_ms.items() if ms} == {
            r: ms for r, ms in expected.video_ms[name].items() if ms
        }
        assert row.rate_card_versions == sorted(expected.versions[name])


def test_each_job_counts_in_exactly_one_month(month: tuple[str, list[str], Expected]) -> None:
    url, _, _ = month
    submitted = sum(
        report(url, month=m).totals.jobs_submitted for m in ("2026-10", "2026-11", "2026-12")
    )
    total_jobs = 3000 if "postgresql" in url else 600
    assert submitted == total_jobs
    for m in ("2026-10", "2026-11", "2026-12"):
        assert report(url, month=m).totals.captured_micro_usd == ledger_captures(url, m)


def test_rate_change_mid_month_shows_both_versions(month: tuple[str, list[str], Expected]) -> None:
    url, _, _ = month
    versions = report(url).totals.rate_card_versions
    assert versions == sorted(["seed-2026-11", MID_MONTH_VERSION])


def test_other_groupings_add_up(month: tuple[str, list[str], Expected]) -> None:
    url, names, expected = month
    total = report(url).totals.captured_micro_usd
    by_cost_center = report(url, group_by="cost_center")
    assert sum(r.captured_micro_usd for r in by_cost_center.rows) == total
    assert {r.cost_center for r in by_cost_center.rows} == {"CC-0", "CC-1"}
    by_project = report(url, group_by="tag:project")
    assert {
        (r.team, r.tag): r.captured_micro_usd for r in by_project.rows if r.captured_micro_usd
    } == {k: v for k, v in expected.by_project.items() if v}
    team = names[0]
    team_row = next(r for r in report(url).rows if r.team == team)
    project_rows = [r for r in by_project.rows if r.team == team]
    assert {r.tag for r in project_rows} == {"atlas", "zephyr", "(untagged)"}
    assert sum(r.captured_micro_usd for r in project_rows) == team_row.captured_micro_usd
    only_atlas = report(url, tag=("project", "atlas"))
    assert only_atlas.totals.captured_micro_usd == sum(
        v for (_, project), v in expected.by_project.items() if project == "atlas"
    )
    one_team = report(url, team=team)
    assert [r.team for r in one_team.rows] == [team]
    daily = report(url, daily=True)
    assert sum(d.captured_micro_usd for d in daily.daily) == total
    assert {d.day[:7] for d in daily.daily} == {MONTH}


def test_csv_reads_back_to_the_same_figures(month: tuple[str, list[str], Expected]) -> None:
    url, _, _ = month
    result = report(url)
    rows = list(csv.DictReader(io.StringIO(to_csv(result))))
    charges = [r for r in rows if r["line"] == "charge"]
    (total,) = [r for r in rows if r["line"] == "total"]
    assert sum(parse_usd(r["captured_usd"]) for r in charges) == result.totals.captured_micro_usd
    assert parse_usd(total["captured_usd"]) == result.total_due_micro_usd
    assert parse_usd(total["held_usd"]) == result.totals.held_micro_usd
    for line, row in zip(charges, result.rows, strict=True):
        assert line["team"] == row.team
        assert parse_usd(line["captured_usd"]) == row.captured_micro_usd
        assert Decimal(line["video_seconds_720p"]) * 1000 == row.video_ms.get("720p", 0)
        assert len(line["captured_usd"].split(".")[1]) == 6  # no float artefacts


def test_json_follows_its_documented_schema(month: tuple[str, list[str], Expected]) -> None:
    url, _, _ = month
    schema = json.loads(
        resources.files("gateway.reports").joinpath("chargeback.schema.json").read_text()
    )
    for query in ({}, {"group_by": "cost_center"}, {"group_by": "tag:project", "daily": True}):
        document = to_json(report(url, **query))
        jsonschema.Draft202012Validator(schema).validate(document)
    document = to_json(report(url))
    assert document["month"] == MONTH and set(document) >= {"month", "rows", "totals"}
    assert {"team", "cost_center", "captured_usd"} <= set(document["rows"][0])
    assert parse_usd(document["totals"]["captured_usd"]) == ledger_captures(url, MONTH)


def focus(url: str, month: str = MONTH) -> list[dict[str, str]]:
    async def _rows(session: AsyncSession) -> list[dict[str, str]]:
        return [row async for row in focus_rows(session, month)]

    return in_session(url, _rows)


def test_focus_export_has_every_column_and_adds_up(month: tuple[str, list[str], Expected]) -> None:
    url, _, expected = month
    rows = focus(url)
    assert (
        len(rows) == expected.captured_jobs + expected.captured_with_image
    )  # a row per price line
    assert all(set(row) == set(COLUMNS) for row in rows)
    for row in rows:
        for column in MANDATORY:
            assert column in row
            assert row[column] != "" or column == "ChargeClass"
    assert sum(parse_usd(r["BilledCost"]) for r in rows) == report(url).totals.captured_micro_usd
    images = [r for r in rows if r["PricingUnit"] == "Images"]
    seconds = [r for r in rows if r["PricingUnit"] == "Seconds"]
    assert len(images) == expected.captured_with_image
    assert {r["ListUnitPrice"] for r in images} == {"0.050000", "0.040000"}  # both rate cards
    assert all(r["BillingCurrency"] == "USD" and r["ChargeCategory"] == "Usage" for r in rows)
    sample = seconds[0]
    assert Decimal(sample["PricingQuantity"]) > 0 and sample["SkuId"].endswith(
        sample["x_Resolution"]
    )
    assert json.loads(sample["Tags"]) in ({}, {"project": "atlas"}, {"project": "zephyr"})
    assert sample["BillingPeriodStart"] == "2026-11-01T00:00:00Z"
    assert sample["BillingPeriodEnd"] == "2026-12-01T00:00:00Z"


def test_large_reports_are_aggregated_in_the_database(postgres_month: Any) -> None:
    """The report issues a fixed handful of queries whatever the number of jobs."""
    url, _, _ = postgres_month
    from sqlalchemy import event

    from gateway.db.engine import create_engine, create_sessionmaker
    from gateway.db.session import transaction

    async def _count() -> tuple[int, int]:
        engine = create_engine(url)
        statements: list[str] = []
        event.listen(
            engine.sync_engine, "before_cursor_execute", lambda *args: statements.append(args[2])
        )
        async with transaction(create_sessionmaker(engine)) as session:
            result = await chargeback(session, ReportQuery(month=MONTH, daily=True))
        await engine.dispose()
        return len(statements), result.totals.jobs_submitted

    statements, jobs = asyncio.run(_count())
    assert jobs > 1000
    assert statements <= 6


def test_html_report_renders_in_chromium_without_external_resources(
    postgres_month: Any, tmp_path: Path
) -> None:
    from tests.support.browser import render_in_chromium

    url, names, _ = postgres_month
    page = to_html(report(url, daily=True))
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in page
    path = tmp_path / "chargeback.html"
    path.write_text(page)
    seen = render_in_chromium(path, tmp_path / "chargeback.png")
    assert seen["resources"] == []  # nothing fetched: no scripts, styles, fonts or images
    assert seen["spend_bars"] == len(names)
    assert seen["daily_bars"] > 20
    assert seen["table_rows"] == len(names)
    assert seen["total_due"].startswith("$")
    assert (tmp_path / "chargeback.png").stat().st_size > 10_000


def test_counts_in_html_match_the_report(postgres_month: Any) -> None:
    url, _, _ = postgres_month
    result = report(url)
    page = to_html(result)
    assert f'id="total-due">{dollars(result.total_due_micro_usd)}<' in page
    assert f'id="total-due-exact">{format_usd(result.total_due_micro_usd)}<' in page
    table = page.split('<table id="chargeback">', 1)[1].split("</table>", 1)[0]
    assert table.split("<tbody>")[1].split("</tbody>")[0].count("<tr>") == len(result.rows)
    for row in result.rows:
        assert f'<td class="text group">{row.team}</td>' in table
        assert f'<td class="num">{row.jobs_submitted:,}</td>' in table
        assert f'<td class="num">{dollars(row.captured_micro_usd)}</td>' in table
