"""Who is calling: the bearer token (or ``x-api-key``) turned into a ``Principal``."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from gateway.db.session import transaction
from gateway.errors import AuthenticationFailed
from gateway.kit.http import RuntimeDep
from gateway.tenancy.service import Principal, authenticate_key


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


async def current_principal(request: Request, runtime: RuntimeDep) -> Principal:
    token = bearer_token(request)
    async with transaction(runtime.sessionmaker) as session:
        principal = await authenticate_key(session, token, pepper=runtime.pepper)
    request.state.team = principal.team_name
    return principal


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]
