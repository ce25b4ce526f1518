"""What one tenant request costs the database, counted on the gateway's own engine: pool
checkouts and statements. The hot path's promises: a poll of a settled job takes one pooled
connection; a submit reads no balance before its hold (the hold's own statement returns it) and
deletes no kept request body it never kept. Every response still carries the quota header."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.runtime import Runtime
from tests.support.api import submit
from tests.support.servers import ServerThread, StartGateway
from tests.support.simulator import SimulatorProbe
from tests.support.tenants import Tenant


@dataclass
class Counted:
    checkouts: int = 0
    statements: list[str] = field(default_factory=list)

    def touching(self, verb: str, table: str) -> list[str]:
        return [s for s in self.statements if s.lstrip().upper().startswith(verb) and table in s]


@contextmanager
def counting(engine: AsyncEngine) -> Iterator[Counted]:
    counted = Counted()
    sync = engine.sync_engine

    def on_checkout(*_: Any) -> None:
        counted.checkouts += 1

    def on_execute(_connection: Any, _cursor: Any, statement: str, *_: Any) -> None:
        counted.statements.append(statement)

    event.listen(sync, "checkout", on_checkout)
    event.listen(sync, "before_cursor_execute", on_execute)
    try:
        yield counted
    finally:
        event.remove(sync, "checkout", on_checkout)
        event.remove(sync, "before_cursor_execute", on_execute)


def runtime_of(server: ServerThread) -> Runtime:
    runtime: Runtime = server.server.config.app.state.runtime
    return runtime


def quiet_gateway(start_gateway: StartGateway, **settings: Any) -> ServerThread:
    """A gateway of this test's own whose background loops stay out of the counts."""
    return start_gateway(
        metrics_refresh_interval_seconds=3600, alert_delivery_interval_seconds=3600, **settings
    )


def test_a_poll_takes_one_checkout_and_a_settled_poll_nothing_more(
    start_gateway: StartGateway, simulator: SimulatorProbe, tenant: Tenant
) -> None:
    server = quiet_gateway(start_gateway)
    engine = runtime_of(server).engine
    with httpx.Client(base_url=server.url, timeout=30) as client:
        accepted = submit(client, tenant)
        assert accepted.status_code == 200, accepted.text
        job_id = accepted.json()["job_id"]
        with counting(engine) as settling:
            first = client.get(f"/v1/jobs/{job_id}", headers=tenant.headers)
        assert first.json()["status"] == "completed"
        with counting(engine) as settled:
            again = client.get(f"/v1/jobs/{job_id}", headers=tenant.headers)
    assert again.content == first.content
    # The key, the balance and the job in one session; the settlement in its own transaction.
    assert settling.checkouts == 2
    assert settled.checkouts == 1
    assert again.headers["x-quota-remaining-usd"] == first.headers["x-quota-remaining-usd"]


def test_a_submit_reads_no_balance_and_deletes_no_body_it_did_not_keep(
    start_gateway: StartGateway, simulator: SimulatorProbe, tenant: Tenant
) -> None:
    server = quiet_gateway(start_gateway)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        usage = client.get("/v1/usage", headers=tenant.headers).json()
        with counting(runtime_of(server).engine) as counted:
            accepted = submit(client, tenant, duration=5)
        assert accepted.status_code == 200, accepted.text
        client.get(f"/v1/jobs/{accepted.json()['job_id']}", headers=tenant.headers)
    assert counted.touching("SELECT", "team_balances") == []
    assert counted.touching("DELETE", "job_requests") == []
    estimate = accepted.headers["x-gateway-cost-estimate-usd"]
    remaining = float(usage["remaining_usd"]) - float(estimate)
    assert float(accepted.headers["x-quota-remaining-usd"]) == remaining


def test_a_kept_body_is_deleted_once_the_answer_is_recorded(
    start_gateway: StartGateway, simulator: SimulatorProbe, tenant: Tenant
) -> None:
    server = quiet_gateway(start_gateway, upstream_honors_idempotency_key=True)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        with counting(runtime_of(server).engine) as counted:
            accepted = submit(client, tenant)
        assert accepted.status_code == 200, accepted.text
        client.get(f"/v1/jobs/{accepted.json()['job_id']}", headers=tenant.headers)
    assert len(counted.touching("INSERT", "job_requests")) == 1
    assert len(counted.touching("DELETE", "job_requests")) == 1


def test_refusals_and_replays_still_carry_the_quota_header(
    start_gateway: StartGateway, simulator: SimulatorProbe, tenant: Tenant
) -> None:
    server = quiet_gateway(start_gateway)
    key = {"Idempotency-Key": "hot-path-replay"}
    with httpx.Client(base_url=server.url, timeout=30) as client:
        first = submit(client, tenant, headers=key)
        replay = submit(client, tenant, headers=key)
        invalid = submit(client, tenant, duration=99)
        client.get(f"/v1/jobs/{first.json()['job_id']}", headers=tenant.headers)
    assert replay.headers["idempotent-replayed"] == "true"
    assert replay.headers["x-quota-remaining-usd"] == first.headers["x-quota-remaining-usd"]
    assert invalid.status_code == 400
    assert invalid.headers["x-quota-remaining-usd"] == first.headers["x-quota-remaining-usd"]


def test_a_refusal_stands_when_the_balance_cannot_be_read_for_its_header(
    start_gateway: StartGateway, simulator: SimulatorProbe, tenant: Tenant
) -> None:
    """A 400 reads the balance for its quota header only after the refusal is decided; if the
    database fails that read, the client still gets the 400, without the header."""
    server = quiet_gateway(start_gateway)
    sync = runtime_of(server).engine.sync_engine

    def balance_read_fails(_c: Any, _cur: Any, statement: str, *_: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "team_balances" in statement:
            raise ConnectionResetError("the database went away")

    with httpx.Client(base_url=server.url, timeout=30) as client:
        event.listen(sync, "before_cursor_execute", balance_read_fails)
        try:
            invalid = submit(client, tenant, duration=99)
        finally:
            event.remove(sync, "before_cursor_execute", balance_read_fails)
    assert invalid.status_code == 400, invalid.text
    assert invalid.json()["error"]["param"] == "duration"
    assert "x-quota-remaining-usd" not in invalid.headers
