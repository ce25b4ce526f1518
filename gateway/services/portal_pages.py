"""What each portal page shows, read in the caller's session: a team's overview (every budget
level as ``GET /v1/usage`` computes it, the month's spend per day, the latest jobs), its jobs
(keyset pages, filters) and one job with its ledger entries, its monthly chargebacks, and the
admin's view over every team. Nothing here is HTTP: the routes (``gateway.portal``) render it.

Which team a page is about is decided once (``team_in_view``): a key's session sees its own
team whatever the URL says; the admin picks one.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from sqlalchemy.ext.asyncio import AsyncSession

from gateway.config import Settings
from gateway.core.clock import utcnow
from gateway.core.periods import month_bounds, period_of
from gateway.errors import InvalidRequest, NotFound
from gateway.jobs import repository as jobs
from gateway.jobs.models import OPEN_STATES, Job, JobState
from gateway.jobs.tags import parse_tags
from gateway.ledger import quotas
from gateway.ledger import repository as ledger
from gateway.ledger.forecast import month_end_forecast
from gateway.ledger.models import BudgetAlert, LedgerEntry
from gateway.ledger.snapshot import LedgerSnapshot, ledger_snapshot
from gateway.reports.chargeback import ChargebackReport, ReportQuery, chargeback
from gateway.reports.charts import DailyChart, daily_chart, group_colors
from gateway.services.portal import Viewer
from gateway.services.proxy import level_accounts, scope_balances, team_quota
from gateway.tenancy import repository as tenancy_repository
from gateway.tenancy import service as tenancy
from gateway.tenancy.models import Project, Team
from gateway.tenancy.service import Principal

PAGE_SIZE = 50
RECENT_JOBS = 10


async def team_in_view(session: AsyncSession, viewer: Viewer, requested: str | None) -> Team:
    """The team a page shows: a key's own team, always (another name in the URL is ignored:
    there is nothing else it may see); for the admin, the one named (404 if none), else the
    first by name."""
    if viewer.team is not None and not viewer.is_admin:
        return viewer.team
    if requested:
        return await tenancy.require_team(session, requested)
    first = await tenancy_repository.list_teams(session, limit=1)
    if not first:
        raise NotFound("there are no teams yet", code="team_not_found", param="team")
    return first[0]


# --------------------------------------------------------------------------- overview


@dataclass(frozen=True)
class LevelRow:
    """One budget level with its figures for the period (micro-USD; budget None: none)."""

    scope: str
    name: str
    budget: int | None
    granted: int
    captured: int
    held: int
    remaining: int | None
    forecast: int


@dataclass(frozen=True)
class JobRow:
    """A job as the pages list it: what it cost so far (``cost_kind``: ``captured``, ``held``
    while open, ``released``: nothing)."""

    job: Job
    cost_micro_usd: int
    cost_kind: str
    project: str | None

    @property
    def seconds(self) -> str:
        return str(Decimal(self.job.duration_ms) / 1000)

    @property
    def tags(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in sorted((self.job.tags or {}).items()))


@dataclass(frozen=True)
class Overview:
    team: Team
    period: str
    levels: list[LevelRow]
    chart: DailyChart
    captured_micro_usd: int
    recent: list[JobRow]


async def overview(
    session: AsyncSession, viewer: Viewer, team: Team, settings: Settings
) -> Overview:
    """The team's period: each level that applies (the team; for a key's own session, its
    project and the key itself when they have a budget or a grant), the figures of
    ``GET /v1/usage``'s ``scopes``; the spend per day (captured, by day of submit, UTC); the
    last jobs."""
    now = utcnow()
    period = period_of(now)
    principal = (
        viewer.principal() if viewer.team is not None and viewer.team.id == team.id else None
    )
    principal = principal or Principal.of(team)
    balance = await quotas.balance_view(
        session, team_quota(principal), period, settings.default_budget_policy
    )
    below = [
        await ledger.get_balance(session, account, period) if account is not None else None
        for account in level_accounts(principal)
    ]
    levels = []
    for level in scope_balances(principal, balance, *below):
        figures = level.balance
        if level.scope != "team" and figures.budget is None and not figures.granted:
            continue  # no budget of its own: the team's is the one that applies
        levels.append(
            LevelRow(
                scope=level.scope,
                name=level.name,
                budget=figures.budget,
                granted=figures.granted,
                captured=figures.captured,
                held=figures.held,
                remaining=figures.remaining,
                forecast=month_end_forecast(figures.captured, figures.held, period=period, now=now),
            )
        )
    report = await chargeback(
        session, ReportQuery(month=period, team=team.name, daily=True), now=now
    )
    colors = group_colors([(team.name, report.totals.captured_micro_usd)])
    recent = await jobs.list_team_jobs(session, team.id, limit=RECENT_JOBS)
    return Overview(
        team=team,
        period=period,
        levels=levels,
        chart=daily_chart(period, report.daily, colors),
        captured_micro_usd=report.totals.captured_micro_usd,
        recent=await _job_rows(session, team, recent),
    )


# --------------------------------------------------------------------------- jobs


STATES = tuple(state.value for state in JobState)


@dataclass(frozen=True)
class JobFilters:
    """The jobs page's filters, as the query string gives them (empty: not filtered)."""

    state: str = ""
    project: str = ""
    tag: str = ""
    day: str = ""

    def query(self) -> dict[str, str]:
        """The filters that are set, for the next page's link."""
        return {k: v for k, v in vars(self).items() if v}


