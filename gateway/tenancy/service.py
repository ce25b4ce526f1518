"""Tenancy rules: teams, their projects and keys (created, changed, revoked, rotated, each
change audited), and the team a company JWT names. Authenticating a gateway key is
``tenancy.authentication``.

Services only flush; the caller's transaction commits (see ``gateway.db.session``). The HTTP
admin API and the CLI call these same functions.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.audit import service as audit
from gateway.audit.service import Actor
from gateway.core.clock import utcnow
from gateway.core.usd import MAX_MICRO_USD, format_usd
from gateway.errors import (
    Conflict,
    InvalidRequest,
    NotFound,
    PermissionDenied,
)
from gateway.tenancy import repository
from gateway.tenancy.keys import generate_key, hash_key
from gateway.tenancy.models import ApiKey, Project, Team

_TEAM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
PROJECT_NAME = _TEAM_NAME
"""A project's name: as a team's (it is sent in the ``X-Gateway-Project`` header)."""
TEAM_FIELDS = frozenset(
    {
        "monthly_budget_micro_usd",
        "max_cost_per_job_micro_usd",
        "cost_center",
        "max_concurrent_jobs",
        "soft_limit_percent",
        "disabled",
    }
)
PROJECT_FIELDS = frozenset(
    {"monthly_budget_micro_usd", "max_cost_per_job_micro_usd", "soft_limit_percent"}
)
KEY_FIELDS = frozenset(
    {"project", "role", "monthly_budget_micro_usd", "max_cost_per_job_micro_usd"}
)
"""What ``update_key`` changes; ``project`` is a project name of the key's team, or None."""
KEY_ROLES = ("member", "manager")


@dataclass(frozen=True)
class ProjectRef:
    """A project as the budget rules need it."""

    id: int
    name: str
    monthly_budget_micro_usd: int | None = None
    max_cost_per_job_micro_usd: int | None = None
    soft_limit_percent: int | None = None

    @classmethod
    def of(cls, project: Project) -> ProjectRef:
        return cls(
            project.id,
            project.name,
            project.monthly_budget_micro_usd,
            project.max_cost_per_job_micro_usd,
            project.soft_limit_percent,
        )


@dataclass(frozen=True)
class Principal:
    """Who is calling: the team a request is billed to, through which key or token subject,
    with the budget rules of each level that applies (the team's, the key's and the
    project the key is bound to)."""

    team_id: int
    team_name: str
    key_id: str | None
    monthly_budget_micro_usd: int | None = None
    max_concurrent_jobs: int | None = None
    soft_limit_percent: int | None = None
    subject: str | None = None
    max_cost_per_job_micro_usd: int | None = None
    """The team's per-job cap."""
    project: ProjectRef | None = None
    """The project the key is bound to (its jobs are that project's)."""
    key_monthly_budget_micro_usd: int | None = None
    key_max_cost_per_job_micro_usd: int | None = None
    key_role: str = "member"

    @classmethod
    def of(cls, team: Team, *, key_id: str | None = None, subject: str | None = None) -> Principal:
        return cls(
            team_id=team.id,
            team_name=team.name,
            key_id=key_id,
            monthly_budget_micro_usd=team.monthly_budget_micro_usd,
            max_concurrent_jobs=team.max_concurrent_jobs,
            soft_limit_percent=team.soft_limit_percent,
            subject=subject,
            max_cost_per_job_micro_usd=team.max_cost_per_job_micro_usd,
        )


@dataclass(frozen=True)
class IssuedKey:
    """A freshly created key. ``token`` exists only here: it is never stored or shown again."""

    key: ApiKey
    team: Team
    token: str
    project: Project | None = None


@dataclass(frozen=True)
class KeyDetails:
    """A key with its team and the project it is bound to (names for listings)."""

    key: ApiKey
    team: Team
    project: Project | None


def _usd(micro_usd: int | None) -> str | None:
    return format_usd(micro_usd) if micro_usd is not None else None


def team_snapshot(team: Team) -> dict[str, Any]:
    """A team as the audit log records it (amounts as USD decimal strings)."""
    budget = team.monthly_budget_micro_usd
    return {
        "name": team.name,
        "cost_center": team.cost_center,
        "monthly_budget_usd": format_usd(budget) if budget is not None else None,
        "max_cost_per_job_usd": _usd(team.max_cost_per_job_micro_usd),
        "max_concurrent_jobs": team.max_concurrent_jobs,
        "soft_limit_percent": team.soft_limit_percent,
        "disabled": team.disabled_at is not None,
    }


