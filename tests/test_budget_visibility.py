"""Budget levels made visible (issue 15): ``GET /v1/usage`` shows every level that applies to
the caller (team; the key's project; the key) with grants and a month-end forecast, in one
statement on Postgres and through the ORM alike; the project gauges; the admin's usage view;
the chargeback per project in every format (to the micro-dollar of the ledger) and each team's
grants in its rows."""

from __future__ import annotations

import csv
import io
import json
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from importlib import resources
from typing import Any

import httpx
import jsonschema
import jwt
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import event, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.admin.usage import usage_view
from gateway.core.clock import utcnow
from gateway.core.periods import period_of
from gateway.core.usd import format_usd, parse_usd
from gateway.errors import NotFound
from gateway.jobs.models import Job, JobState
from gateway.ledger import settlement
from gateway.ledger.forecast import month_end_forecast
from gateway.ledger.holds import place_hold
from gateway.ledger.models import EntryKind, LedgerEntry
from gateway.ledger.quotas import Level, TeamQuota
from gateway.ledger.repository import Account
from gateway.reports.chargeback import NO_PROJECT, ChargebackReport, ReportQuery, chargeback
from gateway.reports.focus import COLUMNS, PROJECT_TAG, focus_rows
from gateway.reports.formats import to_csv, to_json
from gateway.reports.html import to_html
from gateway.runtime import Runtime
from gateway.tenancy import service as tenancy
from gateway.tenancy.models import Project, Team
from tests.support.api import submit
from tests.support.jobs import pending_job
from tests.support.projects import ProjectRow, grant, make_key, make_project
from tests.support.savepoint import SavepointDatabase
from tests.support.servers import ServerThread, StartGateway
from tests.support.simulator import SimulatorProbe
from tests.support.tenants import Tenant, in_session, make_tenant

USD = 1_000_000
JOB = 1_680_000  # the default submit: 10 s at 720p
JWT_ISSUER = "https://idp.example.com"
JWT_AUDIENCE = "video-gateway"
JWT_SECRET = "hs256-shared-secret-for-budget-tests-0123"
ADMIN = "admin-token-for-budget-visibility-0123"


# The forecast's arithmetic


