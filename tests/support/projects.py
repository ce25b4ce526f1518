"""Budget levels below the team for tests: projects, keys with a project and a budget of their
own, and one-off grants. Projects and the keys' budget columns are written straight with the
ORM models (the admin API and CLI commands that create them are not what these tests are
about); grants go through ``ledger.grants``, as an admin's would."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.core.clock import utcnow
from gateway.ledger import grants
from gateway.ledger.repository import Account
from gateway.tenancy import service
from gateway.tenancy.models import ApiKey, Project, Team
from tests.support.savepoint import Database
from tests.support.tenants import PEPPER, TEST_ACTOR, Tenant, in_session


@dataclass(frozen=True)
class ProjectRow:
    id: int
    team: str
    name: str


async def _team(session: AsyncSession, name: str) -> Team:
    return (await session.execute(select(Team).where(Team.name == name))).scalar_one()


def make_project(
    database: Database,
    team: str,
    name: str | None = None,
    *,
    budget_micro_usd: int | None = None,
    max_cost_per_job_micro_usd: int | None = None,
) -> ProjectRow:
    """A project of ``team`` (a fresh name unless given), with its own optional budget."""
    project_name = name or f"proj-{uuid.uuid4().hex[:8]}"

    async def _create(session: AsyncSession) -> ProjectRow:
        row = Project(
            team_id=(await _team(session, team)).id,
            name=project_name,
            monthly_budget_micro_usd=budget_micro_usd,
            max_cost_per_job_micro_usd=max_cost_per_job_micro_usd,
        )
        session.add(row)
        await session.flush()
        return ProjectRow(row.id, team, project_name)

    return in_session(database, _create)


def make_key(
    database: Database,
    team: str,
    *,
    project: ProjectRow | None = None,
    budget_micro_usd: int | None = None,
) -> Tenant:
    """Another key of ``team``, bound to ``project`` if given, with its own optional budget."""

    async def _create(session: AsyncSession) -> Tenant:
        issued = await service.create_key(session, team, pepper=PEPPER, actor=TEST_ACTOR)
        key = await session.get(ApiKey, issued.key.id)
        assert key is not None
        key.project_id = project.id if project is not None else None
        key.monthly_budget_micro_usd = budget_micro_usd
        await session.flush()
        return Tenant(team=team, key=issued.token, key_id=issued.key.id)

    return in_session(database, _create)


def grant(
    database: Database,
    team: str,
    amount_micro_usd: int,
    *,
    period: str,
    project: ProjectRow | None = None,
    key_id: str | None = None,
    reason: str = "test grant",
) -> None:
    """Grant ``amount_micro_usd`` for ``period`` to ``team`` itself, or to one of its projects
    or keys; the level's row is opened with its own budget if it has none yet."""

    async def _grant(session: AsyncSession) -> None:
        team_row = await _team(session, team)
        account: Account
        if project is not None:
            row = await session.get(Project, project.id)
            assert row is not None
            account, name, budget = (
                Account("project", row.id),
                row.name,
                row.monthly_budget_micro_usd,
            )
        elif key_id is not None:
            key = await session.get(ApiKey, key_id)
            assert key is not None
            account, name, budget = Account("key", key.id), key.id, key.monthly_budget_micro_usd
        else:
            account, name = Account.team(team_row.id), team_row.name
            budget = team_row.monthly_budget_micro_usd
        await grants.grant(
            session,
            account,
            team_id=team_row.id,
            scope_name=name,
            period=period,
            amount_micro_usd=amount_micro_usd,
            reason=reason,
            budget_for_new_period=budget,
            actor=TEST_ACTOR,
            now=utcnow(),
        )

    in_session(database, _grant)
