"""The OpenAPI document: the framework's, completed once per process (never per request).

FastAPI documents what it can see. The tenant routes read their request themselves (a
dependency per request costs more than its work, ``gateway.proxy.endpoints``), so they declare
their own documentation; what this module adds to the whole document:

- one error envelope, ``ErrorEnvelope`` (``{"error": {"type", "code", "param", "message",
  ...details}}``, rendered by ``gateway.web.handlers``), referenced by every error response,
  in place of FastAPI's 422 ``HTTPValidationError``, which the gateway never sends (its
  validation errors are 400s in the envelope);
- the security schemes, so Swagger UI has an Authorize button: a bearer token or ``x-api-key``
  on the tenant routes (as upstream), the admin token on ``/admin/``, nothing on the probes;
- stable operation ids: ``operation_id`` where a route sets one, else the handler's name in
  camelCase (``adminListTeams`` under ``/admin/``);
- with a separate admin listener, the tenant port's document leaves out the routes it does
  not serve (``gateway.web.listeners``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field

from gateway.web.listeners import is_operator_path

TENANT_BEARER = "bearerAuth"
TENANT_API_KEY = "apiKeyHeader"
ADMIN_BEARER = "adminBearer"
TENANT_SECURITY: list[dict[str, list[str]]] = [{TENANT_BEARER: []}, {TENANT_API_KEY: []}]
ADMIN_SECURITY: list[dict[str, list[str]]] = [{ADMIN_BEARER: []}]
SECURITY_SCHEMES: dict[str, dict[str, str]] = {
    TENANT_BEARER: {
        "type": "http",
        "scheme": "bearer",
        "description": "`Authorization: Bearer <token>`: a gateway API key (`gwk_...`) or a "
        "company JWT naming the team.",
    },
    TENANT_API_KEY: {
        "type": "apiKey",
        "in": "header",
        "name": "x-api-key",
        "description": "`x-api-key: <key>`, as upstream accepts it (tenant routes only).",
    },
    ADMIN_BEARER: {
        "type": "http",
        "scheme": "bearer",
        "description": "`Authorization: Bearer <token>` on /admin/: GATEWAY_ADMIN_TOKEN or a "
        "company JWT with the admin role. A tenant key gets 403.",
    },
}
_HEALTH_TAG = "health"
_FRAMEWORK_422 = "#/components/schemas/HTTPValidationError"
_FRAMEWORK_SCHEMAS = ("HTTPValidationError", "ValidationError")
# The admin routes' own model of the same envelope (``gateway.admin.schemas.ErrorBody``): one
# envelope in the document, so a generated client has one error type.
_SAME_ENVELOPE = {"ErrorBody": "ErrorEnvelope"}
_REF = "#/components/schemas/"


class ErrorObject(BaseModel):
    """The ``error`` object. ``type`` and ``code`` are stable (branch on ``code``); ``message``
    is for people. Some codes add figures beside them (see ``QuotaErrorObject``). An upstream
    4xx passed through unchanged has the upstream's own envelope, of the same shape."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(
        description="invalid_request_error, authentication_error, permission_error, "
        "not_found_error, quota_error, api_error or upstream_error",
        examples=["invalid_request_error"],
    )
    code: str = Field(description="The rule broken, or the reason", examples=["out_of_range"])
    param: str | None = Field(
        default=None,
        description="The parameter or header at fault, if there is one",
        examples=["duration"],
    )
    message: str = Field(examples=["duration must be between 1 and 15; got 20"])


class ErrorEnvelope(BaseModel):
    """Every error the gateway itself answers."""

    error: ErrorObject


class QuotaErrorObject(ErrorObject):
    """``quota_exceeded`` carries the period's figures (USD decimal strings);
    ``concurrency_limit`` the counts (JSON numbers)."""

    period: str | None = Field(default=None, examples=["2026-11"])
    budget_usd: str | None = Field(default=None, examples=["3.000000"])
    used_usd: str | None = Field(default=None, description="Captured + held", examples=["2.52"])
    requested_usd: str | None = Field(default=None, examples=["1.680000"])
    jobs_in_flight: int | None = Field(default=None, examples=[4])
    max_concurrent_jobs: int | None = Field(default=None, examples=[4])


class QuotaErrorEnvelope(BaseModel):
    """A 429 of the gateway's own (not the upstream's rate limit, passed through as it is)."""

    error: QuotaErrorObject


def header_doc(description: str, schema: Mapping[str, Any] | None = None) -> dict[str, Any]:
    return {"description": description, "schema": dict(schema or {"type": "string"})}


