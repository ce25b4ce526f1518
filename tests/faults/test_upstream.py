"""Upstream faults under load: 5xx bursts and 429 storms, answers reset mid-body, the upstream
process paused (SIGSTOP) with requests in flight and resumed, truncated JSON, a status word
never seen before. Clients get the documented errors (never a 500), refused work is never
billed, work the upstream did is never lost, and the books equal the simulator's bill."""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from gateway.runtime import open_runtime
from gateway.services.reconciler import ReconcileReport
from tests.support.api import submit, submit_to
from tests.support.database import OwnDatabase, create_postgres_database, drop_postgres_database
from tests.support.invariants import check_books, settle_everything
from tests.support.ledger import team_ledger
from tests.support.load import Outage, load_during, run_load
from tests.support.processes import RESEND_QUICKLY, SimulatorProcess
from tests.support.raw_upstream import raw_server
from tests.support.servers import StartGateway
from tests.support.settings import gateway_settings
from tests.support.simulator import UPSTREAM_KEY, SimulatorProbe
from tests.support.tenants import Tenant, make_tenant

PROMPT = "upstream fault"


def test_5xx_bursts_and_429_storms_fail_cleanly_and_bill_nothing_refused(
    own_database: OwnDatabase, start_gateway: StartGateway, simulator: SimulatorProbe
) -> None:
    tenants = [make_tenant(own_database.url) for _ in range(2)]
    server = start_gateway(database_url=own_database.url)
    markers = ["", " #sim:http500", " #sim:http500", " #sim:http429", " #sim:fail", ""]
    load = asyncio.run(run_load([server.url], tenants, seconds=3.0, workers=6, markers=markers))
    statuses = load.statuses("submit")
    assert set(statuses) <= {200, 502, 429}, statuses
    assert statuses[502] > 5 and statuses[429] > 5 and statuses[200] > 5, statuses
    assert set(load.codes(502)) == {"upstream_error"}
    # Every valid submit was forwarded once; a refused one was released at once.
    assert len(simulator.submits()) == sum(statuses.values())
    for tenant in tenants:
        ledger = team_ledger(own_database.url, tenant.team)
        assert ledger.balance.held_micro_usd == sum(
            job.estimate_micro_usd for job in ledger.jobs if job.state == "submitted"
        )
    refused = submit_to(server.url, tenants[0], "x #sim:http429")
    assert refused.status_code == 429 and refused.headers["retry-after"]
    settle_everything(own_database.url, simulator.url)
    books = check_books(own_database.url, simulator.url)
    assert books.differences == 0 and books.upstream_jobs == load.accepted


def reset_after(head: bytes, body_part: bytes) -> Callable[[socket.socket], None]:
    """A handler that answers ``head`` and part of a body, then resets the connection."""

    def handle(connection: socket.socket) -> None:
        connection.recv(65536)
        connection.sendall(head + body_part)
        # SO_LINGER 0: close with a TCP reset, as a crashing process or a middlebox does.
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    return handle


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
def test_a_submit_answer_reset_mid_body_keeps_the_hold(
    start_gateway: StartGateway, own_database: OwnDatabase, transport: str
) -> None:
    postgres_url = own_database.url  # it leaves an unknown job: not in the shared database
    tenant = make_tenant(postgres_url)
    head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 60\r\n\r\n"
    with raw_server(reset_after(head, b'{"job_id": "job_reset')) as upstream_url:
        server = start_gateway(
            database_url=postgres_url, upstream_url=upstream_url, upstream_transport=transport
        )
        response = submit_to(server.url, tenant, PROMPT)
    assert response.status_code == 502, response.text
    assert response.json()["error"]["code"] == "upstream_error"
    # The upstream may have created the job: the hold waits for the reconciler.
    (job,) = team_ledger(postgres_url, tenant.team).jobs
    assert job.state == "unknown"


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
def test_a_poll_answer_reset_mid_body_settles_nothing(
    start_gateway: StartGateway, own_database: OwnDatabase, transport: str
) -> None:
    postgres_url = own_database.url
    tenant = make_tenant(postgres_url)
    job_id = f"job_reset_{uuid.uuid4().hex[:12]}"
    accepted = b'{"job_id": "%s", "status": "queued"}' % job_id.encode()

    def handle(connection: socket.socket) -> None:
        request = connection.recv(65536)
        if request.startswith(b"POST"):
            connection.sendall(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(accepted), accepted)
            )
            return
        head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 90\r\n\r\n"
        reset_after(head, b'{"job_id": "%s", "status": "compl' % job_id.encode())(connection)

    with raw_server(handle) as upstream_url:
        server = start_gateway(
            database_url=postgres_url, upstream_url=upstream_url, upstream_transport=transport
        )
        assert submit_to(server.url, tenant, PROMPT).is_success
        polled = httpx.get(f"{server.url}/v1/jobs/{job_id}", headers=tenant.headers)
    assert polled.status_code == 502, polled.text
    ledger = team_ledger(postgres_url, tenant.team)
    assert [job.state for job in ledger.jobs] == ["submitted"]
    assert [entry.kind for entry in ledger.entries] == ["hold"]


