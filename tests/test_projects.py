"""Managing budget levels (issue 15, PRODUCT §10): projects inside a team, keys bound to a
project with a role, a budget and a per-job cap, the team's per-job cap, and one-off grants at
any level; through the CLI and through the admin API, each change audited. The money rules
these settings drive (holds at every level, refusals) are ``test_budget_levels`` and
``test_ledger``; here a submit checks only that a setting reached them."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from itertools import chain
from typing import Any

import httpx
import pytest
from click.testing import CliRunner, Result
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.audit.models import AuditEntry
from gateway.cli import main
from gateway.core.clock import utcnow
from gateway.core.periods import month_bounds, period_of
from gateway.ledger.models import BudgetGrant, KeyBalance, ProjectBalance, TeamBalance
from gateway.tenancy.models import Project, Team
from tests.support.api import submit_to
from tests.support.servers import StartGateway
from tests.support.simulator import SimulatorProbe
from tests.support.tenants import PEPPER, Tenant, in_session, make_tenant
from tests.test_admin import ADMIN, Admin

PRICE = 1_680_000
"""A default submit (10 s at 720p), micro-USD."""

USAGE, OPERATIONAL = 2, 1


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def cli(postgres_url: str) -> CliRunner:
    return CliRunner(env={"GATEWAY_DATABASE_URL": postgres_url, "GATEWAY_KEY_PEPPER": PEPPER})


@pytest.fixture
def admin(start_gateway: StartGateway, simulator: SimulatorProbe) -> Iterator[Admin]:
    server = start_gateway(admin_token=ADMIN)
    client = Admin(server.url)
    yield client
    client.http.close()


def invoke(runner: CliRunner, *args: str) -> Result:
    return runner.invoke(main, list(args), catch_exceptions=False)


def ok_json(runner: CliRunner, *args: str) -> Any:
    result = invoke(runner, *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def refused(runner: CliRunner, code: int, *args: str) -> str:
    """A command that fails with exit ``code``: its one error line, never a traceback."""
    result = invoke(runner, *args)
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    prefix = "error: " if code == OPERATIONAL else "Error: "
    (line,) = [line for line in result.output.splitlines() if line.startswith(prefix)]
    return line


def cli_team(runner: CliRunner, *options: str) -> str:
    name = unique("lv")
    assert invoke(runner, "teams", "create", name, *options).exit_code == 0
    return name


def cli_key(runner: CliRunner, team: str, *options: str) -> Tenant:
    issued = ok_json(runner, "keys", "create", "--team", team, *options)
    assert set(issued) == {"id", "key", "team"}  # PRODUCT §9: scripts rely on exactly these
    return Tenant(team=team, key=issued["key"], key_id=issued["id"])


Figures = tuple[int | None, int, int, int]
"""A level's (budget, granted, held, captured) this month, micro-USD."""


def balance_of(
    database: str, team: str, *, project: str | None = None, key_id: str | None = None
) -> Figures | None:
    """The figures of ``team``'s row this month, or its project's, or its key's; None: no row."""

    async def _read(session: AsyncSession) -> Figures | None:
        team_id = (await session.execute(select(Team.id).where(Team.name == team))).scalar_one()
        period = period_of(utcnow())
        row: TeamBalance | ProjectBalance | KeyBalance | None
        if project is not None:
            project_id = (
                await session.execute(
                    select(Project.id).where(Project.team_id == team_id, Project.name == project)
                )
            ).scalar_one()
            row = await session.get(ProjectBalance, (project_id, period))
        elif key_id is not None:
            row = await session.get(KeyBalance, (key_id, period))
        else:
            row = await session.get(TeamBalance, (team_id, period))
        if row is None:
            return None
        return (
            row.budget_micro_usd,
            row.granted_micro_usd,
            row.held_micro_usd,
            row.captured_micro_usd,
        )

    return in_session(database, _read)