def key_snapshot(key: ApiKey) -> dict[str, Any]:
    return {
        "id": key.id,
        "team_id": key.team_id,
        "name": key.name,
        "expires_at": key.expires_at.isoformat() if key.expires_at else None,
        "revoked_at": key.revoked_at.isoformat() if key.revoked_at else None,
        "project_id": key.project_id,
        "role": key.role,
        "monthly_budget_usd": _usd(key.monthly_budget_micro_usd),
        "max_cost_per_job_usd": _usd(key.max_cost_per_job_micro_usd),
    }


def project_snapshot(project: Project, team_name: str) -> dict[str, Any]:
    return {
        "team": team_name,
        "name": project.name,
        "monthly_budget_usd": _usd(project.monthly_budget_micro_usd),
        "max_cost_per_job_usd": _usd(project.max_cost_per_job_micro_usd),
        "soft_limit_percent": project.soft_limit_percent,
    }


def project_target(team_name: str, project_name: str) -> str:
    """A project's id in the audit log: its name is unique within its team only."""
    return f"{team_name}/{project_name}"


def _check_limits(fields: Mapping[str, Any]) -> None:
    """The money rules every level shares: its monthly budget, its per-job cap, its alert."""
    budget = fields.get("monthly_budget_micro_usd")
    if budget is not None and not 0 <= budget <= MAX_MICRO_USD:
        raise InvalidRequest(
            "monthly budget must be between 0 and 1,000,000,000 USD",
            code="out_of_range",
            param="monthly_budget_usd",
        )
    cap = fields.get("max_cost_per_job_micro_usd")
    if cap is not None and not 0 < cap <= MAX_MICRO_USD:
        # A cap of 0 would refuse every job: a budget of 0 says that, and says it clearly.
        raise InvalidRequest(
            "the per-job cost cap must be more than 0 and at most 1,000,000,000 USD "
            "(to stop all spending, set the monthly budget to 0)",
            code="out_of_range",
            param="max_cost_per_job_usd",
        )
    soft = fields.get("soft_limit_percent")
    if soft is not None and not 1 <= soft <= 100:
        raise InvalidRequest(
            "soft limit must be a percentage between 1 and 100",
            code="out_of_range",
            param="soft_limit_percent",
        )


def _check_team_fields(fields: Mapping[str, Any]) -> None:
    _check_limits(fields)
    concurrency = fields.get("max_concurrent_jobs")
    if concurrency is not None and concurrency < 1:
        raise InvalidRequest(
            "max concurrent jobs must be at least 1",
            code="out_of_range",
            param="max_concurrent_jobs",
        )
    cost_center = fields.get("cost_center")
    if cost_center is not None and not 1 <= len(cost_center) <= 64:
        raise InvalidRequest(
            "cost center must be 1-64 characters", code="invalid_length", param="cost_center"
        )


async def create_team(
    session: AsyncSession,
    name: str,
    *,
    actor: Actor,
    cost_center: str | None = None,
    monthly_budget_micro_usd: int | None = None,
    max_concurrent_jobs: int | None = None,
    soft_limit_percent: int | None = None,
    max_cost_per_job_micro_usd: int | None = None,
) -> Team:
    if not _TEAM_NAME.fullmatch(name):
        raise InvalidRequest(
            "team name must be 1-64 characters of letters, digits, '.', '_' or '-', "
            "starting with a letter or digit",
            code="invalid_value",
            param="name",
        )
    _check_team_fields(
        {
            "monthly_budget_micro_usd": monthly_budget_micro_usd,
            "max_concurrent_jobs": max_concurrent_jobs,
            "soft_limit_percent": soft_limit_percent,
            "max_cost_per_job_micro_usd": max_cost_per_job_micro_usd,
            "cost_center": cost_center,
        }
    )
    if await repository.get_team_by_name(session, name) is not None:
        raise Conflict(f"team {name!r} already exists", code="team_exists", param="name")
    team = Team(
        name=name,
        cost_center=cost_center,
        monthly_budget_micro_usd=monthly_budget_micro_usd,
        max_concurrent_jobs=max_concurrent_jobs,
        soft_limit_percent=soft_limit_percent,
        max_cost_per_job_micro_usd=max_cost_per_job_micro_usd,
        created_at=utcnow(),
    )
    try:
        async with session.begin_nested():
            await repository.add(session, team)
    except IntegrityError:  # a concurrent create won the race
        raise Conflict(f"team {name!r} already exists", code="team_exists", param="name") from None
    await audit.record(session, actor, "team.create", "team", name, after=team_snapshot(team))
    return team


