"""Engine construction: one async engine per process, tuned per backend."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from sqlalchemy import event
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.ext.asyncio import AsyncSession as AsyncSession
from sqlalchemy.util import await_only

from gateway.db.session import PGBOUNCER_OPTION
from gateway.db.urls import database_target, is_sqlite


def create_engine(
    url: str,
    *,
    pool_size: int = 20,
    max_overflow: int = 0,
    pool_timeout: float = 10.0,
    connect_timeout: float = 5.0,
    idle_ping_after: float = 30.0,
    pgbouncer: bool = False,
) -> AsyncEngine:
    """No ``pool_pre_ping``: with asyncpg it costs three round trips on every checkout (about a
    fifth of the gateway's CPU under load, see benchmarks/). Instead each checkout discards a
    connection the server has already closed (a restart, ``pg_terminate_backend``, a failover:
    free to see, asyncpg noticed the socket close) and pings only one that sat idle for
    ``idle_ping_after`` seconds (a silent network drop shows no close), so a dead pooled
    connection costs no client request. ``pool_recycle`` retires connections before idle
    timeouts in between can bite; ``connect_timeout`` bounds a connection attempt to a
    database that does not answer.

    ``pgbouncer``: through PgBouncer in transaction pooling mode, where consecutive
    transactions may run on different server connections, no prepared statement may outlive
    its transaction: asyncpg's statement cache and SQLAlchemy's are off, and SQLAlchemy's
    statements get unique names (two clients' never collide on one server connection).
    ``gateway.db.direct`` then runs each statement in a transaction of its own."""
    target = database_target(url)
    url = target.url
    kwargs: dict[str, Any]
    if is_sqlite(url):
        kwargs = {"connect_args": {"timeout": 30}}
    else:
        kwargs = {
            "pool_size": pool_size,
            "max_overflow": max_overflow,
            "pool_timeout": pool_timeout,
            "pool_recycle": 1800,
            # The URL's libpq parameters (sslmode, application_name, ...) win.
            "connect_args": {"timeout": connect_timeout, **target.connect_args},
        }
        if pgbouncer:
            kwargs["execution_options"] = {PGBOUNCER_OPTION: True}
            kwargs["connect_args"].update(
                statement_cache_size=0,
                prepared_statement_cache_size=0,
                prepared_statement_name_func=_unique_statement_name,
            )
    engine = create_async_engine(url, **kwargs)
    if is_sqlite(url):
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        event.listen(engine.sync_engine, "begin", _sqlite_begin_immediate)
    else:
        _discard_dead_connections(engine, idle_ping_after)
    return engine


_PING_TIMEOUT_SECONDS = 2.0


def _unique_statement_name() -> str:
    return f"__gw_{uuid.uuid4().hex}__"


def _discard_dead_connections(engine: AsyncEngine, idle_ping_after: float) -> None:
    """Checkout checks that replace a dead pooled connection before a request gets it.

    Raising ``DisconnectionError`` in a checkout listener makes the pool drop that connection
    and hand out another (or open a new one), up to three times."""

    def on_checkin(_dbapi_connection: Any, record: Any) -> None:
        record.info["checked_in_at"] = time.monotonic()

    def on_checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        raw = getattr(dbapi_connection, "_connection", None)
        is_closed = getattr(raw, "is_closed", None)
        if callable(is_closed) and is_closed():
            raise DisconnectionError("the server closed this pooled connection")
        idle_since = record.info.get("checked_in_at")
        if raw is None or idle_since is None or time.monotonic() - idle_since < idle_ping_after:
            return
        try:
            await_only(asyncio.wait_for(raw.fetchrow(";"), _PING_TIMEOUT_SECONDS))
        except Exception as exc:
            raise DisconnectionError("an idle pooled connection did not answer a ping") from exc

    event.listen(engine.sync_engine.pool, "checkin", on_checkin)
    event.listen(engine.sync_engine.pool, "checkout", on_checkout)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers run beside the single writer; foreign keys are off by default in SQLite.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()
    # Let SQLAlchemy, not the driver, decide when transactions begin (see below).
    dbapi_connection.isolation_level = None


def _sqlite_begin_immediate(connection: Any) -> None:
    """Take SQLite's write lock at BEGIN. A deferred transaction that reads and then writes
    fails at once ("database is locked") when another one got there first; IMMEDIATE makes it
    wait its turn instead (busy_timeout), which is what a ledger transaction needs."""
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)
