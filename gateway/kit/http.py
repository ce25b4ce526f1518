"""Generic HTTP helpers: the error renderer and the capped body read (nothing of the app)."""

from __future__ import annotations

import logging

from fastapi import Request
from fastapi.responses import JSONResponse

from gateway.errors import (
    GatewayError,
    PayloadTooLarge,
)

logger = logging.getLogger(__name__)


def error_response(error: GatewayError) -> JSONResponse:
    return JSONResponse(error.to_body(), status_code=error.status_code, headers=error.headers)


async def read_body_capped(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) anything over ``limit`` bytes without buffering it."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"request body is larger than the {limit}-byte limit")
