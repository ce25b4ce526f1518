"""Operator routes: ``/healthz`` (the process is alive), ``/readyz`` (it can serve: the
database answers and its schema is at the migrations' head; upstream reachability is reported
but not fatal), and ``/metrics`` (Prometheus)."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from gateway.db.migrations import head_revisions, schema_is_current
from gateway.kit.drain import DRAIN
from gateway.web.deps import RuntimeDep

logger = logging.getLogger(__name__)
router = APIRouter(tags=["health"])


@router.get("/metrics", include_in_schema=False)
async def metrics(runtime: RuntimeDep) -> Response:
    body, content_type = runtime.metrics.exposition()
    return Response(content=body, media_type=content_type)


@router.get("/healthz", summary="Liveness")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness", response_model=None)
async def readyz(runtime: RuntimeDep) -> JSONResponse:
    if DRAIN.draining:  # SIGTERM: out of rotation at once (gateway.kit.drain)
        return JSONResponse({"status": "draining", "checks": {}}, status_code=503)
    checks: dict[str, str] = {}
    try:
        async with runtime.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
        checks["database"] = "ok"
        current = await schema_is_current(runtime.engine)
        checks["schema"] = "current" if current else f"behind (head {sorted(head_revisions())})"
    except (SQLAlchemyError, OSError) as exc:
        logger.warning("readiness: database unreachable: %s", type(exc).__name__)
        checks["database"] = "unreachable"
    # Reported, not fatal: a replica that cannot reach the upstream still answers polls of
    # settled jobs, usage and admin; taking it out of rotation would not help.
    checks["upstream"] = await runtime.upstream.probe()
    ready = checks.get("database") == "ok" and checks.get("schema") == "current"
    return JSONResponse(
        {"status": "ready" if ready else "not_ready", "checks": checks},
        status_code=200 if ready else 503,
    )
