"""Database URLs as operators paste them (PRODUCT §12, ``gateway.db.urls``): the schemes, and the
libpq parameters translated for asyncpg, checked against a Postgres of the test's own that
accepts TLS connections only (``hostssl``), with a certificate from a CA the test makes."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from gateway.db.engine import create_engine
from gateway.db.errors import is_database_unavailable
from gateway.db.urls import database_target
from tests.support.environment import require_tool, unavailable
from tests.support.processes import free_port

POSTGRES_BIN = Path("/usr/lib/postgresql/15/bin")


@pytest.mark.parametrize(
    ("url", "driver_url"),
    [
        ("postgres://u:p@db:5432/ledger", "postgresql+asyncpg://u:p@db:5432/ledger"),
        ("postgresql://u@db/ledger", "postgresql+asyncpg://u@db/ledger"),
        ("postgresql+asyncpg://u@db/ledger", "postgresql+asyncpg://u@db/ledger"),
        ("sqlite:///./gateway.db", "sqlite+aiosqlite:///./gateway.db"),
    ],
)
def test_the_url_forms_operators_paste(url: str, driver_url: str) -> None:
    assert database_target(url).url == driver_url


def test_libpq_parameters_become_asyncpg_arguments(tmp_path: Path) -> None:
    target = database_target(
        "postgres://u@db/ledger?sslmode=require&application_name=gateway-eu"
        "&connect_timeout=3&options=-c%20statement_timeout%3D5000%20-c%20lock_timeout%3D2000"
    )
    assert target.url == "postgresql+asyncpg://u@db/ledger"
    assert target.connect_args == {
        "ssl": "require",
        "server_settings": {
            "application_name": "gateway-eu",
            "statement_timeout": "5000",
            "lock_timeout": "2000",
        },
        "timeout": 3.0,
    }
    assert database_target("postgresql://u@db/l?sslmode=disable").connect_args == {"ssl": False}
    verified = database_target("postgresql://u@db/l?sslmode=verify-full").connect_args["ssl"]
    assert isinstance(verified, ssl.SSLContext)
    assert verified.check_hostname
    assert verified.verify_mode == ssl.CERT_REQUIRED


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("postgresql://u@db/l?sslmode=always", "sslmode='always' in the database URL: use one of"),
        ("postgresql://u@db/l?target_session_attrs=any", "unsupported database URL parameter"),
        ("postgresql://u@db/l?sslmode=require&sslmode=disable", "sslmode more than once"),
        ("postgresql://u@db/l?connect_timeout=soon", "connect_timeout='soon'"),
        ("postgresql://u@db/l?sslmode=verify-ca&sslrootcert=/nonexistent.pem", "cannot be read"),
        ("postgresql://u@db/l?options=statement_timeout%3D5", "only '-c name=value'"),
        ("mysql://u@db/l", "unsupported database URL scheme 'mysql'"),
        ("not a url", "is not a URL"),
    ],
)
def test_what_cannot_be_used_is_refused_before_connecting(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("?", r"\?")):
        database_target(url)


@dataclass(frozen=True)
class TlsPostgres:
    port: int
    ca: Path

    def url(self, query: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres?{query}"


def _as_postgres(command: list[str]) -> list[str]:
    """Postgres refuses to run as root: as the ``postgres`` user then (CI runs as root)."""
    if os.geteuid() != 0:
        return command
    return [
        require_tool("runuser", install="util-linux", skipped="the TLS tests"),
        "-u",
        "postgres",
        "--",
        *command,
    ]


@pytest.fixture(scope="module")
def tls_postgres() -> Iterator[TlsPostgres]:
    require_tool("openssl", install="Debian package openssl", skipped="the TLS tests")
    if not (POSTGRES_BIN / "initdb").exists():
        unavailable(
            f"{POSTGRES_BIN}/initdb is missing (Debian package postgresql-15)", "the TLS tests"
        )
    # Not under pytest's basetemp: its parents are private to root, and the server runs as
    # the postgres user.
    work = Path(tempfile.mkdtemp(prefix="gw-tls-postgres-"))
    work.chmod(0o755)
    try:
        yield from _serve_tls(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _serve_tls(work: Path) -> Iterator[TlsPostgres]:
    ca, server = work / "ca", work / "server"
    openssl = ["openssl", "req", "-new", "-nodes", "-newkey", "rsa:2048", "-days", "2"]
    subprocess.run(
        [*openssl, "-x509", "-subj", "/CN=test CA", "-keyout", f"{ca}.key", "-out", f"{ca}.pem"],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [*openssl, "-subj", "/CN=127.0.0.1", "-keyout", f"{server}.key", "-out", f"{server}.csr"],
        check=True,
        capture_output=True,
    )
    extensions = work / "san.cnf"
    extensions.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    subprocess.run(
        [
            "openssl",
            "x509",
            "-req",
            "-in",
            f"{server}.csr",
            "-CA",
            f"{ca}.pem",
            "-CAkey",
            f"{ca}.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            f"{server}.pem",
            "-extfile",
            str(extensions),
        ],
        check=True,
        capture_output=True,
    )
    data = work / "data"
    data.mkdir()
    if os.geteuid() == 0:
        for path in (data, Path(f"{server}.key"), Path(f"{server}.pem")):
            shutil.chown(path, "postgres", "postgres")
    Path(f"{server}.key").chmod(0o600)
    subprocess.run(
        _as_postgres(
            [str(POSTGRES_BIN / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust"]
        ),
        check=True,
        capture_output=True,
    )
    port = free_port()
    (data / "pg_hba.conf").write_text(
        "hostssl all all 127.0.0.1/32 trust\nhostnossl all all 127.0.0.1/32 reject\n"
    )
    options = (
        f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={data} "
        f"-c ssl=on -c ssl_cert_file={server}.pem -c ssl_key_file={server}.key"
    )
    log = data / "postgres.log"  # written by the server's user
    subprocess.run(
        _as_postgres(
            [
                str(POSTGRES_BIN / "pg_ctl"),
                "-D",
                str(data),
                "-o",
                options,
                "-l",
                str(log),
                "-w",
                "start",
            ]
        ),
        check=True,
        capture_output=True,
        timeout=60,
    )
    pid = int((data / "postmaster.pid").read_text().split()[0])
    try:
        yield TlsPostgres(port, Path(f"{ca}.pem"))
    finally:
        os.kill(pid, signal.SIGINT)  # fast shutdown
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (data / "postmaster.pid").exists():
            time.sleep(0.1)


async def _session_facts(url: str) -> tuple[bool, str, str]:
    engine = create_engine(url, connect_timeout=5)
    try:
        async with engine.connect() as connection:
            row = (
                await connection.execute(
                    text(
                        "SELECT ssl, current_setting('application_name'), "
                        "current_setting('statement_timeout') "
                        "FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
                    )
                )
            ).one()
            return bool(row[0]), str(row[1]), str(row[2])
    finally:
        await engine.dispose()


def test_sslmode_require_and_verify_full_connect_over_tls(tls_postgres: TlsPostgres) -> None:
    required = asyncio.run(
        _session_facts(tls_postgres.url("sslmode=require&application_name=gateway-tls"))
    )
    assert required == (True, "gateway-tls", "0")
    verified = asyncio.run(
        _session_facts(
            tls_postgres.url(
                f"sslmode=verify-full&sslrootcert={tls_postgres.ca}"
                "&options=-c%20statement_timeout%3D7000"
            )
        )
    )
    assert verified == (True, "", "7s")


def test_a_server_that_is_not_who_the_ca_says_is_refused(tls_postgres: TlsPostgres) -> None:
    """verify-full against the system's CAs: this server's certificate is from the test's
    own CA, so the connection is refused, as an outage (a request gets the 503)."""
    with pytest.raises(ssl.SSLCertVerificationError) as unverified:
        asyncio.run(_session_facts(tls_postgres.url("sslmode=verify-full")))
    assert is_database_unavailable(unverified.value)
    with pytest.raises(DBAPIError) as plain:  # hostnossl ... reject: TLS is the only way in
        asyncio.run(_session_facts(tls_postgres.url("sslmode=disable")))
    assert "no encryption" in str(plain.value)
    assert is_database_unavailable(plain.value)
