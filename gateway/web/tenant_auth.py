"""Who is calling: the bearer token (or ``x-api-key``) turned into a ``Principal``."""

from __future__ import annotations

import logging
from datetime import timedelta

from fastapi import Request
from sqlalchemy.exc import SQLAlchemyError

from gateway.core.clock import utcnow
from gateway.db.session import autocommit, transaction
from gateway.errors import AuthenticationFailed, PermissionDenied
from gateway.ledger.holds import KeyCheck
from gateway.ledger.quotas import PeriodBalance
from gateway.observability.requests import QUOTA_REMAINING_STATE
from gateway.runtime import Runtime
from gateway.services import callers
from gateway.services.callers import Caller, Reads
from gateway.services.proxy import usage
from gateway.services.submit import Submitter
from gateway.tenancy.jwt_auth import looks_like_jwt
from gateway.tenancy.service import Principal, team_for_token_claim


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


_NOTHING_MORE = Reads()


async def authenticated(request: Request, runtime: Runtime, reads: Reads = _NOTHING_MORE) -> Caller:
    """A company JWT (when configured and the token looks like one) or a gateway API key,
    and what ``reads`` asks for the caller: with a key, in the same round trip as the key
    itself (this runs on every tenant request)."""
    token = bearer_token(request)
    if runtime.jwt.enabled and looks_like_jwt(token):
        principal = await _principal_for_jwt(runtime, token)
        caller = await callers.read_for(runtime.proxy, principal, reads)
    else:
        caller = await callers.by_key(runtime.proxy, token, runtime.pepper, reads)
    request.state.team = caller.principal.team_name
    return caller


class _Confirmation:
    """The caller's real key lookup, run at most once per request."""

    def __init__(self, request: Request, runtime: Runtime) -> None:
        self._request = request
        self._runtime = runtime
        self._principal: Principal | None = None

    async def __call__(self) -> Principal:
        if self._principal is None:
            self._principal = (await authenticated(self._request, self._runtime)).principal
        return self._principal


async def submitter_of(request: Request, runtime: Runtime) -> Submitter:
    """The caller of a submit: with a key this process has confirmed before, that principal
    unconfirmed (the hold's statement checks the key: one round trip fewer per submit);
    otherwise looked up now."""
    token = bearer_token(request)
    confirm = _Confirmation(request, runtime)
    if not (runtime.jwt.enabled and looks_like_jwt(token)):
        seen = runtime.proxy.keys_seen.claimed(token, runtime.pepper)
        if seen is not None:
            secret_hash, principal = seen
            resolution = timedelta(seconds=runtime.settings.key_last_used_resolution_seconds)
            check = KeyCheck(
                secret_hash=secret_hash,
                team_name=principal.team_name,
                monthly_budget_micro_usd=principal.monthly_budget_micro_usd,
                soft_limit_percent=principal.soft_limit_percent,
                stale_before=utcnow() - resolution,
                team_max_cost_per_job_micro_usd=principal.max_cost_per_job_micro_usd,
                key_max_cost_per_job_micro_usd=principal.key_max_cost_per_job_micro_usd,
                project_max_cost_per_job_micro_usd=(
                    principal.project.max_cost_per_job_micro_usd if principal.project else None
                ),
            )
            return Submitter(principal, confirm, check)
    return Submitter(await confirm(), confirm)


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
