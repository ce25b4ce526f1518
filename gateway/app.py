"""``create_app(settings)``: wiring only. Routes, services and storage live in their packages."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI

from gateway.catalog.spec import load_catalog
from gateway.config import Settings
from gateway.db.engine import create_engine, create_sessionmaker
from gateway.kit.http import install_error_handlers
from gateway.observability import health
from gateway.observability.requests import RequestContextMiddleware
from gateway.proxy import endpoints as proxy
from gateway.runtime import Runtime
from gateway.upstream.client import HttpUpstreamClient

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
        engine = create_engine(
            settings.database_url,
            pool_size=settings.database_pool_size,
            max_overflow=settings.database_max_overflow,
        )
        upstream = HttpUpstreamClient.from_settings(settings, transport=upstream_transport)
        app.state.runtime = Runtime(
            settings=settings,
            catalog=catalog,
            engine=engine,
            sessionmaker=create_sessionmaker(engine),
            upstream=upstream,
            pepper=settings.key_pepper.get_secret_value(),
        )
        if not settings.upstream_api_key.get_secret_value():
            logger.warning("GATEWAY_UPSTREAM_API_KEY is empty: the upstream will refuse calls")
        try:
            yield
        finally:
            await upstream.aclose()
            await engine.dispose()

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


def create_app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory`` (``gateway serve`` with several workers)."""
    from gateway.observability.logging import configure_logging

    settings = Settings()
    configure_logging(settings.log_format, settings.log_level, settings.secrets())
    return create_app(settings)
