"""The HTTP/1.1 protocol the gateway serves with: uvicorn's httptools protocol, with bounds.

uvicorn bounds nothing about a client that is slow on purpose: a connection that sends its
headers a byte at a time (slowloris), or its body at a trickle, stays open for ever, and a few
hundred of them use up the process's file descriptors. This protocol adds, per connection:

- a header deadline (``GATEWAY_HTTP_HEADER_TIMEOUT_SECONDS``): from the connection opening,
  or from the first byte of the next request on a kept-alive one, to the end of its headers;
- a body deadline (``GATEWAY_HTTP_BODY_TIMEOUT_SECONDS``): from the end of the headers to the
  end of the body;
- a cap on open connections per process (``GATEWAY_HTTP_MAX_CONNECTIONS``): the next one is
  answered 503 at once and closed.

A deadline missed is answered 408 ``request_timeout`` and the connection closed (or just
closed, if the application had already answered). Idle time between kept-alive requests is
uvicorn's keep-alive timeout. Refusals made here use the documented JSON error shape, as does
a request the HTTP parser cannot read (uvicorn answers that one in plain text): 400
``invalid_http_request``.

The limits come from the application's lifespan state (``HTTP_LIMITS_STATE``), so
``Settings`` stay the one source of configuration, in every worker process.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.errors import GatewayError, InvalidRequest, RequestTimeout, ServiceUnavailable

logger = logging.getLogger(__name__)

HTTP_LIMITS_STATE = "gateway.http_limits"
TIMED_OUT_STATE = "http_timed_out"
"""Set in the request's scope state when its body deadline passed (the access log's 408)."""
PROTOCOL_PATH = "gateway.kit.http_protocol:GatewayHttpProtocol"


@dataclass(frozen=True)
class HttpLimits:
    header_timeout_seconds: float = 10.0
    body_timeout_seconds: float = 60.0
    max_connections: int = 1000


_REASONS = {400: b"Bad Request", 408: b"Request Timeout", 503: b"Service Unavailable"}


def _error_bytes(error: GatewayError) -> bytes:
    body = json.dumps(error.to_body()).encode()
    head = (
        b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
        b"connection: close\r\n\r\n" % (error.status_code, _REASONS[error.status_code], len(body))
    )
    return head + body


class GatewayHttpProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        limits = self.app_state.get(HTTP_LIMITS_STATE)
        self.limits = limits if isinstance(limits, HttpLimits) else HttpLimits()
        self._deadline: asyncio.TimerHandle | None = None
        self._headers_done = False

    # Connection lifetime.
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            logger.warning(
                "refused a connection: %d open, the limit is %d",
                len(self.connections) - 1,
                self.limits.max_connections,
            )
            self._refuse(
                ServiceUnavailable(
                    "the gateway has too many open connections", code="too_many_connections"
                )
            )
            return
        self._arm(self.limits.header_timeout_seconds, self._headers_late)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        self._disarm()
        self._refuse(
            InvalidRequest("the request is not valid HTTP/1.1", code="invalid_http_request")
        )

    # Parser callbacks.
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._headers_done = False
        if self._deadline is None:  # the next request on a kept-alive connection
            self._arm(self.limits.header_timeout_seconds, self._headers_late)

    def on_headers_complete(self) -> None:
        self._headers_done = True
        self._disarm()
        super().on_headers_complete()
        self._arm(self.limits.body_timeout_seconds, self._body_late)

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    # Deadlines.
    def _arm(self, seconds: float, callback: Any) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, callback)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _headers_late(self) -> None:
        self._deadline = None
        if self.transport.is_closing() or self._headers_done:
            return
        logger.info("closed a connection whose request headers did not arrive in time")
        self._refuse(RequestTimeout("the request headers did not arrive in time"))

    def _body_late(self) -> None:
        self._deadline = None
        cycle = self.cycle
        if self.transport.is_closing() or cycle is None or not cycle.more_body:
            return
        logger.info("closed a connection whose request body did not arrive in time")
        self.scope["state"][TIMED_OUT_STATE] = True
        answered = cycle.response_started
        cycle.disconnected = True  # the application's reads end, its writes are dropped
        cycle.message_event.set()
        if answered:
            self.transport.close()
        else:
            self._refuse(RequestTimeout("the request body did not arrive in time"))

    def _refuse(self, error: GatewayError) -> None:
        if not self.transport.is_closing():
            self.transport.write(_error_bytes(error))
            self.transport.close()
