"""The upstream client: the one place that talks to the paid API.

``UpstreamClient`` is the interface; ``HttpUpstreamClient`` is the real implementation over
one shared, pooled ``httpx.AsyncClient``. Tests and the demo point it at the built-in
simulator (``gateway.upstream.simulator``), or hand it an ``httpx.MockTransport`` for answers
the simulator cannot give (malformed bodies, resets).

Failures become gateway errors here, so callers only see ``UpstreamResponse`` or an
``UpstreamError`` subclass (the tree is drawn in ``gateway.errors``):

    connect error, 5xx, 3xx ............ UpstreamError (502): not acted on
    connect or pool timeout ............ UpstreamConnectTimeout (504): never sent
    connection lost after sending,
    a proxy's 502/504 .................. UpstreamOutcomeUnknown (502): perhaps acted on
    timeout after sending, or the whole
    exchange outlasting the sum of the
    phase timeouts (a trickle) ......... UpstreamTimeout (504): perhaps acted on
    upstream 401/403 ................... UpstreamAuthFailed (502): the gateway's own key is
                                         wrong, not the tenant's
    other 4xx .......................... returned, to be passed through unchanged

The real upstream key is added to each request here and nowhere else; it is never logged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import quote

import httpx

from gateway.config import Settings
from gateway.errors import (
    UpstreamAuthFailed,
    UpstreamConnectTimeout,
    UpstreamError,
    UpstreamOutcomeUnknown,
    UpstreamTimeout,
)
from gateway.observability.metrics import Metrics
from gateway.upstream.transport import build_transport

logger = logging.getLogger(__name__)

SUBMIT_PATH = "/v1/videos/generations"
JOBS_PATH = "/v1/jobs/"
POLL_ROUTE = "/v1/jobs/{job_id}"
_PASS_THROUGH_HEADERS = ("content-type", "retry-after")
_PASS_THROUGH_PREFIXES = ("x-ratelimit-",)
_USER_AGENT = "video-billing-gateway/0.1"


@dataclass(frozen=True)
class UpstreamResponse:
    """An upstream answer the gateway passes on: status, exact body bytes, safe headers."""

    status_code: int
    body: bytes
    headers: dict[str, str]
    elapsed_seconds: float


class UpstreamClient(Protocol):
    async def submit(
        self, body: bytes, *, request_id: str, idempotency_key: str | None = None
    ) -> UpstreamResponse: ...

    async def get_job(self, job_id: str, *, request_id: str) -> UpstreamResponse: ...

    async def aclose(self) -> None: ...

    async def probe(self) -> str: ...


class HttpUpstreamClient:
    """``UpstreamClient`` over HTTP.

    >>> client = HttpUpstreamClient.from_settings(settings)
    >>> answer = await client.submit(b'{"model": ...}', request_id="req-1")
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        api_key: str,
        metrics: Metrics | None = None,
        *,
        deadline_seconds: float | None = None,
    ) -> None:
        self._http = http
        self._auth_header = f"Bearer {api_key}"
        self._metrics = metrics
        self._deadline = deadline_seconds

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        metrics: Metrics | None = None,
    ) -> HttpUpstreamClient:
        timeout = httpx.Timeout(
            connect=settings.upstream_connect_timeout_seconds,
            read=settings.upstream_read_timeout_seconds,
            write=settings.upstream_write_timeout_seconds,
            pool=settings.upstream_pool_timeout_seconds,
        )
        if transport is None:
            transport = build_transport(
                settings.upstream_transport, max_connections=settings.upstream_max_connections
            )
        http = _CookielessClient(
            base_url=settings.upstream_url.rstrip("/"),
            timeout=timeout,
            transport=transport,
            follow_redirects=False,
            trust_env=False,
            headers={"User-Agent": _USER_AGENT, "Accept": "application/json"},
        )
        return cls(
            http,
            settings.upstream_api_key.get_secret_value(),
            metrics,
            deadline_seconds=settings.upstream_exchange_limit_seconds,
        )

    async def submit(
        self, body: bytes, *, request_id: str, idempotency_key: str | None = None
    ) -> UpstreamResponse:
        """Forward a submit. ``idempotency_key`` (the gateway's job id) lets an upstream that
        honours it answer a re-sent submit with the job it already created."""
        headers = {"Content-Type": "application/json"}
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        return await self._send(
            "POST", SUBMIT_PATH, request_id, content=body, extra_headers=headers, route=SUBMIT_PATH
        )

    async def get_job(self, job_id: str, *, request_id: str) -> UpstreamResponse:
        return await self._send(
            "GET", JOBS_PATH + quote(job_id, safe=""), request_id, route=POLL_ROUTE
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def probe(self) -> str:
        """``reachable`` if the upstream answers HTTP at all (any status), else why not.
        Sends no key and costs nothing upstream."""
        try:
            await self._http.get("/", timeout=2.0)
        except httpx.TimeoutException:
            return "unreachable: timeout"
        except httpx.HTTPError as exc:
            return f"unreachable: {type(exc).__name__}"
        return "reachable"

    async def _send(
        self,
        method: str,
        path: str,
        request_id: str,
        *,
        content: bytes | None = None,
        extra_headers: dict[str, str] | None = None,
        route: str,
    ) -> UpstreamResponse:
        headers = {"Authorization": self._auth_header, "X-Request-ID": request_id}
        if extra_headers:
            headers.update(extra_headers)
        started = time.perf_counter()
        try:
            # httpx's timeouts bound each phase (and each read); this bounds the whole call,
            # which the reconciler relies on before re-sending or releasing a submit.
            async with asyncio.timeout(self._deadline):
                response = await self._http.request(method, path, content=content, headers=headers)
        except (httpx.HTTPError, TimeoutError) as exc:
            logger.warning("upstream %s %s failed: %s", method, path, type(exc).__name__)
            kind, error = _transport_failure(exc)
            self._error(kind)
            raise error from None
        elapsed = time.perf_counter() - started
        if self._metrics is not None:
            self._metrics.upstream_duration.labels(route).observe(elapsed)
        status = response.status_code
        if status == 429:
            self._error("rate_limited")
        refusal = _status_failure(status)
        if refusal is not None:
            kind, error = refusal
            self._error(kind)
            if kind == "auth":
                logger.error(
                    "upstream refused the gateway's own credentials (HTTP %s); check "
                    "GATEWAY_UPSTREAM_API_KEY",
                    status,
                )
            else:
                logger.warning("upstream %s %s answered HTTP %s", method, path, status)
            raise error
        return UpstreamResponse(
            status_code=status,
            body=response.content,
            headers=_pass_through_headers(response.headers),
            elapsed_seconds=elapsed,
        )

    def _error(self, kind: str) -> None:
        if self._metrics is not None:
            self._metrics.upstream_errors.labels(kind).inc()


def _transport_failure(exc: BaseException) -> tuple[str, UpstreamError]:
    """What a failed exchange means: the metric's kind, and the error (its class says whether
    the upstream may have acted on the request)."""
    if isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout):
        # Timed out before the request left: the upstream cannot have acted on it.
        return "timeout", UpstreamConnectTimeout("the upstream could not be reached in time")
    if isinstance(exc, httpx.TimeoutException | TimeoutError):
        return "timeout", UpstreamTimeout("the upstream did not answer in time")
    if isinstance(exc, httpx.ConnectError | httpx.UnsupportedProtocol | httpx.LocalProtocolError):
        return "connect", UpstreamError("the upstream could not be reached")  # never sent
    return "connection_lost", UpstreamOutcomeUnknown(
        "the connection to the upstream was lost before it answered"
    )


