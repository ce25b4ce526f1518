"""The admin API, route by route: who may call it, what it does, and the audit entry each change
writes (the CLI writes them through the same services)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from gateway.cli import main
from tests.support.api import MODEL, SUBMIT_PATH, submit_to
from tests.support.ledger import team_ledger
from tests.support.servers import StartGateway
from tests.support.simulator import SimulatorProbe
from tests.support.tenants import PEPPER, Tenant, make_tenant

ADMIN = "admin-token-for-tests-0123456789"


class Admin:
    def __init__(self, url: str) -> None:
        self.http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {ADMIN}"})

    @property
    def url(self) -> str:
        """The gateway's URL (tenant requests go there too)."""
        return str(self.http.base_url)

    def __call__(self, method: str, path: str, body: Any = None, **params: Any) -> httpx.Response:
        return self.http.request(method, path, json=body, params=params or None)

    def audit(self, **filters: str) -> list[dict[str, Any]]:
        response = self("GET", "/admin/audit", **filters)
        assert response.status_code == 200, response.text
        entries: list[dict[str, Any]] = response.json()["data"]
        return entries


@pytest.fixture
def admin(start_gateway: StartGateway, simulator: SimulatorProbe) -> Iterator[Admin]:
    server = start_gateway(admin_token=ADMIN)
    client = Admin(server.url)
    yield client
    client.http.close()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


ROUTES = [
    ("GET", "/admin/teams", None),
    ("POST", "/admin/teams", {"name": "authz-probe"}),
    ("GET", "/admin/teams/some-team", None),
    ("PATCH", "/admin/teams/some-team", {"cost_center": "X"}),
    ("GET", "/admin/teams/some-team/keys", None),
    ("POST", "/admin/teams/some-team/keys", {}),
    ("POST", "/admin/keys/abcdefghijklmnop/revoke", None),
    ("POST", "/admin/keys/abcdefghijklmnop/rotate", {}),
    ("PATCH", "/admin/keys/abcdefghijklmnop", {"role": "member"}),
    ("GET", "/admin/teams/some-team/projects", None),
    ("POST", "/admin/teams/some-team/projects", {"name": "authz-probe"}),
    ("GET", "/admin/teams/some-team/projects/authz-probe", None),
    ("PATCH", "/admin/teams/some-team/projects/authz-probe", {"soft_limit_percent": 50}),
    ("GET", "/admin/teams/some-team/grants", None),
    ("POST", "/admin/teams/some-team/grants", {"amount_usd": 1, "reason": "authz probe"}),
    ("GET", "/admin/rate-cards", None),
    # Scheduled far ahead: the test database is shared, and a version in force now would
    # re-price every later test's jobs.
    (
        "POST",
        "/admin/rate-cards",
        {
            "model": MODEL,
            "version": "authz-probe",
            "image_fee_usd": "0",
            "per_second_usd": {"480p": "1", "720p": "1"},
            "effective_from": "2099-01-01T00:00:00Z",
        },
    ),
    ("GET", "/admin/jobs", None),
    ("GET", "/admin/jobs/job_x", None),
    ("POST", "/admin/jobs/job_x/release", None),
    ("GET", "/admin/usage", None),
    ("GET", "/admin/audit", None),
]


@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
def test_only_admins_reach_the_admin_api(
    admin: Admin, postgres_url: str, method: str, path: str, body: Any
) -> None:
    tenant = make_tenant(postgres_url)
    url = admin.url
    nobody = httpx.request(method, f"{url}{path}", json=body)
    assert (nobody.status_code, nobody.json()["error"]["type"]) == (401, "authentication_error")
    wrong = httpx.request(
        method, f"{url}{path}", json=body, headers={"Authorization": "Bearer not-the-admin-token"}
    )
    assert (wrong.status_code, wrong.json()["error"]["type"]) == (401, "authentication_error")
    as_tenant = httpx.request(method, f"{url}{path}", json=body, headers=tenant.headers)
    assert (as_tenant.status_code, as_tenant.json()["error"]["type"]) == (403, "permission_error")
    assert admin(method, path, body).status_code not in (401, 403)
    assert admin.audit(actor=tenant.team) == []


