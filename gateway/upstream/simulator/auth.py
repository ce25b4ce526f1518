"""API-key check for the upstream routes (``/_simulator/*`` is deliberately unauthenticated).

Like the real upstream, the key may come as ``Authorization: Bearer <key>`` or ``x-api-key``.
"""

from __future__ import annotations

import hmac

from starlette.datastructures import Headers
from starlette.responses import Response

from .responses import error_response


def presented_key(headers: Headers) -> str:
    """The key the caller sent ("" if none): the bearer token first, else ``x-api-key``."""
    scheme, _, token = headers.get("authorization", "").strip().partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return headers.get("x-api-key", "").strip()


def check_key(headers: Headers, expected: str | None) -> Response | None:
    """A 401 response when the key is missing or wrong, else ``None``.

    ``expected`` of ``None`` accepts any non-empty key. The comparison is constant-time on
    bytes, because ``compare_digest`` refuses non-ASCII ``str`` and header values are latin-1.
    """
    key = presented_key(headers)
    if not key:
        return _unauthorized("missing_api_key", "no API key: send Authorization: Bearer <key>")
    if expected is not None and not hmac.compare_digest(
        key.encode("utf-8"), expected.encode("utf-8")
    ):
        return _unauthorized("invalid_api_key", "the API key is not valid")
    return None


def _unauthorized(code: str, message: str) -> Response:
    return error_response(
        401, "authentication_error", code, message, headers={"WWW-Authenticate": "Bearer"}
    )
