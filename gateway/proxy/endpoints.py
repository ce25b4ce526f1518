"""Tenant-facing routes, on the upstream's own paths (HTTP only; logic in ``service``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Request, Response
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.core.pricing import ESTIMATE_HEADER
from gateway.core.usd import format_usd
from gateway.errors import GatewayError, InvalidRequest
from gateway.jobs.models import Job
from gateway.kit.http import read_body_capped
from gateway.ledger.quotas import PeriodBalance
from gateway.proxy.schemas import UsageOut
from gateway.services import poll, submit
from gateway.services.proxy import ProxiedResponse, usage
from gateway.tenancy.service import Principal
from gateway.web.deps import RuntimeDep
from gateway.web.tenant_auth import (
    SubmittingPrincipal,
    authenticated,
    remember_balance,
    remember_balance_if_unknown,
)

router = APIRouter(tags=["video generation"])
_SINGLE_HEADERS = (
    ("Idempotency-Key", "invalid_idempotency_key"),
    ("X-Gateway-Tags", "invalid_tags"),
)


def _to_response(request: Request, result: ProxiedResponse) -> Response:
    request.state.job_id = result.job_id
    if result.upstream_seconds is not None:
        request.state.upstream_ms = round(result.upstream_seconds * 1000, 2)
    if ESTIMATE_HEADER in result.headers:
        request.state.estimate_usd = result.headers[ESTIMATE_HEADER]
    if result.balance is not None:
        remember_balance(request, result.balance)
    if result.captured_micro_usd is not None:
        request.state.captured_usd = format_usd(result.captured_micro_usd)
    return Response(content=result.body, status_code=result.status_code, headers=result.headers)


@router.post("/v1/videos/generations", summary="Submit a video generation job")
async def submit_generation(
    request: Request,
    principal: SubmittingPrincipal,
    runtime: RuntimeDep,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
    tags: Annotated[
        str | None,
        Header(
            alias="X-Gateway-Tags",
            description="Cost-allocation tags, key=value,... (never forwarded upstream)",
            examples=["project=atlas,user=dana"],
        ),
    ] = None,
) -> Response:
    try:
        for name, code in _SINGLE_HEADERS:
            if len(request.headers.getlist(name)) > 1:
                # Which one would count? The one validated, or the one a proxy in between keeps?
                runtime.metrics.validation_rejections.labels(code).inc()
                raise InvalidRequest(f"{name} may be sent only once", code=code, param=name)
        raw = await read_body_capped(request, runtime.settings.max_request_body_bytes)
        result = await submit.submit_generation(
            runtime.proxy,
            principal,
            raw,
            request_id=request.state.request_id,
            idempotency_key=idempotency_key,
            tags_header=tags,
            on_balance=lambda balance: remember_balance(request, balance),
        )
    except GatewayError:
        # Refused before a hold said what is left (a 400, 409, 429, or a 503 such as a missing
        # rate card): read it, as for any tenant response. A database outage is not a
        # GatewayError here, and the read is best effort.
        await remember_balance_if_unknown(request, runtime, principal)
        raise
    response = _to_response(request, result)
    await remember_balance_if_unknown(request, runtime, principal)  # an idempotent replay
    return response


async def _polling(
    job_id: str, request: Request, runtime: RuntimeDep
) -> tuple[Principal, Job | None]:
    """The caller, its balance and the job it polls, in one database session."""

    async def read(session: AsyncSession, principal: Principal) -> Job | None:
        remember_balance(request, await usage(session, runtime.proxy, principal))
        return await poll.find_job(session, job_id, principal)

    principal, job = await authenticated(request, runtime, read)
    return principal, job


@router.get("/v1/jobs/{job_id}", summary="Poll a job")
async def get_job(
    job_id: str,
    request: Request,
    caller: Annotated[tuple[Principal, Job | None], Depends(_polling)],
    runtime: RuntimeDep,
) -> Response:
    principal, job = caller
    result = await poll.poll_job(
        runtime.proxy, principal, job_id, job, request_id=request.state.request_id
    )
    return _to_response(request, result)


async def _with_balance(
    request: Request, runtime: RuntimeDep
) -> tuple[Principal, PeriodBalance | None]:
    async def read(session: AsyncSession, principal: Principal) -> PeriodBalance:
        return await usage(session, runtime.proxy, principal)

    return await authenticated(request, runtime, read)


@router.get("/v1/usage", summary="The calling team's money for the current period")
async def get_usage(
    request: Request,
    caller: Annotated[tuple[Principal, PeriodBalance | None], Depends(_with_balance)],
) -> UsageOut:
    principal, balance = caller
    assert balance is not None  # read for every caller
    remember_balance(request, balance)
    remaining = balance.remaining
    return UsageOut(
        team=principal.team_name,
        period=balance.period,
        budget_usd=format_usd(balance.budget) if balance.budget is not None else None,
        captured_usd=format_usd(balance.captured),
        held_usd=format_usd(balance.held),
        remaining_usd=format_usd(remaining) if remaining is not None else None,
    )
