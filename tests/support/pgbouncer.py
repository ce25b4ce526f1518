"""A PgBouncer of the tests' own (Debian's ``pgbouncer``), in transaction pooling mode, in
front of the test Postgres; and the switch that routes every gateway a test starts through
one: ``GATEWAY_TEST_THROUGH_PGBOUNCER=1`` (``make test`` runs the money, replica and fault
suites once more that way). Test helpers themselves (tenants, ledger reads) still talk to
Postgres directly: only the gateway's traffic is pooled."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy.engine import make_url

from tests.support.environment import require_tool

THROUGH_PGBOUNCER = os.environ.get("GATEWAY_TEST_THROUGH_PGBOUNCER", "") == "1"
_listening: dict[str, int] = {}
"""``host:port`` of a Postgres → the port of the PgBouncer in front of it."""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextmanager
def pgbouncer(
    host: str, port: int, *, server_connections: int, database: str = "*"
) -> Iterator[int]:
    """PgBouncer on a free loopback port in front of ``host:port`` (``database``: one
    database, or ``*`` for any), with ``server_connections`` per database; yields its port."""
    binary = require_tool(
        "pgbouncer",
        install="Debian package pgbouncer",
        skipped="the gateway is not tested through PgBouncer",
    )
    work = Path(tempfile.mkdtemp(prefix="gw-pgbouncer-"))
    work.chmod(0o755)
    listen = _free_port()
    users = work / "users.txt"
    users.write_text('"postgres" ""\n')
    config = work / "pgbouncer.ini"
    config.write_text(
        "[databases]\n"
        f"{database} = host={host} port={port}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {listen}\n"
        "unix_socket_dir =\n"
        f"auth_type = trust\nauth_file = {users}\n"
        "pool_mode = transaction\n"
        f"default_pool_size = {server_connections}\nmax_client_conn = 2000\n"
        # Fail fast, as the gateway's own checks do, when Postgres is away.
        "query_wait_timeout = 10\nserver_connect_timeout = 3\nserver_login_retry = 0.2\n"
        "ignore_startup_parameters = extra_float_digits\n"
    )
    for path in (users, config):
        path.chmod(0o644)
    command = [binary, str(config)]
    if os.geteuid() == 0:  # PgBouncer refuses to run as root
        command[1:1] = ["-u", "nobody"]
    log_path = work / "pgbouncer.log"
    with log_path.open("wb") as log:  # its log on stderr (it may not write in work/)
        process = subprocess.Popen(command, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 10
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"pgbouncer exited: {log_path.read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", listen), timeout=0.2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("pgbouncer did not listen in time") from None
                time.sleep(0.05)
        yield listen
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        for path in work.iterdir():
            path.unlink()
        work.rmdir()


@contextmanager
def route_gateways_through_pgbouncer(postgres_url: str) -> Iterator[None]:
    """While open, ``for_gateway`` sends gateways for ``postgres_url``'s server through one
    PgBouncer (any database on that server)."""
    target = make_url(postgres_url)
    host, port = target.host or "127.0.0.1", target.port or 5432
    with pgbouncer(host, port, server_connections=40) as listen:
        _listening[f"{host}:{port}"] = listen
        try:
            yield
        finally:
            _listening.pop(f"{host}:{port}", None)


def for_gateway(database_url: str) -> tuple[str, bool]:
    """The URL a gateway should use for ``database_url``, and whether it is PgBouncer."""
    url = make_url(database_url)
    if url.get_backend_name() != "postgresql":
        return database_url, False
    listen = _listening.get(f"{url.host or '127.0.0.1'}:{url.port or 5432}")
    if listen is None:
        return database_url, False
    pooled = url.set(host="127.0.0.1", port=listen)
    return pooled.render_as_string(hide_password=False), True
