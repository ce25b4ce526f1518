"""The portal's HTTP plumbing: its cookies, who is signed in (``ViewerDep``), CSRF checks,
the security headers of every portal response, rendering a template, and the route class
that turns a refusal into an HTML page (or a redirect to the sign-in form).

Cookies (``PRODUCT.md`` §11): ``gw_session`` carries the session's token; ``gw_login_csrf``
the sign-in form's double-submit CSRF token. Both ``HttpOnly``, ``SameSite=Strict``,
``Path=/portal``, ``Secure`` unless ``GATEWAY_ENVIRONMENT=development``, and session cookies
(gone when the browser closes; the server ends the session anyway).
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import Depends, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.routing import APIRoute
from jinja2 import Environment, PackageLoader, PrefixLoader, StrictUndefined
from starlette.datastructures import MutableHeaders
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.config import Settings
from gateway.core.usd import format_usd
from gateway.errors import GatewayError, PermissionDenied
from gateway.reports.html import dollars
from gateway.runtime import Runtime
from gateway.services.portal import PortalSessions, Viewer
from gateway.tenancy.models import Team
from gateway.web.deps import RuntimeDep

logger = logging.getLogger(__name__)

PREFIX = "/portal"
SESSION_COOKIE = "gw_session"
LOGIN_CSRF_COOKIE = "gw_login_csrf"
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}


class PortalSecurityHeaders:
    """Adds ``SECURITY_HEADERS`` to every response under ``/portal`` (pages, redirects,
    refusals, static files and the framework's own 404s alike)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._headers = [(k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "") if scope["type"] == "http" else ""
        if not (path == PREFIX or path.startswith(PREFIX + "/")):
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers[name] = value
            await send(message)

        await self.app(scope, receive, with_headers)


def static_files() -> StaticFiles:
    """The portal's stylesheet, from the package (it ships in the wheel)."""
    return StaticFiles(packages=[("gateway.portal", "static")])


# --------------------------------------------------------------------------- cookies


def set_portal_cookie(response: Response, name: str, value: str, settings: Settings) -> None:
    """A session cookie with the portal's flags (written as ``SameSite=Strict`` exactly)."""
    response.headers.append("set-cookie", _cookie(name, value, settings))


def clear_portal_cookie(response: Response, name: str, settings: Settings) -> None:
    response.headers.append(
        "set-cookie",
        _cookie(name, "", settings) + "; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT",
    )


def _cookie(name: str, value: str, settings: Settings) -> str:
    """``value`` is a token of URL-safe characters (or empty): nothing to quote."""
    secure = "; Secure" if settings.environment != "development" else ""
    return f"{name}={value}; Path={PREFIX}; HttpOnly; SameSite=Strict{secure}"


def tokens_match(given: str | None, expected: str | None) -> bool:
    """A CSRF token check, in constant time; a missing token on either side never matches."""
    if not given or not expected:
        return False
    return hmac.compare_digest(given.encode(), expected.encode())


def require_csrf(viewer: Viewer, token: str | None) -> None:
    """A signed-in form's token must be its session's: 403 (and nothing changed) otherwise."""
    if not tokens_match(token, viewer.csrf_token):
        raise PermissionDenied(
            "the form's CSRF token is missing or wrong: reload the page and try again",
            code="csrf_token_invalid",
        )


# --------------------------------------------------------------------------- who


class SignInRequired(Exception):
    """No valid session: the route class answers with a redirect to the sign-in form."""


def sessions_of(runtime: Runtime) -> PortalSessions:
    return PortalSessions(runtime.sessionmaker, runtime.settings, runtime.pepper)


def admin_allowed_here(request: Request, settings: Settings) -> bool:
    """With ``GATEWAY_ADMIN_PORT`` the admin's portal is on that port only (the tenant port
    must not accept the admin's credentials, nor honour an admin session's cookie, which a
    browser sends to every port of the host); without it, on the one port."""
    if settings.admin_port is None:
        return True
    server = request.scope.get("server")
    return server is not None and server[1] == settings.admin_port


async def current_viewer(request: Request, runtime: RuntimeDep) -> Viewer:
    viewer = await sessions_of(runtime).viewer(request.cookies.get(SESSION_COOKIE))
    if viewer is None or (viewer.is_admin and not admin_allowed_here(request, runtime.settings)):
        raise SignInRequired
    request.state.portal_viewer = viewer
    request.state.actor = viewer.actor().name  # the access log's, never a secret
    if viewer.team is not None:
        request.state.team = viewer.team.name
    return viewer


ViewerDep = Annotated[Viewer, Depends(current_viewer)]


# --------------------------------------------------------------------------- rendering


def _moment(value: datetime | None, zone: bool = True) -> str:
    """A UTC moment; ``zone=False`` leaves out " UTC" (for columns whose heading says it)."""
    if value is None:
        return ""
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S" + (" UTC" if zone else ""))


TEMPLATES = Environment(
    loader=PrefixLoader(
        {
            "portal": PackageLoader("gateway.portal", "templates"),
            "reports": PackageLoader("gateway.reports", "templates"),  # the SVG chart macros
        }
    ),
    autoescape=True,
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    auto_reload=False,
)
TEMPLATES.filters.update(
    dollars=dollars,
    exact_usd=format_usd,
    moment=_moment,
    thousands="{:,}".format,
)


def render(
    request: Request, template: str, *, status_code: int = 200, **context: Any
) -> HTMLResponse:
    """``template`` with the viewer, and ``tq``: the query string that keeps an admin's pages
    on the team in view (empty for a key's session: it has one team)."""
    viewer: Viewer | None = getattr(request.state, "portal_viewer", None)
    team: Team | None = context.get("team")
    shown = viewer is not None and viewer.is_admin and team is not None
    context.setdefault("teams", [])
    context.setdefault("team", None)
    page = TEMPLATES.get_template(f"portal/{template}").render(
        viewer=viewer,
        request_path=request.url.path,
        tq=f"?{urlencode({'team': team.name})}" if shown and team is not None else "",
        **context,
    )
    return HTMLResponse(page, status_code=status_code)


_TITLES = {400: "Bad request", 401: "Not signed in", 403: "Not allowed", 404: "Not found"}


def error_page(request: Request, error: GatewayError) -> HTMLResponse:
    status = error.status_code
    if status >= 500:
        logger.exception("portal page failed", exc_info=error)
        message = "Something went wrong on our side. Please try again."
    else:
        message = error.message
    return render(
        request,
        "error.html.j2",
        status_code=status,
        title=_TITLES.get(status, "Request refused"),
        message=message,
    )


class PortalRoute(APIRoute):
    """Every portal route: no session → 303 to the sign-in form; a refusal (403, 404, 400) →
    an HTML page with its status. The request's transaction has been rolled back by then."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except SignInRequired:
                return RedirectResponse(f"{PREFIX}/login", status_code=303)
            except GatewayError as error:
                return error_page(request, error)

        return route
