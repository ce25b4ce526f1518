"""Hot-path statements on the pooled driver connection, past SQLAlchemy's execution machinery.

A tenant request's statements are few and fixed, yet through the ORM each one costs ~200 µs of
CPU in session, transaction and statement bookkeeping: more than the database spends on it.
``DirectStatements`` runs such a statement as plain SQL on the asyncpg connection underneath a
connection from SQLAlchemy's pool (~35 µs, see benchmarks/): the same pool, its size and its
dead-connection checks, and asyncpg's own prepared-statement cache (off through PgBouncer:
``create_engine(pgbouncer=True)``). Each call is one statement in autocommit: one round trip,
atomic on its own (through PgBouncer, in a transaction of its own). A failure is raised as the
``SQLAlchemyError`` the ORM would have raised, so ``gateway.db.errors`` classifies it the same
way (an outage is a 503, a bug a 500).

Postgres only: on SQLite ``DirectStatements.for_engine`` is None and callers take their ORM
path, which remains the reference for every rule.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import asyncpg
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import PoolProxiedConnection
from sqlalchemy.util import greenlet_spawn


class Row(Protocol):
    """An ``asyncpg.Record``: a tuple-like row (by index or slice)."""

    def __getitem__(self, index: Any, /) -> Any: ...

    def __len__(self) -> int: ...


StatementListener = Callable[[str, tuple[Any, ...]], None]


class DirectStatements:
    def __init__(self, engine: AsyncEngine, *, pgbouncer: bool = False) -> None:
        self._engine = engine
        self._own_transaction = pgbouncer
        """Through PgBouncer (transaction pooling, no statement cache), an unnamed statement's
        parse and its execution must reach the same server connection: one transaction."""
        self.listeners: list[StatementListener] = []
        """Called with each statement and its parameters before it is sent (tests count
        round trips with it, as with SQLAlchemy's ``before_cursor_execute``)."""

    @classmethod
    def for_engine(cls, engine: AsyncEngine, *, pgbouncer: bool = False) -> DirectStatements | None:
        return cls(engine, pgbouncer=pgbouncer) if engine.dialect.name == "postgresql" else None

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        for listener in self.listeners:
            listener(sql, args)
        pooled = await self._checkout()
        driver: Any = pooled.driver_connection
        try:
            if self._own_transaction:
                async with driver.transaction():
                    row: Row | None = await driver.fetchrow(sql, *args)
            else:
                row = await driver.fetchrow(sql, *args)
        except BaseException as exc:
            error = await _failed(pooled, driver, sql, args, exc)
            if error is exc:
                raise
            raise error from exc
        finally:
            await greenlet_spawn(pooled.close)  # back to the pool (or gone, if invalidated)
        return row

    async def _checkout(self) -> PoolProxiedConnection:
        """A connection straight from the engine's pool (its checkout listeners run), without
        an engine ``Connection`` around it: a third of a short statement's CPU."""
        try:
            return await greenlet_spawn(self._engine.sync_engine.pool.connect)
        except (PoolTimeout, DBAPIError):
            raise  # already what the engine raises: an outage (503)
        except Exception as exc:
            # Raised while connecting (refused, reset, no dead connection replaced in three
            # tries), wrapped as the engine wraps it: an outage (503).
            raise OperationalError(None, None, exc) from exc


async def _failed(
    pooled: PoolProxiedConnection, driver: Any, sql: str, args: tuple[Any, ...], exc: BaseException
) -> BaseException:
    """What to raise for ``exc``: the error SQLAlchemy would have raised. A connection that
    cannot be trusted for the next statement (closed, a FATAL error, a client-side protocol
    error, or a statement cancelled mid-flight, which leaves it busy) is invalidated first,
    so the pool never hands it out again."""
    ordinary = (
        isinstance(exc, asyncpg.PostgresError)
        and not isinstance(exc, asyncpg.PostgresConnectionError)
        and getattr(exc, "severity", None) not in ("FATAL", "PANIC")
        and not driver.is_closed()
    )
    if not ordinary:
        await greenlet_spawn(pooled.invalidate, exc if isinstance(exc, Exception) else None)
    if not isinstance(exc, Exception):
        return exc  # a cancellation goes on as one
    if not ordinary:
        return OperationalError(sql, args, exc, connection_invalidated=True)
    if isinstance(exc, asyncpg.IntegrityConstraintViolationError):
        return IntegrityError(sql, args, exc)
    return DBAPIError(sql, args, exc)
