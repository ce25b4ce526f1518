"""The monthly chargeback: what each team (or cost center, project, or tag value) owes for a
month.

Computed by aggregation in the database, never by loading rows into Python, so it stays fast on
large ledgers. A job belongs to the month it was submitted in (UTC). Per group:

- jobs submitted, billed (completed), billed though blocked by moderation, released, still open;
- video seconds billed per resolution, images billed, rate card versions used;
- captured USD (the bill) and still-held USD (open jobs: shown, excluded from the total);
- per team (grouped by team): the one-off budget grants of the month, at every level (the
  team, its projects, its keys): context for the budgets, never part of the bill.

A closed month (``ledger.closing``) is frozen: only entries recorded up to its closing count.
Entries for its jobs recorded later appear as correction lines in the report of the month in
which they were recorded, never by changing the closed month (``reports.corrections``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, case, func, literal, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from gateway.core.periods import month_bounds
from gateway.db.session import dialect_name
from gateway.errors import InvalidRequest, NotFound
from gateway.jobs.models import Job
from gateway.ledger.models import BudgetGrant, ClosedPeriod, EntryKind, LedgerEntry
from gateway.reports.corrections import SETTLEMENTS, CorrectionLine, corrections
from gateway.tenancy.models import Project, Team

GROUPINGS = ("team", "cost_center", "project")
UNTAGGED = "(untagged)"
NO_PROJECT = "(none)"
"""The project column of a team's jobs charged to no project (no project name can start
with a parenthesis)."""
JOB_COUNTS = (
    "jobs_submitted",
    "jobs_billed",
    "jobs_billed_moderated",
    "jobs_released",
    "jobs_open",
)
"""A row's job counts, in the order every format shows them."""

GroupKey = tuple[Any, ...]
"""The values of a row's grouping columns (``_group_columns``)."""


@dataclass(frozen=True)
class ReportQuery:
    month: str
    group_by: str = "team"
    """``team``, ``cost_center``, ``project`` (per project within each team) or ``tag:<key>``
    (per tag value within each team)."""
    team: str | None = None
    tag: tuple[str, str] | None = None
    daily: bool = False

    @property
    def tag_key(self) -> str | None:
        return self.group_by.removeprefix("tag:") if self.group_by.startswith("tag:") else None


