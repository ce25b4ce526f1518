"""Team webhooks as operators and teams use them: subscriptions through the CLI and the admin
API (the secret shown once, audited), destinations that are not public refused before any
connection, and the acceptance run: two gateway replicas and the simulator, jobs settled by
concurrent polls through both and by the reconciler, every settlement's event delivered to a
receiver that verifies signatures with ``standardwebhooks``, after it was down for a while."""

from __future__ import annotations

import asyncio
import base64
import getpass
import ipaddress
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner, Result

from gateway.cli import main
from gateway.core.usd import format_usd
from gateway.errors import WebhookDestinationNotAllowed
from gateway.webhooks.destinations import check_destination, parse_url, refusal
from gateway.webhooks.models import ALL_EVENT_TYPES
from tests.support.api import submit_async
from tests.support.database import create_postgres_database, drop_postgres_database
from tests.support.ledger import team_ledger
from tests.support.processes import GatewayProcess, replica_env
from tests.support.servers import ServerThread, StartGateway
from tests.support.tenants import PEPPER, make_tenant
from tests.support.webhook_receiver import SignedReceiver, signed_receiver

ADMIN = "webhooks-admin-token-0123456789"
AUTH = {"Authorization": f"Bearer {ADMIN}"}
JOB_EVENTS = ["job.succeeded", "job.failed", "job.moderated"]
NOT_PUBLIC = [
    "http://127.0.0.1/hook",
    "http://[::1]:8080/hook",
    "http://localhost/hook",
    "http://api.localhost/hook",
    "http://10.1.2.3/hook",  # every one of these is refused before any connection
    "http://192.168.0.10/hook",  # refused
    "http://169.254.169.254/latest/meta-data/",  # refused
    "http://100.64.0.1/hook",
    "http://0.0.0.0/hook",
    "http://[fd00::1]/hook",
    "http://[fe80::1]/hook",
    "http://[::ffff:10.0.0.1]/hook",  # refused
    "http://127.1/hook",
    "http://2130706433/hook",
    "http://0x7f.0.0.1/hook",
    "https://224.0.0.1/hook",
]


def decoded_secret(secret: str) -> bytes:
    assert secret.startswith("whsec_")
    return base64.b64decode(secret.removeprefix("whsec_"), validate=True)


# The rules, without any network


async def _no_dns(host: str, port: int) -> list[str]:
    raise AssertionError(f"{host} was looked up: literals and localhost must not be")


@pytest.mark.parametrize("url", NOT_PUBLIC)
def test_destinations_that_are_not_public_are_refused_without_a_lookup(url: str) -> None:
    with pytest.raises(WebhookDestinationNotAllowed) as refused:
        asyncio.run(check_destination(parse_url(url), allow_private=False, resolve=_no_dns))
    assert refused.value.code == "webhook_destination_not_allowed"
    asyncio.run(check_destination(parse_url(url), allow_private=True, resolve=_no_dns))


def test_a_name_is_refused_if_any_of_its_addresses_is_not_public() -> None:
    async def resolve(host: str, port: int) -> list[str]:
        assert (host, port) == ("hooks.example.com", 443)
        return ["93.184.216.34", "10.0.0.7"]  # a second A record into the private network

    destination = parse_url("https://hooks.example.com/in")
    with pytest.raises(
        WebhookDestinationNotAllowed, match="resolves to an address that is private"
    ) as refused:
        asyncio.run(check_destination(destination, allow_private=False, resolve=resolve))
    assert "10.0.0.7" not in str(refused.value)  # the internal DNS is not told to tenants

    async def public(host: str, port: int) -> list[str]:
        return ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946"]

    asyncio.run(check_destination(destination, allow_private=False, resolve=public))


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("8.8.8.8", None),
        ("2606:4700::1111", None),
        ("127.0.0.53", "loopback"),
        ("::1", "loopback"),
        ("169.254.169.254", "link-local"),  # refused (a rule, nothing is contacted)
        ("100.100.0.1", "shared address space"),
        ("172.16.5.4", "private"),
        ("::ffff:169.254.169.254", "link-local"),  # refused
        ("2002:0a00:0001::1", "private"),  # 6to4 of 10.0.0.1
        ("64:ff9b::7f00:1", "loopback"),  # NAT64 of 127.0.0.1
        ("ff02::1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("192.0.2.1", "private"),  # documentation
    ],
)
def test_address_rules(address: str, why: str | None) -> None:
    assert refusal(ipaddress.ip_address(address)) == why


