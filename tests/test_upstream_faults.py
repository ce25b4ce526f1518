"""Upstream failures map to the documented errors, on both transports: 500/connect error → 502
``upstream_error``, timeout → 504 ``upstream_timeout``, 429 passed through with Retry-After,
an unreadable 2xx body → 502 ``upstream_invalid_response``."""

from __future__ import annotations

import functools
import socket
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.jobs.models import Job
from tests.support.api import submit, submit_to
from tests.support.processes import free_port
from tests.support.raw_upstream import raw_server
from tests.support.servers import StartGateway
from tests.support.simulator import SimulatorProbe
from tests.support.tenants import Tenant, in_session, make_tenant

TRANSPORTS = ["aiohttp", "httpx"]


@pytest.fixture(params=TRANSPORTS)
def start_on_transport(request: pytest.FixtureRequest, start_gateway: StartGateway) -> StartGateway:
    """``start_gateway`` on one of the gateway's upstream transports: a test that takes it runs
    once per transport."""
    return functools.partial(start_gateway, upstream_transport=request.param)


def job_states(url: str, team: str) -> list[str]:
    async def _states(session: AsyncSession) -> list[str]:
        from gateway.tenancy.models import Team

        stmt = select(Job.state).join(Team, Team.id == Job.team_id).where(Team.name == team)
        return list((await session.execute(stmt)).scalars())

    return in_session(url, _states)


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert error["type"] == "upstream_error"
    assert error["message"]


def test_upstream_500_is_502(
    start_on_transport: StartGateway, simulator: SimulatorProbe, tenant: Tenant, postgres_url: str
) -> None:
    server = start_on_transport()
    response = submit_to(server.url, tenant, "a cat #sim:http500")
    assert_error(response, 502, "upstream_error")
    assert "simulated" not in response.text  # the upstream's own body is not leaked
    assert [r["status"] for r in simulator.submits()] == [500]
    assert job_states(postgres_url, tenant.team) == ["released"]


def test_upstream_429_passes_through_with_retry_after(
    start_on_transport: StartGateway, simulator: SimulatorProbe, tenant: Tenant, postgres_url: str
) -> None:
    server = start_on_transport()
    response = submit_to(server.url, tenant, "a cat #sim:http429")
    assert response.status_code == 429
    assert response.headers["retry-after"] == "1"
    assert response.json()["error"]["code"] == "rate_limited"
    assert job_states(postgres_url, tenant.team) == ["released"]


def test_upstream_timeout_is_504(
    start_on_transport: StartGateway, simulator: SimulatorProbe, tenant: Tenant, postgres_url: str
) -> None:
    server = start_on_transport(upstream_read_timeout_seconds=0.5)
    response = submit_to(server.url, tenant, "a cat #sim:hang")
    assert_error(response, 504, "upstream_timeout")
    # Sent but unanswered: the job may exist upstream, so it is kept as "unknown", not dropped.
    assert job_states(postgres_url, tenant.team) == ["unknown"]


def test_connection_refused_is_502_not_a_timeout(
    start_on_transport: StartGateway, tenant: Tenant, postgres_url: str
) -> None:
    closed_port = free_port()  # nothing listens on it
    server = start_on_transport(upstream_url=f"http://127.0.0.1:{closed_port}")
    response = submit_to(server.url, tenant, "a cat")
    assert_error(response, 502, "upstream_error")
    assert job_states(postgres_url, tenant.team) == ["released"]


@pytest.fixture
def slamming_server() -> Iterator[str]:
    """Accepts a connection, reads the request, closes without answering."""
    with raw_server(lambda connection: connection.recv(65536)) as url:
        yield url


def trickle(connection: socket.socket) -> None:
    """Reads the request, then answers 200 one byte every 0.1 s: no single read ever waits
    long, but the whole answer would take 10 s."""
    connection.recv(65536)
    body = b'{"job_id": "' + b"x" * 84 + b'", "s": 1}'
    connection.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n")
    connection.sendall(b"content-length: %d\r\n\r\n" % len(body))
    for byte in body:
        connection.sendall(bytes([byte]))
        time.sleep(0.1)


