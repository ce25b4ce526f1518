"""Who may use ``/admin/``: the admin token (``GATEWAY_ADMIN_TOKEN``, compared in constant time)
or a company JWT carrying the admin role. A valid tenant key is refused with 403 (it is a known
identity without the permission); anything else with 401."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request

from gateway.audit.service import Actor
from gateway.db.session import autocommit
from gateway.errors import AuthenticationFailed, PermissionDenied
from gateway.tenancy.authentication import authenticate_key
from gateway.tenancy.jwt_auth import looks_like_jwt
from gateway.tenancy.keys import parse_key
from gateway.web.deps import RuntimeDep
from gateway.web.tenant_auth import bearer_token


async def current_admin(request: Request, runtime: RuntimeDep) -> Actor:
    """Who is calling the admin API (also written to the access log as ``actor``)."""
    actor = await _authenticate_admin(request, runtime)
    request.state.actor = actor.name
    return actor


async def _authenticate_admin(request: Request, runtime: RuntimeDep) -> Actor:
    token = bearer_token(request, allow_x_api_key=False)  # the README: Authorization only
    request_id = request.state.request_id
    configured = runtime.settings.admin_token.get_secret_value()
    if configured and hmac.compare_digest(token.encode(), configured.encode()):
        return Actor("admin-token", request_id)
    if runtime.jwt.enabled and looks_like_jwt(token):
        verified = await runtime.jwt.verify(token)
        if verified.is_admin:
            return Actor(f"jwt:{verified.subject or 'unknown'}", request_id)
        raise PermissionDenied(
            f"this token lacks the {runtime.settings.jwt_admin_role!r} role",
            code="admin_role_required",
        )
    if parse_key(token) is not None:
        async with autocommit(runtime.sessionmaker) as session:
            principal = await authenticate_key(
                session,
                token,
                pepper=runtime.pepper,
                previous_pepper=runtime.settings.key_pepper_previous.get_secret_value() or None,
            )
        request.state.team = principal.team_name
        raise PermissionDenied("team API keys cannot use the admin API", code="admin_required")
    raise AuthenticationFailed("invalid admin credentials", code="invalid_admin_token")


AdminActor = Annotated[Actor, Depends(current_admin)]
