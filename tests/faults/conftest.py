"""Fault-suite fixtures: a database of the test's own (so refusing connections or terminating
backends never touches another test's), and gateways pointed at it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.database import OwnDatabase, create_postgres_database, drop_postgres_database


@pytest.fixture
def own_database(postgres_url: str) -> Iterator[OwnDatabase]:
    url = create_postgres_database()
    database = OwnDatabase(url, url.rsplit("/", 1)[-1])
    try:
        yield database
    finally:
        database.allow_connections()
        drop_postgres_database(url)
