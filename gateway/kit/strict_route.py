"""A FastAPI route class whose JSON bodies are parsed strictly (``gateway.kit.strictjson``):
duplicate keys and NaN/Infinity are refused with the documented 400, and non-integral numbers
arrive as ``Decimal`` so money never passes through a float."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute

from gateway.errors import InvalidRequest
from gateway.kit.strictjson import StrictJSONError, loads_strict


class _StrictJSONRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            try:
                self._json = loads_strict(await self.body())
            except StrictJSONError as exc:
                raise InvalidRequest(
                    f"request body is not valid JSON: {exc}", code="invalid_json"
                ) from None
        return self._json


class StrictJSONRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict_handler(request: Request) -> Response:
            strict = _StrictJSONRequest(request.scope, request.receive)
            if await strict.body():
                # Parsed here, before FastAPI's own parsing, which would turn our precise 400
                # into a generic one. FastAPI then reuses the parsed value.
                await strict.json()
            return await handler(strict)

        return strict_handler