def test_an_answer_trickling_in_is_cut_off_at_the_sum_of_the_timeouts(
    start_on_transport: StartGateway, tenant: Tenant, postgres_url: str
) -> None:
    """httpx's read timeout is per read; the gateway also bounds the whole exchange, which
    the reconciler counts on before it re-sends or releases an unanswered submit."""
    timeouts = {
        f"upstream_{phase}_timeout_seconds": 0.25 for phase in ("connect", "write", "read", "pool")
    }
    with raw_server(trickle) as upstream_url:
        server = start_on_transport(upstream_url=upstream_url, **timeouts)
        started = time.monotonic()
        response = submit_to(server.url, tenant, "a cat")
        elapsed = time.monotonic() - started
    assert_error(response, 504, "upstream_timeout")
    assert 0.9 < elapsed < 5, elapsed  # the 1 s deadline, not the 10 s answer
    # Sent, and perhaps acted on: the hold stays for the reconciler.
    assert job_states(postgres_url, tenant.team) == ["unknown"]


def test_connection_closed_without_answer_is_502(
    start_on_transport: StartGateway, tenant: Tenant, slamming_server: str, postgres_url: str
) -> None:
    server = start_on_transport(upstream_url=slamming_server)
    assert_error(submit_to(server.url, tenant, "a cat"), 502, "upstream_error")
    # The request was sent: the upstream may have acted on it, so the hold is not released.
    assert job_states(postgres_url, tenant.team) == ["unknown"]


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(b"<html>Bad gateway</html>", id="html"),
        pytest.param(b'{"job_id": "job_1", "status": ', id="truncated json"),
        pytest.param(b'["job_1"]', id="json array"),
        pytest.param(b'{"status": "queued"}', id="no job id"),
        pytest.param(b'{"job_id": 17}', id="job id not a string"),
        pytest.param(b'{"job_id": "../../admin"}', id="job id path trick"),
    ],
)
def test_unreadable_submit_answer_is_502(
    start_gateway: StartGateway, tenant: Tenant, postgres_url: str, answer: bytes
) -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(200, content=answer))
    server = start_gateway(transport=transport)
    assert_error(submit_to(server.url, tenant, "a cat"), 502, "upstream_invalid_response")
    assert job_states(postgres_url, tenant.team) == ["unknown"]


