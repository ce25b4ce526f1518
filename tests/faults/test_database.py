"""Database faults under load: connections terminated, the database refusing connections, the
pool exhausted, a statement timeout, the network to Postgres cut and restored (a TCP proxy
killed and restarted), and the database lost right after a submit was forwarded.

What must hold every time: submits fail closed (503 ``ledger_unavailable``, nothing forwarded)
while the ledger is away, never a 500; the gateway recovers by itself within a second of the
database returning; an answer the upstream gave is never lost; and after the reconciler has
finished, the ledger equals the simulator's bill job by job (``tests.support.invariants``).
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from gateway.jobs.models import JobState
from tests.support.api import submit_async, submit_to
from tests.support.database import OwnDatabase
from tests.support.interleave import side_connection
from tests.support.invariants import check_books, settle_everything
from tests.support.ledger import team_ledger
from tests.support.load import Load, Outage, load_during, run_load
from tests.support.servers import ServerThread, StartGateway
from tests.support.simulator import SimulatorProbe
from tests.support.tcp_proxy import TcpProxy
from tests.support.tenants import Tenant, make_tenant

RECOVERY_LIMIT_SECONDS = 1.0
PROMPT = "fault"


def assert_failed_closed(load: Load) -> None:
    """Every refusal during the fault is a documented 503, never a 500."""
    statuses = load.statuses()
    assert 500 not in statuses, statuses
    assert set(statuses) <= {200, 503}, statuses
    assert set(load.codes(503)) <= {"ledger_unavailable"}, load.codes(503)


def wait_for_first_success(server_url: str, tenant: Tenant, since: float) -> float:
    """Submit every 20 ms until one is accepted; seconds from ``since`` to that answer."""
    while True:
        response = submit_to(server_url, tenant, PROMPT)
        assert response.status_code in (200, 503), response.text
        if response.status_code == 200:
            return time.monotonic() - since
        assert response.json()["error"]["code"] == "ledger_unavailable"
        assert response.headers["retry-after"] == "1"
        assert time.monotonic() - since < 10, "the gateway did not recover"
        time.sleep(0.02)


def test_a_database_refusing_connections_is_503_and_the_gateway_recovers_in_a_second(
    own_database: OwnDatabase, start_gateway: StartGateway, simulator: SimulatorProbe
) -> None:
    """Defect 4: SQLSTATE 55000 ("not accepting connections", as during a failover or
    ``ALLOW_CONNECTIONS false``) was a 500; it is the ledger being away: 503."""
    tenant = make_tenant(own_database.url)
    server = start_gateway(database_url=own_database.url)
    assert submit_to(server.url, tenant, PROMPT).status_code == 200
    job_id = simulator.usage()["jobs"][0]["job_id"]
    own_database.refuse_connections()
    before = len(simulator.submits())

    for _ in range(10):
        for response in (
            submit_to(server.url, tenant, PROMPT),
            httpx.get(f"{server.url}/v1/jobs/{job_id}", headers=tenant.headers),
            httpx.get(f"{server.url}/v1/usage", headers=tenant.headers),
        ):
            assert response.status_code == 503, response.text
            assert response.json()["error"] == {
                "type": "api_error",
                "code": "ledger_unavailable",
                "param": None,
                "message": "the gateway's ledger is unavailable; the request was not forwarded",
            }
    assert len(simulator.submits()) == before  # nothing forwarded while the ledger is away

    own_database.allow_connections()
    recovered_in = wait_for_first_success(server.url, tenant, time.monotonic())
    assert recovered_in < RECOVERY_LIMIT_SECONDS, recovered_in
    settle_everything(own_database.url, simulator.url)
    books = check_books(own_database.url, simulator.url)
    assert books.differences == 0 and books.upstream_jobs == 2


def test_connections_terminated_while_idle_cost_no_request(
    own_database: OwnDatabase, start_gateway: StartGateway, simulator: SimulatorProbe
) -> None:
    """A pooled connection the server closed meanwhile is replaced at checkout: after every
    backend was terminated (a restart, an operator), the next requests all succeed."""
    tenant = make_tenant(own_database.url)
    server = start_gateway(database_url=own_database.url, database_pool_size=8)
    warm = asyncio.run(run_load([server.url], [tenant], seconds=0.5, workers=8))
    assert warm.statuses() and set(warm.statuses()) == {200}
    own_database.terminate_backends()
    time.sleep(1.0)
    statuses = [submit_to(server.url, tenant, PROMPT).status_code for _ in range(30)]
    assert statuses == [200] * 30


def test_connections_terminated_mid_load_fail_closed_and_lose_nothing(
    own_database: OwnDatabase, start_gateway: StartGateway, simulator: SimulatorProbe
) -> None:
    tenants = [make_tenant(own_database.url) for _ in range(3)]
    server = start_gateway(database_url=own_database.url, database_pool_size=6)
    stop = threading.Event()
    terminations = 0

    def terminate_repeatedly() -> None:
        nonlocal terminations
        while not stop.wait(0.25):
            own_database.terminate_backends()
            terminations += 1

    killer = threading.Thread(target=terminate_repeatedly)
    killer.start()
    try:
        load = asyncio.run(run_load([server.url], tenants, seconds=3.0, workers=8))
    finally:
        stop.set()
        killer.join()
    # Cuts every 0.25 s over 3 s: about 12 on a quiet machine, but each cut is a statement on
    # an admin connection, slower under load (7 in a loaded CI run). Several mid-load cuts are
    # what the test needs.
    assert terminations >= 4
    assert_failed_closed(load)
    assert load.statuses("submit")[200] > 20, load.statuses()
    # Every submit the upstream saw was answered 200 to its client, and only those.
    assert len(simulator.submits()) == load.accepted
    settle_everything(own_database.url, simulator.url)
    books = check_books(own_database.url, simulator.url)
    assert books.upstream_jobs == load.accepted and books.differences == 0


def test_an_exhausted_pool_is_503_and_nothing_waits_forever(
    own_database: OwnDatabase, start_gateway: StartGateway, simulator: SimulatorProbe
) -> None:
    tenant = make_tenant(own_database.url)
    server = start_gateway(
        database_url=own_database.url, database_pool_size=2, database_pool_timeout_seconds=0.5
    )
    # The period's balance row exists from here on.
    assert submit_to(server.url, tenant, PROMPT).status_code == 200

    async def scenario() -> list[httpx.Response]:
        async with side_connection(own_database.url) as other:
            # Hold the team's balance row: submits that get a connection wait on it, holding
            # their connection; the others find the pool empty.
            transaction = other.transaction()
            await transaction.start()
            await other.execute("SELECT * FROM team_balances FOR UPDATE")
            async with httpx.AsyncClient(timeout=30) as client:
                pending = [
                    asyncio.create_task(submit_async(client, tenant, PROMPT, url=server.url))
                    for _ in range(6)
                ]
                await asyncio.sleep(1.5)
                await transaction.rollback()
                return list(await asyncio.gather(*pending))

    responses = asyncio.run(scenario())
    statuses = sorted(r.status_code for r in responses)
    assert 500 not in statuses and statuses.count(503) >= 3, statuses
    assert {r.json()["error"]["code"] for r in responses if r.status_code == 503} == {
        "ledger_unavailable"
    }
    assert len(simulator.submits()) == 1 + statuses.count(200)
    settle_everything(own_database.url, simulator.url)
    assert check_books(own_database.url, simulator.url).differences == 0


def test_a_statement_timeout_is_503_and_rolls_the_hold_back(
    own_database: OwnDatabase, start_gateway: StartGateway, simulator: SimulatorProbe
) -> None:
    tenant = make_tenant(own_database.url)
    own_database.set_for_new_sessions("statement_timeout", "300ms")
    server = start_gateway(database_url=own_database.url)
    assert submit_to(server.url, tenant, PROMPT).status_code == 200

    async def scenario() -> httpx.Response:
        async with side_connection(own_database.url) as other:
            transaction = other.transaction()
            await transaction.start()
            await other.execute("SET LOCAL statement_timeout = 0")
            await other.execute("SELECT * FROM team_balances FOR UPDATE")
            async with httpx.AsyncClient(timeout=30) as client:
                response = await submit_async(client, tenant, PROMPT, url=server.url)
            await transaction.rollback()
            return response

    response = asyncio.run(scenario())
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "ledger_unavailable"
    assert len(simulator.submits()) == 1
    ledger = team_ledger(own_database.url, tenant.team)
    assert len(ledger.jobs) == 1  # the timed-out submit left nothing behind
    assert submit_to(server.url, tenant, PROMPT).status_code == 200


def test_the_network_to_postgres_cut_and_restored_under_load(
    own_database: OwnDatabase, start_gateway: StartGateway, simulator: SimulatorProbe
) -> None:
    """A TCP proxy between gateway and Postgres, killed (every connection reset, the port
    closed: a failover or a partition) and restarted a second later, while clients load it."""
    tenants = [make_tenant(own_database.url) for _ in range(2)]
    with TcpProxy("127.0.0.1", 5432) as proxy:
        via_proxy = own_database.url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
        assert via_proxy != own_database.url
        server = start_gateway(database_url=via_proxy, database_pool_size=6)
        cut = Outage(start=proxy.kill, end=proxy.restart, after=1.0, lasting=1.0)
        load, restarted_at = load_during(cut, [server.url], tenants, seconds=4.0, workers=8)
    assert_failed_closed(load)
    assert load.statuses("submit")[503] > 0, "the cut was not seen"
    recovered_in = load.first_success_after(restarted_at)
    assert recovered_in is not None and recovered_in < RECOVERY_LIMIT_SECONDS, recovered_in
    assert len(simulator.submits()) == load.accepted
    settle_everything(own_database.url, simulator.url)
    books = check_books(own_database.url, simulator.url)
    assert books.upstream_jobs == load.accepted and books.differences == 0


class CutsDatabaseAfterSubmit(httpx.AsyncBaseTransport):
    """The real simulator, but the database is lost right after it accepts the first submit:
    the gateway has the upstream's answer and cannot record it."""

    def __init__(self, database: OwnDatabase) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.database = database
        self.cut = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if request.method == "POST" and not self.cut:
            await response.aread()
            self.cut = True
            await asyncio.to_thread(self.database.refuse_connections)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


