"""Tenant-facing routes, on the upstream's own paths (HTTP only; logic in ``service``)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from gateway.kit.http import RuntimeDep, read_body_capped
from gateway.proxy import service
from gateway.proxy.service import ProxiedResponse
from gateway.tenancy.auth import CurrentPrincipal

router = APIRouter(tags=["video generation"])


def _to_response(request: Request, result: ProxiedResponse) -> Response:
    request.state.job_id = result.job_id
    if result.upstream_seconds is not None:
        request.state.upstream_ms = round(result.upstream_seconds * 1000, 2)
    if "X-Gateway-Cost-Estimate-USD" in result.headers:
        request.state.estimate_usd = result.headers["X-Gateway-Cost-Estimate-USD"]
    return Response(content=result.body, status_code=result.status_code, headers=result.headers)


@router.post("/v1/videos/generations", summary="Submit a video generation job")
async def submit_generation(
    request: Request, principal: CurrentPrincipal, runtime: RuntimeDep
) -> Response:
    raw = await read_body_capped(request, runtime.settings.max_request_body_bytes)
    result = await service.submit_generation(
        runtime, principal, raw, request_id=request.state.request_id
    )
    return _to_response(request, result)


@router.get("/v1/jobs/{job_id}", summary="Poll a job")
async def get_job(
    job_id: str, request: Request, principal: CurrentPrincipal, runtime: RuntimeDep
) -> Response:
    result = await service.poll_job(runtime, principal, job_id, request_id=request.state.request_id)
    return _to_response(request, result)