def at(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


@pytest.mark.parametrize(
    ("captured", "held", "period", "now", "expected"),
    [
        # half of November gone: twice what was captured so far
        (10 * USD, 0, "2026-11", at(2026, 11, 16), 20 * USD),
        # a third of a 31-day December
        (31 * USD, 0, "2026-12", at(2026, 12, 11, 8), 93 * USD),
        # 28 days of February; a quarter gone
        (7 * USD, 0, "2027-02", at(2027, 2, 8), 28 * USD),
        # the first minutes: measured over a whole day, never extrapolated from five minutes
        (USD, 0, "2026-11", at(2026, 11, 1, 0, 5), 30 * USD),
        (USD, 0, "2026-12", at(2026, 12, 1, 0, 5), 31 * USD),
        (USD, 0, "2026-11", at(2026, 10, 31, 23, 59), 30 * USD),  # a clock just behind
        # never below what is captured and held already
        (0, 3 * USD, "2026-11", at(2026, 11, 20), 3 * USD),
        (5 * USD, 2 * USD, "2026-11", at(2026, 11, 30, 23), 7 * USD),
        (5 * USD, 0, "2026-11", at(2026, 12, 1, 0, 0, 1), 5 * USD),  # the month is over
        # rounded half-up to the micro-dollar: 3 µUSD x 30 / 4 = 22.5
        (3, 0, "2026-11", at(2026, 11, 5), 23),
        (1, 0, "2026-11", at(2026, 11, 8), 4),  # 30 / 7 = 4.29
        (0, 0, "2026-11", at(2026, 11, 20), 0),
    ],
)
def test_the_forecast_projects_the_run_rate_to_the_month_end(
    captured: int, held: int, period: str, now: datetime, expected: int
) -> None:
    assert month_end_forecast(captured, held, period=period, now=now) == expected


# GET /v1/usage


@dataclass
class Counted:
    checkouts: int = 0
    statements: list[str] = field(default_factory=list)


@contextmanager
def counting(server: ServerThread) -> Iterator[Counted]:
    """Pool checkouts and statements (ORM and direct) of ``server``'s own engine."""
    runtime: Runtime = server.server.config.app.state.runtime
    counted = Counted()
    sync = runtime.engine.sync_engine

    def on_checkout(*_: Any) -> None:
        counted.checkouts += 1

    def on_execute(_connection: Any, _cursor: Any, statement: str, *_: Any) -> None:
        counted.statements.append(statement)

    def on_direct(statement: str, _parameters: tuple[Any, ...]) -> None:
        counted.statements.append(statement)

    direct = runtime.proxy.direct
    event.listen(sync, "checkout", on_checkout)
    event.listen(sync, "before_cursor_execute", on_execute)
    if direct is not None:
        direct.listeners.append(on_direct)
    try:
        yield counted
    finally:
        event.remove(sync, "checkout", on_checkout)
        event.remove(sync, "before_cursor_execute", on_execute)
        if direct is not None:
            direct.listeners.remove(on_direct)


@dataclass(frozen=True)
class Bound:
    """A team with a budget, a project with one and a key bound to it with one, all granted
    extra for the current period."""

    tenant: Tenant  # the team's own unbound key (no budget of its own)
    project: ProjectRow
    key: Tenant


@pytest.fixture
def bound(postgres_url: str) -> Bound:
    tenant = make_tenant(postgres_url, prefix="vis", budget_micro_usd=100 * USD)
    project = make_project(postgres_url, tenant.team, budget_micro_usd=20 * USD)
    key = make_key(postgres_url, tenant.team, project=project, budget_micro_usd=5 * USD)
    period = period_of(utcnow())
    grant(postgres_url, tenant.team, USD, period=period)
    grant(postgres_url, tenant.team, 3 * USD, period=period, project=project)
    grant(postgres_url, tenant.team, 500_000, period=period, key_id=key.key_id)
    return Bound(tenant, project, key)


def scope(
    kind: str, name: str, budget: int | None, granted: int, captured: int, held: int
) -> dict[str, Any]:
    """A ``<scope>`` as ``GET /v1/usage`` shows it, without its forecast."""
    remaining = None if budget is None else max(budget + granted - captured - held, 0)
    return {
        "scope": kind,
        "name": name,
        "period": period_of(utcnow()),
        "budget_usd": format_usd(budget) if budget is not None else None,
        "granted_usd": format_usd(granted),
        "captured_usd": format_usd(captured),
        "held_usd": format_usd(held),
        "remaining_usd": format_usd(remaining) if remaining is not None else None,
    }


def read_usage(client: httpx.Client, headers: dict[str, str]) -> dict[str, Any]:
    """``GET /v1/usage``, each forecast checked against the figures it was made from (it can
    only fall while time passes at a steady spend) and then left out."""
    before = utcnow()
    answer = client.get("/v1/usage", headers=headers)
    after = utcnow()
    assert answer.status_code == 200, answer.text
    usage: dict[str, Any] = answer.json()
    for each in usage["scopes"]:
        captured, held = parse_usd(each["captured_usd"]), parse_usd(each["held_usd"])
        forecast = parse_usd(each.pop("forecast_usd"))
        period = each["period"]
        assert (
            month_end_forecast(captured, held, period=period, now=after)
            <= forecast
            <= month_end_forecast(captured, held, period=period, now=before)
        )
        assert forecast >= captured + held
    usage["quota_header"] = answer.headers["x-quota-remaining-usd"]
    return usage


def two_jobs_one_settled(client: httpx.Client, tenant: Tenant) -> None:
    first, second = submit(client, tenant), submit(client, tenant)
    assert (first.status_code, second.status_code) == (200, 200), first.text + second.text
    polled = client.get(f"/v1/jobs/{first.json()['job_id']}", headers=tenant.headers)
    assert polled.json()["status"] == "completed"


def test_usage_shows_team_project_and_key_after_holds_and_a_settlement(
    start_gateway: StartGateway, simulator: SimulatorProbe, bound: Bound
) -> None:
    server = start_gateway(metrics_refresh_interval_seconds=3600)
    key, team = bound.key, bound.tenant.team
    with httpx.Client(base_url=server.url, timeout=30) as client:
        two_jobs_one_settled(client, key)
        with counting(server) as counted:
            usage = read_usage(client, key.headers)
    # The key, its team, its project and the three balances: one statement, one checkout.
    assert (counted.checkouts, len(counted.statements)) == (1, 1), counted.statements
    assert usage["scopes"] == [
        scope("team", team, 100 * USD, USD, JOB, JOB),
        scope("project", bound.project.name, 20 * USD, 3 * USD, JOB, JOB),
        scope("key", key.key_id, 5 * USD, 500_000, JOB, JOB),
    ]
    # The team's own fields, as before (the budget is the budget; remaining counts grants).
    team_scope = usage["scopes"][0]
    assert {name: usage[name] for name in ("team", "period", "budget_usd")} == {
        "team": team,
        "period": team_scope["period"],
        "budget_usd": "100.000000",
    }
    assert (usage["captured_usd"], usage["held_usd"], usage["remaining_usd"]) == (
        "1.680000",
        "1.680000",
        "97.640000",
    )
    assert usage["quota_header"] == "97.640000"


def test_usage_through_the_orm_shows_the_same_levels(
    start_gateway: StartGateway, simulator: SimulatorProbe, bound: Bound
) -> None:
    server = start_gateway(database_direct_statements=False)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        two_jobs_one_settled(client, bound.key)
        usage = read_usage(client, bound.key.headers)
    assert [s["scope"] for s in usage["scopes"]] == ["team", "project", "key"]
    assert usage["scopes"][1] == scope("project", bound.project.name, 20 * USD, 3 * USD, JOB, JOB)
    assert usage["scopes"][2]["remaining_usd"] == "2.140000"  # 5 + 0.5 - 2 x 1.68


def test_usage_on_sqlite_shows_the_levels(
    start_gateway: StartGateway, simulator: SimulatorProbe, sqlite_url: str
) -> None:
    tenant = make_tenant(sqlite_url, prefix="vis-sqlite", budget_micro_usd=10 * USD)
    project = make_project(sqlite_url, tenant.team)  # no budget of its own
    key = make_key(sqlite_url, tenant.team, project=project, budget_micro_usd=4 * USD)
    server = start_gateway(database_url=sqlite_url)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        two_jobs_one_settled(client, key)
        usage = read_usage(client, key.headers)
    assert usage["scopes"] == [
        scope("team", tenant.team, 10 * USD, 0, JOB, JOB),
        scope("project", project.name, None, 0, JOB, JOB),
        scope("key", key.key_id, 4 * USD, 0, JOB, JOB),
    ]


def test_an_unbound_key_and_a_jwt_caller_see_only_their_levels(
    start_gateway: StartGateway, simulator: SimulatorProbe, bound: Bound
) -> None:
    server = start_gateway(
        jwt_issuer=JWT_ISSUER, jwt_audience=JWT_AUDIENCE, jwt_secret=JWT_SECRET, admin_token=ADMIN
    )
    team = bound.tenant.team
    now = int(time.time())
    token = jwt.encode(
        {"iss": JWT_ISSUER, "aud": JWT_AUDIENCE, "sub": "dana", "iat": now, "exp": now + 300}
        | {"team": team},
        JWT_SECRET,
        algorithm="HS256",
    )
    with httpx.Client(base_url=server.url, timeout=30) as client:
        two_jobs_one_settled(client, bound.key)
        unbound = read_usage(client, bound.tenant.headers)
        by_jwt = read_usage(client, {"Authorization": f"Bearer {token}"})
    team_scope = scope("team", team, 100 * USD, USD, JOB, JOB)
    # The unbound key has never submitted: its level has no row, so it has used nothing, and
    # without a budget of its own it is unlimited (the team's budget still applies).
    assert unbound["scopes"] == [team_scope, scope("key", bound.tenant.key_id, None, 0, 0, 0)]
    assert by_jwt["scopes"] == [team_scope]  # no key, no project
    assert by_jwt["remaining_usd"] == unbound["remaining_usd"] == "97.640000"


# Gauges


def scrape(url: str) -> str:
    return httpx.get(url + "/metrics", timeout=30).text


def gauge(text: str, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return None


def test_project_gauges_show_spend_and_budget_plus_grants(
    start_gateway: StartGateway, simulator: SimulatorProbe, bound: Bound, postgres_url: str
) -> None:
    team, project = bound.tenant.team, bound.project
    unbudgeted = make_project(postgres_url, team)
    server = start_gateway(metrics_refresh_interval_seconds=0.1)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        two_jobs_one_settled(client, bound.key)
        header = {**bound.tenant.headers, "X-Gateway-Project": unbudgeted.name}
        job = submit(client, bound.tenant, headers=header, duration=5, resolution="480p")
        assert job.status_code == 200, job.text
        client.get(f"/v1/jobs/{job.json()['job_id']}", headers=bound.tenant.headers)

    def settled() -> str | None:
        text = scrape(server.url)
        spend = gauge(text, "gateway_project_spend_usd", team=team, project=unbudgeted.name)
        return text if spend == 0.48 else None

    deadline = time.monotonic() + 15
    while (text := settled()) is None:
        assert time.monotonic() < deadline, "the project gauges never showed the settlement"
        time.sleep(0.1)
    labels = {"team": team, "project": project.name}
    assert gauge(text, "gateway_project_spend_usd", **labels) == 1.68
    assert gauge(text, "gateway_project_budget_usd", **labels) == 23.0  # 20 + 3 granted
    no_budget = {"team": team, "project": unbudgeted.name}
    assert gauge(text, "gateway_project_budget_usd", **no_budget) is None  # unlimited: absent
    assert gauge(text, "gateway_team_budget_usd", team=team) == 101.0  # 100 + 1 granted
    assert gauge(text, "gateway_team_spend_usd", team=team) == 2.16


# The admin's usage view and the chargeback, on both databases (fast tier)

MONTH = "2026-11"


@dataclass(frozen=True)
class Month:
    """Two teams' month: team ``a`` with projects atlas (budget) and zephyr (none), jobs of
    each and of no project; team ``b`` with one job of no project. Grants to ``a`` at every
    level."""

    a: str
    b: str
    atlas: ProjectRow
    zephyr: ProjectRow


async def _hold_and_settle(
    session: AsyncSession,
    team_id: int,
    project: ProjectRow | None,
    *,
    budget: int | None,
    day: int,
    captured: int | None,
    estimate: int = JOB,
    **fields: Any,
) -> None:
    """A job of ``project`` (or none) held on the 5th and, unless ``captured`` is None,
    settled: captured for that amount, or released for 0."""
    created = at(2026, 11, day)
    job = pending_job(team_id, estimate, period=MONTH, at=created, **fields)
    levels = []
    if project is not None:
        job.project_id = project.id
        levels.append(Level(Account("project", project.id), project.name, budget))
    quota = TeamQuota(team_id, None, None)
    await place_hold(session, quota, job, policy="unlimited", now=created, levels=levels)
    if captured is None:
        return
    state = JobState.CAPTURED if captured else JobState.RELEASED
    plan = settlement.SettlementPlan(state, captured, reason="completed" if captured else "failed")
    await settlement.apply_settlement(session, job, plan, now=at(2026, 11, day, 1))


@pytest.fixture
def month(db: SavepointDatabase) -> Month:
    a = make_tenant(db, prefix="cb-a", budget_micro_usd=None)
    b = make_tenant(db, prefix="cb-b", budget_micro_usd=None)
    atlas = make_project(db, a.team, "atlas", budget_micro_usd=50 * USD)
    zephyr = make_project(db, a.team, "zephyr")

    async def jobs(session: AsyncSession) -> None:
        team_a = (await tenancy.require_team(session, a.team)).id
        team_b = (await tenancy.require_team(session, b.team)).id
        atlas_budget = 50 * USD
        await _hold_and_settle(session, team_a, atlas, budget=atlas_budget, day=3, captured=JOB)
        await _hold_and_settle(
            session,
            team_a,
            atlas,
            budget=atlas_budget,
            day=9,
            captured=1_010_001,
            estimate=1_010_001,
            image_count=1,
        )
        await _hold_and_settle(session, team_a, atlas, budget=atlas_budget, day=12, captured=None)
        await _hold_and_settle(session, team_a, zephyr, budget=None, day=4, captured=960_003)
        await _hold_and_settle(session, team_a, zephyr, budget=None, day=6, captured=0)
        await _hold_and_settle(session, team_a, None, budget=None, day=7, captured=JOB)
        await _hold_and_settle(session, team_b, None, budget=None, day=8, captured=722_000)

    in_session(db, jobs)
    key = make_key(db, a.team)
    grant(db, a.team, 2 * USD, period=MONTH)
    grant(db, a.team, 3 * USD, period=MONTH, project=atlas)
    grant(db, a.team, 500_000, period=MONTH, key_id=key.key_id)
    grant(db, a.team, 9 * USD, period="2026-12")  # another month's: never in November's
    return Month(a.team, b.team, atlas, zephyr)


def ledger_by_project(db: SavepointDatabase) -> dict[tuple[str, str], tuple[int, int]]:
    """Per (team, project name or NO_PROJECT): captured and held micro-USD, from the ledger's
    own entries and jobs (not through the report)."""

    async def _read(session: AsyncSession) -> dict[tuple[str, str], tuple[int, int]]:
        captured = (
            select(Team.name, Project.name, func.sum(LedgerEntry.amount_micro_usd))
            .select_from(LedgerEntry)
            .join(Job, Job.id == LedgerEntry.job_id)
            .join(Team, Team.id == Job.team_id)
            .outerjoin(Project, Project.id == Job.project_id)
            .where(LedgerEntry.kind == EntryKind.CAPTURE, LedgerEntry.period == MONTH)
            .group_by(Team.name, Project.name)
        )
        held = (
            select(Team.name, Project.name, func.sum(Job.estimate_micro_usd))
            .join(Team, Team.id == Job.team_id)
            .outerjoin(Project, Project.id == Job.project_id)
            .where(Job.period == MONTH, Job.settled_at.is_(None))
            .group_by(Team.name, Project.name)
        )
        figures: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
        for at_index, stmt in enumerate((captured, held)):
            for team, project, amount in (await session.execute(stmt)).all():
                figures[team, project or NO_PROJECT][at_index] = int(amount)
        return {k: (v[0], v[1]) for k, v in figures.items()}

    return in_session(db, _read)


def report(db: SavepointDatabase, **query: Any) -> ChargebackReport:
    return in_session(db, lambda s: chargeback(s, ReportQuery(**{"month": MONTH, **query})))


@pytest.mark.fast
def test_the_chargeback_per_project_equals_the_ledger_in_every_format(
    db: SavepointDatabase, month: Month
) -> None:
    expected = ledger_by_project(db)
    a, b = month.a, month.b
    assert expected == {
        (a, "atlas"): (JOB + 1_010_001, JOB),
        (a, "zephyr"): (960_003, 0),
        (a, NO_PROJECT): (JOB, 0),
        (b, NO_PROJECT): (722_000, 0),
    }
    by_project = report(db, group_by="project", daily=True)
    rows = {(r.team, r.project): r for r in by_project.rows}
    assert {k: (r.captured_micro_usd, r.held_micro_usd) for k, r in rows.items()} == expected
    assert [r.job_counts() for r in (rows[a, "zephyr"],)] == [
        {
            "jobs_submitted": 2,
            "jobs_billed": 1,
            "jobs_billed_moderated": 0,
            "jobs_released": 1,
            "jobs_open": 0,
        }
    ]
    assert rows[a, "atlas"].images == 1
    assert all(r.granted_micro_usd is None and r.tag is None for r in by_project.rows)
    by_team = report(db)
    assert by_project.totals.captured_micro_usd == by_team.totals.captured_micro_usd
    assert by_project.totals.captured_micro_usd == sum(c for c, _ in expected.values())
    assert sum(d.captured_micro_usd for d in by_project.daily) == by_team.totals.captured_micro_usd
    assert {d.group for d in by_project.daily} == {f"{t} / {p}" for t, p in expected}

    # CSV: a line per team and project, exact.
    lines = list(csv.DictReader(io.StringIO(to_csv(by_project))))
    charges = {(r["team"], r["project"]): r for r in lines if r["line"] == "charge"}
    assert {k: parse_usd(r["captured_usd"]) for k, r in charges.items()} == {
        k: c for k, (c, _) in expected.items()
    }
    assert {r["granted_usd"] for r in charges.values()} == {""}
    (total,) = [r for r in lines if r["line"] == "total"]
    assert parse_usd(total["captured_usd"]) == by_team.totals.captured_micro_usd

    # JSON: its schema, and the same figures.
    document = to_json(by_project)
    schema = json.loads(
        resources.files("gateway.reports").joinpath("chargeback.schema.json").read_text()
    )
    jsonschema.Draft202012Validator(schema).validate(document)
    assert document["group_by"] == "project"
    assert {(r["team"], r["project"]): parse_usd(r["captured_usd"]) for r in document["rows"]} == {
        k: c for k, (c, _) in expected.items()
    }
    assert document["totals"]["granted_usd"] is None

    # HTML: a row per team and project, named both.
    page = to_html(by_project)
    assert "Team / project" in page
    for team, project in expected:
        assert f'<td class="text group">{team} / {project}</td>' in page
    assert "Budget<br>grants" not in page

    # FOCUS: the project as its last column and as a tag; BilledCost adds up per project.
    focus = in_session(db, lambda s: _focus(s))
    assert COLUMNS[-1] == "x_Project"
    assert all(set(row) == set(COLUMNS) for row in focus)
    billed: dict[tuple[str, str], int] = defaultdict(int)
    for row in focus:
        project = row["x_Project"] or NO_PROJECT
        billed[row["SubAccountName"], project] += parse_usd(row["BilledCost"])
        tags = json.loads(row["Tags"])
        assert tags.get(PROJECT_TAG) == (row["x_Project"] or None)
    assert dict(billed) == {k: c for k, (c, _) in expected.items()}


async def _focus(session: AsyncSession) -> list[dict[str, str]]:
    return [row async for row in focus_rows(session, MONTH)]


@pytest.mark.fast
def test_team_rows_show_the_months_grants_at_every_level(
    db: SavepointDatabase, month: Month
) -> None:
    granted = 2 * USD + 3 * USD + 500_000  # the team's, atlas's and a key's, November only
    by_team = report(db)
    rows = {r.team: r for r in by_team.rows}
    assert (rows[month.a].granted_micro_usd, rows[month.b].granted_micro_usd) == (granted, 0)
    assert by_team.totals.granted_micro_usd == granted
    assert by_team.total_due_micro_usd == by_team.totals.captured_micro_usd  # never billed
    assert report(db, month="2026-12").totals.granted_micro_usd == 0  # no team had a job

    document = to_json(by_team)
    schema = json.loads(
        resources.files("gateway.reports").joinpath("chargeback.schema.json").read_text()
    )
    jsonschema.Draft202012Validator(schema).validate(document)
    assert {r["team"]: r["granted_usd"] for r in document["rows"]} == {
        month.a: "5.500000",
        month.b: "0.000000",
    }
    assert document["totals"]["granted_usd"] == "5.500000"
    lines = list(csv.DictReader(io.StringIO(to_csv(by_team))))
    assert {r["team"]: r["granted_usd"] for r in lines if r["line"] == "charge"} == {
        month.a: "5.500000",
        month.b: "0.000000",
    }
    (total,) = [r for r in lines if r["line"] == "total"]
    assert total["granted_usd"] == "5.500000"
    page = to_html(by_team)
    assert "Budget<br>grants" in page
    assert '<td class="num">$5.50</td>' in page
    assert ">5.500000<" in page  # in the exact amounts
    # Other groupings have no per-team grants to show.
    assert report(db, group_by="cost_center").totals.granted_micro_usd is None


@pytest.mark.fast
def test_the_admin_usage_view_shows_grants_and_projects(
    db: SavepointDatabase, month: Month
) -> None:
    async def view(session: AsyncSession) -> list[dict[str, Any]]:
        teams = await usage_view(session, period=MONTH, team=month.a, policy="unlimited")
        return [t.model_dump() for t in teams]

    (usage,) = in_session(db, view)
    assert usage["granted_usd"] == "2.000000"  # the team's own grant
    assert (usage["budget_usd"], usage["remaining_usd"]) == (None, None)
    assert usage["captured_usd"] == format_usd(JOB + 1_010_001 + 960_003 + JOB)
    assert usage["held_usd"] == format_usd(JOB)
    assert usage["projects"] == [
        {
            "project": "atlas",
            "budget_usd": "50.000000",
            "granted_usd": "3.000000",
            "captured_usd": format_usd(JOB + 1_010_001),
            "held_usd": format_usd(JOB),
            "remaining_usd": format_usd(53 * USD - 2 * JOB - 1_010_001),
        },
        {
            "project": "zephyr",
            "budget_usd": None,
            "granted_usd": "0.000000",
            "captured_usd": "0.960003",
            "held_usd": "0.000000",
            "remaining_usd": None,
        },
    ]

    async def unknown(session: AsyncSession) -> Any:
        return await usage_view(session, period=MONTH, team="no-such-team", policy="unlimited")

    with pytest.raises(NotFound):
        in_session(db, unknown)


def test_the_admin_api_reports_per_project(
    start_gateway: StartGateway, simulator: SimulatorProbe, bound: Bound
) -> None:
    server = start_gateway(admin_token=ADMIN)
    team = bound.tenant.team
    with httpx.Client(base_url=server.url, timeout=30) as client:
        two_jobs_one_settled(client, bound.key)
        submit(client, bound.tenant)  # no project
        answer = client.get(
            "/admin/reports/chargeback",
            params={"month": period_of(utcnow()), "group_by": "project", "team": team},
            headers={"Authorization": f"Bearer {ADMIN}"},
        )
    assert answer.status_code == 200, answer.text
    rows = {r["project"]: r for r in answer.json()["rows"]}
    assert set(rows) == {bound.project.name, NO_PROJECT}
    assert (rows[bound.project.name]["captured_usd"], rows[bound.project.name]["held_usd"]) == (
        "1.680000",
        "1.680000",
    )
    assert rows[NO_PROJECT]["jobs_submitted"] == 1
    assert Decimal(rows[NO_PROJECT]["held_usd"]) == Decimal("1.68")