@dataclass(frozen=True)
class JobsPage:
    rows: list[JobRow]
    next_cursor: str | None
    projects: list[str]
    """The team's project names, for the filter's choices."""


async def jobs_page(
    session: AsyncSession, team: Team, filters: JobFilters, cursor: str | None
) -> JobsPage:
    """A page of the team's jobs, newest first, with the cursor of the next (None: last)."""
    state = _state(filters.state)
    tag = _tag(filters.tag)
    created_from, created_before = _day(filters.day)
    projects = list(await tenancy_repository.list_projects(session, team.id))
    project_id: int | None = None
    if filters.project:
        matching = [p.id for p in projects if p.name == filters.project]
        if not matching:
            raise NotFound(
                f"team {team.name!r} has no project named {filters.project!r}",
                code="project_not_found",
                param="project",
            )
        project_id = matching[0]
    found = await jobs.list_team_jobs(
        session,
        team.id,
        limit=PAGE_SIZE + 1,  # one more tells whether a next page exists
        before=decode_cursor(cursor) if cursor else None,
        state=state,
        project_id=project_id,
        tag=tag,
        created_from=created_from,
        created_before=created_before,
    )
    page = found[:PAGE_SIZE]
    more = len(found) > PAGE_SIZE
    return JobsPage(
        rows=await _job_rows(session, team, page, projects),
        next_cursor=encode_cursor(page[-1]) if more else None,
        projects=[p.name for p in projects],
    )


@dataclass(frozen=True)
class JobDetail:
    row: JobRow
    entries: Sequence[LedgerEntry]


async def job_detail(session: AsyncSession, team: Team, job_id: str) -> JobDetail:
    """One of the team's jobs with its ledger entries (404 for any other id: another team's
    job is indistinguishable from one that does not exist)."""
    job = await jobs.get_team_job(session, job_id[:64], team.id)
    if job is None:
        raise NotFound("no such job", code="job_not_found", param="job_id")
    rows = await _job_rows(session, team, [job])
    return JobDetail(rows[0], await ledger.entries_for_job(session, job.id))


def encode_cursor(job: Job) -> str:
    """The page after ``job``: opaque to the browser (base64 of its sort key)."""
    raw = f"{job.created_at.astimezone(UTC).isoformat()}|{job.id}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    invalid = InvalidRequest("the page cursor is not valid", code="invalid_cursor", param="cursor")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        moment, job_id = raw.split("|")
        created = datetime.fromisoformat(moment)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise invalid from None
    if created.tzinfo is None or not job_id or len(job_id) > 32:
        raise invalid
    return created, job_id


