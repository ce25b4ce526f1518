"""The portal over HTTP (a real gateway on loopback, Postgres and SQLite): sign-in and its
cookie, CSRF on every form, expiry and sign-out on the server, revoked keys, one team never
seeing another's data, who may change keys (audited), the admin page, the jobs page's
filters and keyset pages, the CSV, the webhooks pages (who may change them, audited; the
secret once; the delivery log), escaping and the security headers."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from gateway.app import create_app
from gateway.core.clock import utcnow
from gateway.portal.web import SECURITY_HEADERS
from gateway.services.portal_pages import PAGE_SIZE
from gateway.services.portal_webhooks import DELIVERIES_PER_PAGE
from tests.support.api import submit
from tests.support.portal import (
    ADMIN_TOKEN,
    Portal,
    PortalTeam,
    add_webhook,
    age_session,
    all_forms,
    audit_entries,
    csrf_of,
    insert_deliveries,
    insert_jobs,
    key_states,
    make_portal_team,
    post_forms,
    session_row,
    webhook_states,
)
from tests.support.servers import ServerThread, running
from tests.support.settings import gateway_settings
from tests.support.tenants import TEST_ACTOR, in_session

PAGES = (
    "/portal/",
    "/portal/jobs",
    "/portal/keys",
    "/portal/webhooks",
    "/portal/reports",
    "/portal/admin",
)
TEAM_PAGES = PAGES[:5]
NOW = utcnow()
LOOPBACK_HOOK = "http://127.0.0.1:9/hooks/gateway?token=query-secret-0123"
"""A webhook destination of the tests: the discard port on loopback (nothing listens)."""
BULK_DAY = (
    (NOW - timedelta(days=1)).strftime("%Y-%m-%d") if NOW.day > 1 else NOW.strftime("%Y-%m-%d")
)


@dataclass(frozen=True)
class World:
    url: str
    database: str
    a: PortalTeam
    b: PortalTeam
    a_jobs: list[str]
    """Team A's jobs, newest first, as the jobs page must list them."""
    b_jobs: list[str]
    settled_job: str
    """One of A's jobs submitted and settled through the gateway (it has a capture)."""
    submitted_on: str
    """The UTC day of the jobs submitted through the gateway."""
    a_webhook: str
    """A live subscription of team A (to a closed loopback port; nothing is due to it)."""


