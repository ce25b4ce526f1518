"""Forcing one precise interleaving of two database sessions, to reproduce a race every time.

A race between two requests depends on when each statement runs. ``interleave`` hooks the
engine under test (SQLAlchemy's cursor events, not a mock of our code): when a statement that
matches runs, it first (or just after) runs ``action`` on a second, independent connection, as
a concurrent request on another replica would, and commits it. The code under test then carries
on and meets the world as that other request left it.

    async with side_connection(url) as other:
        with interleave(engine, after=r"UPDATE team_balances", action=lambda: other.execute(...)):
            await code_under_test()
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.util import await_only

from tests.support.database import asyncpg_dsn


@asynccontextmanager
async def side_connection(url: str) -> AsyncIterator[asyncpg.Connection]:
    """A plain asyncpg connection in autocommit: every statement commits on its own."""
    connection = await asyncpg.connect(asyncpg_dsn(url))
    try:
        yield connection
    finally:
        await connection.close()


@dataclass
class Interleaving:
    """How often the hook fired; a test asserts it did, so it cannot pass by missing the race."""

    fired: int = 0
    statements: list[str] = field(default_factory=list)


@contextmanager
def interleave(
    engine: AsyncEngine,
    *,
    action: Callable[[], Awaitable[Any]],
    before: str | None = None,
    after: str | None = None,
    times: int = 1,
) -> Iterator[Interleaving]:
    """Run ``action`` (awaited on the engine's own loop) right before the first statement
    matching ``before``, or right after the first one matching ``after`` (regexes, searched
    case-insensitively), ``times`` times at most."""
    assert (before is None) != (after is None), "give exactly one of before= or after="
    pattern = re.compile(before or after or "", re.IGNORECASE | re.DOTALL)
    record = Interleaving()
    hook = "before_cursor_execute" if before is not None else "after_cursor_execute"

    def fire(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        record.statements.append(statement)
        if record.fired < times and pattern.search(statement):
            record.fired += 1
            await_only(action())

    event.listen(engine.sync_engine, hook, fire)
    try:
        yield record
    finally:
        event.remove(engine.sync_engine, hook, fire)
