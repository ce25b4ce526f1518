"""Request dependencies: the runtime (``RuntimeDep``) and a request's one transaction
(``UnitOfWorkDep``)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.db.session import transaction
from gateway.runtime import Runtime

logger = logging.getLogger(__name__)


def runtime_of(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


async def get_runtime(request: Request) -> Runtime:
    """Async on purpose: FastAPI runs plain-def dependencies in a thread pool."""
    return runtime_of(request)


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


@dataclass
class UnitOfWork:
    """The request's one transaction (as Polar's request-scoped session): routes use
    ``session`` and never commit; ``after_commit`` runs a callback once the work is committed
    (a metric that must count only what happened)."""

    session: AsyncSession
    _callbacks: list[Callable[[], None]] = field(default_factory=list)

    def after_commit(self, callback: Callable[[], None]) -> None:
        self._callbacks.append(callback)


async def unit_of_work(runtime: RuntimeDep) -> AsyncIterator[UnitOfWork]:
    """Committed when the route returns, before the response is sent (``scope="function"``);
    rolled back if it raises, so a client never sees an answer its change did not get."""
    async with transaction(runtime.sessionmaker) as session:
        work = UnitOfWork(session)
        yield work
    for callback in work._callbacks:
        try:
            callback()
        except Exception:  # the work is committed: its answer must not become a 500
            logger.exception("an after-commit callback failed")


UnitOfWorkDep = Annotated[UnitOfWork, Depends(unit_of_work, scope="function")]