# Through the CLI


@pytest.fixture
def cli(tmp_path: Path) -> CliRunner:
    runner = CliRunner(
        env={
            "GATEWAY_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'webhooks.db'}",
            "GATEWAY_KEY_PEPPER": PEPPER,
            "GATEWAY_WEBHOOK_ALLOW_PRIVATE_NETWORKS": "true",
        }
    )
    assert invoke(runner, "db", "upgrade").exit_code == 0
    assert invoke(runner, "teams", "create", "video-lab").exit_code == 0
    return runner


def invoke(runner: CliRunner, *args: str, **env: str) -> Result:
    return runner.invoke(main, list(args), catch_exceptions=False, env=env or None)


def test_cli_create_list_deliveries_delete(cli: CliRunner) -> None:
    url = "http://127.0.0.1:9/hook?token=abc"  # never contacted: the team has no events
    created = invoke(cli, "webhooks", "create", "--team", "video-lab", "--url", url, "--json")
    assert created.exit_code == 0, created.output
    shown = json.loads(created.output)
    assert set(shown) == {"id", "url", "events", "secret"}
    assert shown["id"].startswith("wh_") and len(shown["id"]) == 19
    assert (shown["url"], shown["events"]) == (url, list(ALL_EVENT_TYPES))
    assert len(decoded_secret(shown["secret"])) == 32
    jobs_only = invoke(
        cli, "webhooks", "create", "--team", "video-lab", "--url", url, "--events", "job.*"
    )
    assert (
        jobs_only.exit_code == 0 and "signing secret (shown only now): whsec_" in jobs_only.output
    )

    listed_json = invoke(cli, "webhooks", "list", "--team", "video-lab", "--json").output
    listed = json.loads(listed_json)
    assert (listed[0]["id"], listed[0]["events"]) == (shown["id"], list(ALL_EVENT_TYPES))
    assert listed[1]["events"] == JOB_EVENTS
    assert "secret" not in listed[0] and shown["secret"] not in listed_json
    table = invoke(cli, "webhooks", "list", "--team", "video-lab").output
    assert shown["id"] in table and "EVENTS" in table and "whsec_" not in table

    assert json.loads(invoke(cli, "webhooks", "deliveries", shown["id"], "--json").output) == []
    assert "ATTEMPTS" in invoke(cli, "webhooks", "deliveries", shown["id"]).output
    deleted = json.loads(invoke(cli, "webhooks", "delete", shown["id"], "--json").output)
    assert deleted["id"] == shown["id"] and deleted["deleted_at"] is not None
    remaining = json.loads(invoke(cli, "webhooks", "list", "--team", "video-lab", "--json").output)
    assert [w["id"] for w in remaining] == [listed[1]["id"]]
    again = invoke(cli, "webhooks", "delete", shown["id"])
    assert again.exit_code == 1 and again.output.startswith("error: webhook subscription")

    audit = json.loads(invoke(cli, "audit", "list", "--json").output)
    mine = [
        (e["action"], e["target_id"], e["actor"]) for e in audit if e["target_type"] == "webhook"
    ]
    actor = f"cli:{getpass.getuser()}"
    assert ("webhook.create", shown["id"], actor) in mine
    assert ("webhook.delete", shown["id"], actor) in mine
    audit_text = json.dumps(audit)
    assert "whsec_" not in audit_text and "token=abc" not in audit_text  # no secrets kept


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--events", "job.done"], "error: unknown event type 'job.done'"),
        (["--events", ","], "error: give at least one event type"),
        (["--url", "ftp://example.com/x"], "error: the URL must start with http:// or https://"),
        (["--url", "http://u:p@example.com/x"], "error: the URL must not carry a user name"),
        (["--team", "nobody"], "error: no team named 'nobody'"),
        (["--private", "false"], "error: webhook destination 127.0.0.1 is loopback"),
        (["--url", "http://10.0.0.1/x", "--private", "false"], "error: webhook destination 10."),
    ],
)
def test_cli_refusals_are_one_error_line(cli: CliRunner, args: list[str], message: str) -> None:
    options = {"--team": "video-lab", "--url": "http://127.0.0.1:9/hook"}
    options.update(zip(args[::2], args[1::2], strict=True))
    private = options.pop("--private", "true")
    result = invoke(
        cli,
        "webhooks",
        "create",
        *[part for pair in options.items() for part in pair],
        GATEWAY_WEBHOOK_ALLOW_PRIVATE_NETWORKS=private,
    )
    assert result.exit_code == 1
    assert result.output.startswith(message), result.output
    assert len(result.output.strip().splitlines()) == 1
    listed = invoke(cli, "webhooks", "list", "--team", "video-lab", "--json")
    assert json.loads(listed.output) == []


