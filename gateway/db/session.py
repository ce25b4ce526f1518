"""Transactions.

Domains only ``flush``; whoever opens the transaction commits it: an application service, or an
entry point's unit of work (``gateway.web.deps.UnitOfWorkDep``). HTTP routes that talk to
the upstream cannot hold one transaction across the network call (a slow upstream would pin a
pooled connection per request), so the proxy opens short ``transaction()`` blocks around each
database step instead of a request-scoped session.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker


@asynccontextmanager
async def transaction(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> AsyncIterator[AsyncSession]:
    """One unit of work: commit on success, roll back on any error.

    >>> async with transaction(sessionmaker) as session:
    ...     session.add(row)
    """
    async with sessionmaker() as session, session.begin():
        yield session


@asynccontextmanager
async def autocommit(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> AsyncIterator[AsyncSession]:
    """A session whose statements each commit on their own: for reads that need no
    transaction (a key lookup, a balance) and single-statement writes that need none either
    (a key's last-used time). On Postgres it runs in autocommit, saving the BEGIN and COMMIT
    round trips; on SQLite (one process, its own locking), and through PgBouncer, it is an
    ordinary transaction."""
    async with sessionmaker() as session:
        if dialect_name(session) == "postgresql" and not through_pgbouncer(session):
            await session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
            yield session
        else:
            # SQLite; or PgBouncer in transaction mode, where a statement's prepare and its
            # execution must stay in one transaction to reach the same server connection.
            async with session.begin():
                yield session


def dialect_name(session: AsyncSession) -> str:
    """``postgresql`` or ``sqlite``: for the few statements the two spell differently."""
    return session.get_bind().dialect.name


PGBOUNCER_OPTION = "gateway_through_pgbouncer"
"""An engine execution option ``create_engine(pgbouncer=True)`` sets."""


def through_pgbouncer(session: AsyncSession) -> bool:
    return bool(session.get_bind().get_execution_options().get(PGBOUNCER_OPTION))
