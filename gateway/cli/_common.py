"""Helpers shared by the CLI modules: settings, a one-shot database, error output.

Every command fails the same way: one line on stderr starting with ``error:``, saying what
is wrong and what to do, and a documented exit status (README "Command line"): 1 for an
operational error (configuration, database, a refused change), 2 for a usage error (click's
own, and options whose value is invalid). A traceback means a bug.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
from pydantic import ValidationError
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from gateway.config import MissingSetting, Settings
from gateway.config_diagnostics import describe_validation_error, unknown_variables
from gateway.db.engine import create_engine, create_sessionmaker
from gateway.db.migrations import current_revisions, head_revisions, known_revisions
from gateway.db.session import transaction
from gateway.db.urls import DatabaseUrlError, database_target
from gateway.errors import GatewayError

T = TypeVar("T")

OPERATIONAL_ERROR = 1
USAGE_ERROR = 2


class CommandError(Exception):
    """Ends the command with ``error: <message>`` and exit status 1 (no traceback)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def load_settings() -> Settings:
    """The configuration, or exit 1 naming each bad variable, its value and the rule. Unknown
    ``GATEWAY_*`` variables (a typo would silently keep the default) are warned about."""
    for name, suggestion in unknown_variables():
        hint = f" (did you mean {suggestion}?)" if suggestion else ""
        click.echo(f"warning: {name} is not a gateway setting and is ignored{hint}", err=True)
    try:
        return Settings()
    except ValidationError as exc:
        for line in describe_validation_error(exc):
            click.echo(f"error: {line}", err=True)
        sys.exit(OPERATIONAL_ERROR)


def fail(message: str, code: int = OPERATIONAL_ERROR) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def shown_url(url: str) -> str:
    """The database URL without its password, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except SQLAlchemyError:
        return "(unparsable URL)"


def _reason(exc: BaseException) -> str:
    """The driver's own words for a failure, on one line (under SQLAlchemy's and the DBAPI
    adapter's wrappers, the driver's exception)."""
    cause: BaseException = getattr(exc, "orig", None) or exc
    while cause.__cause__ is not None and type(cause).__name__ == "Error":
        cause = cause.__cause__
    text = " ".join(str(cause).split())
    return f"{type(cause).__name__}: {text}" if text else type(cause).__name__


@asynccontextmanager
async def database(
    settings: Settings,
    *,
    require_schema: bool = True,
    create: bool = False,
    remedy: str = "run `gateway db upgrade`",
) -> AsyncIterator[AsyncEngine]:
    """An engine on the configured database for one command, disposed after it.

    Before the command's work: the URL is set and usable, the server answers, and (with
    ``require_schema``) the schema is at this release's head. Each failure is a
    :class:`CommandError` saying what to do. Nothing is created on the way: an SQLite file
    that does not exist is refused, not made, unless ``create`` (``gateway db upgrade``)."""
    url = settings.require_database_url()
    try:
        target = database_target(url)
    except DatabaseUrlError as exc:
        raise CommandError(f"GATEWAY_DATABASE_URL: {exc}") from None
    sqlite_file = _sqlite_file(target.url)
    if sqlite_file is not None and not create and not sqlite_file.exists():
        raise CommandError(
            f"the SQLite database {sqlite_file} does not exist: {remedy} (or check "
            "GATEWAY_DATABASE_URL)"
        )
    engine = create_engine(url, pgbouncer=settings.database_pgbouncer)
    try:
        try:
            current = await current_revisions(engine)
        except (OSError, TimeoutError, SQLAlchemyError) as exc:
            raise CommandError(
                f"cannot use the database at {shown_url(url)} ({_reason(exc)}): check that it "
                "is running and that GATEWAY_DATABASE_URL is right"
            ) from None
        if require_schema:
            problem = schema_problem(current, remedy=remedy)
            if problem is not None:
                raise CommandError(problem)
        yield engine
    finally:
        await engine.dispose()


def _sqlite_file(url: str) -> Path | None:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def schema_problem(
    current: frozenset[str], *, remedy: str = "run `gateway db upgrade`"
) -> str | None:
    """Why a database at ``current`` cannot be used by this release, or None."""
    heads = head_revisions()
    if current == heads:
        return None
    if not current:
        return f"the database has no gateway schema yet: {remedy}"
    if current - known_revisions():
        return (
            f"the database is at revision {', '.join(sorted(current))}, which this release "
            "does not know (a newer release migrated it?): use that release"
        )
    return (
        f"the database schema is behind (at {', '.join(sorted(current))}, head is "
        f"{', '.join(sorted(heads))}): {remedy}"
    )


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


def run(coro: Coroutine[Any, Any, T], *, error_code: int = OPERATIONAL_ERROR) -> T:
    """``asyncio.run``, with every expected failure turned into one ``error:`` line."""
    try:
        return asyncio.run(coro)
    except GatewayError as exc:
        fail(exc.message, code=error_code)
    except (CommandError, MissingSetting) as exc:
        fail(str(exc), code=error_code)
    except SQLAlchemyError as exc:  # the database went away, or refused, mid-command
        fail(f"the database failed during the command ({_reason(exc)})", code=error_code)


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))
