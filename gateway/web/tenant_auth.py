"""Who is calling: the bearer token (or ``x-api-key``) turned into a ``Principal``."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

from fastapi import Depends, Request
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.db.session import autocommit, transaction
from gateway.errors import AuthenticationFailed, PermissionDenied
from gateway.ledger.quotas import PeriodBalance
from gateway.observability.requests import QUOTA_REMAINING_STATE
from gateway.runtime import Runtime
from gateway.services.proxy import usage
from gateway.tenancy.jwt_auth import looks_like_jwt
from gateway.tenancy.service import Principal, authenticate_key, team_for_token_claim
from gateway.web.deps import RuntimeDep


def bearer_token(request: Request, *, allow_x_api_key: bool = True) -> str:
    """The token from ``Authorization: Bearer <token>``, else (tenant routes only, as the
    upstream does) from ``x-api-key``."""
    authorization = request.headers.get("authorization")
    if authorization is not None:
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer":
            raise AuthenticationFailed(
                "Authorization header must be 'Bearer <key>'", code="invalid_authorization"
            )
        token = token.strip()
    elif allow_x_api_key:
        token = (request.headers.get("x-api-key") or "").strip()
    else:
        token = ""
    if not token:
        accepted = "'Authorization: Bearer <key>'"
        if allow_x_api_key:
            accepted += " or 'x-api-key: <key>'"
        raise AuthenticationFailed(f"missing credentials: send {accepted}", code="missing_api_key")
    return token


def remember_balance(request: Request, balance: PeriodBalance) -> None:
    """The figure every tenant response carries as ``X-Quota-Remaining-USD``."""
    setattr(request.state, QUOTA_REMAINING_STATE, balance.remaining_header())


async def _principal_for_jwt(runtime: Runtime, token: str) -> Principal:
    verified = await runtime.jwt.verify(token)
    if verified.team is None:
        raise PermissionDenied(
            f"the token has no {runtime.settings.jwt_team_claim!r} claim naming a team",
            code="team_claim_missing",
        )
    async with transaction(runtime.sessionmaker) as session:
        team = await team_for_token_claim(
            session,
            verified.team,
            auto_create=runtime.settings.jwt_auto_create_teams,
            subject=verified.subject,
        )
    return Principal.of(team, subject=verified.subject)


logger = logging.getLogger(__name__)

T = TypeVar("T")
Read = Callable[[AsyncSession, Principal], Awaitable[T]]


async def authenticated(
    request: Request, runtime: Runtime, read: Read[T] | None = None
) -> tuple[Principal, T | None]:
    """A company JWT (when configured and the token looks like one) or a gateway API key,
    and what ``read`` reads for the caller: with a key, in the same database session as the
    key itself (one pool checkout: this runs on every tenant request)."""
    token = bearer_token(request)
    extra: T | None = None
    if runtime.jwt.enabled and looks_like_jwt(token):
        principal = await _principal_for_jwt(runtime, token)
        if read is not None:
            async with autocommit(runtime.sessionmaker) as session:
                extra = await read(session, principal)
    else:
        async with autocommit(runtime.sessionmaker) as session:
            principal = await authenticate_key(
                session,
                token,
                pepper=runtime.pepper,
                last_used_resolution=runtime.settings.key_last_used_resolution_seconds,
            )
            if read is not None:
                extra = await read(session, principal)
    request.state.team = principal.team_name
    return principal, extra


async def submitting_principal(request: Request, runtime: RuntimeDep) -> Principal:
    """The caller of a submit. Its balance is not read here: the hold's own statement returns
    it; a submit refused before its hold reads it then (``remember_balance_if_unknown``)."""
    principal, _ = await authenticated(request, runtime)
    return principal


async def remember_balance_if_unknown(
    request: Request, runtime: Runtime, principal: Principal
) -> None:
    """Read the balance for the quota header if nothing has said it yet. Best effort: if the
    database cannot answer, the response goes without the header rather than turning a
    refusal or a replayed answer into a 503."""
    if getattr(request.state, QUOTA_REMAINING_STATE, None) is not None:
        return
    try:
        async with autocommit(runtime.sessionmaker) as session:
            remember_balance(request, await usage(session, runtime.proxy, principal))
    except (SQLAlchemyError, OSError) as exc:
        runtime.db_health.observe(exc)
        logger.warning("could not read the balance for the quota header", exc_info=True)


SubmittingPrincipal = Annotated[Principal, Depends(submitting_principal)]