async def update_team(
    session: AsyncSession,
    name: str,
    changes: Mapping[str, Any],
    *,
    actor: Actor,
) -> Team:
    """Change some of a team's settings (only the keys present in ``changes``), flushed, with
    its audit entry; ``disabled`` stops its keys and tokens at once, on every replica. The
    budget of the period under way is the ledger's: ``gateway.services.teams`` applies it."""
    unknown = set(changes) - TEAM_FIELDS
    if unknown:
        raise InvalidRequest(f"cannot change {sorted(unknown)}", code="unknown_parameter")
    _check_team_fields(changes)
    team = await require_team(session, name)
    before = team_snapshot(team)
    now = utcnow()
    for field in (
        "cost_center",
        "max_concurrent_jobs",
        "soft_limit_percent",
        "max_cost_per_job_micro_usd",
    ):
        if field in changes:
            setattr(team, field, changes[field])
    if "disabled" in changes:
        disable = bool(changes["disabled"])
        if disable and team.disabled_at is None:
            team.disabled_at = now
        elif not disable:
            team.disabled_at = None
    if "monthly_budget_micro_usd" in changes:
        team.monthly_budget_micro_usd = changes["monthly_budget_micro_usd"]
    await session.flush()  # the team's row is locked from here: before any balance row
    after = team_snapshot(team)
    if after != before:
        await audit.record(session, actor, "team.update", "team", name, before=before, after=after)
    return team


async def list_teams(
    session: AsyncSession, *, limit: int | None = None, after: str | None = None
) -> Sequence[Team]:
    return await repository.list_teams(session, limit=limit, after=after)


async def require_team(session: AsyncSession, name: str) -> Team:
    team = await repository.get_team_by_name(session, name)
    if team is None:
        raise NotFound(f"no team named {name!r}", code="team_not_found", param="team")
    return team


def _check_project_name(name: str) -> None:
    if not PROJECT_NAME.fullmatch(name):
        raise InvalidRequest(
            "project name must be 1-64 characters of letters, digits, '.', '_' or '-', "
            "starting with a letter or digit",
            code="invalid_value",
            param="name",
        )


def _project_exists(team: Team, name: str) -> Conflict:
    return Conflict(
        f"team {team.name!r} already has a project named {name!r}",
        code="project_exists",
        param="name",
    )


async def create_project(
    session: AsyncSession,
    team_name: str,
    name: str,
    *,
    actor: Actor,
    monthly_budget_micro_usd: int | None = None,
    max_cost_per_job_micro_usd: int | None = None,
    soft_limit_percent: int | None = None,
) -> Project:
    """A project of ``team_name``; its name is unique within the team (409 ``project_exists``).
    With no budget of its own, only the team's applies to its jobs."""
    team = await require_team(session, team_name)
    _check_project_name(name)
    _check_limits(
        {
            "monthly_budget_micro_usd": monthly_budget_micro_usd,
            "max_cost_per_job_micro_usd": max_cost_per_job_micro_usd,
            "soft_limit_percent": soft_limit_percent,
        }
    )
    if await repository.get_project(session, team.id, name) is not None:
        raise _project_exists(team, name)
    project = Project(
        team_id=team.id,
        name=name,
        monthly_budget_micro_usd=monthly_budget_micro_usd,
        max_cost_per_job_micro_usd=max_cost_per_job_micro_usd,
        soft_limit_percent=soft_limit_percent,
        created_at=utcnow(),
    )
    try:
        async with session.begin_nested():
            await repository.add(session, project)
    except IntegrityError:  # a concurrent create won the race
        raise _project_exists(team, name) from None
    await audit.record(
        session,
        actor,
        "project.create",
        "project",
        project_target(team.name, name),
        after=project_snapshot(project, team.name),
    )
    return project


async def list_projects(session: AsyncSession, team_name: str) -> Sequence[Project]:
    team = await require_team(session, team_name)
    return await repository.list_projects(session, team.id)


