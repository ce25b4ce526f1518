"""``create_app(settings)``: wiring only. Routes, services and storage live in their packages."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI

from gateway.admin import endpoints as admin
from gateway.admin import reports as finance
from gateway.admin import webhooks as admin_webhooks
from gateway.catalog.spec import load_catalog
from gateway.config import Settings
from gateway.db.session import transaction
from gateway.kit.drain import install_drain_on_sigterm
from gateway.kit.heap import freeze_startup_heap
from gateway.kit.http_protocol import HTTP_LIMITS_STATE, HttpLimits
from gateway.kit.periodic import run_periodically
from gateway.ledger.rates import register_catalog_rate_cards
from gateway.observability.metrics import Metrics
from gateway.observability.requests import RequestContextMiddleware
from gateway.portal import routes as portal
from gateway.portal.web import PortalSecurityHeaders, static_files
from gateway.proxy import endpoints as proxy
from gateway.runtime import Runtime, open_runtime
from gateway.services.background import (
    deliver_alerts,
    deliver_webhooks,
    reconcile_and_count,
    refresh_ledger_gauges,
)
from gateway.services.outbox import RETRY_SECONDS as OUTBOX_RETRY_SECONDS
from gateway.web import probes as health
from gateway.web.docs import install_docs
from gateway.web.handlers import install_error_handlers
from gateway.web.listeners import SplitListeners
from gateway.web.openapi import install_openapi, operation_id

logger = logging.getLogger(__name__)


def create_app(
    settings: Settings | None = None,
    *,
    upstream_transport: httpx.AsyncBaseTransport | None = None,
    own_process: bool = False,
) -> FastAPI:
    """Build the gateway. ``upstream_transport`` lets tests inject an ``httpx.MockTransport``;
    ``own_process``: the process serves nothing else (``gateway serve``), so its garbage
    collector is tuned for it once startup is done (``gateway.kit.heap``)."""
    settings = settings or Settings()
    catalog = load_catalog(settings.catalog_path)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        async with open_runtime(
            settings, catalog=catalog, upstream_transport=upstream_transport
        ) as runtime:
            app.state.runtime = runtime
            if own_process:
                install_drain_on_sigterm(
                    asyncio.get_running_loop(), settings.shutdown_drain_seconds
                )
                freeze_startup_heap()
            async with _background_work(app, runtime):
                # Read by the server's HTTP protocol for every connection it accepts.
                yield {HTTP_LIMITS_STATE: http_limits(settings)}

    app = FastAPI(
        title="Video billing gateway",
        version="0.1.0",
        description="Drop-in, billing-aware gateway in front of the grok-imagine-video API.",
        lifespan=lifespan,
        # A drop-in API answers every path itself: no 307 to another path (an id that
        # decodes to "/" would otherwise redirect a poll to "/v1/jobs/").
        redirect_slashes=False,
        # The framework's pages load Swagger UI from a CDN: ours are served offline.
        docs_url=None,
        redoc_url=None,
        generate_unique_id_function=operation_id,
    )
    install_error_handlers(app)
    app.include_router(proxy.tenant_router(catalog))
    app.include_router(admin.router)
    app.include_router(admin_webhooks.router)
    app.include_router(finance.router)
    app.include_router(health.router)
    app.include_router(portal.router)
    app.mount("/portal/static", static_files(), name="portal-static")
    app.add_middleware(PortalSecurityHeaders)
    install_docs(app)
    install_openapi(app, operator_routes_elsewhere=settings.admin_port is not None)
    if settings.admin_port is not None:
        app.add_middleware(SplitListeners, admin_port=settings.admin_port)
    app.add_middleware(
        RequestContextMiddleware,
        metrics=lambda: _metrics_of(app),
        max_header_bytes=settings.max_header_bytes,
    )
    return app


def _metrics_of(app: FastAPI) -> Metrics | None:
    """The running process's metrics, once its lifespan has built the runtime."""
    runtime: Runtime | None = getattr(app.state, "runtime", None)
    return runtime.metrics if runtime is not None else None


@asynccontextmanager
async def _background_work(app: FastAPI, runtime: Runtime) -> AsyncIterator[None]:
    """Each replica refreshes its ledger gauges, runs a reconciler, delivers team webhooks and
    budget alerts; on shutdown each loop finishes the pass in progress (all of them are
    transactional)."""
    settings = runtime.settings
    if not settings.upstream_api_key.get_secret_value():
        logger.warning("GATEWAY_UPSTREAM_API_KEY is empty: the upstream will refuse calls")
    await _register_rate_cards(runtime)
    # Answers a previous process kept in the outbox are recorded before the reconciler runs.
    await _flush_outbox(runtime)
    stop = asyncio.Event()
    loops = [
        run_periodically(
            "outbox", OUTBOX_RETRY_SECONDS, lambda: _flush_outbox(runtime, quiet=True), stop
        ),
        run_periodically(
            "ledger gauges",
            settings.metrics_refresh_interval_seconds,
            lambda: _observed(
                runtime,
                refresh_ledger_gauges(
                    runtime.sessionmaker, runtime.metrics, settings.default_budget_policy
                ),
            ),
            stop,
        ),
    ]
    if settings.reconciler_enabled:
        reconciler = runtime.reconciler()
        app.state.reconciler = reconciler
        loops.append(
            run_periodically(
                "reconciler",
                settings.reconciler_interval_seconds,
                lambda: _observed(runtime, reconcile_and_count(reconciler, runtime.metrics)),
                stop,
            )
        )
    loops.append(
        run_periodically(
            "team webhooks",
            settings.webhook_delivery_interval_seconds,
            lambda: _observed(runtime, deliver_webhooks(runtime.webhooks, runtime.metrics)),
            stop,
        )
    )
    if settings.alert_webhook_url:
        loops.append(
            run_periodically(
                "budget alerts",
                settings.alert_delivery_interval_seconds,
                lambda: deliver_alerts(runtime.alerts, runtime.metrics),
                stop,
            )
        )
    tasks = [asyncio.create_task(loop) for loop in loops]
    try:
        yield
    finally:
        stop.set()
        _, pending = await asyncio.wait(tasks, timeout=10)
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await _flush_outbox(runtime)  # last chance; what is left stays on disk for the next


async def _observed(runtime: Runtime, work: Awaitable[None]) -> None:
    """Run a background pass, telling the database's health about any outage it met."""
    try:
        await work
    except Exception as exc:
        runtime.db_health.observe(exc)
        raise


async def _flush_outbox(runtime: Runtime, *, quiet: bool = False) -> None:
    if not runtime.outbox.pending:
        return
    try:
        await runtime.outbox.flush()
    except Exception:
        if not quiet:
            logger.exception("could not record the outbox's answers; retrying in the background")


async def _register_rate_cards(runtime: Runtime) -> None:
    """Each catalog model's own rate card becomes a version in the database if it is not one
    yet (a new model is a data change). Failure is logged: readiness reports the database."""
    try:
        async with transaction(runtime.sessionmaker) as session:
            await register_catalog_rate_cards(session, runtime.catalog)
    except Exception:
        logger.exception("could not register the catalog's rate cards at startup")


def http_limits(settings: Settings) -> HttpLimits:
    return HttpLimits(
        header_timeout_seconds=settings.http_header_timeout_seconds,
        body_timeout_seconds=settings.http_body_timeout_seconds,
        max_connections=settings.http_max_connections,
    )


def create_app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory`` (``gateway serve`` with several workers)."""
    from gateway.observability.logging import configure_logging

    settings = Settings()
    configure_logging(settings.log_format, settings.log_level, settings.secrets())
    return create_app(settings, own_process=True)
