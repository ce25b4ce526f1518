"""Helpers shared by the CLI modules: settings, a one-shot database session, error output."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, NoReturn, TypeVar

import click
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from gateway.config import Settings
from gateway.db.engine import create_engine, create_sessionmaker
from gateway.db.session import transaction
from gateway.errors import GatewayError

T = TypeVar("T")


def load_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        fail(f"invalid configuration: {exc}")


def fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


@asynccontextmanager
async def database(settings: Settings) -> AsyncIterator[AsyncEngine]:
    """An engine on the configured database for one command, disposed after it."""
    engine = create_engine(settings.database_url, pgbouncer=settings.database_pgbouncer)
    try:
        yield engine
    finally:
        await engine.dispose()


def run_in_session(
    settings: Settings,
    work: Callable[[AsyncSession], Awaitable[T]],
    *,
    opened: Callable[
        [async_sessionmaker[AsyncSession]], AbstractAsyncContextManager[AsyncSession]
    ] = transaction,
) -> T:
    """Run ``work`` in one committed transaction (or, with ``opened=autocommit``, a session
    whose statements commit on their own) on the configured database."""

    async def _main() -> T:
        async with database(settings) as engine, opened(create_sessionmaker(engine)) as session:
            return await work(session)

    return run(_main())


def run(coro: Coroutine[Any, Any, T], *, error_code: int = 1) -> T:
    try:
        return asyncio.run(coro)
    except GatewayError as exc:
        fail(exc.message, code=error_code)


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))
