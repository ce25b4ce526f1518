"""The portal's routes (``PRODUCT.md`` §11): sign-in and out, and the pages of a team
(overview, jobs, keys, webhooks, reports) and of the admin. HTTP only: each route reads its form or
query, calls a service (``gateway.services.portal*``) in the request's one transaction and
renders a template. Not in the OpenAPI schema (a browser's pages, not the API).

Every form posts a ``csrf_token``: the session's own, or, on the sign-in form (no session
yet), the double-submit cookie ``gw_login_csrf``'s. A key is accepted only from the sign-in
form's body, never from a URL.
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlencode, urlsplit

from fastapi import APIRouter, Form, Request, Response
from fastapi.responses import HTMLResponse, PlainTextResponse, RedirectResponse

from gateway.errors import AuthenticationFailed, InvalidRequest, PermissionDenied
from gateway.portal.web import (
    LOGIN_CSRF_COOKIE,
    PREFIX,
    SESSION_COOKIE,
    PortalRoute,
    ViewerDep,
    admin_allowed_here,
    clear_portal_cookie,
    render,
    require_csrf,
    sessions_of,
    set_portal_cookie,
    tokens_match,
)
from gateway.reports.formats import to_csv
from gateway.services import portal_keys, portal_pages, portal_webhooks
from gateway.services.portal import Viewer
from gateway.services.portal_keys import NewKeyForm
from gateway.tenancy import service as tenancy
from gateway.tenancy.models import Team
from gateway.tenancy.portal_sessions import new_token
from gateway.web.deps import RuntimeDep, UnitOfWorkDep

router = APIRouter(prefix=PREFIX, route_class=PortalRoute, include_in_schema=False)

FormField = Annotated[str, Form()]
FormList = Annotated[list[str], Form()]
SIGN_IN_FAILED = "Sign-in failed: that key or admin token was not accepted."


def _to(path: str, team: Team | None = None, viewer: Viewer | None = None) -> str:
    """A portal URL; the admin's pages keep the team they are looking at."""
    if team is not None and viewer is not None and viewer.is_admin:
        return f"{PREFIX}{path}?{urlencode({'team': team.name})}"
    return f"{PREFIX}{path}"


def _to_month(path: str, month: str, team: Team, viewer: Viewer) -> str:
    query = {"month": month, **({"team": team.name} if viewer.is_admin else {})}
    return f"{PREFIX}{path}?{urlencode(query)}"


async def _teams_for_picker(work: UnitOfWorkDep, viewer: Viewer) -> list[str]:
    if not viewer.is_admin:
        return []
    return [team.name for team in await tenancy.list_teams(work.session)]


# --------------------------------------------------------------------------- sign-in


@router.get("/login", response_class=HTMLResponse)
async def login_form(request: Request, runtime: RuntimeDep) -> Response:
    """The sign-in form. Its query string is ignored: a key in a URL signs nobody in."""
    token = request.cookies.get(LOGIN_CSRF_COOKIE) or new_token()
    response = render(request, "login.html.j2", csrf_token=token, error=None)
    set_portal_cookie(response, LOGIN_CSRF_COOKIE, token, runtime.settings)
    return response