def test_teams_create_list_get_update_with_audit(admin: Admin) -> None:
    name = unique("lab")
    created = admin(
        "POST",
        "/admin/teams",
        {
            "name": name,
            "monthly_budget_usd": "250.5",
            "cost_center": "CC-7",
            "soft_limit_percent": 80,
        },
    )
    assert created.status_code == 201, created.text
    team = created.json()
    assert (team["name"], team["monthly_budget_usd"], team["cost_center"], team["disabled"]) == (
        name,
        "250.500000",
        "CC-7",
        False,
    )
    assert admin("POST", "/admin/teams", {"name": name}).status_code == 409
    assert admin("GET", f"/admin/teams/{name}").json() == team
    missing = admin("GET", "/admin/teams/no-such-team-xyz")
    assert (missing.status_code, missing.json()["error"]["code"]) == (404, "team_not_found")

    updated = admin(
        "PATCH", f"/admin/teams/{name}", {"monthly_budget_usd": 300, "max_concurrent_jobs": 4}
    )
    assert updated.status_code == 200
    assert (updated.json()["monthly_budget_usd"], updated.json()["max_concurrent_jobs"]) == (
        "300.000000",
        4,
    )
    entries = admin.audit(target_id=name)
    assert [e["action"] for e in entries] == ["team.update", "team.create"]
    change = entries[0]
    assert change["actor"] == "admin-token" and change["request_id"]
    assert change["before"]["monthly_budget_usd"] == "250.500000"
    assert change["after"]["monthly_budget_usd"] == "300.000000"
    assert (
        change["before"]["max_concurrent_jobs"] is None
        and change["after"]["max_concurrent_jobs"] == 4
    )


