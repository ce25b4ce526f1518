"""The fast tier's database: service-level tests inside one transaction that is never committed.

As in pypi/warehouse's ``tests/conftest.py``: the schema is migrated once per test session, in
a database (Postgres) or file (SQLite) of the tier's own that nothing ever commits to; each test
gets one connection with an outer transaction begun, and sessions joined to it with
``join_transaction_mode="create_savepoint"``. Every unit of work (``in_session(db, ...)``,
``make_tenant(db)``, ``team_ledger(db, ...)``) is then a SAVEPOINT: released when it succeeds,
rolled back to when it raises, exactly as a committed or failed transaction looks to the next
one. At the end the fixture rolls the outer transaction back, so every test starts from the
freshly migrated schema and costs no database of its own.

The suite's service tests are synchronous and run their coroutines to completion one unit at a
time; a test's connection lives on the tier's event loop, so they are run there
(``SavepointDatabase.run``), never with ``asyncio.run``. Not for tests that need a real commit
or a second connection (races, locks, replicas, subprocesses, HTTP servers): nothing outside
the test's own connection sees its writes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeAlias, TypeVar

import pytest
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    AsyncTransaction,
    async_sessionmaker,
)

from gateway.db.engine import create_engine
from gateway.db.session import transaction

T = TypeVar("T")
FAST = "fast"


@dataclass(frozen=True)
class SavepointEngine:
    """A migrated database of the fast tier's own and the one engine (and event loop) the
    tier reaches it with, for the whole test session."""

    url: str
    engine: AsyncEngine
    runner: asyncio.Runner


@dataclass(frozen=True)
class SavepointDatabase:
    """One test's database: ``connection`` in a transaction the fixture rolls back, and a
    sessionmaker whose every session is a savepoint in it."""

    url: str
    connection: AsyncConnection
    sessionmaker: async_sessionmaker[AsyncSession]
    runner: asyncio.Runner

    def run(self, work: Coroutine[Any, Any, T]) -> T:
        """Run ``work`` to completion on the loop this test's connection belongs to."""
        return self.runner.run(work)

    def in_session(self, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
        """``work`` in one unit of work: a savepoint, released on success, rolled back (and
        the error raised) on failure."""

        async def _unit() -> T:
            async with transaction(self.sessionmaker) as session:
                return await work(session)

        return self.run(_unit())


# What the support helpers accept: a database URL (each call opens an engine of its own and
# commits) or a fast-tier test's database (each call a savepoint, never committed).
Database: TypeAlias = str | SavepointDatabase


async def _begin(engine: AsyncEngine) -> tuple[AsyncConnection, AsyncTransaction]:
    connection = await engine.connect()
    outer = connection.begin()
    await outer.start()
    return connection, outer


async def _end(connection: AsyncConnection, outer: AsyncTransaction) -> bool:
    """Roll everything back; True if the outer transaction was still open (not committed)."""
    try:
        still_open = outer.is_active
        if still_open:
            await outer.rollback()
        return still_open
    finally:
        await connection.close()


@contextmanager
def savepoint_engine(url: str, runner: asyncio.Runner) -> Iterator[SavepointEngine]:
    """The gateway's own engine for the migrated database at ``url``, on ``runner``'s loop."""
    engine = create_engine(url)
    try:
        yield SavepointEngine(url, engine, runner)
    finally:
        runner.run(engine.dispose())


@contextmanager
def savepoint_database(shared: SavepointEngine, node: pytest.Item) -> Iterator[SavepointDatabase]:
    """A test's ``SavepointDatabase`` on ``shared``; everything it wrote is rolled back after.
    The test must carry the ``fast`` marker, so that ``make test-fast`` (``-m fast``) runs it."""
    if node.get_closest_marker(FAST) is None:
        pytest.fail(
            f"{node.nodeid} uses the fast tier's savepoint database: mark it @pytest.mark.fast",
            pytrace=False,
        )
    connection, outer = shared.runner.run(_begin(shared.engine))
    sessionmaker = async_sessionmaker(
        bind=connection,
        join_transaction_mode="create_savepoint",
        # As the gateway's own sessionmaker (gateway.db.engine.create_sessionmaker).
        expire_on_commit=False,
        autoflush=False,
    )
    try:
        yield SavepointDatabase(shared.url, connection, sessionmaker, shared.runner)
    finally:
        if not shared.runner.run(_end(connection, outer)):
            pytest.fail(
                f"{node.nodeid} ended its outer transaction: its writes may have been committed",
                pytrace=False,
            )