def _bulk_specs() -> list[dict[str, object]]:
    """130 jobs this month: states, projects and tags in turn, some sharing a created time
    (the keyset's tie-break on id), on two days."""
    start = datetime.fromisoformat(BULK_DAY).replace(tzinfo=UTC, hour=1)
    states = ["captured", "released", "submitted", "captured", "pending"]
    specs: list[dict[str, object]] = []
    for n in range(130):
        at = start + timedelta(minutes=(n // 3) * 7)  # three jobs per instant
        if n >= 100:
            at = start - timedelta(days=1) if start.day > 1 else start + timedelta(hours=20)
        specs.append(
            {
                "at": at,
                "state": states[n % 5],
                "project": ["atlas", "zephyr", None][n % 3],
                "tags": {"env": "prod" if n % 4 else "dev"} if n % 2 == 0 else None,
            }
        )
    return specs


@pytest.fixture(scope="module", params=["postgres", "sqlite"])
def world(request: pytest.FixtureRequest, simulator_server: ServerThread) -> Iterator[World]:
    database: str = request.getfixturevalue(f"{request.param}_url")
    settings = gateway_settings(database, simulator_server.url, admin_token=ADMIN_TOKEN)
    with running(create_app(settings)) as server:
        a = make_portal_team(database, prefix="alpha")
        b = make_portal_team(database, prefix="bravo")
        with httpx.Client(base_url=server.url, timeout=30) as client:
            settled = []
            for prompt, tags in (("a cat", "env=prod,user=dana"), ("a dog #sim:fail", "env=dev")):
                answer = submit(
                    client, a.manager, prompt, headers={"X-Gateway-Tags": tags}, duration=5
                )
                assert answer.status_code == 200, answer.text
                job = answer.json()["job_id"]
                assert client.get(f"/v1/jobs/{job}", headers=a.manager.headers).status_code == 200
                settled.append(job)
            answer = submit(client, b.manager, "b's own job", duration=3)
            assert answer.status_code == 200
        bulk = insert_jobs(database, a.team, _bulk_specs())
        b_bulk = insert_jobs(database, b.team, [{"at": NOW - timedelta(minutes=5)}])
        yield World(
            url=server.url,
            database=database,
            a=a,
            b=b,
            a_jobs=_listed(database, a.team),
            b_jobs=_listed(database, b.team),
            settled_job=_gateway_id(database, settled[0]),
            submitted_on=utcnow().strftime("%Y-%m-%d"),
            a_webhook=add_webhook(database, a.team, LOOPBACK_HOOK),
        )
        assert bulk and b_bulk


def _listed(database: str, team: str) -> list[str]:
    from sqlalchemy import select

    from gateway.jobs.models import Job
    from gateway.tenancy import service

    async def _ids(session) -> list[str]:  # type: ignore[no-untyped-def]
        found = await service.require_team(session, team)
        stmt = (
            select(Job.id)
            .where(Job.team_id == found.id)
            .order_by(Job.created_at.desc(), Job.id.desc())
        )
        return list((await session.execute(stmt)).scalars())

    return in_session(database, _ids)


def _gateway_id(database: str, upstream_job_id: str) -> str:
    from sqlalchemy import select

    from gateway.jobs.models import Job

    async def _id(session) -> str:  # type: ignore[no-untyped-def]
        stmt = select(Job.id).where(Job.upstream_job_id == upstream_job_id)
        return str((await session.execute(stmt)).scalar_one())

    return in_session(database, _id)


@pytest.fixture
def browser(world: World) -> Iterator[Portal]:
    portal = Portal(world.url)
    yield portal
    portal.close()


def _signed_in(world: World, *, api_key: str = "", admin_token: str = "") -> Portal:
    portal = Portal(world.url)
    answer = portal.sign_in(api_key=api_key, admin_token=admin_token)
    assert answer.status_code == 303, answer.text
    return portal


@pytest.fixture
def manager(world: World) -> Iterator[Portal]:
    portal = _signed_in(world, api_key=world.a.manager.key)
    yield portal
    portal.close()


@pytest.fixture
def member(world: World) -> Iterator[Portal]:
    portal = _signed_in(world, api_key=world.a.member.key)
    yield portal
    portal.close()


@pytest.fixture
def other_team(world: World) -> Iterator[Portal]:
    portal = _signed_in(world, api_key=world.b.manager.key)
    yield portal
    portal.close()


@pytest.fixture
def admin(world: World) -> Iterator[Portal]:
    portal = _signed_in(world, admin_token=ADMIN_TOKEN)
    yield portal
    portal.close()


def _cookie_header(answer: httpx.Response, name: str) -> str:
    (found,) = [h for h in answer.headers.get_list("set-cookie") if h.startswith(f"{name}=")]
    return found


# --------------------------------------------------------------------------- sign-in


def test_sign_in_with_a_key_sets_a_strict_http_only_session_cookie(
    world: World, browser: Portal
) -> None:
    form = browser.get("/portal/login")
    login_cookie = _cookie_header(form, "gw_login_csrf")
    assert "HttpOnly" in login_cookie and "SameSite=Strict" in login_cookie
    answer = browser.sign_in(api_key=world.a.member.key)
    assert answer.status_code == 303
    assert answer.headers["location"] == "/portal/"
    cookie = _cookie_header(answer, "gw_session")
    assert "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie
    assert "Path=/portal" in cookie
    assert "Secure" not in cookie  # GATEWAY_ENVIRONMENT=development
    assert world.a.member.key not in cookie
    overview = browser.get("/portal/")
    assert overview.status_code == 200
    assert world.a.team in overview.text


def test_the_cookie_is_secure_outside_development(
    postgres_url: str, simulator_server: ServerThread
) -> None:
    settings = gateway_settings(
        postgres_url,
        simulator_server.url,
        environment="production",
        admin_token=ADMIN_TOKEN,
        key_pepper="production-pepper-0123456789abcdef",
        upstream_api_key="sk-upstream-production-0123456789",
    )
    with running(create_app(settings)) as server:
        portal = Portal(server.url)
        try:
            form = portal.get("/portal/login")
            login_cookie = _cookie_header(form, "gw_login_csrf")
            assert "Secure" in login_cookie
            # A client keeps a Secure cookie for HTTPS only: this one is sent by hand.
            value = login_cookie.split(";")[0].split("=", 1)[1]
            answer = portal.http.post(
                "/portal/login",
                data={"csrf_token": csrf_of(form.text), "admin_token": ADMIN_TOKEN},
                headers={"Cookie": f"gw_login_csrf={value}"},
            )
            assert answer.status_code == 303
            cookie = _cookie_header(answer, "gw_session")
            assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
        finally:
            portal.close()


@pytest.mark.parametrize(
    "fields",
    [
        {"api_key": "gwk_nosuchkey_0000000000000000000000000000"},
        {"api_key": "not a key at all"},
        {"admin_token": "wrong-admin-token"},
        {"api_key": "", "admin_token": ""},
    ],
)
def test_a_failed_sign_in_says_only_that_it_failed(
    world: World, browser: Portal, fields: dict[str, str]
) -> None:
    form = browser.get("/portal/login")
    answer = browser.post("/portal/login", {"csrf_token": csrf_of(form.text), **fields})
    assert answer.status_code == 401
    assert "Sign-in failed: that key or admin token was not accepted." in answer.text
    assert "gw_session" not in answer.headers.get("set-cookie", "")
    assert browser.get("/portal/").status_code == 303


def test_a_revoked_key_and_both_credentials_are_refused_alike(world: World) -> None:
    portal = Portal(world.url)
    both = portal.sign_in(api_key=world.a.member.key, admin_token=ADMIN_TOKEN)
    assert both.status_code == 401
    portal.close()


@pytest.mark.parametrize("token", [None, "", "forged-token"])
def test_the_sign_in_form_needs_its_csrf_token(
    world: World, browser: Portal, token: str | None
) -> None:
    browser.get("/portal/login")  # the cookie is set; the form's field is what is missing
    data = {"api_key": world.a.member.key}
    if token is not None:
        data["csrf_token"] = token
    answer = browser.post("/portal/login", data)
    assert answer.status_code == 403
    assert "gw_session" not in answer.headers.get("set-cookie", "")


def test_the_sign_in_csrf_token_must_match_the_cookie(world: World) -> None:
    first, second = Portal(world.url), Portal(world.url)
    try:
        token = csrf_of(first.get("/portal/login").text)
        second.get("/portal/login")  # a cookie of its own
        answer = second.post("/portal/login", {"csrf_token": token, "api_key": world.a.member.key})
        assert answer.status_code == 403
        no_cookie = Portal(world.url)
        answer = no_cookie.post(
            "/portal/login", {"csrf_token": token, "api_key": world.a.member.key}
        )
        assert answer.status_code == 403
        no_cookie.close()
    finally:
        first.close()
        second.close()


def test_a_key_in_the_url_signs_nobody_in(world: World, browser: Portal) -> None:
    answer = browser.get("/portal/login", api_key=world.a.member.key)
    assert answer.status_code == 200
    assert "gw_session" not in answer.headers.get("set-cookie", "")
    assert browser.get("/portal/", api_key=world.a.member.key).status_code == 303
    form = browser.get("/portal/login")
    answer = browser.http.post(
        "/portal/login",
        params={"api_key": world.a.member.key},
        data={"csrf_token": csrf_of(form.text)},
    )
    assert answer.status_code == 401


@pytest.mark.parametrize("path", [*PAGES, "/portal/jobs/abc", "/portal/reports.csv"])
def test_pages_redirect_to_sign_in_without_a_session(browser: Portal, path: str) -> None:
    answer = browser.get(path)
    assert answer.status_code == 303
    assert answer.headers["location"] == "/portal/login"


def test_a_forged_cookie_is_no_session(browser: Portal) -> None:
    browser.http.cookies.set("gw_session", "made-up", path="/portal")
    assert browser.get("/portal/").status_code == 303


# --------------------------------------------------------------------------- CSRF on forms


def test_every_form_carries_a_csrf_token(
    world: World, browser: Portal, manager: Portal, admin: Portal
) -> None:
    """Posting or not (the jobs filters, the admin's team picker): PRODUCT.md §11."""
    pages = {(browser, "/portal/login")}
    for portal in (manager, admin):
        for path in (
            *TEAM_PAGES,
            f"/portal/jobs/{world.settled_job}",
            f"/portal/webhooks/{world.a_webhook}",
        ):
            pages.add((portal, path))
    pages.add((admin, "/portal/admin"))
    seen = {"get": 0, "post": 0}
    for portal, path in pages:
        answer = portal.get(path, **({"team": world.a.team} if portal is admin else {}))
        assert answer.status_code == 200, path
        for form in all_forms(answer.text):
            assert 'name="csrf_token"' in form, (path, form)
            seen["post" if 'method="post"' in form else "get"] += 1
    # The filters and the picker; sign-in, sign-out everywhere, the keys' and webhooks' forms.
    assert seen["get"] >= 6 and seen["post"] >= 20, seen


@pytest.mark.parametrize("token", [None, "", "wrong"])
def test_signed_in_forms_refuse_a_missing_or_wrong_csrf_token(
    world: World, manager: Portal, token: str | None
) -> None:
    before_keys = key_states(world.database, world.a.team)
    before_audit = len(audit_entries(world.database))
    data = {} if token is None else {"csrf_token": token}
    create = manager.post("/portal/keys", {**data, "name": "sneaky", "role": "manager"})
    revoke = manager.post(f"/portal/keys/{world.a.member.key_id}/revoke", data)
    hook = manager.post("/portal/webhooks", {**data, "url": "http://10.0.0.1/x"})  # refused
    unhook = manager.post(f"/portal/webhooks/{world.a_webhook}/delete", data)
    logout = manager.post("/portal/logout", data)
    statuses = [create, revoke, hook, unhook, logout]
    assert [answer.status_code for answer in statuses] == [403] * 5
    assert key_states(world.database, world.a.team) == before_keys
    assert webhook_states(world.database, world.a.team)[world.a_webhook] is False
    assert len(audit_entries(world.database)) == before_audit
    assert manager.get("/portal/").status_code == 200  # still signed in


# --------------------------------------------------------------------------- the session


def test_sign_out_ends_the_session_on_the_server(world: World) -> None:
    portal = _signed_in(world, api_key=world.a.member.key)
    token = portal.session_token
    assert token is not None
    answer = portal.post("/portal/logout", {"csrf_token": portal.csrf()})
    assert answer.status_code == 303
    assert answer.headers["location"] == "/portal/login"
    row = session_row(world.database, token)
    assert row is not None and row.ended_at is not None
    replay = Portal(world.url)
    replay.http.cookies.set("gw_session", token, path="/portal")
    assert replay.get("/portal/").status_code == 303
    replay.close()
    portal.close()


def test_an_idle_session_expires(world: World, member: Portal) -> None:
    token = member.session_token
    assert token is not None
    age_session(world.database, token, last_seen_at=utcnow() - timedelta(minutes=29))
    assert member.get("/portal/").status_code == 200  # within 30 minutes: and seen now
    row = session_row(world.database, token)
    assert row is not None and row.last_seen_at > utcnow() - timedelta(minutes=1)
    age_session(world.database, token, last_seen_at=utcnow() - timedelta(minutes=31))
    assert member.get("/portal/").status_code == 303


def test_a_session_ends_at_its_absolute_expiry_however_active(world: World, member: Portal) -> None:
    token = member.session_token
    assert token is not None
    row = session_row(world.database, token)
    assert row is not None
    assert abs((row.expires_at - row.created_at) - timedelta(hours=12)) < timedelta(seconds=1)
    age_session(world.database, token, expires_at=utcnow() - timedelta(seconds=1))
    assert member.get("/portal/").status_code == 303


def test_a_revoked_keys_session_ends(world: World) -> None:
    from gateway.tenancy import service

    fresh = in_session(
        world.database,
        lambda s: service.create_key(s, world.a.team, pepper=_pepper(), actor=TEST_ACTOR),
    )
    portal = _signed_in(world, api_key=fresh.token)
    assert portal.get("/portal/").status_code == 200
    in_session(world.database, lambda s: service.revoke_key(s, fresh.key.id, actor=TEST_ACTOR))
    assert portal.get("/portal/").status_code == 303
    assert portal.sign_in(api_key=fresh.token).status_code == 401
    portal.close()


def test_a_disabled_teams_sessions_end(world: World, simulator_server: ServerThread) -> None:
    from gateway.tenancy import service

    team = make_portal_team(world.database, prefix="gone")
    portal = _signed_in(world, api_key=team.member.key)
    assert portal.get("/portal/").status_code == 200
    in_session(
        world.database,
        lambda s: service.update_team(s, team.team, {"disabled": True}, actor=TEST_ACTOR),
    )
    assert portal.get("/portal/").status_code == 303
    portal.close()


def _pepper() -> str:
    from tests.support.tenants import PEPPER

    return PEPPER


# --------------------------------------------------------------------------- isolation


def test_a_second_teams_key_never_sees_the_first_teams_data(
    world: World, other_team: Portal
) -> None:
    pages = {path: other_team.get(path).text for path in TEAM_PAGES}
    everything = "\n".join(pages.values())
    assert world.b.team in pages["/portal/"]
    for job_id in world.a_jobs[:20]:
        assert job_id[:12] not in everything
    for key in (world.a.manager, world.a.member):
        assert key.key_id not in everything
    assert world.a.team not in everything
    for job_id in (world.a_jobs[0], world.settled_job):
        assert other_team.get(f"/portal/jobs/{job_id}").status_code == 404
    # Naming the other team in the URL changes nothing: a key has one team.
    named = other_team.get("/portal/jobs", team=world.a.team)
    assert named.status_code == 200 and world.a.team not in named.text
    assert world.b_jobs[0][:12] in named.text
    csv_text = other_team.get("/portal/reports.csv", team=world.a.team).text
    assert world.a.team not in csv_text
    revoke = other_team.post(
        f"/portal/keys/{world.a.member.key_id}/revoke", {"csrf_token": other_team.csrf()}
    )
    assert revoke.status_code == 404
    assert key_states(world.database, world.a.team)[world.a.member.key_id] is False


def test_the_overview_shows_each_level_as_usage_does(world: World, manager: Portal) -> None:
    page = manager.get("/portal/").text
    usage = httpx.get(world.url + "/v1/usage", headers=world.a.manager.headers).json()
    rows = dict(re.findall(r'<tr data-scope="(\w+)">(.*?)</tr>', page, re.S))
    assert set(rows) == {"team", "project", "key"}  # each has a budget of its own
    for scope in usage["scopes"]:
        row = rows[scope["scope"]]
        for field in ("captured", "held", "remaining", "forecast"):
            cell = re.search(rf'class="num {field}">([^<]*)<', row)
            assert cell is not None
            shown = cell.group(1).strip().split(" ")[0]
            assert shown == _dollars(scope[f"{field}_usd"]), (scope["scope"], field)
    assert 'id="daily-spend"' in page
    assert world.a_jobs[0][:12] in page  # the latest jobs


def _dollars(usd: str) -> str:
    from decimal import ROUND_HALF_UP, Decimal

    return f"${Decimal(usd).quantize(Decimal('0.01'), rounding=ROUND_HALF_UP):,}"


# --------------------------------------------------------------------------- keys


def test_a_member_reads_keys_but_cannot_change_them(world: World, member: Portal) -> None:
    page = member.get("/portal/keys").text
    assert world.a.manager.key_id in page and world.a.member.key_id in page
    assert [f for f in post_forms(page) if "/portal/logout" not in f] == []
    assert "secret_hash" not in page and world.a.member.key not in page
    before_keys = key_states(world.database, world.a.team)
    before_audit = len(audit_entries(world.database))
    csrf = member.csrf("/portal/keys")
    create = member.post("/portal/keys", {"csrf_token": csrf, "name": "mine", "role": "manager"})
    revoke = member.post(f"/portal/keys/{world.a.manager.key_id}/revoke", {"csrf_token": csrf})
    assert (create.status_code, revoke.status_code) == (403, 403)
    assert key_states(world.database, world.a.team) == before_keys
    assert len(audit_entries(world.database)) == before_audit


def test_a_manager_creates_and_revokes_keys_audited_as_portal(
    world: World, manager: Portal
) -> None:
    csrf = manager.csrf("/portal/keys")
    created = manager.post(
        "/portal/keys",
        {
            "csrf_token": csrf,
            "name": "<script>alert(1)</script>",
            "role": "member",
            "project": "zephyr",
            "monthly_budget_usd": "12.50",
        },
    )
    assert created.status_code == 200
    secret = re.search(r'id="new-key-secret">([^<]+)<', created.text)
    new_id = re.search(r'id="new-key-id">([^<]+)<', created.text)
    assert secret is not None and new_id is not None
    assert "shown only once" in created.text
    assert "<script>alert(1)</script>" not in created.text
    token, key_id = secret.group(1), new_id.group(1)
    assert httpx.get(world.url + "/v1/usage", headers={"x-api-key": token}).status_code == 200
    listing = manager.get("/portal/keys").text
    assert key_id in listing and token not in listing
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in listing
    revoked = manager.post(f"/portal/keys/{key_id}/revoke", {"csrf_token": csrf})
    assert revoked.status_code == 303
    assert httpx.get(world.url + "/v1/usage", headers={"x-api-key": token}).status_code == 401
    actions = {
        (e.action, e.target_id)
        for e in audit_entries(world.database)
        if e.actor == f"portal:{world.a.manager.key_id}"
    }
    assert {("key.create", key_id), ("key.revoke", key_id)} <= actions


def test_an_invalid_key_form_is_refused_with_nothing_created(world: World, manager: Portal) -> None:
    before = key_states(world.database, world.a.team)
    csrf = manager.csrf("/portal/keys")
    for fields in (
        {"monthly_budget_usd": "1e3"},
        {"role": "owner"},
        {"project": "nosuch"},
    ):
        answer = manager.post("/portal/keys", {"csrf_token": csrf, **fields})
        assert answer.status_code in (400, 404), fields
    assert key_states(world.database, world.a.team) == before


# --------------------------------------------------------------------------- admin


def test_the_admin_page_is_refused_to_key_sessions(manager: Portal, member: Portal) -> None:
    for portal in (manager, member):
        answer = portal.get("/portal/admin")
        assert answer.status_code == 403
        assert "admin" in answer.text


def test_the_admin_sees_every_team_and_may_pick_one(world: World, admin: Portal) -> None:
    page = admin.get("/portal/admin")
    assert page.status_code == 200
    assert world.a.team in page.text and world.b.team in page.text
    assert 'id="review"' in page.text and 'id="alerts"' in page.text
    jobs = admin.get("/portal/jobs", team=world.b.team).text
    assert world.b_jobs[0][:12] in jobs
    detail = admin.get(f"/portal/jobs/{world.settled_job}", team=world.a.team)
    assert detail.status_code == 200
    keys = admin.get("/portal/keys", team=world.a.team).text
    assert world.a.member.key_id in keys and 'name="csrf_token"' in keys
    assert admin.get("/portal/", team="no-such-team").status_code == 404


# --------------------------------------------------------------------------- jobs


def _page_ids(html: str) -> list[str]:
    return re.findall(r'<tr data-job-id="([0-9a-f]+)">', html)


def _walk(portal: Portal, **filters: str) -> list[str]:
    """Every job id the jobs page lists under ``filters``, following the next-page links."""
    ids: list[str] = []
    answer = portal.get("/portal/jobs", **filters)
    for _ in range(100):
        assert answer.status_code == 200, answer.text
        page = _page_ids(answer.text)
        assert len(page) <= PAGE_SIZE
        ids.extend(page)
        found = re.search(r'<a href="([^"]+)" id="next-page">', answer.text)
        if found is None:
            return ids
        answer = portal.http.get(found.group(1).replace("&amp;", "&"))
    raise AssertionError("the pages never ended")


def test_jobs_pages_list_every_job_once_newest_first(world: World, member: Portal) -> None:
    listed = _walk(member)
    assert listed == world.a_jobs
    assert len(listed) > 2 * PAGE_SIZE


def test_jobs_filters_apply_across_pages(world: World, member: Portal) -> None:
    specs = _bulk_specs()
    by_state = _walk(member, state="captured")
    assert by_state and set(by_state) <= set(world.a_jobs)
    for html_state in {_state_of(member, job) for job in by_state[:3]}:
        assert html_state == "captured"
    expected_captured = sum(1 for s in specs if s["state"] == "captured") + 1  # + the real one
    assert len(by_state) == expected_captured
    atlas = _walk(member, project="atlas")
    # The bulk's atlas jobs, and the two submitted with the manager's atlas-bound key.
    assert len(atlas) == sum(1 for s in specs if s["project"] == "atlas") + 2
    prod = _walk(member, tag="env=prod")
    assert len(prod) == sum(1 for s in specs if (s["tags"] or {}).get("env") == "prod") + 1
    day = _walk(member, day=BULK_DAY)
    on_the_day = sum(1 for s in specs if s["at"].strftime("%Y-%m-%d") == BULK_DAY)  # type: ignore[attr-defined]
    submitted_that_day = 2 if world.submitted_on == BULK_DAY else 0
    assert len(day) == on_the_day + submitted_that_day
    both = _walk(member, state="captured", project="atlas", tag="env=prod")
    assert set(both) == set(by_state) & set(atlas) & set(prod)
    assert [j for j in listed_order(world) if j in set(both)] == both


def listed_order(world: World) -> list[str]:
    return world.a_jobs


def _state_of(portal: Portal, job_id: str) -> str:
    page = portal.get(f"/portal/jobs/{job_id}").text
    found = re.search(r'<span class="state (\w+)">', page)
    assert found is not None
    return found.group(1)


@pytest.mark.parametrize(
    "params",
    [
        {"state": "nosuch"},
        {"tag": "not a tag"},
        {"day": "2026-13-01"},
        {"cursor": "garbage!"},
        {"cursor": "bm90fGE"},
    ],
)
def test_bad_job_filters_are_a_400_page(member: Portal, params: dict[str, str]) -> None:
    answer = member.get("/portal/jobs", **params)
    assert answer.status_code == 400
    assert "text/html" in answer.headers["content-type"]


def test_a_job_page_shows_its_ledger_entries(world: World, manager: Portal) -> None:
    page = manager.get(f"/portal/jobs/{world.settled_job}")
    assert page.status_code == 200
    entries = re.findall(r"<td>(hold|capture|release)</td>", page.text)
    assert entries == ["hold", "capture"]
    assert "env=prod, user=dana" in page.text
    assert manager.get("/portal/jobs/0123456789abcdef0123456789abcdef").status_code == 404


# --------------------------------------------------------------------------- reports


def test_the_reports_page_and_its_csv(world: World, manager: Portal) -> None:
    month = NOW.strftime("%Y-%m")
    page = manager.get("/portal/reports")
    assert page.status_code == 200 and month in page.text
    answer = manager.get("/portal/reports.csv", month=month)
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/csv")
    assert answer.headers["content-disposition"] == (
        f'attachment; filename="chargeback-{world.a.team}-{month}.csv"'
    )
    rows = list(csv.DictReader(io.StringIO(answer.text)))
    assert {row["team"] for row in rows if row["line"] == "charge"} == {world.a.team}
    total = [row for row in rows if row["line"] == "total"]
    assert len(total) == 1
    assert manager.get("/portal/reports.csv", month="2026-1").status_code == 400


# --------------------------------------------------------------------------- escaping, headers


def test_user_controlled_strings_are_escaped(world: World, manager: Portal) -> None:
    insert_jobs(
        world.database,
        world.a.team,
        [{"at": utcnow(), "tags": {"note": "<img src=x onerror=alert(1)>"}}],
    )
    page = manager.get("/portal/jobs").text
    assert "<img src=x" not in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page
    refused = manager.get("/portal/jobs", project="<script>x</script>")
    assert refused.status_code == 404
    assert "<script>x</script>" not in refused.text
    assert "&lt;script&gt;x&lt;/script&gt;" in refused.text


@pytest.mark.parametrize(
    "path", ["/portal/login", "/portal/", "/portal/static/portal.css", "/portal/nosuch"]
)
def test_every_portal_response_has_the_security_headers(
    world: World, browser: Portal, path: str
) -> None:
    answer = browser.get(path)
    for name, value in SECURITY_HEADERS.items():
        assert answer.headers[name] == value, name


def test_signed_in_pages_have_the_headers_and_no_script(manager: Portal, admin: Portal) -> None:
    for portal, paths in ((manager, TEAM_PAGES), (admin, PAGES)):
        for path in paths:
            answer = portal.get(path)
            assert answer.status_code == 200, path
            assert answer.headers["content-security-policy"].startswith("default-src 'self'")
            assert "<script" not in answer.text
            assert 'style="' not in answer.text


def test_the_portal_is_not_in_the_api_docs(world: World) -> None:
    paths = httpx.get(world.url + "/openapi.json").json()["paths"]
    assert not [path for path in paths if path.startswith("/portal")]


# --------------------------------------------------------------------------- webhooks


@pytest.fixture(scope="module")
def loopback_gateway(world: World, simulator_server: ServerThread) -> Iterator[str]:
    """A second gateway on the world's database that allows loopback destinations (the
    world's refuses them, as a deployment does by default): where subscriptions to a loopback
    port can be created through the form. Nothing listens there; nothing is due to it."""
    settings = gateway_settings(
        world.database,
        simulator_server.url,
        admin_token=ADMIN_TOKEN,
        webhook_allow_private_networks=True,
    )
    with running(create_app(settings)) as server:
        yield server.url


def _webhook_audit(world: World, actor: str) -> set[tuple[str, str]]:
    return {
        (e.action, e.target_id)
        for e in audit_entries(world.database, actor_prefix=actor)
        if e.action.startswith("webhook.")
    }


def _create_form(csrf: str, url: str, *events: str) -> dict[str, str | list[str]]:
    return {"csrf_token": csrf, "url": url, "events": list(events)}


def test_a_manager_creates_lists_and_deletes_a_webhook_audited_as_portal(
    world: World, loopback_gateway: str
) -> None:
    portal = Portal(loopback_gateway)
    try:
        assert portal.sign_in(api_key=world.a.manager.key).status_code == 303
        page = portal.get("/portal/webhooks").text
        form = re.search(r'<form[^>]*id="create-webhook".*?</form>', page, re.S)
        assert form is not None
        assert form.group(0).count(" checked") == 5  # every event type, by default
        created = portal.http.post(
            "/portal/webhooks",
            data=_create_form(csrf_of(page), LOOPBACK_HOOK, "job.succeeded", "job.failed"),
        )
        assert created.status_code == 200, created.text
        secret = re.search(r'id="new-webhook-secret">([^<]+)<', created.text)
        new_id = re.search(r'id="new-webhook-id">([^<]+)<', created.text)
        assert secret is not None and new_id is not None
        secret_text, hook_id = secret.group(1), new_id.group(1)
        assert secret_text.startswith("whsec_")
        assert "shown only once" in created.text
        assert "query-secret-0123" not in created.text

        listing = portal.get("/portal/webhooks").text
        row = re.search(rf'<tr data-webhook-id="{hook_id}">(.*?)</tr>', listing, re.S)
        assert row is not None
        assert "http://127.0.0.1:9/hooks/gateway?…" in row.group(1)
        assert "job.succeeded" in row.group(1) and "job.moderated" not in row.group(1)
        log = portal.get(f"/portal/webhooks/{hook_id}").text
        everything = listing + log
        assert secret_text not in everything and "query-secret-0123" not in everything

        csrf = csrf_of(listing)
        deleted = portal.post(f"/portal/webhooks/{hook_id}/delete", {"csrf_token": csrf})
        assert deleted.status_code == 303
        assert deleted.headers["location"] == "/portal/webhooks"
        assert webhook_states(world.database, world.a.team)[hook_id] is True
        listing = portal.get("/portal/webhooks").text
        row = re.search(rf'<tr data-webhook-id="{hook_id}">(.*?)</tr>', listing, re.S)
        assert row is not None and "deleted" in row.group(1) and "<form" not in row.group(1)
        again = portal.post(f"/portal/webhooks/{hook_id}/delete", {"csrf_token": csrf})
        assert again.status_code == 404
        assert {("webhook.create", hook_id), ("webhook.delete", hook_id)} <= _webhook_audit(
            world, f"portal:{world.a.manager.key_id}"
        )
    finally:
        portal.close()


def test_the_admin_manages_a_teams_webhooks_audited_as_the_admin_token(
    world: World, loopback_gateway: str
) -> None:
    portal = Portal(loopback_gateway)
    try:
        assert portal.sign_in(admin_token=ADMIN_TOKEN).status_code == 303
        page = portal.get("/portal/webhooks", team=world.b.team).text
        assert 'id="create-webhook"' in page and world.b.team in page
        created = portal.http.post(
            "/portal/webhooks",
            params={"team": world.b.team},
            data=_create_form(csrf_of(page), "http://[::1]:9/b"),  # no event checked
        )
        assert created.status_code == 400
        assert "give at least one event type" in created.text
        created = portal.http.post(
            "/portal/webhooks",
            params={"team": world.b.team},
            data=_create_form(csrf_of(page), "http://[::1]:9/b", "job.*"),
        )
        assert created.status_code == 200, created.text
        new_id = re.search(r'id="new-webhook-id">([^<]+)<', created.text)
        assert new_id is not None
        hook_id = new_id.group(1)
        assert f'href="/portal/webhooks?team={world.b.team}"' in created.text
        assert set(webhook_states(world.database, world.b.team)) == {hook_id}
        deleted = portal.post(
            f"/portal/webhooks/{hook_id}/delete?team={world.b.team}", {"csrf_token": csrf_of(page)}
        )
        assert deleted.status_code == 303
        assert deleted.headers["location"] == f"/portal/webhooks?team={world.b.team}"
        assert {("webhook.create", hook_id), ("webhook.delete", hook_id)} <= _webhook_audit(
            world, "admin-token"
        )
    finally:
        portal.close()


def test_a_webhooks_delivery_log_newest_first_by_keyset(world: World, manager: Portal) -> None:
    hook = add_webhook(world.database, world.a.team, LOOPBACK_HOOK)
    older = insert_deliveries(
        world.database, world.a.team, hook, [{"state": "delivered"}] * (DELIVERIES_PER_PAGE + 3)
    )
    recent = insert_deliveries(
        world.database,
        world.a.team,
        hook,
        [
            {
                "state": "delivered",
                "attempts": 2,
                "last_status_code": 204,
                "last_error": "HTTP 503",
                "last_attempt_at": utcnow(),
            },
            {
                "state": "pending",
                "type": "budget.soft_limit",
                "attempts": 3,
                "last_status_code": 500,
                "last_error": "HTTP 500",
                "last_attempt_at": utcnow(),
            },
            {
                "state": "failed",
                "type": "job.failed",
                "attempts": 14,
                "last_error": "ConnectError <b>refused</b>",
                "last_attempt_at": utcnow(),
            },
        ],
    )
    answer = manager.get(f"/portal/webhooks/{hook}")
    assert answer.status_code == 200
    rows = re.findall(r'<tr data-event-id="([^"]+)">(.*?)</tr>', answer.text, re.S)
    listed = [event for event, _ in rows]
    expected = [*reversed(older + recent)]
    assert listed == expected[:DELIVERIES_PER_PAGE]
    cells = dict(rows)
    assert "failed" in cells[recent[2]] and ">14<" in cells[recent[2]]
    assert "ConnectError &lt;b&gt;refused&lt;/b&gt;" in cells[recent[2]]
    assert "pending" in cells[recent[1]] and "HTTP 500" in cells[recent[1]]
    assert "budget.soft_limit" in cells[recent[1]]
    assert "delivered" in cells[recent[0]] and ">204<" in cells[recent[0]]
    assert "query-secret-0123" not in answer.text
    found = re.search(r'<a href="([^"]+)" id="older-deliveries">', answer.text)
    assert found is not None
    rest = manager.http.get(found.group(1).replace("&amp;", "&"))
    assert rest.status_code == 200
    assert re.findall(r'<tr data-event-id="([^"]+)">', rest.text) == expected[DELIVERIES_PER_PAGE:]
    assert 'id="older-deliveries"' not in rest.text and "end of the log" in rest.text
    for before in ("x", "-1", "0", "9" * 30):
        assert manager.get(f"/portal/webhooks/{hook}", before=before).status_code == 400
    assert manager.get("/portal/webhooks/wh_nosuch").status_code == 404


def test_a_member_reads_webhooks_but_cannot_change_them(world: World, member: Portal) -> None:
    page = member.get("/portal/webhooks")
    assert page.status_code == 200
    assert world.a_webhook in page.text and 'id="read-only"' in page.text
    assert [f for f in post_forms(page.text) if "/portal/logout" not in f] == []
    assert member.get(f"/portal/webhooks/{world.a_webhook}").status_code == 200
    before_hooks = webhook_states(world.database, world.a.team)
    before_audit = len(audit_entries(world.database))
    csrf = csrf_of(page.text)
    create = member.http.post(
        "/portal/webhooks",
        data=_create_form(csrf, "http://10.0.0.1/x", "job.succeeded"),  # refused: a member
    )
    delete = member.post(f"/portal/webhooks/{world.a_webhook}/delete", {"csrf_token": csrf})
    assert (create.status_code, delete.status_code) == (403, 403)
    assert "manager" in create.text
    assert webhook_states(world.database, world.a.team) == before_hooks
    assert len(audit_entries(world.database)) == before_audit


def test_another_teams_webhook_and_its_log_are_not_found(world: World, other_team: Portal) -> None:
    listing = other_team.get("/portal/webhooks", team=world.a.team).text
    assert world.a_webhook not in listing and world.a.team not in listing
    for params in ({}, {"before": "5"}, {"team": world.a.team}):
        answer = other_team.get(f"/portal/webhooks/{world.a_webhook}", **params)
        assert answer.status_code == 404
        assert "text/html" in answer.headers["content-type"]
    delete = other_team.post(
        f"/portal/webhooks/{world.a_webhook}/delete", {"csrf_token": csrf_of(listing)}
    )
    assert delete.status_code == 404
    assert webhook_states(world.database, world.a.team)[world.a_webhook] is False


@pytest.mark.parametrize(
    ("url", "events", "message"),
    [
        ("http://127.0.0.1:8080/hook?token=sekrit", ["job.succeeded"], "127.0.0.1 is loopback"),
        ("http://10.0.0.1/hook?token=sekrit", ["job.*"], "10.0.0.1 is private"),
        ("http://localhost/hook?token=sekrit", [], "give at least one event type"),
        ("ftp://10.0.0.1/hook?token=sekrit", ["job.failed"], "must start with http://"),  # refused
        ("http://10.0.0.1/hook?token=sekrit", ["job.nope"], "unknown event type"),  # refused
        ("", ["job.failed"], "must not be empty"),
    ],
)
def test_a_refused_webhook_is_the_form_again_with_its_reason(
    world: World, manager: Portal, url: str, events: list[str], message: str
) -> None:
    """The world's gateway refuses private destinations (the setting is off): IP literals
    are judged without a lookup, so no connection or DNS query is made."""
    before_hooks = webhook_states(world.database, world.a.team)
    before_audit = len(audit_entries(world.database))
    csrf = manager.csrf("/portal/webhooks")
    answer = manager.http.post("/portal/webhooks", data=_create_form(csrf, url, *events))
    assert answer.status_code == 400
    error = re.search(r'id="webhook-error" role="alert">([^<]*)<', answer.text)
    assert error is not None and message in error.group(1), answer.text
    assert 'id="create-webhook"' in answer.text and world.a_webhook in answer.text
    assert "sekrit" not in answer.text
    assert webhook_states(world.database, world.a.team) == before_hooks
    assert len(audit_entries(world.database)) == before_audit


def test_a_webhooks_path_is_shown_to_those_who_manage_it_only(
    world: World, manager: Portal, member: Portal
) -> None:
    """A chat webhook's path is its secret: members see ``http://host/…``; nobody sees the
    query."""
    managed = manager.get("/portal/webhooks").text
    read = member.get("/portal/webhooks").text
    assert "http://127.0.0.1:9/hooks/gateway?…" in managed
    assert "http://127.0.0.1:9/…?…" in read and "/hooks/gateway" not in read
    log = member.get(f"/portal/webhooks/{world.a_webhook}").text
    assert "/hooks/gateway" not in log
    assert all("query-secret" not in page for page in (managed, read, log))


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "https://evil.example"},
        {"Origin": "null", "Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
    ],
)
def test_a_sign_in_posted_from_another_site_is_refused(
    world: World, browser: Portal, headers: dict[str, str]
) -> None:
    """The sign-in form's CSRF token is a double-submit cookie, which a sibling subdomain can
    plant: the browser's own word on where the post came from is checked too."""
    token = csrf_of(browser.get("/portal/login").text)
    data = {"csrf_token": token, "api_key": world.a.member.key}
    answer = browser.http.post("/portal/login", data=data, headers=headers)
    assert answer.status_code == 403
    assert "gw_session" not in answer.headers.get("set-cookie", "")
    # What Chromium sends from the form: Origin null (the pages' no-referrer policy).
    same = browser.http.post(
        "/portal/login", data=data, headers={"Origin": "null", "Sec-Fetch-Site": "same-origin"}
    )
    assert same.status_code == 303


def test_the_token_of_a_form_that_only_reads_authorises_no_change(
    world: World, manager: Portal
) -> None:
    """The jobs filters are a GET form: their csrf_token ends up in the URL (history, a
    proxy's log). It is not the session's: every POST refuses it."""
    page = manager.get("/portal/jobs").text
    filters = re.search(r'<form method="get"[^>]*id="job-filters".*?</form>', page, re.S)
    assert filters is not None
    read = csrf_of(filters.group(0))
    posting = csrf_of(manager.get("/portal/keys").text)
    assert read != posting
    before = key_states(world.database, world.a.team)
    revoke = manager.post(f"/portal/keys/{world.a.member.key_id}/revoke", {"csrf_token": read})
    assert revoke.status_code == 403
    assert key_states(world.database, world.a.team) == before
    assert manager.get("/portal/jobs", csrf_token=read, state="captured").status_code == 200
