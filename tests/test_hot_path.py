"""What one tenant request costs the database, counted on the gateway's own engine: pool
checkouts and statements (through the ORM and the direct ones, ``gateway.db.direct``). The hot
path's promises on Postgres: a poll or a usage read is one statement (the key, its team, the
balance and the job together); a submit with a key this process has seen is two (the hold,
then the upstream's answer), reads no balance before its hold (the hold's own statement
returns it) and deletes no kept request body it never kept. Every response still carries the
quota header."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
from sqlalchemy import event, text

from gateway.db.engine import create_engine
from gateway.runtime import Runtime
from tests.support.api import submit
from tests.support.servers import ServerThread, StartGateway
from tests.support.simulator import SimulatorProbe
from tests.support.tenants import Tenant


@dataclass
class Counted:
    checkouts: int = 0
    statements: list[str] = field(default_factory=list)
    direct: list[tuple[str, tuple[Any, ...]]] = field(default_factory=list)

    def touching(self, verb: str, table: str) -> list[str]:
        return [s for s in self.statements if s.lstrip().upper().startswith(verb) and table in s]


@contextmanager
def counting(runtime: Runtime) -> Iterator[Counted]:
    counted = Counted()
    sync = runtime.engine.sync_engine
    direct = runtime.proxy.direct
    assert direct is not None, "these tests run on Postgres"

    def on_checkout(*_: Any) -> None:
        counted.checkouts += 1

    def on_execute(_connection: Any, _cursor: Any, statement: str, *_: Any) -> None:
        counted.statements.append(statement)

    def on_direct(statement: str, parameters: tuple[Any, ...]) -> None:
        counted.statements.append(statement)
        counted.direct.append((statement, parameters))

    event.listen(sync, "checkout", on_checkout)
    event.listen(sync, "before_cursor_execute", on_execute)
    direct.listeners.append(on_direct)
    try:
        yield counted
    finally:
        event.remove(sync, "checkout", on_checkout)
        event.remove(sync, "before_cursor_execute", on_execute)
        direct.listeners.remove(on_direct)


def runtime_of(server: ServerThread) -> Runtime:
    runtime: Runtime = server.server.config.app.state.runtime
    return runtime


def quiet_gateway(start_gateway: StartGateway, **settings: Any) -> ServerThread:
    """A gateway of this test's own whose background loops stay out of the counts."""
    return start_gateway(
        metrics_refresh_interval_seconds=3600, alert_delivery_interval_seconds=3600, **settings
    )


def test_a_poll_and_a_usage_read_are_one_statement_each(
    start_gateway: StartGateway, simulator: SimulatorProbe, tenant: Tenant
) -> None:
    server = quiet_gateway(start_gateway)
    runtime = runtime_of(server)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        accepted = submit(client, tenant)
        assert accepted.status_code == 200, accepted.text
        job_id = accepted.json()["job_id"]
        with counting(runtime) as settling:
            first = client.get(f"/v1/jobs/{job_id}", headers=tenant.headers)
        assert first.json()["status"] == "completed"
        with counting(runtime) as settled:
            again = client.get(f"/v1/jobs/{job_id}", headers=tenant.headers)
        with counting(runtime) as usage_read:
            usage = client.get("/v1/usage", headers=tenant.headers)
    assert again.content == first.content
    # The key, its team, the balance and the job in one statement; the settlement in its own
    # transaction.
    assert len(settling.direct) == 1
    assert settling.checkouts == 2
    assert (settled.checkouts, len(settled.statements)) == (1, 1)
    assert again.headers["x-quota-remaining-usd"] == first.headers["x-quota-remaining-usd"]
    assert (usage_read.checkouts, len(usage_read.statements)) == (1, 1)
    assert usage.json()["remaining_usd"] == first.headers["x-quota-remaining-usd"]


def test_a_submit_with_a_key_seen_before_is_two_statements(
    start_gateway: StartGateway, simulator: SimulatorProbe, tenant: Tenant
) -> None:
    server = quiet_gateway(start_gateway)
    runtime = runtime_of(server)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        warm = submit(client, tenant)  # prices with the card in force, and sees the key
        assert warm.status_code == 200, warm.text
        usage = client.get("/v1/usage", headers=tenant.headers).json()
        with counting(runtime) as counted:
            accepted = submit(client, tenant, duration=5)
        assert accepted.status_code == 200, accepted.text
        client.get(f"/v1/jobs/{accepted.json()['job_id']}", headers=tenant.headers)
    # The hold (key check, reservation, job, hold entry) and the recorded answer; no read of
    # the key, the card or the balance of their own.
    assert (counted.checkouts, len(counted.statements)) == (2, 2), counted.statements
    assert [statement for statement, _ in counted.direct] == counted.statements
    assert counted.touching("SELECT", "team_balances") == []
    hold_parameters = counted.direct[0][1]
    assert None in hold_parameters  # no request body kept: nothing to delete later
    estimate = accepted.headers["x-gateway-cost-estimate-usd"]
    remaining = float(usage["remaining_usd"]) - float(estimate)
    assert float(accepted.headers["x-quota-remaining-usd"]) == remaining


def test_a_kept_body_is_gone_once_the_answer_is_recorded(
    start_gateway: StartGateway, simulator: SimulatorProbe, tenant: Tenant, postgres_url: str
) -> None:
    server = quiet_gateway(start_gateway, upstream_honors_idempotency_key=True)
    runtime = runtime_of(server)
    body = b'{"model": "grok-imagine-video-1-5", "prompt": "kept until answered"}'
    headers = {**tenant.headers, "Content-Type": "application/json"}
    with httpx.Client(base_url=server.url, timeout=30) as client:
        assert submit(client, tenant).status_code == 200
        with counting(runtime) as counted:
            accepted = client.post("/v1/videos/generations", content=body, headers=headers)
        assert accepted.status_code == 200, accepted.text
        client.get(f"/v1/jobs/{accepted.json()['job_id']}", headers=tenant.headers)
    assert len(counted.statements) == 2
    assert body in counted.direct[0][1]  # kept by the hold's own statement
    assert asyncio.run(_kept_bodies(postgres_url)) == 0


async def _kept_bodies(url: str) -> int:
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            return int(
                (await connection.execute(text("SELECT count(*) FROM job_requests"))).scalar_one()
            )
    finally:
        await engine.dispose()


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
