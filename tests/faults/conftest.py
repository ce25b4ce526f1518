"""Fault-suite fixtures: a database of the test's own (so refusing connections or terminating
backends never touches another test's), and gateways pointed at it."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.support.database import admin_sql, create_postgres_database, drop_postgres_database


@dataclass(frozen=True)
class OwnDatabase:
    url: str
    name: str

    def refuse_connections(self) -> None:
        """``ALLOW_CONNECTIONS false`` and every session ended: what a failover or an
        operator's maintenance looks like to the gateway (SQLSTATE 55000 on connect)."""
        admin_sql(f'ALTER DATABASE "{self.name}" ALLOW_CONNECTIONS false')
        self.terminate_backends()

    def allow_connections(self) -> None:
        admin_sql(f'ALTER DATABASE "{self.name}" ALLOW_CONNECTIONS true')

    def terminate_backends(self) -> None:
        admin_sql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            f"WHERE datname = '{self.name}' AND pid <> pg_backend_pid()"
        )

    def set_for_new_sessions(self, setting: str, value: str) -> None:
        admin_sql(f"ALTER DATABASE \"{self.name}\" SET {setting} = '{value}'")


@pytest.fixture
def own_database(postgres_url: str) -> Iterator[OwnDatabase]:
    url = create_postgres_database()
    database = OwnDatabase(url, url.rsplit("/", 1)[-1])
    try:
        yield database
    finally:
        database.allow_connections()
        drop_postgres_database(url)
