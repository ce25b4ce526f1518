"""``gateway report chargeback|close-month|closed``: finance's monthly views of the ledger."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TextIO, cast

import click
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.audit.service import Actor
from gateway.cli._common import echo_json, load_settings, run_in_session
from gateway.cli._output import Column, advance, print_table, progress
from gateway.config import Settings
from gateway.core.clock import utcnow
from gateway.core.periods import month_bounds
from gateway.db.session import autocommit
from gateway.errors import GatewayError
from gateway.ledger.closing import close_period, closed_periods
from gateway.ledger.models import ClosedPeriod
from gateway.reports.chargeback import ReportQuery, parse_group_by
from gateway.reports.focus import focus_row_count
from gateway.reports.render import Format, focus_csv_chunks, render_report


@click.group("report")
def report_group() -> None:
    """Chargeback reports for finance."""


def _month(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    try:
        month_bounds(value)
    except GatewayError:
        raise click.BadParameter(f"{value!r} is not a month: give YYYY-MM, e.g. 2026-11") from None
    return value


def _group_by(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    try:
        return parse_group_by("cost_center" if value == "cost-center" else value)
    except GatewayError:
        raise click.BadParameter(
            f"{value!r}: group by team, cost_center, project or tag:KEY (e.g. tag:user)"
        ) from None


def _tag(_ctx: click.Context, _param: click.Parameter, value: str | None) -> tuple[str, str] | None:
    if value is None:
        return None
    key, sep, tag_value = value.partition("=")
    if not sep or not key or not tag_value:
        raise click.BadParameter(f"{value!r}: give KEY=VALUE, e.g. project=launch")
    return key, tag_value


@report_group.command("chargeback")
@click.option(
    "--month",
    required=True,
    callback=_month,
    help="YYYY-MM (UTC); a job belongs to its submit month.",
)
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
    callback=_group_by,
    help="team, cost_center, project (per project within each team; jobs of no project as "
    "(none)), or tag:KEY (per tag value within each team).",
)
@click.option("--team", help="Only this team (it must exist).")
@click.option("--tag", callback=_tag, help="Only jobs tagged KEY=VALUE.")
@click.option("--daily", is_flag=True, help="Add the per-day breakdown (charts in HTML).")
def chargeback(
    month: str,
    fmt: str,
    output: Path | None,
    group_by: str,
    team: str | None,
    tag: tuple[str, str] | None,
    daily: bool,
) -> None:
    """The monthly chargeback per team, cost center, project or tag. A progress bar is shown
    on stderr when it is a terminal (the FOCUS export of a big month takes a while)."""
    query = ReportQuery(
        month=month, group_by=group_by, team=team, tag=tag, daily=daily or fmt == "html"
    )
    settings = load_settings()

    async def _render(session: AsyncSession) -> None:
        target = output.open("w", encoding="utf-8") if output else sys.stdout
        try:
            if fmt == "focus":
                await _write_focus(session, target, month, settings, team)
            else:
                with progress("chargeback", None):
                    text = await render_report(session, query, cast(Format, fmt))
                target.write(text)
        finally:
            if output:
                target.close()

    # A real transaction: Postgres server-side cursors (FOCUS streaming) need one.
    run_in_session(settings, _render)
    if output:
        click.echo(f"wrote {output}", err=True)


async def _write_focus(
    session: AsyncSession, target: TextIO, month: str, settings: Settings, team: str | None
) -> None:
    total = await focus_row_count(session, month, team=team) if sys.stderr.isatty() else None
    with progress(f"FOCUS {month}", total) as bar:
        first = True  # the first chunk starts with the header line
        async for chunk in focus_csv_chunks(session, month, settings, team=team):
            target.write(chunk)
            advance(bar, chunk.count("\n") - (1 if first else 0))
            first = False


@report_group.command("close-month")
@click.option("--month", required=True, callback=_month, help="YYYY-MM; must have ended.")
@click.option("--json", "as_json", is_flag=True, help="Print the closed month as JSON.")
def close_month(month: str, as_json: bool) -> None:
    """Freeze a month's chargeback; later entries appear as corrections in later months."""
    closed = run_in_session(
        load_settings(),
        lambda session: close_period(session, month, actor=Actor.cli(), now=utcnow()),
    )
    if as_json:
        echo_json(_closed_to_dict(closed))
    else:
        click.echo(f"closed {closed.period} at {closed.closed_at.isoformat()}")


@report_group.command("closed")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def list_closed(as_json: bool) -> None:
    """List closed months."""
    closed = [
        _closed_to_dict(p)
        for p in run_in_session(load_settings(), closed_periods, opened=autocommit)
    ]
    if as_json:
        echo_json(closed)
        return
    print_table(
        [Column("MONTH"), Column("CLOSED AT"), Column("CLOSED BY")],
        ([p["month"], p["closed_at"], p["closed_by"]] for p in closed),
    )


def _closed_to_dict(period: ClosedPeriod) -> dict[str, object]:
    return {
        "month": period.period,
        "closed_at": period.closed_at.isoformat(),
        "closed_by": period.closed_by,
    }