@router.post("/login", response_class=HTMLResponse)
async def login(
    request: Request,
    runtime: RuntimeDep,
    csrf_token: FormField = "",
    api_key: FormField = "",
    admin_token: FormField = "",
) -> Response:
    """Sign in with ``api_key`` or ``admin_token`` (form fields); 303 to the overview with a
    fresh ``gw_session``. A refusal says no more than that (which part was wrong is no
    business of a guesser): 401 with the form again."""
    expected = request.cookies.get(LOGIN_CSRF_COOKIE)
    if not tokens_match(csrf_token, expected) or _from_another_site(request):
        raise PermissionDenied(
            "the sign-in form expired or did not come from this site: reload it and try again",
            code="csrf_token_invalid",
        )
    sessions = sessions_of(runtime)
    api_key, admin_token = api_key.strip(), admin_token.strip()
    try:
        if api_key and not admin_token:
            cookie = await sessions.sign_in_with_key(api_key)
        elif admin_token and not api_key and admin_allowed_here(request, runtime.settings):
            cookie = await sessions.sign_in_with_admin_token(admin_token)
        else:
            raise AuthenticationFailed(SIGN_IN_FAILED)
    except (AuthenticationFailed, PermissionDenied):
        return render(
            request, "login.html.j2", status_code=401, csrf_token=expected, error=SIGN_IN_FAILED
        )
    response = RedirectResponse(f"{PREFIX}/", status_code=303)
    set_portal_cookie(response, SESSION_COOKIE, cookie, runtime.settings)
    clear_portal_cookie(response, LOGIN_CSRF_COOKIE, runtime.settings)
    return response


def _from_another_site(request: Request) -> bool:
    """The browser says the sign-in was posted from another origin: refused, whatever the
    cookie says (a double-submit cookie can be planted from a sibling subdomain)."""
    fetch_site = request.headers.get("sec-fetch-site")
    if fetch_site is not None:  # every current browser sends it
        return fetch_site not in ("same-origin", "none")
    origin = request.headers.get("origin")
    if origin is None or origin == "null":  # "null": the pages' no-referrer policy
        return False
    return urlsplit(origin).netloc != request.headers.get("host", "")


@router.post("/logout")
async def logout(viewer: ViewerDep, runtime: RuntimeDep, csrf_token: FormField = "") -> Response:
    """End the session on the server (its cookie stops working everywhere), then the cookie."""
    require_csrf(viewer, csrf_token)
    await sessions_of(runtime).sign_out(viewer)
    response = RedirectResponse(f"{PREFIX}/login", status_code=303)
    clear_portal_cookie(response, SESSION_COOKIE, runtime.settings)
    return response


# --------------------------------------------------------------------------- team pages


@router.get("/", response_class=HTMLResponse)
async def overview(
    request: Request,
    viewer: ViewerDep,
    runtime: RuntimeDep,
    work: UnitOfWorkDep,
    team: str | None = None,
) -> Response:
    shown = await portal_pages.team_in_view(work.session, viewer, team)
    page = await portal_pages.overview(work.session, viewer, shown, runtime.settings)
    return render(
        request,
        "overview.html.j2",
        team=shown,
        teams=await _teams_for_picker(work, viewer),
        page=page,
    )


@router.get("/jobs", response_class=HTMLResponse)
async def jobs(
    request: Request,
    viewer: ViewerDep,
    work: UnitOfWorkDep,
    team: str | None = None,
    state: str = "",
    project: str = "",
    tag: str = "",
    day: str = "",
    cursor: str = "",
) -> Response:
    shown = await portal_pages.team_in_view(work.session, viewer, team)
    filters = portal_pages.JobFilters(
        state=state.strip(), project=project.strip(), tag=tag.strip(), day=day.strip()
    )
    page = await portal_pages.jobs_page(work.session, shown, filters, cursor.strip() or None)
    next_url = None
    if page.next_cursor is not None:
        query = filters.query()
        if viewer.is_admin:
            query["team"] = shown.name
        query["cursor"] = page.next_cursor
        next_url = f"{PREFIX}/jobs?{urlencode(query)}"
    return render(
        request,
        "jobs.html.j2",
        team=shown,
        teams=await _teams_for_picker(work, viewer),
        page=page,
        filters=filters,
        states=portal_pages.STATES,
        next_url=next_url,
        first_page=not cursor,
    )


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
async def job(
    request: Request,
    job_id: str,
    viewer: ViewerDep,
    work: UnitOfWorkDep,
    team: str | None = None,
) -> Response:
    shown = await portal_pages.team_in_view(work.session, viewer, team)
    detail = await portal_pages.job_detail(work.session, shown, job_id)
    return render(request, "job.html.j2", team=shown, teams=[], detail=detail)


