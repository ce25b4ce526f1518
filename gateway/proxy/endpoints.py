"""Tenant-facing routes, on the upstream's own paths (HTTP only; logic in ``service``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Request, Response

from gateway.core.pricing import ESTIMATE_HEADER
from gateway.core.usd import format_usd
from gateway.errors import InvalidRequest
from gateway.kit.http import read_body_capped
from gateway.proxy.schemas import UsageOut
from gateway.services import poll, submit
from gateway.services.proxy import ProxiedResponse, usage
from gateway.web.deps import RuntimeDep
from gateway.web.tenant_auth import CurrentPrincipal, remember_balance

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
    principal: CurrentPrincipal,
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
    return _to_response(request, result)


@router.get("/v1/jobs/{job_id}", summary="Poll a job")
async def get_job(
    job_id: str, request: Request, principal: CurrentPrincipal, runtime: RuntimeDep
) -> Response:
    result = await poll.poll_job(
        runtime.proxy, principal, job_id, request_id=request.state.request_id
    )
    return _to_response(request, result)


@router.get("/v1/usage", summary="The calling team's money for the current period")
async def get_usage(request: Request, principal: CurrentPrincipal, runtime: RuntimeDep) -> UsageOut:
    balance = await usage(runtime.proxy, principal)
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
