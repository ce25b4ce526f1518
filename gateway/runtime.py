"""What a running gateway holds for its lifetime: settings, catalog, database, upstream client.

Built once (the app's lifespan, ``gateway reconcile``, tests) by ``open_runtime`` and handed
to routes as a dependency, instead of module-level globals.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from pathlib import Path

import httpx
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from gateway.catalog.spec import Catalog, load_catalog
from gateway.config import Settings
from gateway.core.clock import utcnow
from gateway.db.direct import DirectStatements
from gateway.db.engine import create_engine, create_sessionmaker
from gateway.db.health import DatabaseHealth
from gateway.db.urls import normalize_database_url
from gateway.observability.metrics import Metrics
from gateway.services.alerts import BudgetAlerts
from gateway.services.outbox import AnswerOutbox, database_id, default_directory
from gateway.services.proxy import ProxyDeps
from gateway.services.reconciler import Reconciler
from gateway.services.webhooks import WebhookDeliverer
from gateway.tenancy.jwt_auth import JwtVerifier
from gateway.upstream.client import HttpUpstreamClient, UpstreamClient


@dataclass(frozen=True)
class Runtime:
    settings: Settings
    catalog: Catalog
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    upstream: UpstreamClient
    pepper: str
    metrics: Metrics
    alerts: BudgetAlerts
    jwt: JwtVerifier
    outbox: AnswerOutbox
    db_health: DatabaseHealth
    webhooks: WebhookDeliverer
    """Team webhooks' deliverer (its own HTTP client: no proxy from the environment, no
    redirects followed)."""

    @cached_property
    def proxy(self) -> ProxyDeps:
        """The tenant routes' collaborators."""
        return ProxyDeps(
            settings=self.settings,
            catalog=self.catalog,
            sessionmaker=self.sessionmaker,
            upstream=self.upstream,
            metrics=self.metrics,
            alerts=self.alerts,
            outbox=self.outbox,
            db_health=self.db_health,
            direct=(
                DirectStatements.for_engine(self.engine, pgbouncer=self.settings.database_pgbouncer)
                if self.settings.database_direct_statements
                else None
            ),
        )

    def reconciler(self, *, clock: Callable[[], datetime] = utcnow) -> Reconciler:
        return Reconciler(
            settings=self.settings,
            sessionmaker=self.sessionmaker,
            upstream=self.upstream,
            metrics=self.metrics,
            db_health=self.db_health,
            clock=clock,
        )


@asynccontextmanager
async def open_runtime(
    settings: Settings,
    *,
    catalog: Catalog | None = None,
    upstream_transport: httpx.AsyncBaseTransport | None = None,
) -> AsyncIterator[Runtime]:
    engine = create_engine(
        settings.require_database_url(),
        pool_size=settings.database_pool_size,
        max_overflow=settings.database_max_overflow,
        pool_timeout=settings.database_pool_timeout_seconds,
        connect_timeout=settings.database_connect_timeout_seconds,
        idle_ping_after=settings.database_idle_ping_seconds,
        pgbouncer=settings.database_pgbouncer,
    )
    metrics = Metrics()
    upstream = HttpUpstreamClient.from_settings(
        settings, transport=upstream_transport, metrics=metrics
    )
    sessionmaker = create_sessionmaker(engine)
    db_health = DatabaseHealth()
    outbox = AnswerOutbox(
        outbox_directory(settings), sessionmaker, metrics=metrics, health=db_health
    )
    outbox.load()
    webhook = (
        httpx.AsyncClient(timeout=httpx.Timeout(5.0), follow_redirects=False, trust_env=False)
        if settings.alert_webhook_url
        else None
    )
    team_webhooks = httpx.AsyncClient(
        timeout=httpx.Timeout(settings.webhook_timeout_seconds),
        follow_redirects=False,
        trust_env=False,
        limits=httpx.Limits(max_connections=settings.webhook_concurrency),
    )
    try:
        yield Runtime(
            settings=settings,
            catalog=catalog or load_catalog(settings.catalog_path),
            engine=engine,
            sessionmaker=sessionmaker,
            upstream=upstream,
            pepper=settings.key_pepper.get_secret_value(),
            metrics=metrics,
            alerts=BudgetAlerts(sessionmaker, settings, webhook),
            jwt=JwtVerifier(settings),
            outbox=outbox,
            db_health=db_health,
            webhooks=WebhookDeliverer(sessionmaker, settings, team_webhooks),
        )
    finally:
        await team_webhooks.aclose()
        if webhook is not None:
            await webhook.aclose()
        await upstream.aclose()
        await engine.dispose()


def outbox_directory(settings: Settings) -> Path:
    """This database's own outbox subdirectory (see ``gateway.services.outbox``)."""
    url = make_url(normalize_database_url(settings.require_database_url()))
    if url.get_backend_name() == "sqlite" and url.database:
        url = url.set(database=str(Path(url.database).resolve()))
    identity = database_id(url.render_as_string(hide_password=True))
    return (settings.outbox_dir or default_directory()) / identity
