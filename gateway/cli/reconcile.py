"""``gateway reconcile``: settle outstanding jobs now; with ``--upstream-usage FILE``, then
compare the ledger with the upstream's own usage export."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from sqlalchemy.exc import SQLAlchemyError

from gateway.cli._common import echo_json, fail, load_settings, run
from gateway.cli._output import progress
from gateway.core.periods import month_bounds
from gateway.core.usd import parse_usd
from gateway.db.session import autocommit
from gateway.errors import GatewayError
from gateway.observability.logging import configure_logging
from gateway.reports import reconciliation
from gateway.reports.reconciliation import (
    ColumnMap,
    Reconciliation,
    UpstreamCharge,
    UsageFileError,
)
from gateway.runtime import open_runtime
from gateway.services.reconciler import ReconcileReport


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the settlement pass as JSON.")
@click.option(
    "--upstream-usage",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The upstream's usage export (CSV or JSON) to compare the ledger with.",
)
@click.option(
    "--column",
    "columns",
    multiple=True,
    metavar="FIELD=COLUMN",
    help="Map a field (job_id, cost_usd, billed, ...) to the export's column name.",
)
@click.option(
    "--month",
    help="Compare the ledger's jobs of this month (YYYY-MM) with the export; without it, every "
    "job in the ledger (right for a full export, not for a monthly one).",
)
@click.option(
    "--tolerance-usd",
    default="0",
    show_default=True,
    help="Differences up to this are not reported.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "csv", "json"]),
    default="table",
    show_default=True,
    help="How to print the comparison.",
)
@click.option("--no-settle", is_flag=True, help="Compare without running a settlement pass.")
def reconcile(
    as_json: bool,
    upstream_usage: Path | None,
    columns: tuple[str, ...],
    month: str | None,
    tolerance_usd: str,
    fmt: str,
    no_settle: bool,
) -> None:
    """Poll every submitted job now, settle the finished ones, release holds whose submit
    never got an answer, flag old holds; then, given --upstream-usage, compare the ledger with
    the upstream's bill job by job. Exit status 1 when anything differs beyond the tolerance,
    2 when the comparison could not be made (unreadable export, bad option, database error)."""
    settings = load_settings()
    configure_logging("text", "WARNING", settings.secrets())
    try:
        tolerance = parse_usd(tolerance_usd)  # exact, and never negative
    except ValueError as exc:
        fail(f"--tolerance-usd: {exc}", code=2)
    charges = _read_usage(upstream_usage, columns)
    if month is not None:
        try:
            month_bounds(month)
        except GatewayError as exc:
            fail(f"--month: {exc.message}", code=2)

    async def _run() -> tuple[ReconcileReport | None, Reconciliation | None]:
        async with open_runtime(settings) as runtime:
            report = None
            if not no_settle:
                with progress("reconcile", None) as bar:

                    def checked(done: int, total: int) -> None:
                        for task in bar.task_ids:
                            bar.update(task, completed=done, total=total)

                    report = await runtime.reconciler().run_once(everything=True, progress=checked)
            if charges is None:
                return report, None
            async with autocommit(runtime.sessionmaker) as session:
                ledger = await reconciliation.ledger_charges(
                    session, {c.job_id for c in charges}, month
                )
            return report, reconciliation.compare(charges, ledger, tolerance_micro_usd=tolerance)

    try:
        report, comparison = run(_run(), error_code=2)  # 1 means "differences found"
    except (SQLAlchemyError, OSError) as exc:
        fail(f"the database could not be used ({type(exc).__name__})", code=2)
    if comparison is None:
        assert report is not None
        _print_pass(report, as_json)
        return
    _print_comparison(report, comparison, fmt)
    sys.exit(0 if comparison.clean else 1)


def _read_usage(path: Path | None, columns: tuple[str, ...]) -> list[UpstreamCharge] | None:
    """The upstream's usage export, if one was given (exit 2 if it, or a --column mapping,
    cannot be read)."""
    try:
        column_map = ColumnMap.parse(columns)
        if path is None:
            return None
        return reconciliation.parse_usage(path.read_text("utf-8"), column_map)
    except (UsageFileError, ValueError) as exc:
        fail(f"cannot read the upstream usage: {exc}", code=2)


def _print_comparison(report: ReconcileReport | None, comparison: Reconciliation, fmt: str) -> None:
    if report is not None:
        click.echo(
            f"settlement pass: settled {report.settled}, still running {report.still_running}",
            err=True,
        )
    if fmt == "json":
        echo_json(comparison.as_json())
    elif fmt == "csv":
        click.echo(reconciliation.to_csv(comparison), nl=False)
    else:
        click.echo(reconciliation.to_table(comparison), nl=False)


def _print_pass(report: ReconcileReport, as_json: bool) -> None:
    if as_json:
        echo_json(vars(report))
        return
    click.echo(
        f"polled {report.polled}, settled {report.settled}, still running "
        f"{report.still_running}, released unanswered {report.released_unanswered}, "
        f"flagged {report.flagged}, upstream errors {report.upstream_errors}"
        + (" (upstream rate-limited us: run again later)" if report.rate_limited else "")
    )
