"""The portal as tests use it: a browser-like client that signs in through the form (with the
sign-in form's CSRF cookie) and reads each page's CSRF token; teams with a manager and a
member key; jobs written straight into the ledger's tables for listings; webhook subscriptions
and their deliveries written as rows (nothing is sent: no delivery is due); sessions aged."""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import httpx
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.audit.models import AuditEntry
from gateway.core.clock import utcnow
from gateway.core.periods import period_of
from gateway.tenancy import service
from gateway.tenancy.models import PortalSession
from gateway.tenancy.portal_sessions import session_id_of
from gateway.webhooks import subscriptions
from gateway.webhooks.models import (
    ALL_EVENT_TYPES,
    DeliveryState,
    WebhookDelivery,
    WebhookEvent,
)
from tests.support.browser import CHROMIUM_ARGS
from tests.support.environment import require_tool
from tests.support.jobs import pending_job
from tests.support.savepoint import Database
from tests.support.tenants import PEPPER, TEST_ACTOR, Tenant, in_session

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

ADMIN_TOKEN = "portal-admin-token-0123456789abcdef"
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
_FORM = re.compile(r"<form\b[^>]*>.*?</form>", re.S)


def csrf_of(html: str) -> str:
    found = _CSRF.search(html)
    assert found is not None, "the page has no CSRF field"
    return found.group(1)


def all_forms(html: str) -> list[str]:
    """Every form of the page, whatever its method (each must carry a ``csrf_token``)."""
    return list(_FORM.findall(html))


def post_forms(html: str) -> list[str]:
    """Every form of the page that posts (each must carry a ``csrf_token``)."""
    return [form for form in _FORM.findall(html) if 'method="post"' in form]


class Portal:
    """One browser: its own cookie jar, redirects not followed (the tests look at them)."""

    def __init__(self, base_url: str) -> None:
        self.http = httpx.Client(base_url=base_url, timeout=30, follow_redirects=False)

    def close(self) -> None:
        self.http.close()

    def sign_in(self, *, api_key: str = "", admin_token: str = "") -> httpx.Response:
        form = self.http.get("/portal/login")
        assert form.status_code == 200
        return self.http.post(
            "/portal/login",
            data={"csrf_token": csrf_of(form.text), "api_key": api_key, "admin_token": admin_token},
        )

    def get(self, path: str, **params: str) -> httpx.Response:
        return self.http.get(path, params=params)

    def csrf(self, path: str = "/portal/") -> str:
        page = self.http.get(path)
        assert page.status_code == 200, page.text
        return csrf_of(page.text)

    def post(self, path: str, data: dict[str, str]) -> httpx.Response:
        return self.http.post(path, data=data)

    @property
    def session_token(self) -> str | None:
        return self.http.cookies.get("gw_session", path="/portal")


@dataclass(frozen=True)
class PortalTeam:
    team: str
    project: str
    manager: Tenant
    """A ``manager`` key bound to ``project``, with a budget of its own."""
    member: Tenant


def make_portal_team(database: Database, *, prefix: str = "portal") -> PortalTeam:
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"

    async def _create(session: AsyncSession) -> PortalTeam:
        await service.create_team(
            session, name, actor=TEST_ACTOR, monthly_budget_micro_usd=500_000_000
        )
        await service.create_project(
            session, name, "atlas", actor=TEST_ACTOR, monthly_budget_micro_usd=200_000_000
        )
        await service.create_project(session, name, "zephyr", actor=TEST_ACTOR)
        manager = await service.create_key(
            session,
            name,
            pepper=PEPPER,
            actor=TEST_ACTOR,
            name="lead",
            project="atlas",
            role="manager",
            monthly_budget_micro_usd=50_000_000,
        )
        member = await service.create_key(
            session, name, pepper=PEPPER, actor=TEST_ACTOR, name="render"
        )
        return PortalTeam(
            team=name,
            project="atlas",
            manager=Tenant(name, manager.token, manager.key.id),
            member=Tenant(name, member.token, member.key.id),
        )

    return in_session(database, _create)


def insert_jobs(database: Database, team: str, specs: list[dict[str, Any]]) -> list[str]:
    """Jobs of ``team`` written as rows (listing tests; no ledger entries): each spec sets
    ``at`` (created), and optionally ``state``, ``tags``, ``project`` (a name) and columns."""

    async def _insert(session: AsyncSession) -> list[str]:
        found = await service.require_team(session, team)
        projects = {p.name: p.id for p in await service.list_projects(session, team)}
        ids = []
        for spec in specs:
            fields = dict(spec)
            at: datetime = fields.pop("at")
            project = fields.pop("project", None)
            job = pending_job(
                found.id,
                fields.pop("estimate", 1_500_000),
                period=period_of(at),
                at=at,
                project_id=projects[project] if project else None,
                upstream_job_id=f"up_{uuid.uuid4().hex}",
                **fields,
            )
            session.add(job)
            ids.append(job.id)
        await session.flush()
        return ids

    return in_session(database, _insert)