# Through the admin API


@pytest.fixture
def admin_gateway(start_gateway: StartGateway) -> Iterator[httpx.Client]:
    server = start_gateway(admin_token=ADMIN, webhook_allow_private_networks=True)
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=30) as client:
        yield client


def test_admin_api_create_list_delete_and_the_delivery_log(
    admin_gateway: httpx.Client, postgres_url: str
) -> None:
    tenant = make_tenant(postgres_url)
    path = f"/admin/teams/{tenant.team}/webhooks"
    url = "http://127.0.0.1:9/hook"
    created = admin_gateway.post(path, json={"url": url, "events": ["job.succeeded"]})
    assert created.status_code == 201, created.text
    body = created.json()
    assert (body["url"], body["events"], body["team"]) == (url, ["job.succeeded"], tenant.team)
    assert len(decoded_secret(body["secret"])) == 32 and body["created_by"] == "admin-token"
    default = admin_gateway.post(path, json={"url": url}).json()
    assert default["events"] == list(ALL_EVENT_TYPES)

    listed = admin_gateway.get(path)
    assert [w["id"] for w in listed.json()] == [body["id"], default["id"]]
    assert "secret" not in listed.json()[0] and body["secret"] not in listed.text

    log = admin_gateway.get(f"/admin/webhooks/{body['id']}/deliveries", params={"limit": 10})
    assert log.status_code == 200 and log.json() == {"data": [], "next_before": None}

    deleted = admin_gateway.delete(f"/admin/webhooks/{body['id']}")
    assert deleted.status_code == 200 and deleted.json()["deleted_at"] is not None
    assert [w["id"] for w in admin_gateway.get(path).json()] == [default["id"]]
    gone = admin_gateway.delete(f"/admin/webhooks/{body['id']}")
    assert (gone.status_code, gone.json()["error"]["code"]) == (404, "webhook_not_found")
    # A deleted subscription's log stays readable; an unknown one is not found.
    assert admin_gateway.get(f"/admin/webhooks/{body['id']}/deliveries").status_code == 200
    unknown = admin_gateway.get("/admin/webhooks/wh_0000000000000000/deliveries")
    assert (unknown.status_code, unknown.json()["error"]["code"]) == (404, "webhook_not_found")
    no_team = admin_gateway.post("/admin/teams/nobody-here/webhooks", json={"url": url})
    assert (no_team.status_code, no_team.json()["error"]["code"]) == (404, "team_not_found")
    anonymous = httpx.post(str(admin_gateway.base_url) + path, json={"url": url})
    assert anonymous.status_code == 401

    audit = admin_gateway.get("/admin/audit", params={"target_id": body["id"]}).json()["data"]
    assert [(e["action"], e["actor"]) for e in audit] == [
        ("webhook.delete", "admin-token"),
        ("webhook.create", "admin-token"),
    ]
    # The audit log keeps the URL's host only: a chat webhook's path is its secret.
    shown = "http://127.0.0.1:9/…"
    assert audit[1]["after"] == {"team": tenant.team, "url": shown, "events": ["job.succeeded"]}


