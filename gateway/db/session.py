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


def is_database_unavailable(exc: BaseException) -> bool:
    """True when ``exc`` means the database cannot be reached (not a bug in a query).

    The HTTP layer answers these with 503 ``ledger_unavailable``: the gateway fails closed
    rather than forward work it cannot meter.
    """
    if isinstance(exc, DBAPIError):
        return exc.connection_invalidated or isinstance(exc, OperationalError | InterfaceError)
    return isinstance(exc, OSError | ConnectionError | TimeoutError)
