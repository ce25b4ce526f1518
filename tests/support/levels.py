"""Budget levels below the team for tests: projects and keys with budgets, per-job caps and
soft limits, written as ORM rows (before the admin API and CLI for them exist), and the
team's own per-job cap. Create every level before the gateway first sees its keys: a key the
gateway has confirmed is remembered as it was then."""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.tenancy import service
from gateway.tenancy.models import ApiKey, Project, Team
from tests.support.savepoint import Database
from tests.support.tenants import PEPPER, TEST_ACTOR, Tenant, in_session


async def _team_id(session: AsyncSession, team: str) -> int:
    return (await session.execute(select(Team.id).where(Team.name == team))).scalar_one()


def make_project(
    database: Database,
    team: str,
    name: str,
    *,
    budget_micro_usd: int | None = None,
    max_cost_per_job_micro_usd: int | None = None,
    soft_limit_percent: int | None = None,
) -> int:
    """A project of ``team``; its id."""

    async def _create(session: AsyncSession) -> int:
        project = Project(
            team_id=await _team_id(session, team),
            name=name,
            monthly_budget_micro_usd=budget_micro_usd,
            max_cost_per_job_micro_usd=max_cost_per_job_micro_usd,
            soft_limit_percent=soft_limit_percent,
        )
        session.add(project)
        await session.flush()
        return project.id

    return in_session(database, _create)


def make_key(
    database: Database,
    team: str,
    *,
    project: str | None = None,
    budget_micro_usd: int | None = None,
    max_cost_per_job_micro_usd: int | None = None,
) -> Tenant:
    """Another key of ``team``: bound to ``project`` (by name) if given, with its own
    monthly budget and per-job cap if given."""

    async def _create(session: AsyncSession) -> Tenant:
        issued = await service.create_key(session, team, pepper=PEPPER, actor=TEST_ACTOR)
        project_id = None
        if project is not None:
            project_id = (
                await session.execute(
                    select(Project.id).where(
                        Project.team_id == issued.team.id, Project.name == project
                    )
                )
            ).scalar_one()
        await session.execute(
            update(ApiKey)
            .where(ApiKey.id == issued.key.id)
            .values(
                project_id=project_id,
                monthly_budget_micro_usd=budget_micro_usd,
                max_cost_per_job_micro_usd=max_cost_per_job_micro_usd,
            )
        )
        return Tenant(team=team, key=issued.token, key_id=issued.key.id)

    return in_session(database, _create)


def set_team_cost_cap(database: Database, team: str, cap_micro_usd: int | None) -> None:
    """The team's per-job cost cap."""

    async def _set(session: AsyncSession) -> None:
        await session.execute(
            update(Team).where(Team.name == team).values(max_cost_per_job_micro_usd=cap_micro_usd)
        )

    in_session(database, _set)