def audit_entries(database: str, target_id: str) -> list[tuple[str, dict[str, Any] | None]]:
    """(action, after) of every audit entry on ``target_id``, oldest first."""

    async def _read(session: AsyncSession) -> list[tuple[str, dict[str, Any] | None]]:
        rows = await session.execute(
            select(AuditEntry.action, AuditEntry.after)
            .where(AuditEntry.target_id == target_id)
            .order_by(AuditEntry.id)
        )
        return [(action, after) for action, after in rows.all()]

    return in_session(database, _read)


def grants_of(database: str, team: str) -> list[tuple[str, int, str, str]]:
    async def _read(session: AsyncSession) -> list[tuple[str, int, str, str]]:
        rows = await session.execute(
            select(
                BudgetGrant.scope,
                BudgetGrant.amount_micro_usd,
                BudgetGrant.reason,
                BudgetGrant.granted_by,
            )
            .join(Team, Team.id == BudgetGrant.team_id)
            .where(Team.name == team)
            .order_by(BudgetGrant.id)
        )
        return [(scope, amount, reason, by) for scope, amount, reason, by in rows.all()]

    return in_session(database, _read)


# Through the CLI


def test_projects_are_created_listed_and_updated_through_the_cli(
    cli: CliRunner, postgres_url: str
) -> None:
    team = cli_team(cli, "--monthly-budget-usd", "100")
    created = ok_json(
        cli,
        "projects",
        "create",
        "--team",
        team,
        "launch",
        "--monthly-budget-usd",
        "20.5",
        "--max-cost-per-job-usd",
        "2",
        "--soft-limit-percent",
        "80",
    )
    assert {k: created[k] for k in created if k not in ("id", "created_at")} == {
        "team": team,
        "name": "launch",
        "monthly_budget_usd": "20.500000",
        "max_cost_per_job_usd": "2.000000",
        "soft_limit_percent": 80,
    }
    assert "already has a project named 'launch'" in refused(
        cli, OPERATIONAL, "projects", "create", "--team", team, "launch"
    )
    assert invoke(cli, "projects", "create", "--team", team, "archive").exit_code == 0
    assert "no team named" in refused(
        cli, OPERATIONAL, "projects", "create", "--team", unique("nobody"), "x"
    )
    assert "project name" in refused(
        cli, OPERATIONAL, "projects", "create", "--team", team, "bad name"
    )
    assert "non-negative" in refused(
        cli, USAGE, "projects", "create", "--team", team, "neg", "--monthly-budget-usd", "-5"
    )

    listed = ok_json(cli, "projects", "list", "--team", team)
    assert [(p["name"], p["monthly_budget_usd"]) for p in listed] == [
        ("archive", None),
        ("launch", "20.500000"),
    ]
    table = invoke(cli, "projects", "list", "--team", team).stdout.splitlines()
    assert table[0].split() == [
        "NAME",
        "BUDGET/MONTH",
        "USD",
        "MAX/JOB",
        "USD",
        "SOFT",
        "LIMIT",
        "%",
    ]
    assert table[-1].split() == ["launch", "20.500000", "2.000000", "80"]

    updated = ok_json(
        cli,
        "projects",
        "update",
        "--team",
        team,
        "launch",
        "--monthly-budget-usd",
        "none",
        "--max-cost-per-job-usd",
        "3",
    )
    assert (updated["monthly_budget_usd"], updated["max_cost_per_job_usd"]) == (None, "3.000000")
    assert "no project named 'nope'" in refused(
        cli, OPERATIONAL, "projects", "update", "--team", team, "nope", "--soft-limit-percent", "5"
    )
    assert "nothing to change" in refused(
        cli, USAGE, "projects", "update", "--team", team, "launch"
    )

    history = audit_entries(postgres_url, f"{team}/launch")
    assert [action for action, _ in history] == ["project.create", "project.update"]
    after = history[-1][1]
    assert after is not None and after["monthly_budget_usd"] is None
    assert after["max_cost_per_job_usd"] == "3.000000"


