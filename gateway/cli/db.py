"""``gateway db upgrade|current|check``: the database schema (Alembic migrations)."""

from __future__ import annotations

import sys

import click

from gateway.cli._common import OPERATIONAL_ERROR, database, echo_json, load_settings, run
from gateway.cli._common import schema_problem as describe_schema
from gateway.db.migrations import current_revisions, head_revisions, upgrade_to_head


@click.group()
def db() -> None:
    """Database schema (Alembic migrations)."""


@db.command()
@click.option("--json", "as_json", is_flag=True, help='Print {"revisions", "at_head"} as JSON.')
def upgrade(as_json: bool) -> None:
    """Apply every pending migration to GATEWAY_DATABASE_URL (an SQLite file is created)."""
    settings = load_settings()

    async def _upgrade() -> frozenset[str]:
        async with database(settings, require_schema=False, create=True) as engine:
            await upgrade_to_head(engine)
            return await current_revisions(engine)

    revisions = run(_upgrade())
    if as_json:
        echo_json({"revisions": sorted(revisions), "at_head": revisions == head_revisions()})
    else:
        click.echo(f"database is at revision {', '.join(sorted(revisions))} (head)")


def _current() -> frozenset[str]:
    settings = load_settings()

    async def _read() -> frozenset[str]:
        async with database(settings, require_schema=False) as engine:
            return await current_revisions(engine)

    return run(_read())


@db.command()
@click.option("--json", "as_json", is_flag=True, help="Print the state as JSON.")
def current(as_json: bool) -> None:
    """Show the database's revision and whether it is at head."""
    revisions = _current()
    at_head = revisions == head_revisions()
    if as_json:
        echo_json(_state(revisions))
        return
    state = "at head" if at_head else "BEHIND head"
    click.echo(f"current: {', '.join(sorted(revisions)) or '(empty)'} ({state})")


@db.command()
@click.option("--json", "as_json", is_flag=True, help="Print the state as JSON.")
def check(as_json: bool) -> None:
    """Exit 0 when the schema is at this release's head, else 1 saying what to do: fit for an
    init container or a deploy gate. Changes nothing."""
    revisions = _current()
    problem = describe_schema(revisions)
    if as_json:
        echo_json(_state(revisions))
    elif problem is None:
        click.echo(f"schema is current: {', '.join(sorted(revisions))} (head)")
    if problem is not None:
        click.echo(f"error: {problem}", err=True)
        sys.exit(OPERATIONAL_ERROR)


def _state(revisions: frozenset[str]) -> dict[str, object]:
    heads = head_revisions()
    return {
        "revisions": sorted(revisions),
        "heads": sorted(heads),
        "at_head": revisions == heads,
        "problem": describe_schema(revisions),
    }