def test_admin_api_refuses_bad_bodies_and_destinations_in_the_envelope(
    start_gateway: StartGateway, postgres_url: str
) -> None:
    server = start_gateway(admin_token=ADMIN)  # private networks not allowed (the default)
    tenant = make_tenant(postgres_url)
    path = f"{server.url}/admin/teams/{tenant.team}/webhooks"
    cases: list[tuple[dict[str, Any], str]] = [
        ({"url": "http://127.0.0.1:9/hook", "events": ["job.finished"]}, "invalid_webhook_events"),
        ({"url": "http://127.0.0.1:9/hook", "events": []}, "invalid_request"),
        ({"url": "gopher://example.com/"}, "invalid_webhook_url"),
        ({"url": "https://example.com/#frag"}, "invalid_webhook_url"),
        ({"url": "https://user@example.com/"}, "invalid_webhook_url"),
        ({"url": "https:///no-host"}, "invalid_webhook_url"),
        ({"url": "https://example.com/" + "x" * 2048}, "invalid_request"),
        *(({"url": url}, "webhook_destination_not_allowed") for url in NOT_PUBLIC),
    ]
    with httpx.Client(headers=AUTH, timeout=30) as client:
        for body, code in cases:
            refused = client.post(path, json=body)
            assert refused.status_code == 400, (body, refused.text)
            error = refused.json()["error"]
            assert (error["type"], error["code"]) == ("invalid_request_error", code), body
        assert client.get(path).json() == []  # nothing was created


# Acceptance: two replicas, polls and the reconciler, a receiver that was down


@pytest.fixture
def receiver() -> Iterator[SignedReceiver]:
    with signed_receiver() as receiver:
        yield receiver


@pytest.fixture
def own_database(postgres_url: str) -> Iterator[str]:
    """A database of the test's own: every replica delivers every team's due deliveries, and
    other tests' (to closed ports, retried) would share the replicas' passes."""
    url = create_postgres_database()
    yield url
    drop_postgres_database(url)


@pytest.fixture
def two_replicas(
    own_database: str, simulator_server: ServerThread, tmp_path: Path
) -> Iterator[list[GatewayProcess]]:
    env = replica_env(
        own_database,
        simulator_server.url,
        GATEWAY_ADMIN_TOKEN=ADMIN,
        GATEWAY_WEBHOOK_ALLOW_PRIVATE_NETWORKS="true",
        GATEWAY_WEBHOOK_DELIVERY_INTERVAL_SECONDS="0.2",
        GATEWAY_WEBHOOK_RETRY_BASE_SECONDS="0.2",
        # However long the outage lasts on a slow machine, the receiver back gets every
        # delivery within about a second (else backoff grows past the test's wait).
        GATEWAY_WEBHOOK_RETRY_MAX_SECONDS="1",
        GATEWAY_RECONCILER_ENABLED="true",
        GATEWAY_RECONCILER_INTERVAL_SECONDS="0.5",
        GATEWAY_RECONCILER_FIRST_CHECK_AFTER_SECONDS="0.5",
        GATEWAY_SHUTDOWN_DRAIN_SECONDS="0",
    )
    processes = [GatewayProcess(env, tmp_path, f"replica-{n}") for n in range(2)]
    with ThreadPoolExecutor(len(processes)) as pool:  # both at once: half the wall time
        try:
            list(pool.map(GatewayProcess.start, processes))
            yield processes
        finally:
            list(pool.map(GatewayProcess.stop, processes))


def outcome_of(i: int) -> tuple[str, str]:
    """The prompt of job ``i`` and the event type its settlement must send."""
    if i % 5 == 0:
        return f"job {i} #sim:fail", "job.failed"
    if i % 5 == 1:
        return f"job {i} #sim:moderated", "job.moderated"
    return f"job {i}", "job.succeeded"