PAUSE_TIMING = RESEND_QUICKLY


def test_the_upstream_paused_with_requests_in_flight_loses_nothing(
    start_gateway: StartGateway, tmp_path: Path
) -> None:
    """SIGSTOP the upstream process mid-load (its sockets stay open: requests are accepted by
    the kernel and wait), SIGCONT it 1.5 s later: the waiting requests are processed, by then
    answered to nobody. The gateway timed them out (504, hold kept) and must recover each job
    the upstream created anyway; pooled keep-alive connections must not turn into errors."""
    database_url = create_postgres_database()
    try:
        with SimulatorProcess(tmp_path, "--api-key", UPSTREAM_KEY, "--latency", "0") as upstream:
            tenants = [make_tenant(database_url) for _ in range(2)]
            server = start_gateway(
                database_url=database_url, upstream_url=upstream.url, **PAUSE_TIMING
            )
            pause = Outage(start=upstream.pause, end=upstream.resume, after=1.0, lasting=1.5)
            load, resumed_at = load_during(pause, [server.url], tenants, seconds=4.0, workers=6)
            statuses = load.statuses()
            assert set(statuses) <= {200, 502, 504}, statuses
            assert statuses[504] > 0, "no request was in flight during the pause"
            assert set(load.codes(504)) <= {"upstream_timeout"}
            recovered_in = load.first_success_after(resumed_at)
            assert recovered_in is not None and recovered_in < 1.0, recovered_in
            settle_everything(database_url, upstream.url, resend_after=2.0, **PAUSE_TIMING)
            books = check_books(database_url, upstream.url)
            assert books.differences == 0 and books.upstream_jobs >= load.accepted
    finally:
        drop_postgres_database(database_url)