def _status_failure(status: int) -> tuple[str, UpstreamError] | None:
    """An answer that is a failure of the gateway's, not the tenant's, else None."""
    if status in (401, 403):
        return "auth", UpstreamAuthFailed("the gateway is not authorised by the upstream")
    if status >= 500 or status < 200 or 300 <= status < 400:
        message = f"the upstream answered HTTP {status}"
        if status in (502, 504):
            # From a proxy in front of the upstream: the request may have gone through.
            return "server_error", UpstreamOutcomeUnknown(message)
        return "server_error", UpstreamError(message)  # the upstream's own refusal
    return None


class _NoCookies(httpx.Cookies):
    def extract_cookies(self, response: httpx.Response) -> None:
        return None


class _CookielessClient(httpx.AsyncClient):
    """An ``httpx.AsyncClient`` that never keeps a cookie. It is shared by every team's
    requests: a cookie the upstream set on one answer must not ride along on another team's
    call. (It also spares each answer httpx's cookie-jar bookkeeping, ~15 µs of CPU.)"""

    @property
    def cookies(self) -> httpx.Cookies:
        return _NO_COOKIES

    @cookies.setter
    def cookies(self, cookies: object) -> None:
        if cookies:
            raise ValueError("the upstream client keeps no cookies")


_NO_COOKIES = _NoCookies()


def _pass_through_headers(headers: httpx.Headers) -> dict[str, str]:
    return {
        name: value
        for name, value in headers.items()
        if name in _PASS_THROUGH_HEADERS or name.startswith(_PASS_THROUGH_PREFIXES)
    }
