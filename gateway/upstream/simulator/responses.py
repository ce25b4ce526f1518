"""JSON response helpers and the upstream's error envelope.

Bodies are rendered once with the compact separators the real API uses; error bodies always
carry ``error.type`` and ``error.code`` so callers can branch on them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from starlette.responses import Response

JSON_MEDIA_TYPE = "application/json"


def render_json(payload: Any) -> bytes:
    """Compact UTF-8 JSON; refuses NaN/Infinity so a bug cannot emit invalid JSON."""
    return json.dumps(payload, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


def json_response(
    payload: Any, status_code: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    """A JSON response with ``content-type: application/json``."""
    return json_bytes_response(render_json(payload), status_code, headers)


def json_bytes_response(
    body: bytes, status_code: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    """A JSON response from an already-rendered body (terminal job bodies are cached)."""
    return Response(body, status_code=status_code, headers=headers, media_type=JSON_MEDIA_TYPE)


def error_response(
    status_code: int,
    error_type: str,
    code: str,
    message: str,
    *,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> Response:
    """The upstream error envelope ``{"error": {"type", "code", "message", ...}}``."""
    error: dict[str, Any] = {"type": error_type, "code": code, **extra, "message": message}
    return json_response({"error": error}, status_code, headers)
