"""The gateway through a real PgBouncer in transaction pooling mode (``GATEWAY_DATABASE_PGBOUNCER=
true``): more client connections than server connections, so consecutive transactions of one
gateway connection run on different server connections, and no prepared statement may outlive
its transaction. Submits, polls and usage reads under concurrency, then the books."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import make_url

from tests.support.api import submit_to
from tests.support.environment import require_tool
from tests.support.ledger import team_ledger
from tests.support.processes import free_port
from tests.support.servers import StartGateway
from tests.support.simulator import SimulatorProbe
from tests.support.tenants import make_tenant

SERVER_CONNECTIONS = 2


@pytest.fixture
def pgbouncer_url(postgres_url: str, tmp_path: Path) -> Iterator[str]:
    """A PgBouncer of this test's own, in front of the test database, with two server
    connections for all its clients."""
    binary = require_tool(
        "pgbouncer",
        install="Debian package pgbouncer",
        skipped="the gateway is not tested through PgBouncer",
    )
    target = make_url(postgres_url)
    port = free_port()
    tmp_path.chmod(0o755)
    users = tmp_path / "users.txt"
    users.write_text(f'"{target.username}" ""\n')
    config = tmp_path / "pgbouncer.ini"
    config.write_text(
        "[databases]\n"
        f"{target.database} = host={target.host} port={target.port or 5432}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\n"
        "unix_socket_dir =\n"
        f"auth_type = trust\nauth_file = {users}\n"
        "pool_mode = transaction\n"
        f"default_pool_size = {SERVER_CONNECTIONS}\nmax_client_conn = 200\n"
        "ignore_startup_parameters = extra_float_digits\n"
    )
    for path in (users, config):
        path.chmod(0o644)
    command = [binary, str(config)]
    if os.geteuid() == 0:  # PgBouncer refuses to run as root
        command[1:1] = ["-u", "nobody"]
    log_path = tmp_path / "pgbouncer.log"
    with log_path.open("wb") as log:  # its log on stderr (it may not write in tmp_path)
        process = subprocess.Popen(command, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if process.poll() is not None:
                log = (
                    (tmp_path / "pgbouncer.log").read_text()
                    if (tmp_path / "pgbouncer.log").exists()
                    else ""
                )
                raise RuntimeError(f"pgbouncer exited: {log[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                time.sleep(0.05)
        else:
            raise RuntimeError("pgbouncer did not listen in time")
        yield target.set(host="127.0.0.1", port=port).render_as_string(hide_password=False)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_the_money_path_through_pgbouncer_in_transaction_mode(
    start_gateway: StartGateway, simulator: SimulatorProbe, pgbouncer_url: str, postgres_url: str
) -> None:
    gateway = start_gateway(
        database_url=pgbouncer_url, database_pgbouncer=True, database_pool_size=12
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