def accepted_as_the_database_drops(
    start_gateway: StartGateway, own_database: OwnDatabase, outbox: Path, **settings: Any
) -> tuple[ServerThread, Tenant, str]:
    """A gateway on ``own_database`` that loses it right after the upstream accepted its first
    submit (the answer waits in ``outbox``); that submit, accepted: (gateway, tenant, job id)."""
    tenant = make_tenant(own_database.url)
    server = start_gateway(
        database_url=own_database.url,
        transport=CutsDatabaseAfterSubmit(own_database),
        outbox_dir=outbox,
        **settings,
    )
    accepted = submit_to(server.url, tenant, PROMPT)
    assert accepted.status_code == 200, accepted.text
    return server, tenant, accepted.json()["job_id"]


# Upstream calls end within 2 s, so an unanswered submit may be released 2.5 s after its
# hold: shorter than the outage below, to show the reconciler does not release it meanwhile.
QUICK_RELEASE = {
    "upstream_connect_timeout_seconds": 0.5,
    "upstream_write_timeout_seconds": 0.5,
    "upstream_read_timeout_seconds": 0.5,
    "upstream_pool_timeout_seconds": 0.5,
    "unanswered_submit_release_after_seconds": 2.5,
    "reconciler_enabled": True,
    "reconciler_interval_seconds": 0.2,
    "reconciler_first_check_after_seconds": 0.0,
}


