"""``gateway`` command group; each family of subcommands lives in its own module."""

from __future__ import annotations

import click

from gateway.cli import (
    audit,
    budgets,
    config,
    db,
    demo,
    keys,
    projects,
    rates,
    reconcile,
    report,
    serve,
    simulator,
    teams,
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="video-billing-gateway", prog_name="gateway")
def main() -> None:
    """Billing-aware gateway in front of the grok-imagine-video API."""


main.add_command(serve.serve)
main.add_command(simulator.simulator)
main.add_command(demo.demo)
main.add_command(db.db)
main.add_command(teams.teams)
main.add_command(keys.keys)
main.add_command(projects.projects)
main.add_command(budgets.budgets_group)
main.add_command(rates.rates_group)
main.add_command(reconcile.reconcile)
main.add_command(audit.audit_group)
main.add_command(config.config_group)
main.add_command(report.report_group)
