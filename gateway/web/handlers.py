"""One error format for every failure: the exception handlers the app installs."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway.db.errors import is_database_unavailable
from gateway.errors import (
    FrameworkRefusal,
    GatewayError,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    ServiceUnavailable,
)
from gateway.kit.http import error_response

logger = logging.getLogger(__name__)


def install_error_handlers(app: FastAPI) -> None:
    """Render every failure in the one documented error format."""

    async def on_gateway_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, GatewayError)
        return error_response(exc)

    async def on_http_exception(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 404:
            return error_response(NotFound("no such route", code="route_not_found"))
        if exc.status_code == 405:
            error = MethodNotAllowed("method not allowed on this route")
            error.headers.update(exc.headers or {})
            return error_response(error)
        return error_response(FrameworkRefusal(str(exc.detail), exc.status_code))

    async def on_validation_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0] if exc.errors() else {}
        location = [str(part) for part in first.get("loc", ()) if part not in ("body", "query")]
        return error_response(
            InvalidRequest(
                str(first.get("msg", "invalid request")),
                code="invalid_request",
                param=".".join(location) or None,
            )
        )

    async def on_database_error(request: Request, exc: Exception) -> JSONResponse:
        if is_database_unavailable(exc):
            runtime = getattr(request.app.state, "runtime", None)
            if runtime is not None:
                runtime.db_health.observe(exc)
            logger.error("database unavailable: %s", type(exc).__name__)
            return error_response(
                ServiceUnavailable(
                    "the gateway's ledger is unavailable; the request was not forwarded",
                    code="ledger_unavailable",
                    headers={"Retry-After": "1"},
                )
            )
        raise exc

    app.add_exception_handler(GatewayError, on_gateway_error)
    app.add_exception_handler(StarletteHTTPException, on_http_exception)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(SQLAlchemyError, on_database_error)
    app.add_exception_handler(OSError, on_database_error)
