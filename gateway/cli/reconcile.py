"""``gateway reconcile``: settle outstanding jobs now (one reconciler pass over every job)."""

from __future__ import annotations

import click

from gateway.cli._common import echo_json, load_settings, run
from gateway.ledger.reconciler import Reconciler, ReconcileReport
from gateway.observability.logging import configure_logging
from gateway.runtime import open_runtime


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the pass's figures as JSON.")
def reconcile(as_json: bool) -> None:
    """Poll every submitted job now, settle the finished ones, release holds whose submit
    never got an answer, flag old holds. Exit status 0 once the pass has run."""
    settings = load_settings()
    configure_logging("text", "WARNING", settings.secrets())

    async def _pass() -> ReconcileReport:
        async with open_runtime(settings) as runtime:
            return await Reconciler(runtime).run_once(everything=True)

    report = run(_pass())
    if as_json:
        echo_json(vars(report))
        return
    click.echo(
        f"polled {report.polled}, settled {report.settled}, still running "
        f"{report.still_running}, released unanswered {report.released_unanswered}, "
        f"flagged {report.flagged}, upstream errors {report.upstream_errors}"
        + (" (upstream rate-limited us: run again later)" if report.rate_limited else "")
    )
