"""``gateway`` command group; each family of subcommands lives in its own module, imported only
when that command runs: ``gateway teams list`` does not load the web stack (FastAPI, uvicorn,
the admin API), so it starts in a fraction of the time."""

from __future__ import annotations

import importlib

import click

# command name → "module:attribute", in the order ``gateway --help`` lists them
_COMMANDS = {
    "serve": "gateway.cli.serve:serve",
    "simulator": "gateway.cli.simulator:simulator",
    "demo": "gateway.cli.demo:demo",
    "db": "gateway.cli.db:db",
    "config": "gateway.cli.config:config_group",
    "teams": "gateway.cli.teams:teams",
    "projects": "gateway.cli.projects:projects",
    "keys": "gateway.cli.keys:keys",
    "budgets": "gateway.cli.budgets:budgets_group",
    "rates": "gateway.cli.rates:rates_group",
    "reconcile": "gateway.cli.reconcile:reconcile",
    "report": "gateway.cli.report:report_group",
    "audit": "gateway.cli.audit:audit_group",
    "webhooks": "gateway.cli.webhooks:webhooks_group",
}


class _LazyGroup(click.Group):
    """Subcommands imported on first use (click's documented lazy-loading pattern)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(_COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = _COMMANDS.get(cmd_name)
        if target is None:
            return None
        module, attribute = target.split(":")
        command = getattr(importlib.import_module(module), attribute)
        assert isinstance(command, click.Command)
        return command


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="video-billing-gateway", prog_name="gateway")
def main() -> None:
    """Billing-aware gateway in front of the grok-imagine-video API."""