def test_an_accepted_job_stays_its_owners_and_is_billed_once_when_the_database_drops(
    own_database: OwnDatabase,
    start_gateway: StartGateway,
    simulator: SimulatorProbe,
    tmp_path: Path,
) -> None:
    """Defect 3: the database drops after the submit was forwarded and the record retries
    fail. The client has its 200 and job id; its polls must find the job as soon as the
    database is back, and the job must be billed exactly once (not released meanwhile)."""
    server, tenant, job_id = accepted_as_the_database_drops(
        start_gateway, own_database, tmp_path, **QUICK_RELEASE
    )
    (waiting,) = list(tmp_path.glob("*/*.json"))  # durable before the client heard the answer
    polled = httpx.get(f"{server.url}/v1/jobs/{job_id}", headers=tenant.headers)
    assert polled.status_code == 503  # not 404: the ledger is away, the job is not unknown
    time.sleep(3.0)  # longer than the release timeout: the reconciler must not give it up

    own_database.allow_connections()
    back = time.monotonic()
    while True:
        polled = httpx.get(f"{server.url}/v1/jobs/{job_id}", headers=tenant.headers)
        if polled.status_code == 200:
            break
        assert polled.status_code == 503, polled.text
        time.sleep(0.02)
    visible_in = time.monotonic() - back
    assert visible_in < RECOVERY_LIMIT_SECONDS, visible_in
    assert polled.json()["status"] == "completed"
    assert not waiting.exists()

    ledger = team_ledger(own_database.url, tenant.team)
    (job,) = ledger.jobs
    assert (job.state, job.upstream_job_id, job.needs_review) == (
        JobState.CAPTURED.value,
        job_id,
        False,
    )
    assert ledger.entries_of(job.id) == [("hold", 1_680_000), ("capture", 1_680_000)]
    books = check_books(own_database.url, simulator.url)
    assert books.upstream_jobs == 1 and books.differences == 0


def test_answers_kept_when_the_gateway_stops_are_replayed_by_the_next_one(
    own_database: OwnDatabase,
    start_gateway: StartGateway,
    simulator: SimulatorProbe,
    tmp_path: Path,
) -> None:
    first, tenant, job_id = accepted_as_the_database_drops(start_gateway, own_database, tmp_path)
    first.stop()  # stops while the database is still away: the answer stays on disk
    assert len(list(tmp_path.glob("*/*.json"))) == 1

    own_database.allow_connections()
    # Two processes replay the same directory at once: recorded once, whichever wins.
    second = start_gateway(database_url=own_database.url, outbox_dir=tmp_path)
    third = start_gateway(database_url=own_database.url, outbox_dir=tmp_path)
    # Replayed at startup; through PgBouncer, whose own backoff after failed logins
    # (server_login_retry) can refuse the first queries, by the outbox's next retry.
    deadline = time.monotonic() + 5
    while list(tmp_path.glob("*/*.json")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(tmp_path.glob("*/*.json")) == []
    for server in (second, third):
        polled = httpx.get(f"{server.url}/v1/jobs/{job_id}", headers=tenant.headers)
        assert polled.status_code == 200 and polled.json()["status"] == "completed"
    ledger = team_ledger(own_database.url, tenant.team)
    assert ledger.entries_of(ledger.jobs[0].id) == [("hold", 1_680_000), ("capture", 1_680_000)]
    assert check_books(own_database.url, simulator.url).differences == 0