def _state(value: str) -> str | None:
    if not value:
        return None
    if value not in STATES:
        raise InvalidRequest(
            f"state must be one of {', '.join(STATES)}", code="invalid_value", param="state"
        )
    return value


def _tag(value: str) -> tuple[str, str] | None:
    if not value:
        return None
    try:
        tags = parse_tags(value)
    except InvalidRequest:
        tags = None
    if tags is None or len(tags) != 1:
        raise InvalidRequest(
            "tag must be one key=value, as sent in X-Gateway-Tags (project=atlas)",
            code="invalid_tags",
            param="tag",
        )
    return next(iter(tags.items()))


def _day(value: str) -> tuple[datetime | None, datetime | None]:
    if not value:
        return None, None
    try:
        day = datetime.strptime(value, "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        raise InvalidRequest(
            "day must look like 2026-11-30 (UTC)", code="invalid_value", param="day"
        ) from None
    return day, day + timedelta(days=1)


async def _job_rows(
    session: AsyncSession,
    team: Team,
    found: Sequence[Job],
    projects: Sequence[Project] | None = None,
) -> list[JobRow]:
    """Each job with its cost: its capture's amount once captured, its hold while open."""
    if projects is None:
        projects = await tenancy_repository.list_projects(session, team.id)
    names = {p.id: p.name for p in projects}
    captured = await ledger.captured_amounts(
        session, [job.id for job in found if _is_captured(job)]
    )
    rows = []
    for job in found:
        if _is_captured(job):
            cost, kind = captured.get(job.id, 0), "captured"
        elif job.state in OPEN_STATES:
            cost, kind = job.estimate_micro_usd, "held"
        else:
            cost, kind = 0, "released"
        project = names.get(job.project_id) if job.project_id is not None else None
        rows.append(JobRow(job, cost, kind, project))
    return rows


def _is_captured(job: Job) -> bool:
    return job.state == JobState.CAPTURED


# --------------------------------------------------------------------------- reports


@dataclass(frozen=True)
class ReportsPage:
    months: list[str]
    """This month and every earlier one the team has a balance row for, newest first."""
    month: str
    report: ChargebackReport


async def team_months(session: AsyncSession, team: Team) -> list[str]:
    months = await ledger.team_periods(session, team.id)
    current = period_of(utcnow())
    months.add(current)
    return sorted((m for m in months if m <= current), reverse=True)


async def team_report(session: AsyncSession, team: Team, month: str | None) -> ReportsPage:
    """The team's chargeback of ``month`` (default: this one), a row per project."""
    months = await team_months(session, team)
    month = month or months[0]
    month_bounds(month)  # 400 for a malformed month
    report = await chargeback(session, ReportQuery(month=month, group_by="project", team=team.name))
    return ReportsPage(months=months, month=month, report=report)


# --------------------------------------------------------------------------- admin


@dataclass(frozen=True)
class AlertRow:
    alert: BudgetAlert
    team: str


@dataclass(frozen=True)
class AdminPage:
    period: str
    snapshot: LedgerSnapshot
    review: list[tuple[JobRow, str]]
    alerts: list[AlertRow]


async def admin_page(session: AsyncSession, settings: Settings, *, limit: int = 100) -> AdminPage:
    """Every enabled team's budget and spend this period (as ``GET /admin/usage``), the open
    jobs flagged for review, and the latest budget alerts."""
    now = utcnow()
    period = period_of(now)
    snapshot = await ledger_snapshot(
        session, period=period, now=now, policy=settings.default_budget_policy
    )
    flagged = await jobs.open_needing_review(session, limit=limit)
    review = [
        (JobRow(job, job.estimate_micro_usd, "held", None), team_name) for job, team_name in flagged
    ]
    names = await tenancy_repository.team_names(session)
    alerts = [
        AlertRow(alert, names.get(alert.team_id, str(alert.team_id)))
        for alert in await ledger.latest_alerts(session, limit=limit)
    ]
    return AdminPage(period=period, snapshot=snapshot, review=review, alerts=alerts)
