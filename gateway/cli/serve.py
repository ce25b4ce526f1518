"""``gateway serve``: run the gateway under uvicorn."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import click
import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors import Multiprocess

from gateway.cli._common import database, fail, load_settings, run, schema_problem
from gateway.config import Settings
from gateway.db.migrations import current_revisions, upgrade_to_head
from gateway.db.urls import is_sqlite
from gateway.kit.http_protocol import PROTOCOL_PATH
from gateway.observability.logging import configure_logging
from gateway.observability.metrics import MULTIPROC_ENV


async def prepare_schema(settings: Settings, *, migrate: bool) -> str | None:
    """Migrate if asked; otherwise a message explaining why serving must not start, or None."""
    remedy = "run `gateway db upgrade` or serve with --migrate"
    async with database(settings, require_schema=False, create=migrate, remedy=remedy) as engine:
        if migrate:
            await upgrade_to_head(engine)
        current = await current_revisions(engine)
    return schema_problem(current, remedy=remedy)


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option(
    "--admin-port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Serve /admin/* and /metrics on this port only (404 on --port). "
    "Default: GATEWAY_ADMIN_PORT, else one port serves all.",
)
@click.option("--workers", default=1, show_default=True, type=click.IntRange(min=1))
@click.option("--migrate", is_flag=True, help="Apply pending migrations before serving.")
def serve(host: str, port: int, admin_port: int | None, workers: int, migrate: bool) -> None:
    """Run the gateway (configuration from GATEWAY_* environment variables)."""
    if admin_port is not None:
        os.environ["GATEWAY_ADMIN_PORT"] = str(admin_port)  # read by every worker's Settings
    settings = load_settings()
    configure_logging(settings.log_format, settings.log_level, settings.secrets())
    if workers > 1 and is_sqlite(settings.database_url or ""):
        fail("SQLite is the embedded single-process database; use Postgres for --workers > 1")
    if settings.admin_port is not None and settings.admin_port == port:
        fail(f"--admin-port must differ from --port (both are {port})")
    problem = run(prepare_schema(settings, migrate=migrate))
    if problem is not None:
        fail(problem)
    config = uvicorn.Config(
        "gateway.app:create_app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_config=None,
        access_log=False,
        server_header=False,
        # What the grace leaves once the drain pause is over, less a few seconds for the
        # application's own shutdown (the outbox flush, the pools).
        timeout_graceful_shutdown=max(
            int(
                settings.shutdown_grace_seconds
                - settings.shutdown_drain_seconds
                - _SHUTDOWN_RESERVE
            ),
            1,
        ),
        http=PROTOCOL_PATH,  # header/body deadlines, connection cap, JSON refusals
    )
    with _metrics_directory(workers):
        _run(config, settings.admin_port)


_SHUTDOWN_RESERVE = 3.0


def _run(config: uvicorn.Config, admin_port: int | None) -> None:
    """``uvicorn.run`` for one or two listening sockets: every worker serves both, and the app
    tells them apart by the local port (``gateway.web.listeners``)."""
    sockets = [config.bind_socket()]
    if admin_port is not None:
        admin = uvicorn.Config(config.app, host=config.host, port=admin_port)
        sockets.append(admin.bind_socket())
    server = uvicorn.Server(config)
    try:
        if config.workers > 1:
            Multiprocess(config, sockets=sockets).run()
        else:
            server.run(sockets=sockets)
    except KeyboardInterrupt:
        pass
    finally:
        for sock in sockets:
            sock.close()
    if config.workers == 1 and not server.started:
        sys.exit(STARTUP_FAILURE)


@contextlib.contextmanager
def _metrics_directory(workers: int) -> Iterator[None]:
    """Several workers share their metrics through files (prometheus-client's multiprocess
    mode). The directory must start empty, or a previous run's counters would be added in."""
    if workers == 1:
        yield
        return
    configured = os.environ.get(MULTIPROC_ENV)
    if configured:
        shared = Path(configured)
        shared.mkdir(parents=True, exist_ok=True)
        for stale in shared.glob("*.db"):
            stale.unlink()
        yield
        return
    with tempfile.TemporaryDirectory(prefix="gateway-metrics-") as directory:
        os.environ[MULTIPROC_ENV] = directory  # inherited by the worker processes
        try:
            yield
        finally:
            os.environ.pop(MULTIPROC_ENV, None)