@router.get("/keys", response_class=HTMLResponse)
async def keys(
    request: Request, viewer: ViewerDep, work: UnitOfWorkDep, team: str | None = None
) -> Response:
    shown = await portal_pages.team_in_view(work.session, viewer, team)
    return render(
        request,
        "keys.html.j2",
        team=shown,
        teams=await _teams_for_picker(work, viewer),
        keys=await portal_keys.list_keys(work.session, shown),
        projects=[p.name for p in await tenancy.list_projects(work.session, shown.name)],
        roles=tenancy.KEY_ROLES,
        form_action=_to("/keys", shown, viewer),
    )


@router.post("/keys", response_class=HTMLResponse)
async def create_key(
    request: Request,
    viewer: ViewerDep,
    runtime: RuntimeDep,
    work: UnitOfWorkDep,
    team: str | None = None,
    csrf_token: FormField = "",
    name: FormField = "",
    role: FormField = "member",
    project: FormField = "",
    monthly_budget_usd: FormField = "",
) -> Response:
    """Create a key (a manager's or the admin's session): its secret is on this answer only."""
    require_csrf(viewer, csrf_token)
    shown = await portal_pages.team_in_view(work.session, viewer, team)
    issued = await portal_keys.create_key(
        work.session,
        viewer,
        shown,
        NewKeyForm(name=name, role=role, project=project, monthly_budget_usd=monthly_budget_usd),
        pepper=runtime.pepper,
        request_id=request.state.request_id,
    )
    return render(
        request,
        "key_created.html.j2",
        team=shown,
        teams=[],
        issued=issued,
        back=_to("/keys", shown, viewer),
    )


@router.post("/keys/{key_id}/revoke")
async def revoke_key(
    request: Request,
    key_id: str,
    viewer: ViewerDep,
    work: UnitOfWorkDep,
    team: str | None = None,
    csrf_token: FormField = "",
) -> Response:
    require_csrf(viewer, csrf_token)
    shown = await portal_pages.team_in_view(work.session, viewer, team)
    await portal_keys.revoke_key(
        work.session, viewer, shown, key_id, request_id=request.state.request_id
    )
    return RedirectResponse(_to("/keys", shown, viewer), status_code=303)


async def _webhooks_page(
    request: Request,
    viewer: Viewer,
    work: UnitOfWorkDep,
    team: Team,
    *,
    status_code: int = 200,
    error: str | None = None,
    checked: list[str] | None = None,
) -> Response:
    """The webhooks page; after a refused create form, with its message (the URL typed is
    not echoed back: its query may carry a token)."""
    return render(
        request,
        "webhooks.html.j2",
        status_code=status_code,
        team=team,
        teams=await _teams_for_picker(work, viewer),
        webhooks=await portal_webhooks.list_webhooks(work.session, viewer, team),
        event_types=portal_webhooks.EVENT_TYPES,
        checked=portal_webhooks.EVENT_TYPES if checked is None else checked,
        error=error,
        form_action=_to("/webhooks", team, viewer),
    )


@router.get("/webhooks", response_class=HTMLResponse)
async def webhooks(
    request: Request, viewer: ViewerDep, work: UnitOfWorkDep, team: str | None = None
) -> Response:
    shown = await portal_pages.team_in_view(work.session, viewer, team)
    return await _webhooks_page(request, viewer, work, shown)


@router.post("/webhooks", response_class=HTMLResponse)
async def create_webhook(
    request: Request,
    viewer: ViewerDep,
    runtime: RuntimeDep,
    work: UnitOfWorkDep,
    team: str | None = None,
    csrf_token: FormField = "",
    url: FormField = "",
    events: FormList | None = None,
) -> Response:
    """Subscribe the team (a manager's or the admin's session): the signing secret is on this
    answer only. A refused URL or event list: the form again with the reason, 400."""
    require_csrf(viewer, csrf_token)
    shown = await portal_pages.team_in_view(work.session, viewer, team)
    try:
        created = await portal_webhooks.create_webhook(
            work.session,
            viewer,
            shown,
            url=url,
            events=events or [],
            settings=runtime.settings,
            request_id=request.state.request_id,
        )
    except InvalidRequest as refusal:
        return await _webhooks_page(
            request,
            viewer,
            work,
            shown,
            status_code=refusal.status_code,
            error=refusal.message,
            checked=events or [],
        )
    return render(
        request,
        "webhook_created.html.j2",
        team=shown,
        teams=[],
        created=created,
        back=_to("/webhooks", shown, viewer),
    )


