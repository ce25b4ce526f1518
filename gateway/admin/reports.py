"""Finance routes under ``/admin/``: the monthly chargeback in every format, closing months."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from importlib import resources
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from gateway.admin.auth import AdminActor
from gateway.admin.schemas import ERROR_RESPONSES
from gateway.core.clock import utcnow
from gateway.core.periods import month_bounds
from gateway.db.session import autocommit, transaction
from gateway.kit.strict_route import StrictJSONRoute
from gateway.ledger.closing import close_period, closed_periods
from gateway.reports.chargeback import ReportQuery, parse_group_by, require_team
from gateway.reports.render import MEDIA_TYPES, focus_csv_chunks, render_report
from gateway.web.deps import RuntimeDep, UnitOfWorkDep

router = APIRouter(
    prefix="/admin", tags=["finance"], route_class=StrictJSONRoute, responses=ERROR_RESPONSES
)
Month = Annotated[str, Query(pattern=r"^[0-9]{4}-(0[1-9]|1[0-2])$", examples=["2026-11"])]


def _report_schema() -> dict[str, Any]:
    text = resources.files("gateway.reports").joinpath("chargeback.schema.json").read_text()
    schema: dict[str, Any] = json.loads(text)
    schema.pop("$schema", None)
    schema.pop("$id", None)
    return schema


class ClosedPeriodOut(BaseModel):
    month: str
    closed_at: str
    closed_by: str


@router.get(
    "/reports/chargeback",
    summary="The monthly chargeback (json, csv, html, or FOCUS 1.2 csv)",
    response_class=Response,
    responses={
        200: {
            "description": "The report in the requested format",
            "content": {
                "application/json": {"schema": _report_schema()},
                "text/csv": {"schema": {"type": "string"}},
                "text/html": {"schema": {"type": "string"}},
            },
        }
    },
)
async def chargeback_report(
    admin: AdminActor,
    runtime: RuntimeDep,
    month: Month,
    format: Literal["json", "csv", "html", "focus"] = "json",
    group_by: Annotated[str, Query(max_length=40, examples=["team", "tag:project"])] = "team",
    team: str | None = None,
    tag: Annotated[str | None, Query(pattern=r"^[^=]+=.+$", examples=["project=atlas"])] = None,
    daily: bool = False,
) -> Response:
    if format == "focus":
        month_bounds(month)  # a month that cannot exist (0000-01) is a 400 before streaming
        async with autocommit(runtime.sessionmaker) as session:
            await require_team(session, team)  # and an unknown team a 404

        async def chunks() -> AsyncIterator[str]:
            # A real transaction: Postgres server-side cursors (row streaming) need one.
            async with transaction(runtime.sessionmaker) as session:
                async for chunk in focus_csv_chunks(session, month, runtime.settings, team=team):
                    yield chunk

        return StreamingResponse(
            chunks(),
            media_type=MEDIA_TYPES["focus"],
            headers={"Content-Disposition": f'attachment; filename="focus-{month}.csv"'},
        )
    key, _, value = (tag or "").partition("=")
    query = ReportQuery(
        month=month,
        group_by=parse_group_by(group_by),
        team=team,
        tag=(key, value) if tag else None,
        daily=daily or format == "html",
    )
    async with autocommit(runtime.sessionmaker) as session:
        body = await render_report(session, query, format)
    return Response(content=body, media_type=MEDIA_TYPES[format])


@router.post("/periods/{month}/close", status_code=201, summary="Close a month (freeze its report)")
async def close_month(month: str, admin: AdminActor, work: UnitOfWorkDep) -> ClosedPeriodOut:
    closed = await close_period(work.session, month, actor=admin, now=utcnow())
    return ClosedPeriodOut(
        month=closed.period, closed_at=closed.closed_at.isoformat(), closed_by=closed.closed_by
    )


@router.get("/periods", summary="Closed months")
async def list_closed(admin: AdminActor, work: UnitOfWorkDep) -> list[ClosedPeriodOut]:
    rows = await closed_periods(work.session)
    return [
        ClosedPeriodOut(month=p.period, closed_at=p.closed_at.isoformat(), closed_by=p.closed_by)
        for p in rows
    ]
