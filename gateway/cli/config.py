"""``gateway config show``: the effective configuration, secrets redacted."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
from dotenv import dotenv_values
from pydantic import SecretStr

from gateway.cli._common import echo_json, load_settings, shown_url
from gateway.cli._output import Column, print_table
from gateway.config import Settings
from gateway.config_diagnostics import variable

_REDACTED = "********"
# URLs whose path or query may carry a credential (a chat webhook's URL is its secret).
_URLS_WITH_SECRETS = frozenset({"alert_webhook_url"})


@click.group("config")
def config_group() -> None:
    """The gateway's configuration (GATEWAY_* variables)."""


@config_group.command("show")
@click.option("--json", "as_json", is_flag=True, help="Print {variable: {value, source}} as JSON.")
def show(as_json: bool) -> None:
    """Every setting's effective value and where it came from (environment, .env, default).
    Secrets show only whether they are set; database passwords and webhook paths are hidden.
    Exits 1, naming the variable, when the configuration is invalid."""
    settings = load_settings()
    rows = effective(settings)
    if as_json:
        echo_json({name: {"value": value, "source": source} for name, value, source in rows})
        return
    print_table(
        [Column("VARIABLE"), Column("VALUE"), Column("SOURCE")],
        ([name, _cell(value), source] for name, value, source in rows),
    )


def effective(settings: Settings) -> list[tuple[str, Any, str]]:
    """(variable, value safe to print, source) for every setting, in declaration order."""
    from_file = dotenv_values(Path(".env")) if Path(".env").is_file() else {}
    rows = []
    for field in Settings.model_fields:
        name = variable(field)
        if name in os.environ:
            source = "environment"
        elif name in from_file:
            source = ".env"
        else:
            source = "default"
        rows.append((name, _safe(field, getattr(settings, field)), source))
    return rows


def _safe(field: str, value: Any) -> Any:
    if isinstance(value, SecretStr):
        return f"{_REDACTED} (set)" if value.get_secret_value() else ""
    if field == "database_url" and value:
        return shown_url(str(value))
    if field in _URLS_WITH_SECRETS and value:
        parts = urlsplit(str(value))
        return f"{parts.scheme}://{parts.netloc}/{_REDACTED}" if parts.path.strip("/") else value
    if isinstance(value, frozenset):
        return sorted(value)
    if isinstance(value, Path):
        return str(value)
    return value


def _cell(value: Any) -> str:
    if value is None:
        return "(unset)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return json.dumps(value)
    if isinstance(value, float):
        return f"{value:g}"
    if value == "":
        return "(empty)"
    return str(value)
