"""Transactions.

Services only ``flush``; whoever opens the transaction commits it. HTTP routes that talk to
the upstream cannot hold one transaction across the network call (a slow upstream would pin a
pooled connection per request), so the proxy opens short ``transaction()`` blocks around each
database step instead of a request-scoped session.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

# SQLSTATE classes that mean "no database to talk to": connection exception (08), insufficient
# resources such as too many clients (53), operator intervention / shutting down (57P), no
# such database (3D).
_UNAVAILABLE_SQLSTATE_CLASSES = ("08", "53", "57P", "3D")


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
async def read_only(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> AsyncIterator[AsyncSession]:
    """A session for reads that need no transaction of their own (a key lookup, a balance):
    on Postgres it runs in autocommit, saving the BEGIN and COMMIT round trips; on SQLite (one
    process, its own locking) it is an ordinary transaction."""
    async with sessionmaker() as session:
        if dialect_name(session) == "postgresql":
            await session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
            yield session
        else:
            async with session.begin():
                yield session


def is_database_unavailable(exc: BaseException) -> bool:
    """True when ``exc`` means the database cannot be reached (not a bug in a query).

    The HTTP layer answers these with 503 ``ledger_unavailable``: the gateway fails closed
    rather than forward work it cannot meter.
    """
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated or isinstance(exc, OperationalError | InterfaceError):
            return True
        sqlstate = getattr(exc.orig, "sqlstate", None) or ""
        return sqlstate.startswith(_UNAVAILABLE_SQLSTATE_CLASSES)
    if isinstance(exc, PoolTimeout):  # every pooled connection busy: overloaded, not broken
        return True
    return isinstance(exc, OSError | ConnectionError | TimeoutError)


def dialect_name(session: AsyncSession) -> str:
    """``postgresql`` or ``sqlite``: for the few statements the two spell differently."""
    return session.get_bind().dialect.name