def test_keys_carry_a_project_role_budget_and_cap_through_the_cli(
    cli: CliRunner, postgres_url: str, gateway: httpx.Client
) -> None:
    team = cli_team(cli, "--monthly-budget-usd", "100")
    invoke(cli, "projects", "create", "--team", team, "launch", "--monthly-budget-usd", "50")
    key = cli_key(
        cli,
        team,
        "--project",
        "launch",
        "--role",
        "manager",
        "--monthly-budget-usd",
        "10",
        "--max-cost-per-job-usd",
        "4",
    )
    (listed,) = ok_json(cli, "keys", "list", "--team", team)
    assert (
        listed["project"],
        listed["role"],
        listed["monthly_budget_usd"],
        listed["max_cost_per_job_usd"],
    ) == ("launch", "manager", "10.000000", "4.000000")
    table = invoke(cli, "keys", "list", "--team", team).stdout.splitlines()
    assert table[0].split()[2:4] == ["PROJECT", "ROLE"]
    assert table[-1].split()[1:5] == ["-", "launch", "manager", "10.000000"]

    # The binding reaches the money: the job is held on the project and on the key too.
    assert submit_to(str(gateway.base_url), key).status_code == 200
    assert balance_of(postgres_url, team, project="launch") == (50_000_000, 0, PRICE, 0)
    assert balance_of(postgres_url, team, key_id=key.key_id) == (10_000_000, 0, PRICE, 0)

    changed = ok_json(
        cli,
        "keys",
        "update",
        key.key_id,
        "--no-project",
        "--role",
        "member",
        "--monthly-budget-usd",
        "12",
        "--max-cost-per-job-usd",
        "none",
    )
    assert (
        changed["project"],
        changed["role"],
        changed["monthly_budget_usd"],
        changed["max_cost_per_job_usd"],
    ) == (None, "member", "12.000000", None)
    # The key's budget for the month under way follows at once.
    assert balance_of(postgres_url, team, key_id=key.key_id) == (12_000_000, 0, PRICE, 0)
    assert [a for a, _ in audit_entries(postgres_url, key.key_id)] == ["key.create", "key.update"]

    assert "has no project named 'nope'" in refused(
        cli, OPERATIONAL, "keys", "create", "--team", team, "--project", "nope"
    )
    assert "has no project named 'nope'" in refused(
        cli, OPERATIONAL, "keys", "update", key.key_id, "--project", "nope"
    )
    assert "mutually exclusive" in refused(
        cli, USAGE, "keys", "update", key.key_id, "--project", "launch", "--no-project"
    )
    assert "'--role'" in refused(cli, USAGE, "keys", "create", "--team", team, "--role", "boss")
    assert "no API key" in refused(
        cli, OPERATIONAL, "keys", "update", "nosuchkey0000000", "--role", "member"
    )


def test_a_team_cost_cap_through_the_cli(
    cli: CliRunner, postgres_url: str, gateway: httpx.Client
) -> None:
    team = cli_team(cli, "--max-cost-per-job-usd", "1.5")
    key = cli_key(cli, team)
    url = str(gateway.base_url)
    capped = submit_to(url, key)
    assert (capped.status_code, capped.json()["error"]["code"]) == (400, "cost_cap_exceeded")
    assert capped.json()["error"]["cap_usd"] == "1.500000"
    assert submit_to(url, key, duration=5).status_code == 200  # 0.84 USD: under the cap

    updated = ok_json(cli, "teams", "update", team, "--max-cost-per-job-usd", "none")
    assert updated["max_cost_per_job_usd"] is None
    assert "must be more than 0" in refused(
        cli, USAGE, "teams", "update", team, "--max-cost-per-job-usd", "0"
    )
    (after,) = [a for action, a in audit_entries(postgres_url, team) if action == "team.update"]
    assert after is not None and after["max_cost_per_job_usd"] is None


