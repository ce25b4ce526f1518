"""The gateway through a real PgBouncer in transaction pooling mode (``GATEWAY_DATABASE_PGBOUNCER=
true``): more client connections than server connections, so consecutive transactions of one
gateway connection run on different server connections, and no prepared statement may outlive
its transaction. Submits, polls and usage reads under concurrency, then the books."""

from __future__ import annotations

import concurrent.futures
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy.engine import make_url

from tests.support.api import submit_to
from tests.support.ledger import team_ledger
from tests.support.pgbouncer import pgbouncer
from tests.support.servers import StartGateway
from tests.support.simulator import SimulatorProbe
from tests.support.tenants import make_tenant

SERVER_CONNECTIONS = 2


@pytest.fixture
def pgbouncer_url(postgres_url: str) -> Iterator[str]:
    """A PgBouncer of this test's own, in front of the test database, with two server
    connections for all its clients."""
    target = make_url(postgres_url)
    database = target.database or "postgres"
    with pgbouncer(
        target.host or "127.0.0.1",
        target.port or 5432,
        server_connections=SERVER_CONNECTIONS,
        database=database,
    ) as port:
        yield target.set(host="127.0.0.1", port=port).render_as_string(hide_password=False)


@pytest.mark.parametrize("direct", [True, False], ids=["direct statements", "orm only"])
def test_the_money_path_through_pgbouncer_in_transaction_mode(
    direct: bool,
    start_gateway: StartGateway,
    simulator: SimulatorProbe,
    pgbouncer_url: str,
    postgres_url: str,
) -> None:
    """With the ORM alone, every read is in a transaction too: an autocommit read's prepare
    and execution could otherwise reach two server connections ('prepared statement does
    not exist', seen in the money suite run through PgBouncer before the fix)."""
    gateway = start_gateway(
        database_url=pgbouncer_url,
        database_pgbouncer=True,
        database_pool_size=12,
        database_direct_statements=direct,
    )
    tenants = [make_tenant(postgres_url, budget_micro_usd=100_000_000) for _ in range(3)]

    def one_client(index: int) -> list[int]:
        tenant = tenants[index % len(tenants)]
        statuses = []
        for _ in range(4):
            accepted = submit_to(gateway.url, tenant, duration=5, resolution="480p")
            statuses.append(accepted.status_code)
            if accepted.status_code != 200:
                continue
            job = f"{gateway.url}/v1/jobs/{accepted.json()['job_id']}"
            for _ in range(2):  # settles, then answered from the record
                statuses.append(httpx.get(job, headers=tenant.headers, timeout=30).status_code)
            usage = httpx.get(f"{gateway.url}/v1/usage", headers=tenant.headers, timeout=30)
            statuses.append(usage.status_code)
        return statuses

    with concurrent.futures.ThreadPoolExecutor(max_workers=12) as pool:
        statuses = Counter(s for answer in pool.map(one_client, range(12)) for s in answer)
    assert statuses == Counter({200: 12 * 4 * 4}), statuses
    for tenant in tenants:
        ledger = team_ledger(postgres_url, tenant.team)
        assert len(ledger.jobs) == 16
        assert {job.state for job in ledger.jobs} == {"captured"}
        captured = sum(job.estimate_micro_usd for job in ledger.jobs)
        assert (ledger.balance.held_micro_usd, ledger.balance.captured_micro_usd) == (
            0,
            captured,
        )