async def require_project(session: AsyncSession, team: Team, name: str) -> Project:
    project = await repository.get_project(session, team.id, name)
    if project is None:
        raise NotFound(
            f"team {team.name!r} has no project named {name!r}",
            code="project_not_found",
            param="project",
        )
    return project


async def update_project(
    session: AsyncSession,
    team_name: str,
    name: str,
    changes: Mapping[str, Any],
    *,
    actor: Actor,
) -> Project:
    """Change some of a project's settings (only the keys present in ``changes``; None clears
    one), flushed, with its audit entry. The budget of the period under way is the ledger's:
    ``gateway.services.projects`` applies it."""
    unknown = set(changes) - PROJECT_FIELDS
    if unknown:
        raise InvalidRequest(f"cannot change {sorted(unknown)}", code="unknown_parameter")
    _check_limits(changes)
    team = await require_team(session, team_name)
    project = await require_project(session, team, name)
    before = project_snapshot(project, team.name)
    for field in PROJECT_FIELDS:
        if field in changes:
            setattr(project, field, changes[field])
    await session.flush()
    after = project_snapshot(project, team.name)
    if after != before:
        await audit.record(
            session,
            actor,
            "project.update",
            "project",
            project_target(team.name, name),
            before=before,
            after=after,
        )
    return project


def _check_key_fields(fields: Mapping[str, Any]) -> None:
    _check_limits(fields)
    role = fields.get("role")
    if role is not None and role not in KEY_ROLES:
        raise InvalidRequest(
            f"role must be one of {', '.join(KEY_ROLES)}", code="invalid_value", param="role"
        )


async def create_key(
    session: AsyncSession,
    team_name: str,
    *,
    pepper: str,
    actor: Actor,
    name: str | None = None,
    expires_at: datetime | None = None,
    project: str | None = None,
    role: str = "member",
    monthly_budget_micro_usd: int | None = None,
    max_cost_per_job_micro_usd: int | None = None,
) -> IssuedKey:
    """A new key of ``team_name``, optionally bound to one of the team's projects (its jobs are
    that project's), with a role and its own monthly budget and per-job cap."""
    team = await require_team(session, team_name)
    now = utcnow()
    if expires_at is not None and expires_at <= now:
        raise InvalidRequest(
            "expiry must be in the future", code="out_of_range", param="expires_at"
        )
    _check_key_fields(
        {
            "role": role,
            "monthly_budget_micro_usd": monthly_budget_micro_usd,
            "max_cost_per_job_micro_usd": max_cost_per_job_micro_usd,
        }
    )
    bound = await require_project(session, team, project) if project is not None else None
    generated = generate_key()
    key = ApiKey(
        id=generated.key_id,
        team_id=team.id,
        secret_hash=hash_key(generated.token, pepper),
        name=name,
        created_at=now,
        expires_at=expires_at,
        project_id=bound.id if bound is not None else None,
        role=role,
        monthly_budget_micro_usd=monthly_budget_micro_usd,
        max_cost_per_job_micro_usd=max_cost_per_job_micro_usd,
    )
    await repository.add(session, key)
    await audit.record(session, actor, "key.create", "key", key.id, after=key_snapshot(key))
    return IssuedKey(key=key, team=team, token=generated.token, project=bound)


async def update_key(
    session: AsyncSession, key_id: str, changes: Mapping[str, Any], *, actor: Actor
) -> KeyDetails:
    """Change some of a key's settings (only the keys present in ``changes``; None clears a
    budget or cap, or unbinds the project), flushed, with its audit entry. ``project`` names a
    project of the key's own team. Jobs already held stay with the project they were held on;
    the budget of the period under way is the ledger's: ``gateway.services.projects``
    applies it."""
    unknown = set(changes) - KEY_FIELDS
    if unknown:
        raise InvalidRequest(f"cannot change {sorted(unknown)}", code="unknown_parameter")
    if "role" in changes and changes["role"] is None:
        raise InvalidRequest(
            f"role must be one of {', '.join(KEY_ROLES)}", code="invalid_value", param="role"
        )
    _check_key_fields(changes)
    key = await require_key(session, key_id)
    team = await repository.get_team_by_id(session, key.team_id)
    assert team is not None
    before = key_snapshot(key)
    if "project" in changes:
        name = changes["project"]
        project = await require_project(session, team, name) if name is not None else None
        key.project_id = project.id if project is not None else None
    for field in ("role", "monthly_budget_micro_usd", "max_cost_per_job_micro_usd"):
        if field in changes:
            setattr(key, field, changes[field])
    await session.flush()
    after = key_snapshot(key)
    if after != before:
        await audit.record(session, actor, "key.update", "key", key_id, before=before, after=after)
    return await describe_key(session, key)


