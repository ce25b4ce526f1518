"""Budget alerts per level (issue 15): a project's soft limit and every level's hard limit raise
their own alert, once per level, period and threshold, delivered to the alert webhook with
the level named (``scope``, ``scope_name``) beside the team's fields; keys have no soft limit.
The submit pays for a project's soft limit with one balance read only while the alert is still
to be raised, and nothing at all when no level below the team has one."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from gateway.core.clock import utcnow
from gateway.core.periods import period_of
from tests.support.api import submit
from tests.support.levels import make_key, make_project
from tests.support.servers import ServerThread, StartGateway, serving
from tests.support.simulator import SimulatorProbe
from tests.support.tenants import make_tenant
from tests.support.webhooks import WebhookReceiver
from tests.test_hot_path import counting, quiet_gateway, runtime_of

FIELDS = ("threshold", "scope", "scope_name", "team", "budget_usd", "limit_usd", "used_usd")


@pytest.fixture
def hook() -> Iterator[tuple[WebhookReceiver, str]]:
    receiver = WebhookReceiver()
    with serving("/hook", receiver.handle, methods=["POST"]) as url:
        yield receiver, url


def alerting_gateway(start_gateway: StartGateway, url: str) -> ServerThread:
    return start_gateway(alert_webhook_url=url, alert_delivery_interval_seconds=0.1)


def figures(alerts: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return sorted(tuple(alert[field] for field in FIELDS) for alert in alerts)


def test_a_projects_soft_and_hard_limits_raise_its_own_alerts_once(
    start_gateway: StartGateway,
    simulator: SimulatorProbe,
    postgres_url: str,
    hook: tuple[WebhookReceiver, str],
) -> None:
    receiver, url = hook
    tenant = make_tenant(postgres_url)  # 1000.00, no soft limit: the team raises nothing
    make_project(
        postgres_url, tenant.team, "launch", budget_micro_usd=6_000_000, soft_limit_percent=50
    )
    bound = make_key(postgres_url, tenant.team, project="launch")
    server = alerting_gateway(start_gateway, url)
    named = {"X-Gateway-Project": "launch"}
    with httpx.Client(base_url=server.url, timeout=30) as client:
        assert submit(client, bound).status_code == 200  # 1.68 of 6.00
        assert submit(client, tenant, headers=named).status_code == 200  # 3.36: past 3.00
        assert submit(client, bound).status_code == 200  # 5.04: no second alert
        assert submit(client, bound).status_code == 429  # 6.72 > 6.00: the hard limit
        assert submit(client, tenant, headers=named).status_code == 429  # no second
        assert submit(client, tenant).status_code == 200  # outside the project: fine
    alerts = receiver.wait_for(tenant.team, 2)
    time.sleep(0.5)  # nothing more arrives
    assert len(receiver.delivered(tenant.team)) == 2
    assert figures(alerts) == [
        ("hard_limit", "project", "launch", tenant.team, "6.000000", "6.000000", "5.040000"),
        ("soft_limit", "project", "launch", tenant.team, "6.000000", "3.000000", "3.360000"),
    ]
    assert {alert["period"] for alert in alerts} == {period_of(utcnow())}


def test_a_keys_budget_raises_its_hard_limit_and_no_soft_one(
    start_gateway: StartGateway,
    simulator: SimulatorProbe,
    postgres_url: str,
    hook: tuple[WebhookReceiver, str],
) -> None:
    receiver, url = hook
    tenant = make_tenant(postgres_url, budget_micro_usd=100_000_000, soft_limit_percent=90)
    key = make_key(postgres_url, tenant.team, budget_micro_usd=2_000_000)
    server = alerting_gateway(start_gateway, url)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        assert submit(client, key).status_code == 200  # 1.68 of 2.00: 84 %, no key soft limit
        refused = submit(client, key)
        assert refused.status_code == 429
        assert refused.json()["error"]["scope"] == "key"
        assert submit(client, key).status_code == 429
    (alert,) = receiver.wait_for(tenant.team, 1)
    time.sleep(0.5)
    assert len(receiver.delivered(tenant.team)) == 1
    assert figures([alert]) == [
        ("hard_limit", "key", key.key_id, tenant.team, "2.000000", "2.000000", "1.680000")
    ]


def test_each_level_alerts_on_its_own_and_the_team_is_named_as_before(
    start_gateway: StartGateway,
    simulator: SimulatorProbe,
    postgres_url: str,
    hook: tuple[WebhookReceiver, str],
) -> None:
    """One submit takes the team and its project past their soft limits: two alerts; another
    project of the team crossing its own later raises a third; the team's budget exhausted, a
    hard-limit alert for the team (its ``scope_name`` is the team's name)."""
    receiver, url = hook
    tenant = make_tenant(postgres_url, budget_micro_usd=4_000_000, soft_limit_percent=40)
    for name in ("alpha", "beta"):
        make_project(
            postgres_url, tenant.team, name, budget_micro_usd=10_000_000, soft_limit_percent=10
        )
    server = alerting_gateway(start_gateway, url)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        alpha, beta = ({"X-Gateway-Project": name} for name in ("alpha", "beta"))
        assert submit(client, tenant, headers=alpha).status_code == 200  # both past theirs
        assert submit(client, tenant, headers=beta).status_code == 200
        assert submit(client, tenant, headers=alpha).status_code == 429  # 5.04 > 4.00
    alerts = receiver.wait_for(tenant.team, 4)
    time.sleep(0.5)
    assert len(receiver.delivered(tenant.team)) == 4
    team = tenant.team
    assert figures(alerts) == [
        ("hard_limit", "team", team, team, "4.000000", "4.000000", "3.360000"),
        ("soft_limit", "project", "alpha", team, "10.000000", "1.000000", "1.680000"),
        ("soft_limit", "project", "beta", team, "10.000000", "1.000000", "1.680000"),
        ("soft_limit", "team", team, team, "4.000000", "1.600000", "1.680000"),
    ]


def test_a_projects_soft_limit_costs_one_read_until_its_alert_is_raised(
    start_gateway: StartGateway, simulator: SimulatorProbe, postgres_url: str
) -> None:
    """On the hot path (a key seen before, the period's rows in place): two statements, the
    hold and the answer; a project with a soft limit adds the read of its balance, until this
    process has raised its alert; a project with a budget but no soft limit adds nothing."""
    tenant = make_tenant(postgres_url)
    make_project(
        postgres_url, tenant.team, "watched", budget_micro_usd=5_000_000, soft_limit_percent=50
    )
    make_project(postgres_url, tenant.team, "budgeted", budget_micro_usd=100_000_000)
    watched = make_key(postgres_url, tenant.team, project="watched")
    budgeted = make_key(postgres_url, tenant.team, project="budgeted")
    server = quiet_gateway(start_gateway)
    runtime = runtime_of(server)
    counts: dict[str, list[int]] = {"watched": [], "budgeted": []}
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for name, key in (("watched", watched), ("budgeted", budgeted)):
            assert submit(client, key, duration=1).status_code == 200  # opens the rows
            for _ in range(3):  # watched: 0.336 and 0.504 under 2.50, then 3.024 past it
                duration = 15 if len(counts[name]) == 2 else 1
                with counting(runtime) as counted:
                    assert submit(client, key, duration=duration).status_code == 200
                counts[name].append(len(counted.statements))
            with counting(runtime) as counted:
                assert submit(client, key, duration=1).status_code == 200
            counts[name].append(len(counted.statements))
    # watched: the read (with, when crossing, the alert's insert and the read of the team's
    # webhook subscribers to it); once raised, as budgeted.
    assert counts == {"watched": [3, 3, 5, 2], "budgeted": [2, 2, 2, 2]}


def test_levels_alert_on_sqlite_too(
    start_gateway: StartGateway,
    simulator: SimulatorProbe,
    sqlite_url: str,
    hook: tuple[WebhookReceiver, str],
) -> None:
    """The demo's database: no direct statements, the ORM path for every hold."""
    receiver, url = hook
    tenant = make_tenant(sqlite_url)
    make_project(
        sqlite_url, tenant.team, "atlas", budget_micro_usd=4_000_000, soft_limit_percent=40
    )
    key = make_key(sqlite_url, tenant.team, project="atlas", budget_micro_usd=2_000_000)
    server = start_gateway(
        database_url=sqlite_url, alert_webhook_url=url, alert_delivery_interval_seconds=0.1
    )
    with httpx.Client(base_url=server.url, timeout=30) as client:
        assert submit(client, key).status_code == 200  # 1.68: past the project's 1.60
        assert submit(client, key).status_code == 429  # 3.36: over the key's 2.00
    alerts = receiver.wait_for(tenant.team, 2)
    assert figures(alerts) == [
        ("hard_limit", "key", key.key_id, tenant.team, "2.000000", "2.000000", "1.680000"),
        ("soft_limit", "project", "atlas", tenant.team, "4.000000", "1.600000", "1.680000"),
    ]
