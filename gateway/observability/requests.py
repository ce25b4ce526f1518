"""Per-request context: the request id, the access log line, and the last-resort 500.

A pure ASGI middleware (no ``BaseHTTPMiddleware``: it would copy every body). It wraps the
whole application, so even an unexpected exception is answered in the documented error format
with its ``X-Request-ID``, and every request gets exactly one access line.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import GatewayError, HeadersTooLarge, InvalidRequest
from gateway.kit.drain import DRAIN
from gateway.kit.http_protocol import TIMED_OUT_STATE
from gateway.observability.metrics import Metrics

access_logger = logging.getLogger("gateway.access")
logger = logging.getLogger(__name__)

REQUEST_ID_HEADER = "x-request-id"
CLIENT_CLOSED_REQUEST = 499
QUOTA_HEADER = b"x-quota-remaining-usd"
_CONNECTION_CLOSE = (b"connection", b"close")
# Set by authentication (and updated by holds and settlements) for every tenant request.
QUOTA_REMAINING_STATE = "quota_remaining_usd"
_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")
_UNLOGGED_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})

request_id_var: ContextVar[str] = ContextVar("request_id", default="-")


def new_request_id() -> str:
    return uuid.uuid4().hex


def _incoming_request_id(scope: Scope) -> str:
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            candidate: str = value.decode("latin-1")
            if _VALID_REQUEST_ID.fullmatch(candidate):
                return candidate
            break
    return new_request_id()


MetricsSource = Callable[[], Metrics | None]
"""Where the middleware finds the process's metrics (None until startup has built them)."""


class RequestContextMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        metrics: MetricsSource = lambda: None,
        max_header_bytes: int = 32 * 1024,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.max_header_bytes = max_header_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _incoming_request_id(scope)
        token = request_id_var.set(request_id)
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        started = time.perf_counter()
        status = 500
        response_started = False
        header = (REQUEST_ID_HEADER.encode(), request_id.encode())

        async def send_with_request_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
                extra = [header]
                remaining = state.get(QUOTA_REMAINING_STATE)
                if remaining is not None:
                    extra.append((QUOTA_HEADER, str(remaining).encode()))
                if DRAIN.draining:  # reconnect elsewhere (gateway.kit.drain)
                    extra.append(_CONNECTION_CLOSE)
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        try:
            if _has_nul(scope):
                await _send_error(send_with_request_id, _NUL_IN_URL)
                return
            if _header_bytes(scope) > self.max_header_bytes:
                await _send_error(send_with_request_id, _headers_too_large(self.max_header_bytes))
                return
            await self.app(scope, receive, send_with_request_id)
        except ClientDisconnect:
            if state.get(TIMED_OUT_STATE):  # the server answered 408 and closed
                status = 408
            else:
                # The client went away mid-request (nothing to answer); nginx's 499 in the log.
                status = CLIENT_CLOSED_REQUEST
                logger.info(
                    "client disconnected before the request was read",
                    extra={"request_id": request_id},
                )
        except Exception:
            logger.exception("unhandled error", extra={"request_id": request_id})
            if not response_started:
                await _send_internal_error(send_with_request_id)
        finally:
            request_id_var.reset(token)
            if scope.get("path") not in _UNLOGGED_PATHS:
                elapsed = time.perf_counter() - started
                _log_access(scope, state, status, elapsed)
                _count(self.metrics(), scope, state, status, elapsed)


_NUL_IN_URL = InvalidRequest("the URL contains a NUL character", code="invalid_url")


def _header_bytes(scope: Scope) -> int:
    return sum(len(name) + len(value) + 4 for name, value in scope.get("headers", ()))


def _headers_too_large(limit: int) -> GatewayError:
    return HeadersTooLarge(f"request headers exceed {limit} bytes")


def _has_nul(scope: Scope) -> bool:
    """A NUL in the path or query string: no route or parameter has a use for it, and the
    database would refuse it with an error instead of a clean 400."""
    query: bytes = scope.get("query_string", b"")
    return "\x00" in scope.get("path", "") or b"%00" in query or b"\x00" in query


async def _send_internal_error(send: Send) -> None:
    await _send_error(send, GatewayError("internal error"))


async def _send_error(send: Send, error: GatewayError) -> None:
    body = json.dumps(error.to_body()).encode()
    await send(
        {
            "type": "http.response.start",
            "status": error.status_code,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _count(
    metrics: Metrics | None, scope: Scope, state: dict[str, Any], status: int, elapsed: float
) -> None:
    if metrics is None:  # before startup completed
        return
    route = _route_template(scope)
    metrics.requests.labels(
        route, scope.get("method", ""), str(status), state.get("team") or ""
    ).inc()
    metrics.request_duration.labels(route).observe(elapsed)


def _route_template(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"


def _log_access(scope: Scope, state: dict[str, Any], status: int, elapsed: float) -> None:
    if not access_logger.isEnabledFor(logging.INFO):
        return  # before building the line's fields
    access_logger.info(
        "%s %s %s",
        scope.get("method"),
        _route_template(scope),
        status,
        extra={
            "request_id": state.get("request_id"),
            "method": scope.get("method"),
            "route": _route_template(scope),
            "status": status,
            "duration_ms": round(elapsed * 1000, 2),
            "team": state.get("team"),
            "actor": state.get("actor"),
            "job_id": state.get("job_id"),
            "upstream_ms": state.get("upstream_ms"),
            "estimate_usd": state.get("estimate_usd"),
            "captured_usd": state.get("captured_usd"),
        },
    )