def age_session(database: Database, token: str, **values: datetime) -> None:
    """Move a session's ``last_seen_at``/``expires_at`` (the clock, as the database sees it)."""

    async def _age(session: AsyncSession) -> None:
        await session.execute(
            update(PortalSession).where(PortalSession.id == session_id_of(token)).values(**values)
        )

    in_session(database, _age)


def session_row(database: Database, token: str) -> PortalSession | None:
    async def _get(session: AsyncSession) -> PortalSession | None:
        return await session.get(PortalSession, session_id_of(token))

    return in_session(database, _get)


def audit_entries(database: Database, *, actor_prefix: str = "portal:") -> list[AuditEntry]:
    async def _list(session: AsyncSession) -> list[AuditEntry]:
        stmt = select(AuditEntry).where(AuditEntry.actor.startswith(actor_prefix))
        return list((await session.execute(stmt)).scalars())

    return in_session(database, _list)


def key_states(database: Database, team: str) -> dict[str, bool]:
    """Each key of ``team`` → revoked or not."""

    async def _keys(session: AsyncSession) -> dict[str, bool]:
        return {k.id: k.revoked_at is not None for k in await service.list_keys(session, team)}

    return in_session(database, _keys)


@contextmanager
def selenium_chromium(*, width: int = 1280, height: int = 900) -> Iterator[WebDriver]:
    """Debian's headless Chromium through its chromedriver, driven by Selenium, offline
    (``SE_OFFLINE``: selenium-manager never downloads; the browser resolves only
    127.0.0.1); skips loudly, or fails under ``CI=true``, when either is missing."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    install = "Debian packages chromium, chromium-driver"
    driver_path = require_tool("chromedriver", install=install, skipped="browser test SKIPPED")
    browser_path = require_tool("chromium", install=install, skipped="browser test SKIPPED")
    os.environ["SE_OFFLINE"] = "true"
    options = Options()
    options.binary_location = browser_path
    for argument in CHROMIUM_ARGS:
        if not argument.startswith("--window-size"):
            options.add_argument(argument)
    options.add_argument(f"--window-size={width},{height}")
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    try:
        yield driver
    finally:
        driver.quit()


def add_webhook(
    database: Database,
    team: str,
    url: str,
    *,
    events: tuple[str, ...] = ALL_EVENT_TYPES,
    created_by: str = TEST_ACTOR.name,
) -> str:
    """A subscription of ``team`` written as a row (no destination check, no DNS): its id."""

    async def _add(session: AsyncSession) -> str:
        found = await service.require_team(session, team)
        row = await subscriptions.add_subscription(
            session,
            team_id=found.id,
            url=url,
            events=list(events),
            created_by=created_by,
        )
        return row.id

    return in_session(database, _add)


def insert_deliveries(
    database: Database, team: str, subscription_id: str, specs: list[dict[str, Any]]
) -> list[str]:
    """An event and its delivery to ``subscription_id`` per spec (``state``, and optionally
    the event's ``event_id``, ``type`` and ``event_at``, and delivery columns), oldest first;
    a pending one is due in an hour unless told (so no deliverer sends it while the test
    looks). The events' ids, in insertion order."""
    now = utcnow()

    async def _insert(session: AsyncSession) -> list[str]:
        found = await service.require_team(session, team)
        ids = []
        for n, spec in enumerate(specs):
            fields = dict(spec)
            state = DeliveryState(fields.pop("state"))
            event = WebhookEvent(
                id=fields.pop("event_id", None) or f"evt_test_{uuid.uuid4().hex}",
                team_id=found.id,
                type=fields.pop("type", "job.succeeded"),
                payload="{}",
                created_at=fields.pop("event_at", None) or now - timedelta(minutes=len(specs) - n),
            )
            session.add(event)
            await session.flush()
            if state is DeliveryState.PENDING:
                fields.setdefault("next_attempt_at", now + timedelta(hours=1))
            if state is DeliveryState.DELIVERED:
                fields.setdefault("delivered_at", now)
            session.add(
                WebhookDelivery(
                    event_id=event.id, subscription_id=subscription_id, state=state, **fields
                )
            )
            await session.flush()
            ids.append(event.id)
        return ids

    return in_session(database, _insert)


def webhook_states(database: Database, team: str) -> dict[str, bool]:
    """Each subscription of ``team`` (deleted ones too) → deleted or not."""

    async def _rows(session: AsyncSession) -> dict[str, bool]:
        found = await service.require_team(session, team)
        rows = await subscriptions.list_subscriptions(session, found.id, include_deleted=True)
        return {row.id: row.deleted_at is not None for row in rows}

    return in_session(database, _rows)
