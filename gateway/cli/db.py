"""``gateway db upgrade`` / ``gateway db current``."""

from __future__ import annotations

import click

from gateway.cli._common import database, load_settings, run
from gateway.db.migrations import current_revisions, head_revisions, upgrade_to_head


@click.group()
def db() -> None:
    """Database schema (Alembic migrations)."""


@db.command()
def upgrade() -> None:
    """Apply every pending migration to GATEWAY_DATABASE_URL."""
    settings = load_settings()

    async def _upgrade() -> frozenset[str]:
        async with database(settings) as engine:
            await upgrade_to_head(engine)
            return await current_revisions(engine)

    revisions = run(_upgrade())
    click.echo(f"database is at revision {', '.join(sorted(revisions))} (head)")


@db.command()
def current() -> None:
    """Show the database's revision and whether it is at head."""
    settings = load_settings()

    async def _current() -> frozenset[str]:
        async with database(settings) as engine:
            return await current_revisions(engine)

    revisions = run(_current())
    state = "at head" if revisions == head_revisions() else "BEHIND head"
    click.echo(f"current: {', '.join(sorted(revisions)) or '(empty)'} ({state})")
