"""Creating teams and keys through the real service layer (as the CLI does)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

from sqlalchemy.ext.asyncio import AsyncSession

from gateway.audit.service import Actor
from gateway.db.engine import create_engine, create_sessionmaker
from gateway.db.session import transaction
from gateway.tenancy import service
from tests.support.savepoint import Database, SavepointDatabase

T = TypeVar("T")
PEPPER = "test-pepper-0123456789abcdef"
TEST_ACTOR = Actor("test")


@dataclass(frozen=True)
class Tenant:
    team: str
    key: str
    key_id: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


def in_session(database: Database, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """``work`` in one unit of work on ``database``: given a URL, a transaction of its own that
    commits (rolled back if ``work`` raises); given a fast-tier ``SavepointDatabase``, a
    savepoint in the test's transaction, never committed."""
    if isinstance(database, SavepointDatabase):
        return database.in_session(work)
    url = database

    async def _run() -> T:
        engine = create_engine(url)
        try:
            async with transaction(create_sessionmaker(engine)) as session:
                return await work(session)
        finally:
            await engine.dispose()

    return asyncio.run(_run())


def make_tenant(
    database: Database,
    *,
    prefix: str = "team",
    expires_at: datetime | None = None,
    budget_micro_usd: int | None = 1_000_000_000,
    max_concurrent_jobs: int | None = None,
    soft_limit_percent: int | None = None,
) -> Tenant:
    name = f"{prefix}-{uuid.uuid4().hex[:10]}"

    async def _create(session: AsyncSession) -> Tenant:
        await service.create_team(
            session,
            name,
            actor=TEST_ACTOR,
            monthly_budget_micro_usd=budget_micro_usd,
            max_concurrent_jobs=max_concurrent_jobs,
            soft_limit_percent=soft_limit_percent,
        )
        issued = await service.create_key(
            session, name, pepper=PEPPER, actor=TEST_ACTOR, expires_at=expires_at
        )
        return Tenant(team=name, key=issued.token, key_id=issued.key.id)

    return in_session(database, _create)
