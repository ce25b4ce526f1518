"""``/admin/`` routes (HTTP only: every rule and every audit entry lives in the services, which
the CLI calls too). Admin token or admin-role JWT; every change is audited."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, Body, Query
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.admin import views
from gateway.admin.auth import AdminActor
from gateway.admin.schemas import (
    ERROR_RESPONSES,
    AuditOut,
    GrantedOut,
    GrantIn,
    GrantOut,
    IssuedKeyOut,
    JobDetailOut,
    JobOut,
    JobRelease,
    KeyCreate,
    KeyOut,
    KeyRotate,
    KeyUpdate,
    LevelBalanceOut,
    Page,
    ProjectCreate,
    ProjectOut,
    ProjectUpdate,
    RateCardIn,
    RateCardOut,
    TeamCreate,
    TeamOut,
    TeamUpdate,
)
from gateway.admin.usage import TeamUsageOut, usage_view
from gateway.audit import service as audit
from gateway.core.clock import utcnow
from gateway.core.periods import period_of
from gateway.core.usd import format_usd
from gateway.errors import InvalidRequest, NotFound
from gateway.jobs import repository as jobs
from gateway.kit.strict_route import StrictJSONRoute
from gateway.ledger import manual, rates
from gateway.ledger import repository as ledger
from gateway.ledger.quotas import PeriodBalance
from gateway.services import projects, teams
from gateway.services.settling import count_settlement
from gateway.services.teams import LevelGrant
from gateway.tenancy import service as tenancy
from gateway.tenancy.models import Project, Team
from gateway.tenancy.service import IssuedKey, KeyDetails
from gateway.web.deps import RuntimeDep, UnitOfWorkDep

router = APIRouter(
    prefix="/admin", tags=["admin"], route_class=StrictJSONRoute, responses=ERROR_RESPONSES
)

Limit = Annotated[int, Query(ge=1, le=200, description="Page size")]
Cursor = Annotated[str | None, Query(max_length=512, description="From the previous page")]
Period = Annotated[str | None, Query(pattern=r"^[0-9]{4}-(0[1-9]|1[0-2])$", examples=["2026-11"])]
JobState = Literal["pending", "submitted", "unknown", "captured", "released"]


def _encode(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _decode(cursor: str) -> str:
    try:
        return base64.urlsafe_b64decode((cursor + "=" * (-len(cursor) % 4)).encode()).decode()
    except (ValueError, UnicodeDecodeError):
        raise InvalidRequest("cursor is not valid", code="invalid_cursor", param="cursor") from None


def _usd(micro_usd: int | None) -> str | None:
    return format_usd(micro_usd) if micro_usd is not None else None


def _issued(issued: IssuedKey) -> IssuedKeyOut:
    key = issued.key
    return IssuedKeyOut(
        id=key.id,
        key=issued.token,
        team=issued.team.name,
        name=key.name,
        expires_at=key.expires_at,
        project=issued.project.name if issued.project is not None else None,
        role=key.role,
        monthly_budget_usd=_usd(key.monthly_budget_micro_usd),
        max_cost_per_job_usd=_usd(key.max_cost_per_job_micro_usd),
    )


# Budget levels (issue 15): the fields ``views`` does not know yet.


def _team_out(team: Team) -> TeamOut:
    out = views.team_out(team)
    out.max_cost_per_job_usd = _usd(team.max_cost_per_job_micro_usd)
    return out


def _key_out(details: KeyDetails, now: datetime) -> KeyOut:
    key = details.key
    out = views.key_out(key, details.team.name, now)
    out.project = details.project.name if details.project is not None else None
    out.role = key.role
    out.monthly_budget_usd = _usd(key.monthly_budget_micro_usd)
    out.max_cost_per_job_usd = _usd(key.max_cost_per_job_micro_usd)
    return out


def _project_out(project: Project, team: str) -> ProjectOut:
    return ProjectOut(
        id=project.id,
        team=team,
        name=project.name,
        monthly_budget_usd=_usd(project.monthly_budget_micro_usd),
        max_cost_per_job_usd=_usd(project.max_cost_per_job_micro_usd),
        soft_limit_percent=project.soft_limit_percent,
        created_at=project.created_at,
    )


def _grant_out(level: LevelGrant) -> GrantOut:
    row = level.grant
    return GrantOut(
        id=row.id,
        team=level.team,
        scope=level.scope,
        project=level.project,
        key_id=row.api_key_id,
        period=row.period,
        amount_usd=format_usd(row.amount_micro_usd),
        reason=row.reason,
        granted_by=row.granted_by,
        created_at=row.created_at,
    )


def _balance_out(level: LevelGrant, balance: PeriodBalance) -> LevelBalanceOut:
    return LevelBalanceOut(
        scope=level.scope,
        name=level.name,
        period=balance.period,
        budget_usd=_usd(balance.budget),
        granted_usd=format_usd(balance.granted),
        captured_usd=format_usd(balance.captured),
        held_usd=format_usd(balance.held),
        remaining_usd=_usd(balance.remaining),
    )


def _usd_changes(changes: dict[str, object], *fields: str) -> dict[str, object]:
    """A PATCH body's ``*_usd`` fields under the services' ``*_micro_usd`` names (the values
    are micro-USD already: ``UsdAmount``)."""
    for field in fields:
        if field in changes:
            changes[field.removesuffix("_usd") + "_micro_usd"] = changes.pop(field)
    if not changes:
        raise InvalidRequest("nothing to change", code="missing_parameter")
    return changes


# Teams


@router.get("/teams", summary="List teams", response_model=Page[TeamOut])
async def list_teams(
    admin: AdminActor,
    work: UnitOfWorkDep,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Page[TeamOut]:
    after = _decode(cursor) if cursor else None
    session = work.session
    teams = await tenancy.list_teams(session, limit=limit + 1, after=after)
    page = list(teams[:limit])
    next_cursor = _encode(page[-1].name) if len(teams) > limit else None
    return Page[TeamOut](data=[_team_out(t) for t in page], next_cursor=next_cursor)


@router.post("/teams", status_code=201, summary="Create a team", response_model=TeamOut)
async def create_team(body: TeamCreate, admin: AdminActor, work: UnitOfWorkDep) -> TeamOut:
    session = work.session
    team = await tenancy.create_team(
        session,
        body.name,
        actor=admin,
        cost_center=body.cost_center,
        monthly_budget_micro_usd=body.monthly_budget_usd,
        max_concurrent_jobs=body.max_concurrent_jobs,
        soft_limit_percent=body.soft_limit_percent,
        max_cost_per_job_micro_usd=body.max_cost_per_job_usd,
    )
    return _team_out(team)


@router.get("/teams/{name}", summary="Get a team", response_model=TeamOut)
async def get_team(name: str, admin: AdminActor, work: UnitOfWorkDep) -> TeamOut:
    session = work.session
    return _team_out(await tenancy.require_team(session, name))


@router.patch("/teams/{name}", summary="Change a team (budget, limits, disable)")
async def update_team(
    name: str, body: TeamUpdate, admin: AdminActor, runtime: RuntimeDep, work: UnitOfWorkDep
) -> TeamOut:
    changes = _usd_changes(
        body.model_dump(exclude_unset=True), "monthly_budget_usd", "max_cost_per_job_usd"
    )
    session = work.session
    team = await teams.update_team(
        session, name, changes, actor=admin, policy=runtime.settings.default_budget_policy
    )
    return _team_out(team)


# Projects


@router.get("/teams/{name}/projects", summary="List a team's projects")
async def list_projects(name: str, admin: AdminActor, work: UnitOfWorkDep) -> list[ProjectOut]:
    session = work.session
    return [_project_out(p, name) for p in await tenancy.list_projects(session, name)]


@router.post(
    "/teams/{name}/projects",
    status_code=201,
    summary="Create a project (409 if the team has one of that name)",
)
async def create_project(
    name: str, body: ProjectCreate, admin: AdminActor, work: UnitOfWorkDep
) -> ProjectOut:
    session = work.session
    project = await tenancy.create_project(
        session,
        name,
        body.name,
        actor=admin,
        monthly_budget_micro_usd=body.monthly_budget_usd,
        max_cost_per_job_micro_usd=body.max_cost_per_job_usd,
        soft_limit_percent=body.soft_limit_percent,
    )
    return _project_out(project, name)


@router.get("/teams/{name}/projects/{project}", summary="Get a project")
async def get_project(
    name: str, project: str, admin: AdminActor, work: UnitOfWorkDep
) -> ProjectOut:
    session = work.session
    team = await tenancy.require_team(session, name)
    return _project_out(await tenancy.require_project(session, team, project), name)


@router.patch(
    "/teams/{name}/projects/{project}",
    summary="Change a project's budget (applies to the month under way), cap or alert",
)
async def update_project(
    name: str, project: str, body: ProjectUpdate, admin: AdminActor, work: UnitOfWorkDep
) -> ProjectOut:
    changes = _usd_changes(
        body.model_dump(exclude_unset=True), "monthly_budget_usd", "max_cost_per_job_usd"
    )
    session = work.session
    row = await projects.update_project(session, name, project, changes, actor=admin)
    return _project_out(row, name)


# Grants


@router.post(
    "/teams/{name}/grants",
    status_code=201,
    summary="Grant the team, one of its projects or one of its keys more budget for a month",
)
async def grant_budget(
    name: str, body: GrantIn, admin: AdminActor, runtime: RuntimeDep, work: UnitOfWorkDep
) -> GrantedOut:
    session = work.session
    level, balance = await teams.grant_budget(
        session,
        name,
        amount_micro_usd=body.amount_usd,
        reason=body.reason,
        actor=admin,
        policy=runtime.settings.default_budget_policy,
        period=body.period,
        project=body.project,
        key_id=body.key_id,
    )
    return GrantedOut(**_grant_out(level).model_dump(), balance=_balance_out(level, balance))


@router.get("/teams/{name}/grants", summary="A team's grants for a month, oldest first")
async def list_grants(
    name: str, admin: AdminActor, work: UnitOfWorkDep, period: Period = None
) -> list[GrantOut]:
    session = work.session
    found = await teams.list_grants(session, name, period or period_of(utcnow()))
    return [_grant_out(g) for g in found]


# Keys


@router.get("/teams/{name}/keys", summary="List a team's keys (never the keys themselves)")
async def list_keys(name: str, admin: AdminActor, work: UnitOfWorkDep) -> list[KeyOut]:
    session = work.session
    keys = await tenancy.list_key_details(session, name)
    now = utcnow()
    return [_key_out(k, now) for k in keys]


@router.post("/teams/{name}/keys", status_code=201, summary="Create a key (shown once)")
async def create_key(
    name: str,
    admin: AdminActor,
    runtime: RuntimeDep,
    work: UnitOfWorkDep,
    body: Annotated[KeyCreate | None, Body()] = None,
) -> IssuedKeyOut:
    body = body or KeyCreate()
    expires_at = (
        datetime.now(UTC) + timedelta(days=body.expires_in_days) if body.expires_in_days else None
    )
    session = work.session
    issued = await tenancy.create_key(
        session,
        name,
        pepper=runtime.pepper,
        actor=admin,
        name=body.name,
        expires_at=expires_at,
        project=body.project,
        role=body.role,
        monthly_budget_micro_usd=body.monthly_budget_usd,
        max_cost_per_job_micro_usd=body.max_cost_per_job_usd,
    )
    return _issued(issued)


@router.patch(
    "/keys/{key_id}",
    summary="Change a key's project, role, budget (applies to the month under way) or cap",
)
async def update_key(
    key_id: str, body: KeyUpdate, admin: AdminActor, work: UnitOfWorkDep
) -> KeyOut:
    changes = _usd_changes(
        body.model_dump(exclude_unset=True), "monthly_budget_usd", "max_cost_per_job_usd"
    )
    session = work.session
    details = await projects.update_key(session, key_id, changes, actor=admin)
    return _key_out(details, utcnow())


@router.post("/keys/{key_id}/revoke", summary="Revoke a key (at once, on every replica)")
async def revoke_key(key_id: str, admin: AdminActor, work: UnitOfWorkDep) -> KeyOut:
    session = work.session
    key = await tenancy.revoke_key(session, key_id, actor=admin)
    return _key_out(await tenancy.describe_key(session, key), utcnow())


@router.post(
    "/keys/{key_id}/rotate",
    status_code=201,
    summary="Rotate a key: a new key now, the old one expires after the overlap",
)
async def rotate_key(
    key_id: str,
    admin: AdminActor,
    runtime: RuntimeDep,
    work: UnitOfWorkDep,
    body: Annotated[KeyRotate | None, Body()] = None,
) -> IssuedKeyOut:
    overlap = timedelta(seconds=(body or KeyRotate()).overlap_seconds)
    session = work.session
    issued = await tenancy.rotate_key(
        session, key_id, pepper=runtime.pepper, actor=admin, overlap=overlap
    )
    return _issued(issued)


# Rate cards


@router.get("/rate-cards", summary="Rate card versions, oldest first")
async def list_rate_cards(
    admin: AdminActor, work: UnitOfWorkDep, model: str | None = None
) -> list[RateCardOut]:
    session = work.session
    rows = await rates.list_rate_cards(session, model)
    return [views.rate_card_out(r) for r in rows]


@router.post("/rate-cards", status_code=201, summary="Add a rate card version")
async def add_rate_card(
    body: RateCardIn, admin: AdminActor, runtime: RuntimeDep, work: UnitOfWorkDep
) -> RateCardOut:
    session = work.session
    row = await rates.add_rate_card(
        session,
        runtime.catalog,
        model=body.model,
        version=body.version,
        image_fee_micro_usd=body.image_fee_usd,
        per_second_micro_usd=dict(body.per_second_usd),
        actor=admin,
        effective_from=body.effective_from,
    )
    return views.rate_card_out(row)


# Jobs and usage


@router.get("/jobs", summary="Jobs, newest first", response_model=Page[JobOut])
async def list_jobs(
    admin: AdminActor,
    work: UnitOfWorkDep,
    team: str | None = None,
    state: JobState | None = None,
    period: Period = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Page[JobOut]:
    after: tuple[datetime, str] | None = None
    if cursor:
        stamp, _, job_id = _decode(cursor).partition("|")
        try:
            after = (datetime.fromisoformat(stamp), job_id)
        except ValueError:
            raise InvalidRequest("cursor is not valid", code="invalid_cursor") from None
    session = work.session
    team_id = (await tenancy.require_team(session, team)).id if team else None
    rows = await jobs.list_jobs(
        session, limit=limit + 1, after=after, team_id=team_id, state=state, period=period
    )
    page = list(rows[:limit])
    next_cursor = None
    if len(rows) > limit:
        last = page[-1][0]
        next_cursor = _encode(f"{last.created_at.isoformat()}|{last.id}")
    return Page[JobOut](data=[views.job_out(j, t) for j, t in page], next_cursor=next_cursor)


@router.get("/jobs/{job_id}", summary="One job (gateway or upstream id) with its ledger entries")
async def get_job(job_id: str, admin: AdminActor, work: UnitOfWorkDep) -> JobDetailOut:
    session = work.session
    return await _job_detail(session, job_id[:128])


async def _job_detail(session: AsyncSession, job_id: str) -> JobDetailOut:
    found = await jobs.find_any(session, job_id)
    if found is None:
        raise NotFound(f"no job with id {job_id!r}", code="job_not_found")
    job, team = found
    entries = list(await ledger.entries_for_job(session, job.id))
    return views.job_detail_out(job, team, entries)


@router.post(
    "/jobs/{job_id}/release",
    summary="Release an open job's hold by hand (after review); 409 if already settled",
)
async def release_job(
    job_id: str,
    admin: AdminActor,
    runtime: RuntimeDep,
    work: UnitOfWorkDep,
    body: Annotated[JobRelease | None, Body()] = None,
) -> JobDetailOut:
    session = work.session
    released = await manual.release_job(
        session, job_id[:128], actor=admin, note=(body or JobRelease()).note
    )
    work.after_commit(
        lambda: count_settlement(runtime.metrics, released.team, released.job, released.plan)
    )
    return await _job_detail(session, released.job.id)


@router.get(
    "/usage",
    summary="Every team's money for a period (default: the current one)",
    operation_id="adminGetUsage",  # the handler's name alone would give "adminUsage"
)
async def usage(
    admin: AdminActor,
    runtime: RuntimeDep,
    work: UnitOfWorkDep,
    period: Period = None,
    team: str | None = None,
) -> list[TeamUsageOut]:
    return await usage_view(
        work.session, period=period, team=team, policy=runtime.settings.default_budget_policy
    )


# Audit


@router.get("/audit", summary="The audit log, newest first", response_model=Page[AuditOut])
async def list_audit(
    admin: AdminActor,
    work: UnitOfWorkDep,
    limit: Limit = 50,
    cursor: Cursor = None,
    actor: str | None = None,
    action: str | None = None,
    target_type: str | None = None,
    target_id: str | None = None,
) -> Page[AuditOut]:
    session = work.session
    entries, next_cursor = await audit.list_entries(
        session,
        limit=limit,
        cursor=cursor,
        actor=actor,
        action=action,
        target_type=target_type,
        target_id=target_id,
    )
    return Page[AuditOut](data=[views.audit_out(e) for e in entries], next_cursor=next_cursor)
