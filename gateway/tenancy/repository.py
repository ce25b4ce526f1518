"""Every query on teams and API keys."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.tenancy.models import ApiKey, Project, Team


async def get_team_by_id(session: AsyncSession, team_id: int) -> Team | None:
    return await session.get(Team, team_id)


async def get_team_by_name(session: AsyncSession, name: str) -> Team | None:
    return (await session.execute(select(Team).where(Team.name == name))).scalar_one_or_none()


async def team_names(session: AsyncSession) -> dict[int, str]:
    rows = await session.execute(select(Team.id, Team.name))
    return {team_id: name for team_id, name in rows}


async def list_teams(
    session: AsyncSession, *, limit: int | None = None, after: str | None = None
) -> Sequence[Team]:
    """Teams by name; ``after`` is the last name of the previous page."""
    stmt = select(Team).order_by(Team.name)
    if after is not None:
        stmt = stmt.where(Team.name > after)
    if limit is not None:
        stmt = stmt.limit(limit)
    return (await session.execute(stmt)).scalars().all()


async def add(session: AsyncSession, row: Team | ApiKey | Project) -> None:
    session.add(row)
    await session.flush()


async def get_key_with_team(
    session: AsyncSession, key_id: str
) -> tuple[ApiKey, Team, Project | None] | None:
    """The key row, its team and its project (if bound) in one round trip."""
    stmt = (
        select(ApiKey, Team, Project)
        .join(Team, Team.id == ApiKey.team_id)
        .outerjoin(Project, Project.id == ApiKey.project_id)
        .where(ApiKey.id == key_id)
    )
    row = (await session.execute(stmt)).one_or_none()
    return (row[0], row[1], row[2]) if row is not None else None


async def get_project(session: AsyncSession, team_id: int, name: str) -> Project | None:
    stmt = select(Project).where(Project.team_id == team_id, Project.name == name)
    return (await session.execute(stmt)).scalar_one_or_none()


async def get_project_by_id(session: AsyncSession, project_id: int) -> Project | None:
    return await session.get(Project, project_id)


async def list_projects(session: AsyncSession, team_id: int) -> Sequence[Project]:
    stmt = select(Project).where(Project.team_id == team_id).order_by(Project.name)
    return (await session.execute(stmt)).scalars().all()


async def get_key(session: AsyncSession, key_id: str) -> ApiKey | None:
    return await session.get(ApiKey, key_id)


async def list_keys(session: AsyncSession, team_id: int) -> Sequence[ApiKey]:
    stmt = select(ApiKey).where(ApiKey.team_id == team_id).order_by(ApiKey.created_at, ApiKey.id)
    return (await session.execute(stmt)).scalars().all()


async def revoke_key(session: AsyncSession, key_id: str, now: datetime) -> bool:
    """Revoke if not yet revoked; False when the key was already revoked or does not exist."""
    stmt = (
        update(ApiKey)
        .where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
        .values(revoked_at=now)
    )
    result = await session.execute(stmt)
    return bool(getattr(result, "rowcount", 0))


async def touch_last_used(
    session: AsyncSession, key_id: str, stale_before: datetime, now: datetime
) -> None:
    """Record a use of the key, unless one since ``stale_before`` is recorded already."""
    await session.execute(
        update(ApiKey)
        .where(ApiKey.id == key_id)
        .where((ApiKey.last_used_at.is_(None)) | (ApiKey.last_used_at < stale_before))
        .values(last_used_at=now)
    )


async def replace_secret_hash(session: AsyncSession, key_id: str, old: str, new: str) -> None:
    """A pepper rotation: the key's hash under the new pepper, unless it changed meanwhile."""
    await session.execute(
        update(ApiKey).where(ApiKey.id == key_id, ApiKey.secret_hash == old).values(secret_hash=new)
    )
