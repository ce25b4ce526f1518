"""``gateway report chargeback|close-month|closed``: finance's monthly views of the ledger."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import cast

import click
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.audit.service import Actor
from gateway.cli._common import echo_json, fail, load_settings, run_in_session
from gateway.core.clock import utcnow
from gateway.db.session import autocommit
from gateway.ledger.closing import close_period, closed_periods
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

    async def _render(session: AsyncSession) -> None:
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

    # A real transaction: Postgres server-side cursors (FOCUS streaming) need one.
    run_in_session(settings, _render)
    if output:
        click.echo(f"wrote {output}", err=True)


@report_group.command("close-month")
@click.option("--month", required=True, help="YYYY-MM; must have ended.")
def close_month(month: str) -> None:
    """Freeze a month's chargeback; later entries appear as corrections in later months."""
    closed = run_in_session(
        load_settings(),
        lambda session: close_period(session, month, actor=Actor.cli(), now=utcnow()),
    )
    click.echo(f"closed {closed.period} at {closed.closed_at.isoformat()}")


@report_group.command("closed")
def list_closed() -> None:
    """List closed months."""
    closed = run_in_session(load_settings(), closed_periods, opened=autocommit)
    echo_json(
        [
            {"month": p.period, "closed_at": p.closed_at.isoformat(), "closed_by": p.closed_by}
            for p in closed
        ]
    )