def wait_until(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_every_settlement_sends_one_verified_event_across_replicas_after_an_outage(
    two_replicas: list[GatewayProcess], receiver: SignedReceiver, own_database: str
) -> None:
    postgres_url = own_database
    jobs = 40
    tenant = make_tenant(postgres_url)
    first, second = (r.url for r in two_replicas)
    with httpx.Client(headers=AUTH, timeout=30) as admin:
        created = admin.post(
            f"{first}/admin/teams/{tenant.team}/webhooks",
            json={"url": receiver.url, "events": ["job.*"]},
        )
        assert created.status_code == 201, created.text
        subscription = created.json()
        assert subscription["events"] == JOB_EVENTS
        receiver.secrets.append(subscription["secret"])
        receiver.down = True  # the team's endpoint is down while its jobs settle

        async def submit_and_poll() -> list[str]:
            async with httpx.AsyncClient(timeout=30) as client:
                submitted = await asyncio.gather(
                    *(
                        submit_async(client, tenant, outcome_of(i)[0], url=(first, second)[i % 2])
                        for i in range(jobs)
                    )
                )
                assert {r.status_code for r in submitted} == {200}
                ids = [r.json()["job_id"] for r in submitted]
                # Half of the jobs are polled, three times at once through both replicas; the
                # other half never: the replicas' reconcilers settle those.
                await asyncio.gather(
                    *(
                        client.get(f"{url}/v1/jobs/{job_id}", headers=tenant.headers)
                        for job_id in ids[::2]
                        for url in (first, second, first)
                    )
                )
                return ids

        upstream_ids = asyncio.run(submit_and_poll())

        def settled() -> bool:
            ledger = team_ledger(postgres_url, tenant.team)
            return all(job.state in ("captured", "released") for job in ledger.jobs)

        wait_until(settled, 30, "every job to be settled")
        log_path = f"{first}/admin/webhooks/{subscription['id']}/deliveries"

        def delivery_log() -> list[dict[str, Any]]:
            rows: list[dict[str, Any]] = []
            before = None
            while True:
                params = {"limit": 25, **({"before": before} if before else {})}
                page = admin.get(log_path, params=params).json()
                rows += page["data"]
                before = page["next_before"]
                if before is None:
                    return rows

        wait_until(
            lambda: len(log := delivery_log()) == jobs and all(d["attempts"] >= 1 for d in log),
            30,
            "every delivery to be tried while the receiver is down",
        )
        assert receiver.received == []
        receiver.down = False

        ledger = team_ledger(postgres_url, tenant.team)
        expected = {f"evt_job_{job.id}": job for job in ledger.jobs}
        events = receiver.wait_for(expected, timeout=30)
        log = delivery_log()

    # After dedup by webhook-id: exactly one event per settled job, none missing, none extra.
    assert receiver.bad_signatures == 0
    assert set(events) == set(expected) and len(expected) == jobs
    assert {e["data"]["team"] for e in receiver.by_id().values()} >= {tenant.team}
    for upstream_id, i in zip(upstream_ids, range(jobs), strict=True):
        job = ledger.job_by_upstream_id(upstream_id)
        event = events[f"evt_job_{job.id}"]
        captured = sum(a for kind, a in ledger.entries_of(job.id) if kind == "capture")
        assert event["id"] == f"evt_job_{job.id}"
        assert event["type"] == outcome_of(i)[1], (i, event)
        assert event["data"]["job_id"] == upstream_id
        assert event["data"]["billed_usd"] == format_usd(captured)
        assert (captured > 0) == (event["type"] != "job.failed")

    # The log: newest first, every delivery delivered after at least one refused attempt.
    assert [d["id"] for d in log] == sorted((d["id"] for d in log), reverse=True)
    assert {d["event_id"] for d in log} == set(expected)
    assert all(d["state"] == "delivered" and d["delivered_at"] for d in log)
    assert all(d["attempts"] >= 2 and d["last_error"] == "HTTP 503" for d in log)
    assert all(d["last_status_code"] == 204 and d["next_attempt_at"] is None for d in log)
    assert receiver.refused_while_down >= jobs
    # Each replica counts its own attempts; between them, every one the receiver answered.
    counted = {"delivered": 0.0, "failed": 0.0}
    for url in (first, second):
        for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
            for outcome in counted:
                if line.startswith(f'gateway_webhook_deliveries_total{{outcome="{outcome}"}}'):
                    counted[outcome] += float(line.split()[-1])
    assert counted["delivered"] >= jobs and counted["failed"] >= receiver.refused_while_down

    with httpx.Client(headers=AUTH, timeout=30) as admin:
        assert admin.delete(f"{second}/admin/webhooks/{subscription['id']}").status_code == 200