def test_grants_through_the_cli(cli: CliRunner, postgres_url: str, gateway: httpx.Client) -> None:
    team = cli_team(cli, "--monthly-budget-usd", "2")
    invoke(cli, "projects", "create", "--team", team, "launch", "--monthly-budget-usd", "1")
    key = cli_key(cli, team, "--monthly-budget-usd", "5")
    url = str(gateway.base_url)
    assert submit_to(url, key).status_code == 200
    assert submit_to(url, key).status_code == 429  # 2 × 1.68 > 2

    granted = ok_json(
        cli, "budgets", "grant", "--team", team, "--amount-usd", "2.5", "--reason", "launch week"
    )
    assert (granted["scope"], granted["amount_usd"], granted["reason"]) == (
        "team",
        "2.500000",
        "launch week",
    )
    assert granted["period"] == period_of(utcnow())
    assert granted["balance"]["granted_usd"] == "2.500000"
    assert granted["balance"]["remaining_usd"] == "2.820000"  # 2 + 2.5 - 1.68
    assert balance_of(postgres_url, team) == (2_000_000, 2_500_000, PRICE, 0)
    assert submit_to(url, key).status_code == 200  # the grant made room

    project = ok_json(
        cli,
        "budgets",
        "grant",
        "--team",
        team,
        "--project",
        "launch",
        "--amount-usd",
        "1",
        "--reason",
        "demo",
    )
    assert (project["scope"], project["project"]) == ("project", "launch")
    assert balance_of(postgres_url, team, project="launch") == (1_000_000, 1_000_000, 0, 0)
    text = invoke(
        cli,
        "budgets",
        "grant",
        "--team",
        team,
        "--key",
        key.key_id,
        "--amount-usd",
        "0.5",
        "--reason",
        "one more",
    )
    assert text.exit_code == 0 and f"to key {key.key_id} of team {team}" in text.stdout
    assert balance_of(postgres_url, team, key_id=key.key_id) == (5_000_000, 500_000, 2 * PRICE, 0)

    assert [(s, a, r) for s, a, r, _ in grants_of(postgres_url, team)] == [
        ("team", 2_500_000, "launch week"),
        ("project", 1_000_000, "demo"),
        ("key", 500_000, "one more"),
    ]
    assert all(by.startswith("cli:") for *_, by in grants_of(postgres_url, team))
    listed = ok_json(cli, "budgets", "list", "--team", team)
    assert [(g["scope"], g["project"] or g["key_id"] or g["team"]) for g in listed] == [
        ("team", team),
        ("project", "launch"),
        ("key", key.key_id),
    ]
    assert ok_json(cli, "budgets", "list", "--team", team, "--period", "2099-01") == []
    (entry,) = audit_entries(postgres_url, f"{team}/launch")[-1:]
    assert entry[0] == "budget.grant" and entry[1] is not None
    assert (entry[1]["amount_usd"], entry[1]["reason"]) == ("1.000000", "demo")


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--project", "launch", "--key", "KEY"], USAGE, "mutually exclusive"),
        (["--project", "nope"], OPERATIONAL, "has no project named 'nope'"),
        (["--key", "nosuchkey0000000"], OPERATIONAL, "has no API key with id"),
        (["--key", "OTHER"], OPERATIONAL, "has no API key with id"),  # another team's key
        (["--amount-usd", "0"], USAGE, "must be more than 0"),
        (["--amount-usd", "1e3"], USAGE, "plain decimal notation"),
        (["--period", "2026-1"], USAGE, "is not a month"),
        (["--period", "2020-01"], OPERATIONAL, "2020-01 has ended"),
        (["--reason", "  "], USAGE, "must say why"),
    ],
)
def test_grants_that_cannot_work_are_refused_and_change_nothing(
    cli: CliRunner, postgres_url: str, args: list[str], code: int, message: str
) -> None:
    team = cli_team(cli, "--monthly-budget-usd", "2")
    invoke(cli, "projects", "create", "--team", team, "launch", "--monthly-budget-usd", "1")
    key = cli_key(cli, team)
    other = cli_key(cli, cli_team(cli))
    args = [{"KEY": key.key_id, "OTHER": other.key_id}.get(a, a) for a in args]
    options = {"--amount-usd": "1", "--reason": "why"}
    options.update(zip(args[::2], args[1::2], strict=True))  # each case overrides or adds
    command = ["budgets", "grant", "--team", team, *chain.from_iterable(options.items())]
    assert message in refused(cli, code, *command)
    assert grants_of(postgres_url, team) == []
    assert balance_of(postgres_url, team) is None


# Through the admin API


