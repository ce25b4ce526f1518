"""``create_app(settings)``: wiring only. Routes, services and storage live in their packages."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI

from gateway.catalog.spec import load_catalog
from gateway.config import Settings
from gateway.db.session import transaction
from gateway.kit.http import install_error_handlers
from gateway.ledger.rates import register_catalog_rate_cards
from gateway.ledger.reconciler import Reconciler
from gateway.observability import health
from gateway.observability.requests import RequestContextMiddleware
from gateway.proxy import endpoints as proxy
from gateway.runtime import Runtime, open_runtime

logger = logging.getLogger(__name__)


def create_app(
    settings: Settings | None = None,
    *,
    upstream_transport: httpx.AsyncBaseTransport | None = None,
) -> FastAPI:
    """Build the gateway. ``upstream_transport`` lets tests inject an ``httpx.MockTransport``."""
    settings = settings or Settings()
    catalog = load_catalog(settings.catalog_path)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with open_runtime(
            settings, catalog=catalog, upstream_transport=upstream_transport
        ) as runtime:
            app.state.runtime = runtime
            async with _background_reconciler(app, runtime):
                yield

    app = FastAPI(
        title="Video billing gateway",
        version="0.1.0",
        description="Drop-in, billing-aware gateway in front of the grok-imagine-video API.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.include_router(proxy.router)
    app.include_router(health.router)
    app.add_middleware(RequestContextMiddleware)
    return app


@asynccontextmanager
async def _background_reconciler(app: FastAPI, runtime: Runtime) -> AsyncIterator[None]:
    settings = runtime.settings
    if not settings.upstream_api_key.get_secret_value():
        logger.warning("GATEWAY_UPSTREAM_API_KEY is empty: the upstream will refuse calls")
    await _register_rate_cards(runtime)
    if not settings.reconciler_enabled:
        yield
        return
    stop = asyncio.Event()
    app.state.reconciler = Reconciler(runtime)
    task = asyncio.create_task(app.state.reconciler.run_forever(stop))
    try:
        yield
    finally:
        stop.set()
        # Let the pass in progress finish; its settlements are single transactions.
        try:
            await asyncio.wait_for(task, timeout=10)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def _register_rate_cards(runtime: Runtime) -> None:
    """Each catalog model's own rate card becomes a version in the database if it is not one
    yet (a new model is a data change). Failure is logged: readiness reports the database."""
    try:
        async with transaction(runtime.sessionmaker) as session:
            await register_catalog_rate_cards(session, runtime.catalog)
    except Exception:
        logger.exception("could not register the catalog's rate cards at startup")


def create_app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory`` (``gateway serve`` with several workers)."""
    from gateway.observability.logging import configure_logging

    settings = Settings()
    configure_logging(settings.log_format, settings.log_level, settings.secrets())
    return create_app(settings)