def test_unreadable_poll_answer_is_502(start_gateway: StartGateway, tenant: Tenant) -> None:
    def upstream(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            return httpx.Response(200, json={"job_id": "job_garbled1", "status": "queued"})
        return httpx.Response(200, content=b"\x00\x01 not json")

    server = start_gateway(transport=httpx.MockTransport(upstream))
    assert submit_to(server.url, tenant, "a cat").status_code == 200
    with httpx.Client(base_url=server.url) as client:
        polled = client.get("/v1/jobs/job_garbled1", headers=tenant.headers)
    assert_error(polled, 502, "upstream_invalid_response")


@pytest.mark.parametrize("status", [401, 403])
def test_upstream_refusing_our_key_is_a_gateway_fault_not_the_tenants(
    start_gateway: StartGateway, tenant: Tenant, status: int
) -> None:
    """A 401 from upstream means GATEWAY_UPSTREAM_API_KEY is wrong; passing it on would tell
    the tenant their own (valid) key was refused."""
    transport = httpx.MockTransport(lambda request: httpx.Response(status, json={"error": "no"}))
    server = start_gateway(transport=transport)
    assert_error(submit_to(server.url, tenant, "a cat"), 502, "upstream_auth_failed")


def test_wrong_upstream_key_against_the_simulator(
    start_gateway: StartGateway, simulator: SimulatorProbe, tenant: Tenant
) -> None:
    server = start_gateway(upstream_api_key="sk-wrong-key-for-upstream")
    assert_error(submit_to(server.url, tenant, "a cat"), 502, "upstream_auth_failed")
    assert [r["status"] for r in simulator.submits()] == [401]


@pytest.mark.parametrize(("status", "kept"), [(502, True), (504, True), (500, False), (503, False)])
def test_a_proxys_502_or_504_keeps_the_hold_other_5xx_release_it(
    start_gateway: StartGateway, tenant: Tenant, postgres_url: str, status: int, kept: bool
) -> None:
    """A 502/504 may come from a load balancer in front of the upstream after it passed the
    request on: the job may exist, so the hold is kept and a retry with the same key is
    answered from the first answer rather than sent again. A 500/503 is the upstream's own
    refusal: nothing was created, the hold is released and the key is free again."""
    sent: list[httpx.Request] = []

    def upstream(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(status, text="<html>bad gateway</html>")

    server = start_gateway(transport=httpx.MockTransport(upstream))
    key = {"Idempotency-Key": f"proxy-{status}"}
    with httpx.Client(base_url=server.url, timeout=30) as client:
        first, retry = (submit(client, tenant, headers=key) for _ in range(2))
        assert_error(first, 502, "upstream_error")
        assert_error(retry, 502, "upstream_error")
    if kept:
        assert retry.headers["idempotent-replayed"] == "true"
        assert (len(sent), job_states(postgres_url, tenant.team)) == (1, ["unknown"])
    else:
        assert "idempotent-replayed" not in retry.headers
        assert (len(sent), job_states(postgres_url, tenant.team)) == (2, ["released"] * 2)


def test_a_submit_that_never_got_a_connection_is_released_at_once(
    start_on_transport: StartGateway, simulator: SimulatorProbe, tenant: Tenant, postgres_url: str
) -> None:
    """Waiting for a free upstream connection timed out: the request never left the gateway,
    so the upstream cannot have a job for it (504, and the hold goes back at once)."""
    server = start_on_transport(
        upstream_max_connections=1,
        upstream_pool_timeout_seconds=0.3,
        upstream_read_timeout_seconds=2.0,
    )
    with ThreadPoolExecutor(max_workers=1) as pool:
        occupying = pool.submit(submit_to, server.url, tenant, "a cat #sim:hang")
        deadline = time.monotonic() + 10
        while not simulator.submits() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert simulator.submits(), "the first submit never reached the simulator"
        queued = submit_to(server.url, tenant, "a dog")
        assert_error(queued, 504, "upstream_timeout")
        assert len(simulator.submits()) == 1  # the second one was never sent
        assert_error(occupying.result(), 504, "upstream_timeout")
    assert sorted(job_states(postgres_url, tenant.team)) == ["released", "unknown"]


def test_a_cookie_the_upstream_sets_never_rides_on_another_request(
    start_gateway: StartGateway, postgres_url: str
) -> None:
    """The upstream client is shared by every team: a Set-Cookie on one team's answer must
    not be sent with the next team's call."""
    seen: list[str | None] = []

    def upstream(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("cookie"))
        cookie = {"set-cookie": f"session=call-{len(seen)}; Path=/"}
        if request.method == "GET":  # settled, so the test leaves no open job behind
            job = request.url.path.rsplit("/", 1)[-1]
            done = {"job_id": job, "status": "completed", "video": {"duration": 6}}
            return httpx.Response(200, json=done, headers=cookie)
        job = f"job-cookie-{uuid.uuid4().hex}"
        return httpx.Response(200, json={"job_id": job, "status": "queued"}, headers=cookie)

    gateway = start_gateway(transport=httpx.MockTransport(upstream))
    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        for tenant in (make_tenant(postgres_url), make_tenant(postgres_url)):
            accepted = submit(client, tenant)
            assert accepted.status_code == 200, accepted.text
            polled = client.get(f"/v1/jobs/{accepted.json()['job_id']}", headers=tenant.headers)
            assert polled.json()["status"] == "completed"
    assert seen == [None, None, None, None]