def test_projects_through_the_admin_api(admin: Admin, postgres_url: str) -> None:
    team = make_tenant(postgres_url).team
    created = admin(
        "POST",
        f"/admin/teams/{team}/projects",
        {"name": "launch", "monthly_budget_usd": "20.5", "max_cost_per_job_usd": 2},
    )
    assert created.status_code == 201, created.text
    body = created.json()
    assert (body["team"], body["name"], body["monthly_budget_usd"]) == (team, "launch", "20.500000")
    assert (body["max_cost_per_job_usd"], body["soft_limit_percent"]) == ("2.000000", None)

    duplicate = admin("POST", f"/admin/teams/{team}/projects", {"name": "launch"})
    assert (duplicate.status_code, duplicate.json()["error"]["code"]) == (409, "project_exists")
    bad = admin("POST", f"/admin/teams/{team}/projects", {"name": "bad name"})
    assert (bad.status_code, bad.json()["error"]["param"]) == (400, "name")
    nobody = admin("POST", f"/admin/teams/{unique('nobody')}/projects", {"name": "x"})
    assert (nobody.status_code, nobody.json()["error"]["code"]) == (404, "team_not_found")
    exponent = admin(
        "POST", f"/admin/teams/{team}/projects", {"name": "exp", "monthly_budget_usd": "1e3"}
    )
    assert exponent.status_code == 400
    zero_cap = admin(
        "POST", f"/admin/teams/{team}/projects", {"name": "zero", "max_cost_per_job_usd": 0}
    )
    assert (zero_cap.status_code, zero_cap.json()["error"]["code"]) == (400, "out_of_range")
    # The same name in another team is another project.
    other = make_tenant(postgres_url).team
    assert admin("POST", f"/admin/teams/{other}/projects", {"name": "launch"}).status_code == 201

    assert [p["name"] for p in admin("GET", f"/admin/teams/{team}/projects").json()] == ["launch"]
    assert admin("GET", f"/admin/teams/{team}/projects/launch").json() == body
    missing = admin("GET", f"/admin/teams/{team}/projects/nope")
    assert (missing.status_code, missing.json()["error"]["code"]) == (404, "project_not_found")

    updated = admin(
        "PATCH",
        f"/admin/teams/{team}/projects/launch",
        {"monthly_budget_usd": None, "soft_limit_percent": 75},
    )
    assert updated.status_code == 200, updated.text
    assert (updated.json()["monthly_budget_usd"], updated.json()["soft_limit_percent"]) == (
        None,
        75,
    )
    assert updated.json()["max_cost_per_job_usd"] == "2.000000"  # absent: unchanged
    empty = admin("PATCH", f"/admin/teams/{team}/projects/launch", {})
    assert (empty.status_code, empty.json()["error"]["code"]) == (400, "missing_parameter")
    unknown = admin("PATCH", f"/admin/teams/{team}/projects/nope", {"soft_limit_percent": 5})
    assert (unknown.status_code, unknown.json()["error"]["code"]) == (404, "project_not_found")

    entries = admin.audit(target_id=f"{team}/launch")
    assert [e["action"] for e in entries] == ["project.update", "project.create"]
    assert entries[0]["actor"] == "admin-token"
    assert entries[0]["before"]["monthly_budget_usd"] == "20.500000"
    assert entries[0]["after"]["monthly_budget_usd"] is None


