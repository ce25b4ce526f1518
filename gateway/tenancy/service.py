"""Tenancy rules: creating teams and keys, revoking keys, and authenticating a bearer token.

Services only flush; the caller's transaction commits (see ``gateway.db.session``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.db.base import utcnow
from gateway.errors import (
    AuthenticationFailed,
    Conflict,
    InvalidRequest,
    NotFound,
    PermissionDenied,
)
from gateway.ledger.pricing import MAX_MICRO_USD
from gateway.tenancy import repository
from gateway.tenancy.keys import generate_key, hash_key, key_matches, parse_key
from gateway.tenancy.models import ApiKey, Team

_TEAM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True)
class Principal:
    """Who is calling: the team a request is billed to, and through which key."""

    team_id: int
    team_name: str
    key_id: str | None
    monthly_budget_micro_usd: int | None = None
    max_concurrent_jobs: int | None = None
    soft_limit_percent: int | None = None


@dataclass(frozen=True)
class IssuedKey:
    """A freshly created key. ``token`` exists only here: it is never stored or shown again."""

    key: ApiKey
    team: Team
    token: str


async def create_team(
    session: AsyncSession,
    name: str,
    *,
    cost_center: str | None = None,
    monthly_budget_micro_usd: int | None = None,
    max_concurrent_jobs: int | None = None,
    soft_limit_percent: int | None = None,
) -> Team:
    if not _TEAM_NAME.fullmatch(name):
        raise InvalidRequest(
            "team name must be 1-64 characters of letters, digits, '.', '_' or '-', "
            "starting with a letter or digit",
            code="invalid_value",
            param="name",
        )
    if monthly_budget_micro_usd is not None and not 0 <= monthly_budget_micro_usd <= MAX_MICRO_USD:
        raise InvalidRequest(
            "monthly budget must be between 0 and 1,000,000,000 USD",
            code="out_of_range",
            param="monthly_budget_usd",
        )
    if max_concurrent_jobs is not None and max_concurrent_jobs < 1:
        raise InvalidRequest(
            "max concurrent jobs must be at least 1",
            code="out_of_range",
            param="max_concurrent_jobs",
        )
    if soft_limit_percent is not None and not 1 <= soft_limit_percent <= 100:
        raise InvalidRequest(
            "soft limit must be a percentage between 1 and 100",
            code="out_of_range",
            param="soft_limit_percent",
        )
    if cost_center is not None and not 1 <= len(cost_center) <= 64:
        raise InvalidRequest(
            "cost center must be 1-64 characters", code="invalid_length", param="cost_center"
        )
    if await repository.get_team_by_name(session, name) is not None:
        raise Conflict(f"team {name!r} already exists", code="team_exists", param="name")
    team = Team(
        name=name,
        cost_center=cost_center,
        monthly_budget_micro_usd=monthly_budget_micro_usd,
        max_concurrent_jobs=max_concurrent_jobs,
        soft_limit_percent=soft_limit_percent,
        created_at=utcnow(),
    )
    try:
        async with session.begin_nested():
            await repository.add(session, team)
    except IntegrityError:  # a concurrent create won the race
        raise Conflict(f"team {name!r} already exists", code="team_exists", param="name") from None
    return team


async def list_teams(session: AsyncSession) -> Sequence[Team]:
    return await repository.list_teams(session)


async def require_team(session: AsyncSession, name: str) -> Team:
    team = await repository.get_team_by_name(session, name)
    if team is None:
        raise NotFound(f"no team named {name!r}", code="team_not_found", param="team")
    return team


async def create_key(
    session: AsyncSession,
    team_name: str,
    *,
    pepper: str,
    name: str | None = None,
    expires_at: datetime | None = None,
) -> IssuedKey:
    team = await require_team(session, team_name)
    now = utcnow()
    if expires_at is not None and expires_at <= now:
        raise InvalidRequest(
            "expiry must be in the future", code="out_of_range", param="expires_at"
        )
    generated = generate_key()
    key = ApiKey(
        id=generated.key_id,
        team_id=team.id,
        secret_hash=hash_key(generated.token, pepper),
        name=name,
        created_at=now,
        expires_at=expires_at,
    )
    await repository.add(session, key)
    return IssuedKey(key=key, team=team, token=generated.token)


async def list_keys(session: AsyncSession, team_name: str) -> Sequence[ApiKey]:
    team = await require_team(session, team_name)
    return await repository.list_keys(session, team.id)


async def revoke_key(session: AsyncSession, key_id: str) -> ApiKey:
    """Revoke a key; revoking twice is harmless (the first revocation time is kept)."""
    key = await repository.get_key(session, key_id)
    if key is None:
        raise NotFound(f"no API key with id {key_id!r}", code="key_not_found", param="key_id")
    await repository.revoke_key(session, key_id, utcnow())
    await session.refresh(key)
    return key


async def authenticate_key(session: AsyncSession, token: str, *, pepper: str) -> Principal:
    """The principal a gateway API key stands for, or ``AuthenticationFailed``.

    Revocation and expiry are read from the database on every call, so they take effect at
    once on every replica. The hash comparison runs in constant time.
    """
    parsed = parse_key(token)
    if parsed is None:
        raise AuthenticationFailed("invalid API key", code="invalid_api_key")
    found = await repository.get_key_with_team(session, parsed.key_id)
    if found is None:
        # Spend the same hashing work as a real comparison so timing does not reveal ids.
        key_matches(token, "0" * 64, pepper)
        raise AuthenticationFailed("invalid API key", code="invalid_api_key")
    key, team = found
    if not key_matches(token, key.secret_hash, pepper):
        raise AuthenticationFailed("invalid API key", code="invalid_api_key")
    now = utcnow()
    if key.revoked_at is not None:
        raise AuthenticationFailed("this API key has been revoked", code="api_key_revoked")
    if key.expires_at is not None and key.expires_at <= now:
        raise AuthenticationFailed("this API key has expired", code="api_key_expired")
    if team.disabled_at is not None:
        raise PermissionDenied("this team is disabled", code="team_disabled")
    return Principal(
        team_id=team.id,
        team_name=team.name,
        key_id=key.id,
        monthly_budget_micro_usd=team.monthly_budget_micro_usd,
        max_concurrent_jobs=team.max_concurrent_jobs,
        soft_limit_percent=team.soft_limit_percent,
    )