async def describe_key(session: AsyncSession, key: ApiKey) -> KeyDetails:
    """``key`` with its team and the project it is bound to."""
    team = await repository.get_team_by_id(session, key.team_id)
    assert team is not None
    project = (
        await repository.get_project_by_id(session, key.project_id)
        if key.project_id is not None
        else None
    )
    return KeyDetails(key, team, project)


async def list_keys(session: AsyncSession, team_name: str) -> Sequence[ApiKey]:
    team = await require_team(session, team_name)
    return await repository.list_keys(session, team.id)


async def list_key_details(session: AsyncSession, team_name: str) -> list[KeyDetails]:
    """A team's keys, each with the project it is bound to (two queries, whatever the count)."""
    team = await require_team(session, team_name)
    projects = {p.id: p for p in await repository.list_projects(session, team.id)}
    keys = await repository.list_keys(session, team.id)
    return [
        KeyDetails(k, team, projects.get(k.project_id) if k.project_id is not None else None)
        for k in keys
    ]


async def require_key(session: AsyncSession, key_id: str) -> ApiKey:
    key = await repository.get_key(session, key_id)
    if key is None:
        raise NotFound(f"no API key with id {key_id!r}", code="key_not_found", param="key_id")
    return key


async def revoke_key(session: AsyncSession, key_id: str, *, actor: Actor) -> ApiKey:
    """Revoke a key; revoking twice is harmless (the first revocation time is kept)."""
    key = await require_key(session, key_id)
    before = key_snapshot(key)
    if await repository.revoke_key(session, key_id, utcnow()):
        await session.refresh(key)
        await audit.record(
            session, actor, "key.revoke", "key", key_id, before=before, after=key_snapshot(key)
        )
    return key


async def rotate_key(
    session: AsyncSession,
    key_id: str,
    *,
    pepper: str,
    actor: Actor,
    overlap: timedelta,
) -> IssuedKey:
    """A new key for the same team, with the old one's project, role, budget and cap (its
    spend so far stays on the old key's balance); the old one keeps working for ``overlap``,
    then expires (sooner if it was due to expire sooner), so clients can switch without
    downtime."""
    old = await require_key(session, key_id)
    if old.revoked_at is not None:
        raise Conflict("a revoked key cannot be rotated", code="key_revoked", param="key_id")
    team = await repository.get_team_by_id(session, old.team_id)
    assert team is not None
    before = key_snapshot(old)
    now = utcnow()
    until = now + overlap
    if old.expires_at is None or old.expires_at > until:
        old.expires_at = until
    project = (
        await repository.get_project_by_id(session, old.project_id)
        if old.project_id is not None
        else None
    )
    issued = await create_key(
        session,
        team.name,
        pepper=pepper,
        actor=actor,
        name=old.name,
        expires_at=None,
        project=project.name if project is not None else None,
        role=old.role,
        monthly_budget_micro_usd=old.monthly_budget_micro_usd,
        max_cost_per_job_micro_usd=old.max_cost_per_job_micro_usd,
    )
    await audit.record(
        session,
        actor,
        "key.rotate",
        "key",
        key_id,
        before=before,
        after={**key_snapshot(old), "replaced_by": issued.key.id},
    )
    return issued


async def team_for_token_claim(
    session: AsyncSession, team_name: str, *, auto_create: bool, subject: str | None
) -> Team:
    """The team a company JWT names; created on first sight only when configured to."""
    team = await repository.get_team_by_name(session, team_name)
    if team is None and auto_create and _TEAM_NAME.fullmatch(team_name):
        try:
            team = await create_team(session, team_name, actor=Actor(f"jwt:{subject or '?'}"))
        except Conflict:  # created concurrently by another request
            team = await repository.get_team_by_name(session, team_name)
    if team is None:
        raise PermissionDenied(
            f"the token's team {team_name[:64]!r} is not known to the gateway",
            code="team_not_found",
        )
    if team.disabled_at is not None:
        raise PermissionDenied("this team is disabled", code="team_disabled")
    return team