def test_keys_with_project_role_budget_and_cap_through_the_admin_api(
    admin: Admin, postgres_url: str
) -> None:
    team = make_tenant(postgres_url).team
    admin("POST", f"/admin/teams/{team}/projects", {"name": "launch"})
    other = make_tenant(postgres_url).team
    admin("POST", f"/admin/teams/{other}/projects", {"name": "elsewhere"})

    created = admin(
        "POST",
        f"/admin/teams/{team}/keys",
        {
            "name": "farm",
            "project": "launch",
            "role": "manager",
            "monthly_budget_usd": "10",
            "max_cost_per_job_usd": "4",
        },
    )
    assert created.status_code == 201, created.text
    issued = created.json()
    assert (
        issued["project"],
        issued["role"],
        issued["monthly_budget_usd"],
        issued["max_cost_per_job_usd"],
    ) == ("launch", "manager", "10.000000", "4.000000")
    # A project is found in the key's own team only.
    foreign = admin("POST", f"/admin/teams/{team}/keys", {"project": "elsewhere"})
    assert (foreign.status_code, foreign.json()["error"]["code"]) == (404, "project_not_found")
    role = admin("POST", f"/admin/teams/{team}/keys", {"role": "boss"})
    assert role.status_code == 400

    (listed,) = [k for k in admin("GET", f"/admin/teams/{team}/keys").json() if k["name"] == "farm"]
    assert (listed["project"], listed["role"], listed["monthly_budget_usd"]) == (
        "launch",
        "manager",
        "10.000000",
    )

    changed = admin(
        "PATCH",
        f"/admin/keys/{issued['id']}",
        {"project": None, "role": "member", "max_cost_per_job_usd": None},
    )
    assert changed.status_code == 200, changed.text
    assert (
        changed.json()["project"],
        changed.json()["role"],
        changed.json()["monthly_budget_usd"],
        changed.json()["max_cost_per_job_usd"],
    ) == (None, "member", "10.000000", None)
    rebound = admin("PATCH", f"/admin/keys/{issued['id']}", {"project": "elsewhere"})
    assert (rebound.status_code, rebound.json()["error"]["code"]) == (404, "project_not_found")
    missing = admin("PATCH", "/admin/keys/nosuchkeyatall00", {"role": "member"})
    assert (missing.status_code, missing.json()["error"]["code"]) == (404, "key_not_found")
    assert admin("PATCH", f"/admin/keys/{issued['id']}", {}).status_code == 400

    rotated = admin("POST", f"/admin/keys/{issued['id']}/rotate", {"overlap_seconds": 0})
    assert (rotated.json()["role"], rotated.json()["monthly_budget_usd"]) == (
        "member",
        "10.000000",
    )

    entries = admin.audit(target_id=issued["id"], action="key.update")
    (change,) = entries
    assert (change["before"]["role"], change["after"]["role"]) == ("manager", "member")
    assert change["before"]["project_id"] is not None and change["after"]["project_id"] is None


def test_a_team_cost_cap_through_the_admin_api(admin: Admin, postgres_url: str) -> None:
    name = unique("cap")
    created = admin("POST", "/admin/teams", {"name": name, "max_cost_per_job_usd": "1.5"})
    assert created.status_code == 201 and created.json()["max_cost_per_job_usd"] == "1.500000"
    assert admin("GET", f"/admin/teams/{name}").json()["max_cost_per_job_usd"] == "1.500000"
    key = admin("POST", f"/admin/teams/{name}/keys", {}).json()
    tenant = Tenant(team=name, key=key["key"], key_id=key["id"])
    capped = submit_to(admin.url, tenant)
    assert (capped.status_code, capped.json()["error"]["code"]) == (400, "cost_cap_exceeded")

    raised = admin("PATCH", f"/admin/teams/{name}", {"max_cost_per_job_usd": 2})
    assert raised.status_code == 200 and raised.json()["max_cost_per_job_usd"] == "2.000000"
    (entry,) = admin.audit(target_id=name, action="team.update")
    assert (entry["before"]["max_cost_per_job_usd"], entry["after"]["max_cost_per_job_usd"]) == (
        "1.500000",
        "2.000000",
    )


