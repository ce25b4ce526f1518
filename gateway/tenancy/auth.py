"""Who is calling: the bearer token (or ``x-api-key``) turned into a ``Principal``."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from gateway.db.base import utcnow
from gateway.db.session import read_only
from gateway.errors import AuthenticationFailed
from gateway.kit.http import RuntimeDep
from gateway.ledger import quotas
from gateway.ledger.periods import period_of
from gateway.ledger.quotas import BalanceView, TeamQuota
from gateway.tenancy.service import Principal, authenticate_key

QUOTA_HEADER_STATE = "quota_remaining_usd"


def bearer_token(request: Request) -> str:
    """The token from ``Authorization: Bearer <token>``, else from ``x-api-key``."""
    authorization = request.headers.get("authorization")
    if authorization is not None:
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer":
            raise AuthenticationFailed(
                "Authorization header must be 'Bearer <key>'", code="invalid_authorization"
            )
        token = token.strip()
    else:
        token = (request.headers.get("x-api-key") or "").strip()
    if not token:
        raise AuthenticationFailed(
            "missing API key: send 'Authorization: Bearer <key>' or 'x-api-key: <key>'",
            code="missing_api_key",
        )
    return token


def remember_balance(request: Request, balance: BalanceView) -> None:
    """The figure every tenant response carries as ``X-Quota-Remaining-USD``."""
    setattr(request.state, QUOTA_HEADER_STATE, balance.remaining_header())


async def current_principal(request: Request, runtime: RuntimeDep) -> Principal:
    token = bearer_token(request)
    async with read_only(runtime.sessionmaker) as session:
        principal = await authenticate_key(session, token, pepper=runtime.pepper)
        balance = await quotas.balance_view(
            session,
            TeamQuota(
                principal.team_id, principal.monthly_budget_micro_usd, principal.max_concurrent_jobs
            ),
            period_of(utcnow()),
            runtime.settings.default_budget_policy,
        )
    request.state.team = principal.team_name
    remember_balance(request, balance)
    return principal


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]