REQUEST_ID_HEADER = {
    "X-Request-ID": header_doc("Yours if you sent a valid one, else generated; sent upstream")
}


def error_doc(
    description: str,
    *,
    model: type[BaseModel] = ErrorEnvelope,
    headers: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """One documented error response, in the envelope (FastAPI ``responses`` entry)."""
    return {
        "model": model,
        "description": description,
        "headers": {**REQUEST_ID_HEADER, **(headers or {})},
    }


def operation_id(route: APIRoute) -> str:
    """``generate_unique_id_function``: the handler's name in camelCase, ``admin``-prefixed on
    the operator's routes (``list_teams`` → ``adminListTeams``). Stable as long as the handler
    keeps its name; a route that must not depend on that sets ``operation_id``."""
    words = [word for word in route.name.split("_") if word]
    if is_operator_path(route.path_format):
        words = ["admin", *words]
    return words[0].lower() + "".join(word[:1].upper() + word[1:] for word in words[1:])


def install_openapi(app: FastAPI, *, operator_routes_elsewhere: bool) -> None:
    """Complete the app's OpenAPI document the first time it is asked for (FastAPI caches it).
    ``operator_routes_elsewhere``: ``/admin/*`` is served on another port (not documented
    here)."""
    framework_openapi = app.openapi
    completed: dict[str, Any] | None = None

    def openapi() -> dict[str, Any]:
        nonlocal completed
        document = framework_openapi()  # the same object while the routes do not change
        if document is not completed:
            complete(document, operator_routes_elsewhere=operator_routes_elsewhere)
            completed = document
        return document

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented extension point


def complete(document: dict[str, Any], *, operator_routes_elsewhere: bool = False) -> None:
    """What FastAPI cannot know, added to its document in place."""
    paths: dict[str, dict[str, Any]] = document.setdefault("paths", {})
    if operator_routes_elsewhere:
        for path in [p for p in paths if is_operator_path(p)]:
            del paths[path]
    components = document.setdefault("components", {})
    components["securitySchemes"] = dict(SECURITY_SCHEMES)
    document["security"] = [dict(alternative) for alternative in TENANT_SECURITY]
    for path, operations in paths.items():
        for operation in operations.values():
            if is_operator_path(path):
                operation.setdefault("security", [dict(a) for a in ADMIN_SECURITY])
            elif _HEALTH_TAG in operation.get("tags", ()):
                operation["security"] = []  # probes need no credentials
            _replace_framework_422(operation)
    _rename_refs(document, _SAME_ENVELOPE)
    schemas: dict[str, Any] = components.setdefault("schemas", {})
    for name in (*_FRAMEWORK_SCHEMAS, *_SAME_ENVELOPE):
        schemas.pop(name, None)
    _drop_unreferenced(document)


def _replace_framework_422(operation: dict[str, Any]) -> None:
    """FastAPI documents a 422 ``HTTPValidationError`` for every route with parameters; the
    gateway answers those 400 in its envelope (``gateway.web.handlers``)."""
    responses: dict[str, Any] = operation.get("responses", {})
    framework = responses.get("422")
    if framework is None or _FRAMEWORK_422 not in _refs_in(framework):
        return
    del responses["422"]
    responses.setdefault(
        "400",
        {
            "description": "Invalid request: a parameter breaks its rule",
            "content": {"application/json": {"schema": {"$ref": _REF + "ErrorEnvelope"}}},
        },
    )


def _rename_refs(node: Any, renamed: Mapping[str, str]) -> None:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith(_REF) and ref[len(_REF) :] in renamed:
            node["$ref"] = _REF + renamed[ref[len(_REF) :]]
        for value in node.values():
            _rename_refs(value, renamed)
    elif isinstance(node, list):
        for value in node:
            _rename_refs(value, renamed)


def _refs_in(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str):
            yield ref
        for value in node.values():
            yield from _refs_in(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs_in(value)


def _drop_unreferenced(document: dict[str, Any]) -> None:
    """Schemas no path reaches any more (those of routes left out, the framework's own)."""
    schemas: dict[str, Any] = document.get("components", {}).get("schemas", {})
    reached: set[str] = set()
    pending = [ref for ref in _refs_in(document.get("paths", {})) if ref.startswith(_REF)]
    while pending:
        name = pending.pop()[len(_REF) :]
        if name in reached or name not in schemas:
            continue
        reached.add(name)
        pending.extend(ref for ref in _refs_in(schemas[name]) if ref.startswith(_REF))
    for name in [n for n in schemas if n not in reached]:
        del schemas[name]