def test_team_list_is_paginated(admin: Admin) -> None:
    prefix = unique("page")
    for n in range(3):
        admin("POST", "/admin/teams", {"name": f"{prefix}-{n}"})
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = admin("GET", "/admin/teams", **params).json()
        assert len(page["data"]) <= 2
        seen += [t["name"] for t in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert [n for n in seen if n.startswith(prefix)] == [f"{prefix}-{n}" for n in range(3)]
    assert seen == sorted(seen) and len(seen) == len(set(seen))


def test_budget_changes_apply_to_the_month_under_way(
    admin: Admin, simulator: SimulatorProbe, postgres_url: str
) -> None:
    tenant = make_tenant(postgres_url, budget_micro_usd=2_000_000)
    url = admin.url
    assert submit_to(url, tenant, "x").status_code == 200
    assert submit_to(url, tenant, "x").status_code == 429
    too_low = admin("PATCH", f"/admin/teams/{tenant.team}", {"monthly_budget_usd": "1.00"})
    assert (too_low.status_code, too_low.json()["error"]["code"]) == (409, "budget_below_usage")
    assert (
        admin("PATCH", f"/admin/teams/{tenant.team}", {"monthly_budget_usd": 4}).status_code == 200
    )
    assert submit_to(url, tenant, "x").status_code == 200
    assert team_ledger(postgres_url, tenant.team).balance.budget_micro_usd == 4_000_000


def test_disabling_a_team_stops_its_keys_at_once(
    admin: Admin, simulator: SimulatorProbe, postgres_url: str
) -> None:
    tenant = make_tenant(postgres_url)
    url = admin.url
    assert admin("PATCH", f"/admin/teams/{tenant.team}", {"disabled": True}).json()["disabled"]
    refused = submit_to(url, tenant, "x")
    assert (refused.status_code, refused.json()["error"]["code"]) == (403, "team_disabled")
    assert simulator.submits() == []
    admin("PATCH", f"/admin/teams/{tenant.team}", {"disabled": False})
    assert submit_to(url, tenant, "x").status_code == 200
    actions = [
        (e["before"]["disabled"], e["after"]["disabled"])
        for e in admin.audit(target_id=tenant.team, action="team.update")
    ]
    assert actions == [(True, False), (False, True)]


def test_keys_create_list_revoke_rotate_with_audit(
    admin: Admin, simulator: SimulatorProbe, postgres_url: str
) -> None:
    tenant = make_tenant(postgres_url)
    url = admin.url
    body = {"model": MODEL, "prompt": "x"}
    created = admin(
        "POST", f"/admin/teams/{tenant.team}/keys", {"name": "farm", "expires_in_days": 30}
    )
    assert created.status_code == 201
    issued = created.json()
    assert issued["key"].startswith(f"gwk_{issued['id']}_") and issued["expires_at"]
    headers = {"Authorization": f"Bearer {issued['key']}"}
    assert httpx.post(f"{url}{SUBMIT_PATH}", json=body, headers=headers).status_code == 200

    listed = admin("GET", f"/admin/teams/{tenant.team}/keys").json()
    assert issued["key"] not in json.dumps(listed)
    (mine,) = [k for k in listed if k["id"] == issued["id"]]
    assert mine["last_used_at"] is not None and mine["active"] and mine["name"] == "farm"

    rotated = admin("POST", f"/admin/keys/{issued['id']}/rotate", {"overlap_seconds": 3600})
    assert rotated.status_code == 201
    new_headers = {"Authorization": f"Bearer {rotated.json()['key']}"}
    assert httpx.post(f"{url}{SUBMIT_PATH}", json=body, headers=new_headers).status_code == 200
    assert (
        httpx.post(f"{url}{SUBMIT_PATH}", json=body, headers=headers).status_code == 200
    )  # overlap

    revoked = admin("POST", f"/admin/keys/{issued['id']}/revoke")
    assert revoked.status_code == 200 and revoked.json()["revoked_at"]
    refused = httpx.post(f"{url}{SUBMIT_PATH}", json=body, headers=headers)
    assert (refused.status_code, refused.json()["error"]["code"]) == (401, "api_key_revoked")
    assert admin("POST", "/admin/keys/nosuchkeyatall00/revoke").status_code == 404

    no_overlap = admin("POST", f"/admin/keys/{rotated.json()['id']}/rotate", {"overlap_seconds": 0})
    expired = httpx.post(f"{url}{SUBMIT_PATH}", json=body, headers=new_headers)
    assert (expired.status_code, expired.json()["error"]["code"]) == (401, "api_key_expired")
    newest = {"Authorization": f"Bearer {no_overlap.json()['key']}"}
    assert httpx.post(f"{url}{SUBMIT_PATH}", json=body, headers=newest).status_code == 200

    actions = {(e["action"], e["target_id"]) for e in admin.audit(target_type="key")}
    assert {
        ("key.create", issued["id"]),
        ("key.rotate", issued["id"]),
        ("key.revoke", issued["id"]),
    } <= actions
    for entry in admin.audit(target_type="key"):
        assert issued["key"] not in json.dumps(entry)


def test_rate_cards_list_and_add_with_audit(admin: Admin) -> None:
    seed = admin("GET", "/admin/rate-cards", model=MODEL).json()
    assert seed[0] == {
        "model": MODEL,
        "version": "seed-2026-11",
        "effective_from": "2026-01-01T00:00:00Z",
        "image_fee_usd": "0.050000",
        "per_second_usd": {"480p": "0.096000", "720p": "0.168000"},
    }
    version = unique("v")
    body = {
        "model": MODEL,
        "version": version,
        "image_fee_usd": "0.04",
        "per_second_usd": {"480p": 0.08, "720p": "0.15"},
        "effective_from": "2031-06-01T00:00:00Z",
    }
    added = admin("POST", "/admin/rate-cards", body)
    assert added.status_code == 201, added.text
    assert added.json()["per_second_usd"] == {"480p": "0.080000", "720p": "0.150000"}
    assert admin("POST", "/admin/rate-cards", body).status_code == 409
    partial = admin(
        "POST",
        "/admin/rate-cards",
        {**body, "version": unique("p"), "per_second_usd": {"720p": "1"}},
    )
    assert partial.status_code == 400
    (entry,) = admin.audit(action="rate_card.create", target_id=f"{MODEL}/{version}")
    assert entry["after"]["per_second_usd"] == {"480p": "0.080000", "720p": "0.150000"}


def test_jobs_filtered_paginated_and_one_with_its_entries(
    admin: Admin, simulator: SimulatorProbe, postgres_url: str
) -> None:
    tenant: Tenant = make_tenant(postgres_url)
    url = admin.url
    ids = []
    for prompt in ("a", "b", "c #sim:fail"):
        job_id = submit_to(url, tenant, prompt).json()["job_id"]
        httpx.get(f"{url}/v1/jobs/{job_id}", headers=tenant.headers)
        ids.append(job_id)
    first = admin("GET", "/admin/jobs", team=tenant.team, limit=2).json()
    second = admin(
        "GET", "/admin/jobs", team=tenant.team, limit=2, cursor=first["next_cursor"]
    ).json()
    assert second["next_cursor"] is None
    listed = [j["upstream_job_id"] for j in first["data"] + second["data"]]
    assert listed == list(reversed(ids))  # newest first
    released = admin("GET", "/admin/jobs", team=tenant.team, state="released").json()["data"]
    assert [j["upstream_job_id"] for j in released] == [ids[2]]
    detail = admin("GET", f"/admin/jobs/{ids[0]}").json()
    assert detail["team"] == tenant.team and detail["state"] == "captured"
    assert [(e["kind"], e["amount_usd"]) for e in detail["entries"]] == [
        ("hold", "1.680000"),
        ("capture", "1.680000"),
    ]
    assert admin("GET", f"/admin/jobs/{detail['id']}").json()["upstream_job_id"] == ids[0]
    assert admin("GET", "/admin/jobs/job_nope").status_code == 404
    assert admin("GET", "/admin/jobs", period="2026-13").status_code == 400


def test_an_open_job_is_released_by_hand_once_with_audit(
    admin: Admin, simulator: SimulatorProbe, postgres_url: str
) -> None:
    """After review, an operator gives back the hold of a job the gateway cannot settle (here:
    one nobody polls). It is then settled: never polled, never billed, never released twice."""
    tenant = make_tenant(postgres_url, budget_micro_usd=10_000_000)
    url = admin.url
    job_id = submit_to(url, tenant, "x").json()["job_id"]
    assert admin("GET", "/admin/usage", team=tenant.team).json()[0]["held_usd"] == "1.680000"

    released = admin("POST", f"/admin/jobs/{job_id}/release", {"note": "ticket FIN-42"})
    assert released.status_code == 200, released.text
    detail = released.json()
    assert detail["state"] == "released" and detail["upstream_job_id"] == job_id
    assert [(e["kind"], e["amount_usd"], e["reason"]) for e in detail["entries"]] == [
        ("hold", "1.680000", None),
        ("release", "1.680000", "released_by_admin"),
    ]
    (usage,) = admin("GET", "/admin/usage", team=tenant.team).json()
    assert (usage["held_usd"], usage["captured_usd"], usage["jobs_in_flight"]) == (
        "0.000000",
        "0.000000",
        0,
    )
    (entry,) = admin.audit(action="job.release", target_id=detail["id"])
    assert entry["actor"] == "admin-token"
    assert entry["before"] == {"state": "submitted", "held_usd": "1.680000"}
    assert entry["after"] == {
        "state": "released",
        "reason": "released_by_admin",
        "note": "ticket FIN-42",
    }

    # The upstream finishes it later: a poll answers, but settles (and bills) nothing more.
    polled = httpx.get(f"{url}/v1/jobs/{job_id}", headers=tenant.headers)
    assert polled.json()["status"] == "completed"
    assert [e.kind for e in team_ledger(postgres_url, tenant.team).entries] == ["hold", "release"]
    again = admin("POST", f"/admin/jobs/{job_id}/release")
    assert again.status_code == 409 and again.json()["error"]["code"] == "job_already_settled"
    missing = admin("POST", "/admin/jobs/job_nope/release")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "job_not_found"
    assert admin("POST", f"/admin/jobs/{job_id}/release", {"why": "x"}).status_code == 400


def test_usage_per_team_and_period(
    admin: Admin, simulator: SimulatorProbe, postgres_url: str
) -> None:
    tenant = make_tenant(postgres_url, budget_micro_usd=10_000_000)
    url = admin.url
    job_id = submit_to(url, tenant, "x").json()["job_id"]
    submit_to(url, tenant, "y")
    httpx.get(f"{url}/v1/jobs/{job_id}", headers=tenant.headers)
    (usage,) = admin("GET", "/admin/usage", team=tenant.team).json()
    assert (
        usage["budget_usd"],
        usage["captured_usd"],
        usage["held_usd"],
        usage["remaining_usd"],
        usage["jobs_in_flight"],
    ) == ("10.000000", "1.680000", "1.680000", "6.640000", 1)
    old = admin("GET", "/admin/usage", team=tenant.team, period="2020-01").json()
    assert old[0]["captured_usd"] == "0.000000"
    assert admin("GET", "/admin/usage", team="no-such-team-zz").status_code == 404


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        pytest.param(b'{"name": "a", "name": "b"}', "invalid_json", id="duplicate key"),
        pytest.param(b'{"name": "nan-team", "monthly_budget_usd": NaN}', "invalid_json", id="NaN"),
        pytest.param(
            b'{"name": "x", "monthly_budget_usd": "12.3456789"}',
            "invalid_request",
            id="sub-micro precision",
        ),
        pytest.param(b'{"name": "x", "monthly_budget_usd": true}', "invalid_request", id="bool"),
        pytest.param(b'{"name": "x", "budget": 5}', "invalid_request", id="unknown field"),
        pytest.param(
            b'{"name": "x", "max_concurrent_jobs": "3"}', "invalid_request", id="string for int"
        ),
        pytest.param(b"[1, 2]", "invalid_request", id="not an object"),
    ],
)
def test_admin_bodies_are_parsed_strictly(admin: Admin, raw: bytes, code: str) -> None:
    response = admin.http.post(
        "/admin/teams", content=raw, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == code
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_money_in_admin_bodies_is_exact(admin: Admin) -> None:
    name = unique("exact")
    raw = b'{"name": "%s", "monthly_budget_usd": 0.1}' % name.encode()
    response = admin.http.post(
        "/admin/teams", content=raw, headers={"Content-Type": "application/json"}
    )
    assert response.json()["monthly_budget_usd"] == "0.100000"


def test_audit_log_pages_and_records_cli_changes(admin: Admin, postgres_url: str) -> None:
    name = unique("cli")
    env = {"GATEWAY_DATABASE_URL": postgres_url, "GATEWAY_KEY_PEPPER": PEPPER}
    runner = CliRunner(env=env)
    assert (
        runner.invoke(main, ["teams", "create", name, "--monthly-budget-usd", "5"]).exit_code == 0
    )
    assert (
        runner.invoke(main, ["teams", "update", name, "--soft-limit-percent", "60"]).exit_code == 0
    )
    entries = admin.audit(target_id=name)
    assert [e["action"] for e in entries] == ["team.update", "team.create"]
    assert all(e["actor"].startswith("cli:") for e in entries)
    listed = runner.invoke(main, ["audit", "list", "--target", name, "--json"])
    assert [e["action"] for e in json.loads(listed.output)] == ["team.update", "team.create"]
    first = admin("GET", "/admin/audit", limit=1).json()
    second = admin("GET", "/admin/audit", limit=1, cursor=first["next_cursor"]).json()
    assert first["data"][0]["id"] > second["data"][0]["id"]
    assert admin("GET", "/admin/audit", cursor="!!").status_code == 400
