"""Engine construction: one async engine per process, tuned per backend."""

from __future__ import annotations

from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.ext.asyncio import AsyncSession as AsyncSession

_ASYNC_DRIVERS = {"postgresql": "postgresql+asyncpg", "sqlite": "sqlite+aiosqlite"}


def normalize_database_url(url: str) -> str:
    """Accept the usual spellings (``postgresql://``, ``sqlite:///``) and pick async drivers."""
    parsed = make_url(url)
    driver = _ASYNC_DRIVERS.get(parsed.drivername)
    if driver is not None:
        parsed = parsed.set(drivername=driver)
    elif parsed.drivername not in _ASYNC_DRIVERS.values():
        raise ValueError(
            f"unsupported database URL scheme {parsed.drivername!r}: use postgresql:// or sqlite://"
        )
    return parsed.render_as_string(hide_password=False)


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def create_engine(
    url: str, *, pool_size: int = 20, max_overflow: int = 0, pool_timeout: float = 10.0
) -> AsyncEngine:
    """No ``pool_pre_ping``: with asyncpg it costs three round trips on every checkout (about a
    fifth of the gateway's CPU under load, see benchmarks/). A connection that died with the
    server fails its request once (503, nothing forwarded) and is replaced; ``pool_recycle``
    retires connections before idle timeouts in between can bite."""
    url = normalize_database_url(url)
    kwargs: dict[str, Any]
    if is_sqlite(url):
        kwargs = {"connect_args": {"timeout": 30}}
    else:
        kwargs = {
            "pool_size": pool_size,
            "max_overflow": max_overflow,
            "pool_timeout": pool_timeout,
            "pool_recycle": 1800,
        }
    engine = create_async_engine(url, **kwargs)
    if is_sqlite(url):
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        event.listen(engine.sync_engine, "begin", _sqlite_begin_immediate)
    return engine


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
