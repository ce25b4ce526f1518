"""``gateway report chargeback|close-month|closed``: finance's monthly views of the ledger."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import cast

import click

from gateway.audit.service import Actor
from gateway.cli._common import echo_json, fail, load_settings, run
from gateway.core.clock import utcnow
from gateway.db.engine import create_engine, create_sessionmaker
from gateway.db.session import autocommit, transaction
from gateway.ledger.closing import close_period, closed_periods
from gateway.ledger.models import ClosedPeriod
from gateway.reports.chargeback import ReportQuery, parse_group_by
from gateway.reports.render import Format, focus_csv_chunks, render_report


@click.group("report")
def report_group() -> None:
    """Chargeback reports for finance."""


@report_group.command("chargeback")
@click.option("--month", required=True, help="YYYY-MM (UTC); a job belongs to its submit month.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["csv", "json", "html", "focus"]),
    default="csv",
    show_default=True,
    help="focus: FinOps FOCUS 1.2 cost file (CSV, one row per price line per job).",
)
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), help="Default: stdout.")
@click.option(
    "--group-by",
    default="team",
    show_default=True,
    help="team, cost_center or tag:KEY (per tag value within each team).",
)
@click.option("--team", help="Only this team.")
@click.option("--tag", help="Only jobs tagged KEY=VALUE.")
@click.option("--daily", is_flag=True, help="Add the per-day breakdown (charts in HTML).")
def chargeback(
    month: str,
    fmt: str,
    output: Path | None,
    group_by: str,
    team: str | None,
    tag: str | None,
    daily: bool,
) -> None:
    """The monthly chargeback per team, cost center or tag."""
    tag_filter = None
    if tag is not None:
        key, sep, value = tag.partition("=")
        if not sep or not key or not value:
            fail("--tag must be KEY=VALUE")
        tag_filter = (key, value)
    query = ReportQuery(
        month=month,
        group_by=parse_group_by("cost_center" if group_by == "cost-center" else group_by),
        team=team,
        tag=tag_filter,
        daily=daily or fmt == "html",
    )
    settings = load_settings()

    async def _render() -> None:
        engine = create_engine(settings.database_url)
        try:
            # A real transaction: Postgres server-side cursors (FOCUS streaming) need one.
            async with transaction(create_sessionmaker(engine)) as session:
                target = output.open("w", encoding="utf-8") if output else sys.stdout
                try:
                    if fmt == "focus":
                        async for chunk in focus_csv_chunks(session, month, settings, team=team):
                            target.write(chunk)
                    else:
                        target.write(await render_report(session, query, cast(Format, fmt)))
                finally:
                    if output:
                        target.close()
        finally:
            await engine.dispose()

    run(_render())
    if output:
        click.echo(f"wrote {output}", err=True)


@report_group.command("close-month")
@click.option("--month", required=True, help="YYYY-MM; must have ended.")
def close_month(month: str) -> None:
    """Freeze a month's chargeback; later entries appear as corrections in later months."""
    settings = load_settings()

    async def _close() -> ClosedPeriod:
        engine = create_engine(settings.database_url)
        try:
            async with transaction(create_sessionmaker(engine)) as session:
                return await close_period(session, month, actor=Actor.cli(), now=utcnow())
        finally:
            await engine.dispose()

    closed = run(_close())
    click.echo(f"closed {closed.period} at {closed.closed_at.isoformat()}")


@report_group.command("closed")
def list_closed() -> None:
    """List closed months."""
    settings = load_settings()

    async def _list() -> Sequence[ClosedPeriod]:
        engine = create_engine(settings.database_url)
        try:
            async with autocommit(create_sessionmaker(engine)) as session:
                return await closed_periods(session)
        finally:
            await engine.dispose()

    echo_json(
        [
            {"month": p.period, "closed_at": p.closed_at.isoformat(), "closed_by": p.closed_by}
            for p in run(_list())
        ]
    )