@router.post("/webhooks/{subscription_id}/delete")
async def delete_webhook(
    request: Request,
    subscription_id: str,
    viewer: ViewerDep,
    work: UnitOfWorkDep,
    team: str | None = None,
    csrf_token: FormField = "",
) -> Response:
    require_csrf(viewer, csrf_token)
    shown = await portal_pages.team_in_view(work.session, viewer, team)
    await portal_webhooks.delete_webhook(
        work.session, viewer, shown, subscription_id, request_id=request.state.request_id
    )
    return RedirectResponse(_to("/webhooks", shown, viewer), status_code=303)


@router.get("/webhooks/{subscription_id}", response_class=HTMLResponse)
async def webhook_deliveries(
    request: Request,
    subscription_id: str,
    viewer: ViewerDep,
    work: UnitOfWorkDep,
    team: str | None = None,
    before: str = "",
) -> Response:
    """A subscription's delivery log, newest first, by keyset (``before``: older rows)."""
    shown = await portal_pages.team_in_view(work.session, viewer, team)
    log = await portal_webhooks.delivery_log(work.session, viewer, shown, subscription_id, before)
    older_url = None
    if log.next_before is not None:
        query = {**({"team": shown.name} if viewer.is_admin else {}), "before": log.next_before}
        older_url = f"{PREFIX}/webhooks/{log.webhook.id}?{urlencode(query)}"
    return render(
        request,
        "webhook_deliveries.html.j2",
        team=shown,
        teams=[],
        log=log,
        older_url=older_url,
    )


@router.get("/reports", response_class=HTMLResponse)
async def reports(
    request: Request,
    viewer: ViewerDep,
    work: UnitOfWorkDep,
    team: str | None = None,
    month: str = "",
) -> Response:
    shown = await portal_pages.team_in_view(work.session, viewer, team)
    page = await portal_pages.team_report(work.session, shown, month.strip() or None)
    return render(
        request,
        "reports.html.j2",
        team=shown,
        teams=await _teams_for_picker(work, viewer),
        page=page,
        month_urls={m: _to_month("/reports", m, shown, viewer) for m in page.months},
        csv_urls={m: _to_month("/reports.csv", m, shown, viewer) for m in page.months},
    )


@router.get("/reports.csv")
async def report_csv(
    viewer: ViewerDep, work: UnitOfWorkDep, month: str = "", team: str | None = None
) -> Response:
    """A month's chargeback of the team as CSV (the admin API's CSV, for this team only)."""
    shown = await portal_pages.team_in_view(work.session, viewer, team)
    page = await portal_pages.team_report(work.session, shown, month.strip() or None)
    return PlainTextResponse(
        to_csv(page.report),
        media_type="text/csv; charset=utf-8",
        headers={
            "Content-Disposition": (
                f'attachment; filename="chargeback-{shown.name}-{page.month}.csv"'
            )
        },
    )


# --------------------------------------------------------------------------- admin


@router.get("/admin", response_class=HTMLResponse)
async def admin(
    request: Request, viewer: ViewerDep, runtime: RuntimeDep, work: UnitOfWorkDep
) -> Response:
    if not viewer.is_admin:
        raise PermissionDenied(
            "this page is for the admin token's sessions only", code="admin_required"
        )
    page = await portal_pages.admin_page(work.session, runtime.settings)
    return render(request, "admin.html.j2", team=None, teams=[], page=page)
