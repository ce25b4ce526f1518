"""Finance flows end to end: closing a month (frozen, later entries become corrections), the
chargeback over the admin API and the CLI, cost-allocation tags from the HTTP header, and
reconciling the ledger with the upstream's own usage export (including injected errors)."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import subprocess
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.audit.service import Actor
from gateway.core.clock import utcnow
from gateway.core.periods import month_bounds
from gateway.core.usd import parse_usd
from gateway.db.engine import create_engine, create_sessionmaker
from gateway.db.session import transaction
from gateway.errors import Conflict, InvalidRequest
from gateway.jobs.models import Job, JobState
from gateway.ledger import settlement
from gateway.ledger.closing import close_period
from gateway.ledger.holds import place_hold
from gateway.ledger.quotas import TeamQuota
from gateway.reports import reconciliation
from gateway.reports.chargeback import ReportQuery, chargeback
from gateway.reports.focus import focus_rows
from gateway.reports.formats import to_csv, to_json
from gateway.tenancy import service as tenancy
from tests.support.api import submit
from tests.support.commands import run_gateway
from tests.support.database import (
    admin_sql,
    create_postgres_database,
    drop_postgres_database,
    execute_sql,
)
from tests.support.jobs import pending_job
from tests.support.ledger import team_ledger
from tests.support.ledger_generator import generate
from tests.support.savepoint import SavepointDatabase
from tests.support.servers import StartGateway
from tests.support.simulator import UPSTREAM_KEY, SimulatorProbe
from tests.support.tenants import PEPPER, Tenant, in_session, make_tenant

ACTOR = Actor("finance-test")
ADMIN = "admin-token-for-finance-0123456789"


@pytest.fixture
def fresh_db(postgres_url: str) -> Iterator[str]:
    url = create_postgres_database()
    yield url
    drop_postgres_database(url)


async def _hold(session: AsyncSession, team: TeamQuota, created: datetime, amount: int) -> Job:
    job = pending_job(
        team.team_id,
        amount,
        period=created.strftime("%Y-%m"),
        at=created,
        upstream_job_id=f"up_{uuid.uuid4().hex}",
    )
    await place_hold(session, team, job, policy="unlimited", now=created)
    return job


@pytest.mark.fast
def test_closing_a_month_freezes_it_and_later_entries_become_corrections(
    postgres_db: SavepointDatabase,
) -> None:
    db = postgres_db

    async def setup(session: AsyncSession) -> tuple[Job, Job]:
        team = await tenancy.create_team(session, "closers", actor=ACTOR, cost_center="CC-9")
        quota = TeamQuota(team.id, None, None)
        early = await _hold(session, quota, datetime(2026, 10, 5, tzinfo=UTC), 1_680_000)
        capture = settlement.SettlementPlan(JobState.CAPTURED, 1_680_000, reason="completed")
        await settlement.apply_settlement(
            session, early, capture, now=datetime(2026, 10, 5, 1, tzinfo=UTC)
        )
        late = await _hold(session, quota, datetime(2026, 10, 20, tzinfo=UTC), 960_000)
        return early, late

    _, late = in_session(db, setup)
    in_session(db, lambda s: close_period(s, "2026-10", actor=ACTOR, now=utcnow()))
    with pytest.raises(Conflict):
        in_session(db, lambda s: close_period(s, "2026-10", actor=ACTOR, now=utcnow()))
    with pytest.raises(InvalidRequest):
        in_session(
            db, lambda s: close_period(s, utcnow().strftime("%Y-%m"), actor=ACTOR, now=utcnow())
        )

    october_before = in_session(db, lambda s: chargeback(s, ReportQuery(month="2026-10")))
    # The October job settles now, after the close: the closed month must not change.
    capture = settlement.SettlementPlan(JobState.CAPTURED, 960_000, reason="completed")
    in_session(db, lambda s: settlement.apply_settlement(s, late, capture, now=utcnow()))
    october = in_session(db, lambda s: chargeback(s, ReportQuery(month="2026-10")))
    assert october.closed_at is not None
    assert to_json(october)["rows"] == to_json(october_before)["rows"]
    assert (october.totals.captured_micro_usd, october.totals.held_micro_usd) == (
        1_680_000,
        960_000,
    )

    this_month = utcnow().strftime("%Y-%m")
    current = in_session(db, lambda s: chargeback(s, ReportQuery(month=this_month)))
    assert [(c.original_period, c.kind, c.amount_micro_usd) for c in current.corrections] == [
        ("2026-10", "capture", 960_000)
    ]
    assert current.total_due_micro_usd == current.totals.captured_micro_usd + 960_000
    lines = list(csv.DictReader(io.StringIO(to_csv(current))))
    assert [
        (r["line"], r["original_period"], r["captured_usd"])
        for r in lines
        if r["line"] == "correction"
    ] == [("correction", "2026-10", "0.960000")]

    async def focus(session: AsyncSession) -> list[dict[str, str]]:
        return [row async for row in focus_rows(session, this_month)]

    corrections = [r for r in in_session(db, focus) if r["ChargeClass"] == "Correction"]
    assert [(r["x_OriginalPeriod"], r["BilledCost"]) for r in corrections] == [
        ("2026-10", "0.960000")
    ]


def test_a_close_waits_for_entries_being_written_so_the_month_never_changes_after(
    fresh_db: str,
) -> None:
    """A settlement stamped before the close but committed after it (or stamped by a replica
    whose clock runs behind) must not slip into the frozen month: the close waits for entries
    being written and freezes the month at the last one."""
    url = fresh_db

    async def setup(session: AsyncSession) -> tuple[Job, Job]:
        # Two teams: the two settlements must not wait for each other's balance row.
        one = await tenancy.create_team(session, "racers-one", actor=ACTOR)
        two = await tenancy.create_team(session, "racers-two", actor=ACTOR)
        first_at, second_at = datetime(2026, 10, 5, tzinfo=UTC), datetime(2026, 10, 6, tzinfo=UTC)
        first = await _hold(session, TeamQuota(one.id, None, None), first_at, 1_680_000)
        second = await _hold(session, TeamQuota(two.id, None, None), second_at, 960_000)
        return first, second

    first, second = in_session(url, setup)
    october = ReportQuery(month="2026-10")

    async def scenario() -> tuple[bool, int, int]:
        engine = create_engine(url)
        sessions = create_sessionmaker(engine)
        try:
            async with sessions() as writing, writing.begin():
                # The first settlement is being written (its entry id is the lower one)...
                capture = settlement.SettlementPlan(
                    JobState.CAPTURED, 1_680_000, reason="completed"
                )
                await settlement.apply_settlement(writing, first, capture, now=utcnow())
                # ...while the second is written and committed.
                async with transaction(sessions) as other:
                    capture = settlement.SettlementPlan(
                        JobState.CAPTURED, 960_000, reason="completed"
                    )
                    await settlement.apply_settlement(other, second, capture, now=utcnow())

                async def close() -> None:
                    async with transaction(sessions) as session:
                        await close_period(session, "2026-10", actor=ACTOR, now=utcnow())

                closing = asyncio.create_task(close())
                done, _ = await asyncio.wait({closing}, timeout=1.0)
                waited = not done
                if done:  # closed without waiting: what the frozen month said at its close
                    async with transaction(sessions) as session:
                        at_close = (await chargeback(session, october)).totals
            await closing
            if waited:
                async with transaction(sessions) as session:
                    at_close = (await chargeback(session, october)).totals
            async with transaction(sessions) as session:
                later = (await chargeback(session, october)).totals
            assert later.captured_micro_usd == 2_640_000
            return waited, at_close.captured_micro_usd, later.captured_micro_usd
        finally:
            await engine.dispose()

    waited, at_close, later = asyncio.run(scenario())
    assert (waited, at_close, later) == (True, 2_640_000, 2_640_000)


@pytest.fixture
def finance_gateway(start_gateway: StartGateway, fresh_db: str) -> tuple[str, str]:
    in_session(fresh_db, lambda s: generate(s, jobs=200, seed=5))
    server = start_gateway(database_url=fresh_db, admin_token=ADMIN)
    return server.url, fresh_db


def test_chargeback_over_the_admin_api_in_every_format(
    finance_gateway: tuple[str, str], postgres_url: str
) -> None:
    url, database = finance_gateway
    admin = {"Authorization": f"Bearer {ADMIN}"}
    expected = in_session(database, lambda s: chargeback(s, ReportQuery(month="2026-11")))
    as_json = httpx.get(
        f"{url}/admin/reports/chargeback", params={"month": "2026-11"}, headers=admin
    )
    assert as_json.status_code == 200
    assert parse_usd(as_json.json()["totals"]["captured_usd"]) == expected.totals.captured_micro_usd
    as_csv = httpx.get(
        f"{url}/admin/reports/chargeback",
        params={"month": "2026-11", "format": "csv"},
        headers=admin,
    )
    assert as_csv.headers["content-type"].startswith("text/csv")
    as_html = httpx.get(
        f"{url}/admin/reports/chargeback",
        params={"month": "2026-11", "format": "html"},
        headers=admin,
    )
    assert as_html.headers["content-type"].startswith("text/html") and "<svg" in as_html.text
    as_focus = httpx.get(
        f"{url}/admin/reports/chargeback",
        params={"month": "2026-11", "format": "focus"},
        headers=admin,
    )
    rows = list(csv.DictReader(io.StringIO(as_focus.text)))
    assert sum(parse_usd(r["BilledCost"]) for r in rows) == expected.totals.captured_micro_usd
    by_tag = httpx.get(
        f"{url}/admin/reports/chargeback",
        params={"month": "2026-11", "group_by": "tag:project"},
        headers=admin,
    ).json()
    assert {row["tag"] for row in by_tag["rows"]} == {"atlas", "zephyr", "(untagged)"}
    refused = httpx.get(
        f"{url}/admin/reports/chargeback",
        params={"month": "2026-11"},
        headers=make_tenant(database).headers,
    )
    assert refused.status_code == 403
    bad = httpx.get(f"{url}/admin/reports/chargeback", params={"month": "2026-13"}, headers=admin)
    assert bad.status_code == 400
    for fmt in ("json", "csv", "html", "focus"):  # a typo in the team is not an empty report
        unknown = httpx.get(
            f"{url}/admin/reports/chargeback",
            params={"month": "2026-11", "format": fmt, "team": "nosuch"},
            headers=admin,
        )
        assert unknown.status_code == 404, (fmt, unknown.text)
        assert unknown.json()["error"]["code"] == "team_not_found"

    closed = httpx.post(f"{url}/admin/periods/2026-10/close", headers=admin)
    assert closed.status_code == 201 and closed.json()["closed_by"] == "admin-token"
    assert httpx.post(f"{url}/admin/periods/2026-10/close", headers=admin).status_code == 409
    assert [p["month"] for p in httpx.get(f"{url}/admin/periods", headers=admin).json()] == [
        "2026-10"
    ]
    audit = httpx.get(f"{url}/admin/audit", params={"action": "period.close"}, headers=admin)
    assert [e["target_id"] for e in audit.json()["data"]] == ["2026-10"]


def test_chargeback_command_writes_every_format(
    finance_gateway: tuple[str, str], tmp_path: Path
) -> None:
    _, database = finance_gateway
    env = {"GATEWAY_DATABASE_URL": database, "PATH": "/usr/bin:/bin"}
    expected = in_session(database, lambda s: chargeback(s, ReportQuery(month="2026-11")))
    for fmt in ("json", "csv", "html", "focus"):
        out = tmp_path / f"report.{fmt}"
        result = run_gateway(
            "report",
            "chargeback",
            "--month",
            "2026-11",
            "--format",
            fmt,
            "--output",
            str(out),
            env=env,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        assert out.stat().st_size > 100
    document = json.loads((tmp_path / "report.json").read_text())
    assert parse_usd(document["totals"]["captured_usd"]) == expected.totals.captured_micro_usd
    focus_lines = io.StringIO((tmp_path / "report.focus").read_text())
    focus_total = sum(parse_usd(r["BilledCost"]) for r in csv.DictReader(focus_lines))
    assert focus_total == expected.totals.captured_micro_usd
    grouped = run_gateway(
        "report",
        "chargeback",
        "--month",
        "2026-11",
        "--format",
        "json",
        "--group-by",
        "cost-center",
        env=env,
        timeout=120,
        check=True,
    )
    assert {r["cost_center"] for r in json.loads(grouped.stdout)["rows"]} == {"CC-0", "CC-1"}


def test_tags_from_the_header_reach_the_job_the_ledger_and_the_report(
    start_gateway: StartGateway, simulator: SimulatorProbe, fresh_db: str
) -> None:
    server = start_gateway(database_url=fresh_db)
    tenant = make_tenant(fresh_db)
    with httpx.Client(base_url=server.url) as client:
        for tags in ("project=atlas,user=dana", "project=atlas", "project=zephyr", None):
            job_id = submit(
                client, tenant, "x", headers={"X-Gateway-Tags": tags} if tags else None
            ).json()["job_id"]
            client.get(f"/v1/jobs/{job_id}", headers=tenant.headers)
        for bad in (
            "project",
            "Project=atlas",
            "p=" + "x" * 65,
            ",".join(f"k{n}=v" for n in range(11)),
            "a=1,a=2",
        ):
            refused = submit(client, tenant, "x", headers={"X-Gateway-Tags": bad})
            assert (refused.status_code, refused.json()["error"]["code"]) == (400, "invalid_tags")
    assert all("x-gateway-tags" not in r["header_names"] for r in simulator.requests())
    ledger = team_ledger(fresh_db, tenant.team)
    assert ledger.jobs[0].tags == {"project": "atlas", "user": "dana"}
    assert all(e.tags == j.tags for j in ledger.jobs for e in ledger.entries if e.job_id == j.id)
    month = utcnow().strftime("%Y-%m")
    result = in_session(
        fresh_db,
        lambda s: chargeback(s, ReportQuery(month=month, group_by="tag:project", team=tenant.team)),
    )
    assert {r.tag: r.captured_micro_usd for r in result.rows} == {
        "atlas": 3_360_000,
        "zephyr": 1_680_000,
        "(untagged)": 1_680_000,
    }


# Reconciliation with the upstream's bill


@pytest.fixture
def billed_jobs(
    start_gateway: StartGateway, simulator: SimulatorProbe, fresh_db: str, tmp_path: Path
) -> tuple[str, list[str], dict[str, Any], Any]:
    server = start_gateway(database_url=fresh_db)
    tenant: Tenant = make_tenant(fresh_db)
    ids = []
    with httpx.Client(base_url=server.url) as client:
        for prompt in ("a", "b #sim:fail", "c #sim:moderated", "d #sim:duration=12", "e", "f"):
            job_id = submit(client, tenant, prompt).json()["job_id"]
            client.get(f"/v1/jobs/{job_id}", headers=tenant.headers)
            ids.append(job_id)
    server.stop()
    return fresh_db, ids, simulator.usage(), simulator


def reconcile_with_usage(
    database: str, usage: Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    """``gateway reconcile --no-settle --upstream-usage USAGE EXTRA``: the ledger compared with
    an upstream usage export, nothing settled."""
    env = {
        "GATEWAY_DATABASE_URL": database,
        "GATEWAY_UPSTREAM_API_KEY": UPSTREAM_KEY,
        "GATEWAY_KEY_PEPPER": PEPPER,
        "PATH": "/usr/bin:/bin",
    }
    return run_gateway(
        "reconcile", "--no-settle", "--upstream-usage", str(usage), *extra, env=env, timeout=120
    )


def test_ledger_reconciles_with_the_upstreams_export(
    billed_jobs: tuple[str, list[str], dict[str, Any], Any], tmp_path: Path
) -> None:
    database, _, usage, simulator = billed_jobs
    export = tmp_path / "usage.json"
    export.write_text(json.dumps(usage))
    clean = reconcile_with_usage(database, export)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "no differences" in clean.stdout
    # The same bill as CSV with the provider's own column names, mapped.
    rows = list(
        csv.DictReader(io.StringIO(simulator.http.get("/_simulator/usage?format=csv").text))
    )
    renamed = tmp_path / "usage.csv"
    with renamed.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["Id", "Amount", "Charged"])
        for row in rows:
            writer.writerow([row["job_id"], row["cost_usd"], row["billed"]])
    mapped = reconcile_with_usage(
        database,
        renamed,
        "--column",
        "job_id=Id",
        "--column",
        "cost_usd=Amount",
        "--column",
        "billed=Charged",
        "--format",
        "json",
    )
    assert mapped.returncode == 0, mapped.stdout + mapped.stderr
    assert json.loads(mapped.stdout)["differences"] == []


def test_injected_discrepancies_are_reported_precisely(
    billed_jobs: tuple[str, list[str], dict[str, Any], Any], tmp_path: Path
) -> None:
    database, ids, usage, _ = billed_jobs
    dropped, altered = ids[0], ids[4]
    doctored = {**usage, "jobs": []}
    for row in usage["jobs"]:
        if row["job_id"] == dropped:
            continue  # a job the upstream "forgot" to bill
        if row["job_id"] == altered:
            row = {**row, "cost_usd": "1.690000"}  # billed 1 cent more upstream
        doctored["jobs"].append(row)
    export = tmp_path / "doctored.json"
    export.write_text(json.dumps(doctored))
    result = reconcile_with_usage(database, export, "--format", "json")
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert [
        (d["kind"], d["job_id"], d["ledger_usd"], d["upstream_usd"], d["delta_usd"])
        for d in report["differences"]
    ] == sorted(
        [
            ("not_billed_upstream", dropped, "1.680000", "0.000000", "1.680000"),
            ("amount_differs", altered, "1.680000", "1.690000", "-0.010000"),
        ],
        key=lambda d: d[1],
    )
    within = reconcile_with_usage(database, export, "--tolerance-usd", "0.02", "--format", "json")
    assert within.returncode == 1, within.stderr  # the job the upstream did not bill remains
    assert [d["kind"] for d in json.loads(within.stdout)["differences"]] == ["not_billed_upstream"]

    # A copy of the ledger with one capture deleted (the triggers forbid it in the real one).
    name = f"{database.rsplit('/', 1)[-1]}_copy"
    admin_sql(f'CREATE DATABASE "{name}" TEMPLATE "{database.rsplit("/", 1)[-1]}"')
    copy = database.rsplit("/", 1)[0] + "/" + name
    try:
        job = team_ledger_job(copy, ids[5])
        execute_sql(
            copy,
            "ALTER TABLE ledger_entries DISABLE TRIGGER USER",
            f"DELETE FROM ledger_entries WHERE job_id = '{job}' AND kind = 'capture'",
        )
        original = tmp_path / "usage.json"
        original.write_text(json.dumps(usage))
        missing = reconcile_with_usage(copy, original, "--format", "json")
        assert missing.returncode == 1
        assert [(d["kind"], d["job_id"]) for d in json.loads(missing.stdout)["differences"]] == [
            ("missing_in_ledger", ids[5])
        ]
    finally:
        admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def team_ledger_job(database: str, upstream_job_id: str) -> str:
    async def _find(session: AsyncSession) -> str:
        from sqlalchemy import select

        return (
            await session.execute(select(Job.id).where(Job.upstream_job_id == upstream_job_id))
        ).scalar_one()

    return in_session(database, _find)


def test_unreadable_usage_files_exit_2(fresh_db: str, tmp_path: Path) -> None:
    for content in ("{not json", '{"rows": []}', "Id,Amount\nx,abc\n", "garbage", ""):
        bad = tmp_path / "bad.txt"
        bad.write_text(content)
        result = reconcile_with_usage(fresh_db, bad)
        assert result.returncode == 2, result.stdout + result.stderr
        assert "cannot read the upstream usage" in result.stderr


def test_bad_options_exit_2_not_1(fresh_db: str, tmp_path: Path) -> None:
    """1 means "the ledger and the upstream differ": a comparison that could not be made must
    not look like one (nor like a clean one)."""
    export = tmp_path / "usage.csv"
    export.write_text("job_id,cost_usd\n")
    for extra, problem in [
        (("--tolerance-usd", "-1"), "--tolerance-usd"),
        (("--tolerance-usd", "0.0000001"), "--tolerance-usd"),
        (("--month", "2026-1"), "--month"),
        (("--month", "junk"), "--month"),
    ]:
        result = reconcile_with_usage(fresh_db, export, *extra)
        assert result.returncode == 2, (extra, result.stdout + result.stderr)
        assert problem in result.stderr
    nothing_to_compare = reconcile_with_usage(fresh_db, export, "--month", "2026-01")
    assert nothing_to_compare.returncode == 0


@pytest.mark.parametrize(
    "month", ["2026-1", "2026-13", "26-01", "2026-01-01", " 2026-01", "0000-01", "9999-12"]
)
def test_a_month_must_be_written_yyyy_mm(month: str) -> None:
    """ "2026-1" would otherwise be closed or reported as a period that never has any job."""
    with pytest.raises(InvalidRequest, match="2026-11"):
        month_bounds(month)


def test_upstream_credits_net_against_their_charges() -> None:
    """A refund row cancels the charge: the upstream's net for the job is what is compared."""
    export = "job_id,cost_usd\nup-1,1.680000\nup-1,-1.680000\nup-2,0.500000\n"
    charges = reconciliation.parse_usage(export)
    ledger = {
        "up-1": reconciliation.LedgerCharge("up-1", "team-a", 1_680_000),
        "up-2": reconciliation.LedgerCharge("up-2", "team-a", 500_000),
    }
    result = reconciliation.compare(charges, ledger, tolerance_micro_usd=0)
    assert [(d.kind, d.job_id, d.delta_micro_usd) for d in result.differences] == [
        ("not_billed_upstream", "up-1", 1_680_000)
    ]
    assert result.upstream_total_micro_usd == 500_000
    # JSON amounts are read exactly, not through binary floats.
    (charge,) = reconciliation.parse_usage('[{"job_id": "up-3", "cost_usd": 0.000001}]')
    assert charge.cost_micro_usd == 1


def test_a_focus_export_of_a_month_that_cannot_exist_is_400_before_streaming(
    finance_gateway: tuple[str, str],
) -> None:
    """Found by the OpenAPI fuzzer: 0000-01 matches the month pattern, and the FOCUS export
    only found out once its response had started, so the client got a cut-off body."""
    url, _ = finance_gateway
    response = httpx.get(
        f"{url}/admin/reports/chargeback",
        params={"month": "0000-01", "format": "focus"},
        headers={"Authorization": f"Bearer {ADMIN}"},
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "month"