@dataclass
class ChargebackRow:
    team: str | None
    cost_center: str | None
    tag: str | None = None
    jobs_submitted: int = 0
    jobs_billed: int = 0
    jobs_billed_moderated: int = 0
    jobs_released: int = 0
    jobs_open: int = 0
    video_ms: dict[str, int] = field(default_factory=dict)
    images: int = 0
    captured_micro_usd: int = 0
    held_micro_usd: int = 0
    rate_card_versions: list[str] = field(default_factory=list)
    project: str | None = None
    """The project's name when grouped by project (``NO_PROJECT`` for jobs of none)."""
    granted_micro_usd: int | None = None
    """Grouped by team: the month's one-off budget grants of the team at every level (its
    own, its projects', its keys'); None for other groupings. Not part of any bill."""

    def job_counts(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in JOB_COUNTS}

    def add(self, other: ChargebackRow) -> None:
        for name in (*JOB_COUNTS, "images", "captured_micro_usd", "held_micro_usd"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        if other.granted_micro_usd is not None:
            self.granted_micro_usd = (self.granted_micro_usd or 0) + other.granted_micro_usd
        for resolution, ms in other.video_ms.items():
            self.video_ms[resolution] = self.video_ms.get(resolution, 0) + ms
        self.rate_card_versions = sorted(
            set(self.rate_card_versions) | set(other.rate_card_versions)
        )


@dataclass(frozen=True)
class DailySpend:
    day: str
    group: str
    captured_micro_usd: int


@dataclass
class ChargebackReport:
    query: ReportQuery
    generated_at: datetime
    closed_at: datetime | None
    rows: list[ChargebackRow]
    totals: ChargebackRow
    corrections: list[CorrectionLine]
    daily: list[DailySpend]
    resolutions: list[str]

    @property
    def corrections_micro_usd(self) -> int:
        return sum(c.billed_micro_usd for c in self.corrections)

    @property
    def total_due_micro_usd(self) -> int:
        """The month's bill: its captures plus corrections to closed months recorded in it."""
        return self.totals.captured_micro_usd + self.corrections_micro_usd


def parse_group_by(value: str) -> str:
    if value in GROUPINGS or (value.startswith("tag:") and len(value) > 4):
        return value
    raise InvalidRequest(
        "group_by must be team, cost_center, project or tag:<key>",
        code="invalid_value",
        param="group_by",
    )


async def require_team(session: AsyncSession, name: str | None) -> None:
    """A report filtered on a team that does not exist is a mistake (a typo), not an empty
    report: 404 ``team_not_found``."""
    if name is None:
        return
    found = await session.execute(select(Team.id).where(Team.name == name))
    if found.first() is None:
        raise NotFound(f"no team named {name!r}", code="team_not_found", param="team")


async def chargeback(
    session: AsyncSession, query: ReportQuery, *, now: datetime | None = None
) -> ChargebackReport:
    """The report ``query`` asks for, in a fixed handful of queries whatever the ledger's size."""
    month_bounds(query.month)  # a malformed month is refused first
    parse_group_by(query.group_by)
    await require_team(session, query.team)
    closed = await session.get(ClosedPeriod, query.month)
    closed_at = closed.closed_at if closed is not None else None
    mark = closed.last_entry_id if closed is not None else None  # entries up to it count
    groups = _group_columns(query)
    filters = _filters(query)
    stmt = _figures_statement(query, groups, filters, mark=mark, closed_at=closed_at)
    records = (await session.execute(stmt)).all()
    rows, resolutions = _rows_by_group(query, len(groups), records, grants=_grants_per_team(query))
    await _attach_rate_card_versions(session, query, groups, filters, rows)
    ordered = [rows[key] for key in sorted(rows, key=_sort_key)]
    totals = _totals(ordered)
    if _grants_per_team(query) and totals.granted_micro_usd is None:
        totals.granted_micro_usd = 0  # no team had a job this month
    for row in [*ordered, totals]:
        for resolution in resolutions:
            row.video_ms.setdefault(resolution, 0)
    return ChargebackReport(
        query=query,
        generated_at=now or datetime.now(UTC),
        closed_at=closed_at,
        rows=ordered,
        totals=totals,
        corrections=await corrections(session, query.month, filters, mark),
        daily=await _daily(session, query, groups, filters, mark) if query.daily else [],
        resolutions=sorted(resolutions),
    )


def _group_columns(query: ReportQuery) -> list[ColumnElement[Any]]:
    if query.group_by == "cost_center":
        return [Team.__table__.c.cost_center]
    columns: list[ColumnElement[Any]] = [Team.__table__.c.name, Team.__table__.c.cost_center]
    if query.tag_key is not None:
        columns.append(_tag_value(query.tag_key))
    if query.group_by == "project":
        columns.append(Project.__table__.c.name)
    return columns


def _grants_per_team(query: ReportQuery) -> bool:
    return query.group_by == "team"


def _tag_value(key: str) -> ColumnElement[Any]:
    value: ColumnElement[Any] = Job.tags[key].as_string()
    return value


def _filters(query: ReportQuery) -> list[ColumnElement[bool]]:
    filters: list[ColumnElement[bool]] = []
    if query.team is not None:
        filters.append(Team.name == query.team)
    if query.tag is not None:
        key, value = query.tag
        filters.append(_tag_value(key) == value)
    return filters


def _jobs_of_month(
    query: ReportQuery, filters: list[ColumnElement[bool]], *columns: Any
) -> Select[*tuple[Any, ...]]:
    """``columns`` of the jobs submitted in the month (with their team, and their project when
    grouped by project) that ``filters`` keep."""
    stmt = (
        select(*columns)
        .select_from(Job)
        .join(Team, Team.id == Job.team_id)
        .where(Job.period == query.month, *filters)
    )
    if query.group_by == "project":
        stmt = stmt.outerjoin(Project, Project.id == Job.project_id)
    return stmt


def _settlement(
    kinds: Sequence[EntryKind], mark: int | None
) -> tuple[type[LedgerEntry], ColumnElement[bool]]:
    """The job's settlement entry of one of ``kinds`` and the condition to join it on: only an
    entry recorded up to ``mark`` counts (any, when the month is open)."""
    settlement = aliased(LedgerEntry)
    join = [settlement.job_id == Job.id, settlement.kind.in_(kinds)]
    if mark is not None:
        join.append(settlement.id <= mark)
    return settlement, and_(*join)


def _figures_statement(
    query: ReportQuery,
    groups: list[ColumnElement[Any]],
    filters: list[ColumnElement[bool]],
    *,
    mark: int | None,
    closed_at: datetime | None,
) -> Select[*tuple[Any, ...]]:
    """Per group and resolution, the figures ``_figures`` lists (of a closed month: the jobs
    submitted before ``closed_at``, with the settlements recorded up to ``mark``); grouped by
    team, then the team's grants for the month (``_grants``), in the same statement."""
    settlement, settled = _settlement(SETTLEMENTS, mark)
    figures = _figures(settlement)
    grants = _grants(query.month, closed_at) if _grants_per_team(query) else None
    if grants is not None:
        figures.append(func.max(grants.c.granted))  # one value per team
    stmt = (
        _jobs_of_month(query, filters, *groups, Job.resolution, *figures)
        .outerjoin(settlement, settled)
        .group_by(*groups, Job.resolution)
    )
    if grants is not None:
        stmt = stmt.outerjoin(grants, grants.c.team_id == Job.team_id)
    if closed_at is not None:
        stmt = stmt.where(Job.created_at <= closed_at)
    return stmt


def _grants(month: str, closed_at: datetime | None) -> Any:
    """Per team, the sum of its budget grants for ``month`` at every level (of a closed month:
    those made before it closed, so its report stays as it was)."""
    stmt = select(
        BudgetGrant.team_id, func.sum(BudgetGrant.amount_micro_usd).label("granted")
    ).where(BudgetGrant.period == month)
    if closed_at is not None:
        stmt = stmt.where(BudgetGrant.created_at <= closed_at)
    return stmt.group_by(BudgetGrant.team_id).subquery("grants")


def _figures(settlement: type[LedgerEntry]) -> list[ColumnElement[Any]]:
    """Jobs submitted, billed, billed though blocked by moderation, released and still open;
    video ms billed (at most the duration asked for), images billed, captured and held micro-USD."""
    is_capture = settlement.kind == EntryKind.CAPTURE
    blocked = func.coalesce(settlement.reason, "") == "moderation_blocked"
    unsettled = settlement.id.is_(None)
    produced = func.coalesce(settlement.video_ms, Job.duration_ms)
    billed_ms = case(
        (is_capture, case((produced < Job.duration_ms, produced), else_=Job.duration_ms)),
        else_=0,
    )
    return [
        func.count(Job.id),
        _count_of(and_(is_capture, ~blocked)),
        _count_of(and_(is_capture, blocked)),
        _count_of(settlement.kind == EntryKind.RELEASE),
        _count_of(unsettled),
        func.sum(billed_ms),
        func.sum(case((is_capture, Job.image_count), else_=0)),
        func.sum(case((is_capture, settlement.amount_micro_usd), else_=0)),
        func.sum(case((unsettled, Job.estimate_micro_usd), else_=0)),
    ]


def _count_of(condition: ColumnElement[bool]) -> ColumnElement[Any]:
    """How many of the group's jobs meet ``condition``."""
    return func.sum(case((condition, literal(1)), else_=0))


def _rows_by_group(
    query: ReportQuery, width: int, records: Iterable[Sequence[Any]], *, grants: bool
) -> tuple[dict[GroupKey, ChargebackRow], set[str]]:
    """The rows of ``_figures_statement`` (``width`` grouping columns, then the resolution and
    its figures, then with ``grants`` the group's grants) summed per group; and the
    resolutions seen."""
    rows: dict[GroupKey, ChargebackRow] = {}
    resolutions: set[str] = set()
    figures_end = width + 1 + _FIGURES
    for record in records:
        key = tuple(record[:width])
        resolution = record[width]
        row = rows.setdefault(key, _row_for(query, key))
        resolutions.add(resolution)
        row.add(_figures_row(resolution, record[width + 1 : figures_end]))
        if grants:  # the team's, repeated on each of its resolutions' records: taken once
            row.granted_micro_usd = int(record[figures_end] or 0)
    return rows, resolutions


_FIGURES = 9
"""How many columns ``_figures`` has."""


def _figures_row(resolution: str, figures: Sequence[Any]) -> ChargebackRow:
    """One resolution's ``_figures`` as a row to add (SQL sums are NULL over no rows)."""
    submitted, billed, moderated, released, still_open, ms, images, captured, held = (
        int(value or 0) for value in figures
    )
    return ChargebackRow(
        team=None,
        cost_center=None,
        jobs_submitted=submitted,
        jobs_billed=billed,
        jobs_billed_moderated=moderated,
        jobs_released=released,
        jobs_open=still_open,
        video_ms={resolution: ms},
        images=images,
        captured_micro_usd=captured,
        held_micro_usd=held,
    )


def _totals(rows: list[ChargebackRow]) -> ChargebackRow:
    """The rows summed (grants too, when the rows have them)."""
    totals = ChargebackRow(team=None, cost_center=None)
    for row in rows:
        totals.add(row)
    return totals


def _row_for(query: ReportQuery, key: GroupKey) -> ChargebackRow:
    if query.group_by == "cost_center":
        return ChargebackRow(team=None, cost_center=key[0])
    if query.group_by == "project":
        project = key[2] if key[2] is not None else NO_PROJECT
        return ChargebackRow(team=key[0], cost_center=key[1], project=project)
    tag = (key[2] if key[2] is not None else UNTAGGED) if query.tag_key is not None else None
    return ChargebackRow(team=key[0], cost_center=key[1], tag=tag)


def _sort_key(key: GroupKey) -> tuple[str, ...]:
    return tuple("" if part is None else str(part) for part in key)


async def _attach_rate_card_versions(
    session: AsyncSession,
    query: ReportQuery,
    groups: list[ColumnElement[Any]],
    filters: list[ColumnElement[bool]],
    rows: dict[GroupKey, ChargebackRow],
) -> None:
    stmt = _jobs_of_month(query, filters, *groups, Job.rate_card_version).group_by(
        *groups, Job.rate_card_version
    )
    versions: dict[GroupKey, set[str]] = defaultdict(set)
    for record in (await session.execute(stmt)).all():
        versions[tuple(record[: len(groups)])].add(record[-1])
    for key, row in rows.items():
        row.rate_card_versions = sorted(versions.get(key, set()))


async def _daily(
    session: AsyncSession,
    query: ReportQuery,
    groups: list[ColumnElement[Any]],
    filters: list[ColumnElement[bool]],
    mark: int | None,
) -> list[DailySpend]:
    settlement, captured = _settlement((EntryKind.CAPTURE,), mark)
    day = _utc_day(session, Job.created_at)
    stmt = (
        _jobs_of_month(query, filters, day, *groups, func.sum(settlement.amount_micro_usd))
        .join(settlement, captured)
        .group_by(day, *groups)
        .order_by(day)
    )
    points = []
    for record in (await session.execute(stmt)).all():
        label = _group_label(query, tuple(record[1 : 1 + len(groups)]))
        points.append(
            DailySpend(day=str(record[0]), group=label, captured_micro_usd=int(record[-1]))
        )
    return points


def _group_label(query: ReportQuery, key: GroupKey) -> str:
    row = _row_for(query, key)
    return group_label(row)


def group_label(row: ChargebackRow) -> str:
    if row.team is None:
        return row.cost_center or "(no cost center)"
    if row.project is not None:
        return f"{row.team} / {row.project}"
    return f"{row.team} / {row.tag}" if row.tag is not None else row.team


def _utc_day(session: AsyncSession, column: Any) -> ColumnElement[Any]:
    if dialect_name(session) == "postgresql":
        return func.to_char(func.timezone("UTC", column), "YYYY-MM-DD")
    return func.strftime("%Y-%m-%d", column)
