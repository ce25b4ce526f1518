"""Two listeners, one application: with ``GATEWAY_ADMIN_PORT`` (``gateway serve --admin-port``)
the operator's routes (``/admin/*``, ``/metrics``) answer only on that port, so a load balancer
or a NetworkPolicy can expose the tenant port alone. The tenant port answers them 404, as it
answers any route it does not have; the admin port answers 404 to everything but them, the
health probes (a probe of either port checks the same process) and the portal (where the admin
signs in on the admin port only)."""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.errors import NotFound

_PROBES = frozenset({"/healthz", "/readyz"})
_NO_SUCH_ROUTE = json.dumps(
    NotFound("no such route", code="route_not_found").to_body(), separators=(",", ":")
).encode()


def is_operator_path(path: str) -> bool:
    return path == "/metrics" or path == "/admin" or path.startswith("/admin/")


def _on_both_ports(path: str) -> bool:
    """The probes, and the portal: teams use it on the tenant port, the admin on the admin
    port (the portal itself refuses the admin elsewhere)."""
    return path in _PROBES or path == "/portal" or path.startswith("/portal/")


class SplitListeners:
    """Routes each request by the local port it arrived on (``scope["server"]``)."""

    def __init__(self, app: ASGIApp, admin_port: int) -> None:
        self.app = app
        self.admin_port = admin_port

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            server = scope.get("server")
            on_admin_port = server is not None and server[1] == self.admin_port
            path: str = scope.get("path", "")
            operator = is_operator_path(path)
            if (operator != on_admin_port) and not _on_both_ports(path):
                await _not_found(send)
                return
        await self.app(scope, receive, send)


async def _not_found(send: Send) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 404,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(_NO_SUCH_ROUTE)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": _NO_SUCH_ROUTE})