def test_truncated_json_and_unknown_status_words_settle_nothing_until_terminal(
    start_gateway: StartGateway, tenant: Tenant, postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    job_id = f"job_words_{uuid.uuid4().hex[:12]}"
    polls = iter(
        [
            httpx.Response(200, json={"job_id": job_id, "status": "rendering"}),
            httpx.Response(200, content=b'{"job_id": "%s", "status": "compl' % job_id.encode()),
            httpx.Response(200, json={"job_id": job_id, "status": "Completed"}),
        ]
    )

    def upstream(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            return httpx.Response(200, json={"job_id": job_id, "status": "queued"})
        return next(polls)

    server = start_gateway(transport=httpx.MockTransport(upstream))
    with httpx.Client(base_url=server.url, headers=tenant.headers, timeout=30) as client:
        assert submit(client, tenant, PROMPT).status_code == 200
        with caplog.at_level(logging.WARNING):
            rendering = client.get(f"/v1/jobs/{job_id}")
        assert rendering.status_code == 200 and rendering.json()["status"] == "rendering"
        assert [r.status_word for r in caplog.records if hasattr(r, "status_word")] == ["rendering"]
        metrics = client.get("/metrics").text
        assert "gateway_upstream_unknown_status_total 1.0" in metrics
        assert [j.state for j in team_ledger(postgres_url, tenant.team).jobs] == ["submitted"]

        truncated = client.get(f"/v1/jobs/{job_id}")
        assert truncated.status_code == 502
        assert truncated.json()["error"]["code"] == "upstream_invalid_response"
        assert [j.state for j in team_ledger(postgres_url, tenant.team).jobs] == ["submitted"]

        done = client.get(f"/v1/jobs/{job_id}")
        assert done.status_code == 200
    ledger = team_ledger(postgres_url, tenant.team)
    assert [j.state for j in ledger.jobs] == ["captured"]
    assert [e.kind for e in ledger.entries] == ["hold", "capture"]


def test_an_acceptance_naming_another_jobs_id_is_502_and_kept_for_review(
    start_gateway: StartGateway, own_database: OwnDatabase
) -> None:
    """A broken upstream answers two submits with one job id. The second cannot be that job:
    the client gets 502 (not someone else's job id), its hold waits for the reconciler, and
    the job is flagged for review; the first job is untouched."""
    postgres_url = own_database.url
    tenant = make_tenant(postgres_url)
    job_id = f"job_dup_{uuid.uuid4().hex[:12]}"
    upstream = httpx.MockTransport(
        lambda _: httpx.Response(200, json={"job_id": job_id, "status": "queued"})
    )
    server = start_gateway(database_url=postgres_url, transport=upstream)
    with httpx.Client(base_url=server.url, headers=tenant.headers, timeout=30) as client:
        assert submit(client, tenant, PROMPT).status_code == 200
        second = submit(client, tenant, PROMPT, headers={"Idempotency-Key": "dup-1"})
        assert second.status_code == 502, second.text
        assert second.json()["error"]["code"] == "upstream_invalid_response"
        replay = submit(client, tenant, PROMPT, headers={"Idempotency-Key": "dup-1"})
        assert replay.status_code == 502 and replay.headers["idempotent-replayed"] == "true"
    jobs = team_ledger(postgres_url, tenant.team).jobs
    assert [(j.state, j.upstream_job_id, j.needs_review) for j in jobs] == [
        ("submitted", job_id, False),
        ("unknown", None, True),
    ]


def test_a_429_storm_on_polls_pauses_the_reconciler_for_its_retry_after(
    start_gateway: StartGateway, own_database: OwnDatabase
) -> None:
    """The upstream answers every poll 429 with Retry-After: the reconciler stops polling
    (every job, not just the one refused) until the pause is over, then polls again; nothing
    is settled meanwhile."""
    tenant = make_tenant(own_database.url)
    job_ids = [f"job_storm_{n}_{uuid.uuid4().hex[:8]}" for n in range(5)]
    accepted = iter(job_ids)
    polls: list[str] = []

    def upstream(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            return httpx.Response(200, json={"job_id": next(accepted), "status": "queued"})
        polls.append(request.url.path)
        return httpx.Response(429, headers={"Retry-After": "30"}, json={"error": "slow down"})

    transport = httpx.MockTransport(upstream)
    server = start_gateway(database_url=own_database.url, transport=transport)
    for _ in job_ids:
        assert submit_to(server.url, tenant, PROMPT).is_success
    now = [datetime.now(UTC)]
    settings = gateway_settings(
        own_database.url, "http://upstream.invalid", reconciler_concurrency=1
    )

    async def passes() -> list[ReconcileReport]:
        async with open_runtime(settings, upstream_transport=transport) as runtime:
            reconciler = runtime.reconciler(clock=lambda: now[0])
            reports = [await reconciler.run_once(everything=True)]
            now[0] += timedelta(seconds=20)  # still inside the 30 s pause
            reports.append(await reconciler.run_once(everything=True))
            now[0] += timedelta(seconds=15)  # past it
            reports.append(await reconciler.run_once(everything=True))
            return reports

    first, paused, resumed = asyncio.run(passes())
    assert first.rate_limited and first.polled == 1, first  # stopped at the first 429
    assert paused.rate_limited and paused.polled == 0, paused
    assert resumed.polled == 1 and resumed.settled == 0, resumed
    assert len(polls) == 2
    assert {j.state for j in team_ledger(own_database.url, tenant.team).jobs} == {"submitted"}