def test_grants_through_the_admin_api(admin: Admin, postgres_url: str) -> None:
    tenant = make_tenant(postgres_url, budget_micro_usd=2_000_000)
    team = tenant.team
    admin("POST", f"/admin/teams/{team}/projects", {"name": "launch", "monthly_budget_usd": 1})
    key = admin("POST", f"/admin/teams/{team}/keys", {"monthly_budget_usd": 3}).json()
    stranger = make_tenant(postgres_url)
    period = period_of(utcnow())
    assert submit_to(admin.url, tenant).status_code == 200

    granted = admin(
        "POST",
        f"/admin/teams/{team}/grants",
        {"amount_usd": "2.5", "period": period, "reason": "launch week"},
    )
    assert granted.status_code == 201, granted.text
    body = granted.json()
    assert (body["scope"], body["amount_usd"], body["reason"], body["granted_by"]) == (
        "team",
        "2.500000",
        "launch week",
        "admin-token",
    )
    assert body["balance"] == {
        "scope": "team",
        "name": team,
        "period": period,
        "budget_usd": "2.000000",
        "granted_usd": "2.500000",
        "captured_usd": "0.000000",
        "held_usd": "1.680000",
        "remaining_usd": "2.820000",
    }
    assert balance_of(postgres_url, team) == (2_000_000, 2_500_000, PRICE, 0)

    project = admin(
        "POST",
        f"/admin/teams/{team}/grants",
        {"amount_usd": 1, "reason": "demo", "project": "launch"},  # period: this month
    )
    assert project.status_code == 201, project.text
    assert (project.json()["project"], project.json()["balance"]["granted_usd"]) == (
        "launch",
        "1.000000",
    )
    by_key = admin(
        "POST",
        f"/admin/teams/{team}/grants",
        {"amount_usd": "0.25", "reason": "k", "key_id": key["id"]},
    )
    assert by_key.status_code == 201, by_key.text
    assert balance_of(postgres_url, team, key_id=key["id"]) == (3_000_000, 250_000, 0, 0)

    listed = admin("GET", f"/admin/teams/{team}/grants", period=period).json()
    assert [(g["scope"], g["amount_usd"]) for g in listed] == [
        ("team", "2.500000"),
        ("project", "1.000000"),
        ("key", "0.250000"),
    ]
    assert admin("GET", f"/admin/teams/{team}/grants").json() == listed  # default: this month
    assert admin("GET", f"/admin/teams/{team}/grants", period="2099-01").json() == []
    (audited,) = admin.audit(target_id=f"{team}/launch", action="budget.grant")
    assert audited["after"]["amount_usd"] == "1.000000" and audited["request_id"]

    for refusal, status, code in [
        ({"project": "launch", "key_id": key["id"]}, 400, "conflicting_parameters"),
        ({"project": "nope"}, 404, "project_not_found"),
        ({"key_id": "nosuchkeyatall00"}, 404, "key_not_found"),
        ({"key_id": stranger.key_id}, 404, "key_not_found"),
        ({"amount_usd": 0}, 400, "out_of_range"),
        ({"reason": " "}, 400, "invalid_length"),
        ({"period": "2020-01"}, 400, "period_ended"),
    ]:
        answer = admin(
            "POST", f"/admin/teams/{team}/grants", {"amount_usd": 1, "reason": "r", **refusal}
        )
        assert (answer.status_code, answer.json()["error"]["code"]) == (status, code), refusal
    assert len(admin("GET", f"/admin/teams/{team}/grants").json()) == 3
    bad_period = admin(
        "POST", f"/admin/teams/{team}/grants", {"amount_usd": 1, "reason": "r", "period": "2026-1"}
    )
    assert bad_period.status_code == 400


def test_a_grant_to_a_level_without_a_budget_is_refused(admin: Admin, postgres_url: str) -> None:
    team = make_tenant(postgres_url).team
    admin("POST", f"/admin/teams/{team}/projects", {"name": "open"})
    answer = admin(
        "POST", f"/admin/teams/{team}/grants", {"amount_usd": 1, "reason": "r", "project": "open"}
    )
    assert (answer.status_code, answer.json()["error"]["code"]) == (409, "budget_unlimited")
    assert admin("GET", f"/admin/teams/{team}/grants").json() == []


