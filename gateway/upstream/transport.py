"""The transport under the upstream ``httpx.AsyncClient``.

We keep httpx's API but not its default transport: on this workload httpx-aiohttp's
``AiohttpTransport`` serves several times the throughput (``benchmarks/proxy_transport.py``).
Its exception mapping has one flaw we correct here: every ``aiohttp.ClientConnectionError``
(connection refused, server disconnected) is raised as ``httpx.ConnectTimeout``, which would
turn "upstream down" (502) into "upstream slow" (504). We re-raise those as the httpx error
they really are; genuine timeouts keep their timeout type. Large bodies (a data-URI image)
are streamed in chunks rather than written in one block.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Literal

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport as _LibraryAiohttpTransport

_LARGE_BODY_BYTES = 1024 * 1024
_CHUNK_BYTES = 256 * 1024


def _corrected(exc: Exception, request: httpx.Request) -> Exception:
    cause = exc.__cause__ if isinstance(exc, httpx.TransportError) else exc
    if isinstance(cause, TimeoutError):  # aiohttp's timeouts subclass TimeoutError
        if isinstance(exc, httpx.TimeoutException):
            return exc
        return httpx.ReadTimeout(str(cause) or "timed out", request=request)
    if isinstance(cause, aiohttp.ClientConnectorError):
        return httpx.ConnectError(str(cause), request=request)
    if isinstance(cause, aiohttp.ServerDisconnectedError):
        return httpx.RemoteProtocolError(str(cause) or "server disconnected", request=request)
    if isinstance(cause, aiohttp.ClientError):
        return httpx.ReadError(str(cause) or type(cause).__name__, request=request)
    return exc


class _CorrectedStream(httpx.AsyncByteStream):
    def __init__(self, inner: httpx.AsyncByteStream, request: httpx.Request) -> None:
        self._inner = inner
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._inner:
                yield chunk
        except (httpx.TransportError, TimeoutError, aiohttp.ClientError) as exc:
            raise _corrected(exc, self._request) from exc

    async def aclose(self) -> None:
        await self._inner.aclose()


class _ChunkedBody(httpx.AsyncByteStream):
    def __init__(self, content: bytes) -> None:
        self._content = memoryview(content)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for start in range(0, len(self._content), _CHUNK_BYTES):
            yield bytes(self._content[start : start + _CHUNK_BYTES])


def _stream_large_body(request: httpx.Request) -> httpx.Request:
    try:
        content = request.content
    except httpx.RequestNotRead:
        return request
    if len(content) <= _LARGE_BODY_BYTES:
        return request
    # Content-Length stays in the headers, so the body is still sent with a length.
    return httpx.Request(
        request.method,
        request.url,
        headers=request.headers,
        stream=_ChunkedBody(content),
        extensions=request.extensions,
    )


class AiohttpTransport(_LibraryAiohttpTransport):
    """``httpx_aiohttp.AiohttpTransport`` with connection errors reported as such."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        request = _stream_large_body(request)
        try:
            response = await super().handle_async_request(request)
        except (httpx.TransportError, TimeoutError, aiohttp.ClientError) as exc:
            raise _corrected(exc, request) from exc
        assert isinstance(response.stream, httpx.AsyncByteStream)
        return httpx.Response(
            status_code=response.status_code,
            headers=response.headers,
            stream=_CorrectedStream(response.stream, request),
            request=request,
            extensions=response.extensions,
        )


def build_transport(
    kind: Literal["aiohttp", "httpx"], *, max_connections: int
) -> httpx.AsyncBaseTransport:
    limits = httpx.Limits(
        max_connections=max_connections, max_keepalive_connections=max_connections
    )
    if kind == "aiohttp":
        return AiohttpTransport(limits=limits, trust_env=False)
    return httpx.AsyncHTTPTransport(limits=limits, trust_env=False)