def test_a_budget_lowered_below_usage_is_refused_at_every_level(
    admin: Admin, postgres_url: str, cli: CliRunner
) -> None:
    team = make_tenant(postgres_url).team
    admin("POST", f"/admin/teams/{team}/projects", {"name": "launch", "monthly_budget_usd": 5})
    key = admin(
        "POST", f"/admin/teams/{team}/keys", {"project": "launch", "monthly_budget_usd": 5}
    ).json()
    tenant = Tenant(team=team, key=key["key"], key_id=key["id"])
    assert submit_to(admin.url, tenant).status_code == 200  # 1.68 held on every level

    low = admin("PATCH", f"/admin/teams/{team}/projects/launch", {"monthly_budget_usd": 1})
    assert (low.status_code, low.json()["error"]["code"]) == (409, "budget_below_usage")
    low = admin("PATCH", f"/admin/keys/{key['id']}", {"monthly_budget_usd": "1.679999"})
    assert (low.status_code, low.json()["error"]["code"]) == (409, "budget_below_usage")
    assert "below what the project has used" in refused(
        cli,
        OPERATIONAL,
        "projects",
        "update",
        "--team",
        team,
        "launch",
        "--monthly-budget-usd",
        "1",
    )
    assert "below what the key has used" in refused(
        cli, OPERATIONAL, "keys", "update", key["id"], "--monthly-budget-usd", "1"
    )
    # Refused whole: neither the setting nor the month's budget moved, and nothing was audited.
    assert admin("GET", f"/admin/teams/{team}/projects/launch").json()["monthly_budget_usd"] == (
        "5.000000"
    )
    assert balance_of(postgres_url, team, project="launch") == (5_000_000, 0, PRICE, 0)
    assert balance_of(postgres_url, team, key_id=key["id"]) == (5_000_000, 0, PRICE, 0)
    assert admin.audit(target_id=f"{team}/launch", action="project.update") == []
    assert admin.audit(target_id=key["id"], action="key.update") == []

    exact = admin("PATCH", f"/admin/keys/{key['id']}", {"monthly_budget_usd": "1.68"})
    assert exact.status_code == 200
    assert balance_of(postgres_url, team, key_id=key["id"]) == (PRICE, 0, PRICE, 0)
    assert submit_to(admin.url, tenant).status_code == 429  # the key's budget is used up


@pytest.mark.parametrize("level", ["team", "project", "key"])
def test_a_raised_cost_cap_applies_from_the_next_request(
    admin: Admin, postgres_url: str, level: str
) -> None:
    """Like a revocation, a cap change is read from the database: a gateway that has already
    served the key (and refused it on the old cap) accepts the next request."""
    tenant = make_tenant(postgres_url)
    team = tenant.team
    admin("POST", f"/admin/teams/{team}/projects", {"name": "launch"})
    key = admin("POST", f"/admin/teams/{team}/keys", {"project": "launch"}).json()
    caller = Tenant(team=team, key=key["key"], key_id=key["id"])
    path = {
        "team": f"/admin/teams/{team}",
        "project": f"/admin/teams/{team}/projects/launch",
        "key": f"/admin/keys/{key['id']}",
    }[level]
    assert admin("PATCH", path, {"max_cost_per_job_usd": 1}).status_code == 200
    for _ in range(2):  # the second one as a key this gateway has seen
        capped = submit_to(admin.url, caller)
        assert (capped.status_code, capped.json()["error"]["scope"]) == (400, level)
    assert admin("PATCH", path, {"max_cost_per_job_usd": None}).status_code == 200
    accepted = submit_to(admin.url, caller)
    assert accepted.status_code == 200, accepted.text


def test_a_budget_change_reaches_a_later_month_a_grant_opened_early(
    cli: CliRunner, postgres_url: str
) -> None:
    """A grant for next month opens next month's row with today's budget; a budget change
    made afterwards must reach that row too, not only the month under way."""
    team = cli_team(cli, "--monthly-budget-usd", "10")
    _, end = month_bounds(period_of(utcnow()))
    next_month = end.strftime("%Y-%m")
    ok_json(
        cli,
        "budgets",
        "grant",
        "--team",
        team,
        "--amount-usd",
        "1",
        "--period",
        next_month,
        "--reason",
        "next month's launch",
    )
    assert invoke(cli, "teams", "update", team, "--monthly-budget-usd", "25").exit_code == 0

    async def _next_month_budget(session: AsyncSession) -> tuple[int | None, int]:
        team_id = (await session.execute(select(Team.id).where(Team.name == team))).scalar_one()
        row = await session.get(TeamBalance, (team_id, next_month))
        assert row is not None
        return row.budget_micro_usd, row.granted_micro_usd

    assert in_session(postgres_url, _next_month_budget) == (25_000_000, 1_000_000)
