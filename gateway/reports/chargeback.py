"""The monthly chargeback: what each team (or cost center, or tag value) owes for a month.

Computed by aggregation in the database, never by loading rows into Python, so it stays fast on
large ledgers. A job belongs to the month it was submitted in (UTC). Per group:

- jobs submitted, billed (completed), billed though blocked by moderation, released, still open;
- video seconds billed per resolution, images billed, rate card versions used;
- captured USD (the bill) and still-held USD (open jobs: shown, excluded from the total).

A closed month (``ledger.closing``) is frozen: only entries recorded up to its closing count.
Entries for its jobs recorded later appear as correction lines in the report of the month in
which they were recorded, never by changing the closed month.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, case, func, literal, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from gateway.core.periods import month_bounds
from gateway.db.session import dialect_name
from gateway.errors import InvalidRequest
from gateway.jobs.models import Job
from gateway.ledger.models import ClosedPeriod, LedgerEntry
from gateway.tenancy.models import Team

GROUPINGS = ("team", "cost_center")
UNTAGGED = "(untagged)"


@dataclass(frozen=True)
class ReportQuery:
    month: str
    group_by: str = "team"
    """``team``, ``cost_center`` or ``tag:<key>`` (per tag value within each team)."""
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

    def add(self, other: ChargebackRow) -> None:
        for name in (
            "jobs_submitted",
            "jobs_billed",
            "jobs_billed_moderated",
            "jobs_released",
            "jobs_open",
            "images",
            "captured_micro_usd",
            "held_micro_usd",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for resolution, ms in other.video_ms.items():
            self.video_ms[resolution] = self.video_ms.get(resolution, 0) + ms
        self.rate_card_versions = sorted(
            set(self.rate_card_versions) | set(other.rate_card_versions)
        )


@dataclass(frozen=True)
class CorrectionLine:
    """An entry recorded this month for a job of an earlier, already closed month."""

    original_period: str
    team: str
    cost_center: str | None
    kind: str
    job_id: str
    upstream_job_id: str | None
    amount_micro_usd: int
    recorded_at: datetime

    @property
    def billed_micro_usd(self) -> int:
        return self.amount_micro_usd if self.kind == "capture" else 0


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
        "group_by must be team, cost_center or tag:<key>", code="invalid_value", param="group_by"
    )


async def chargeback(
    session: AsyncSession, query: ReportQuery, *, now: datetime | None = None
) -> ChargebackReport:
    start, end = month_bounds(query.month)
    parse_group_by(query.group_by)
    frozen = await session.get(ClosedPeriod, query.month)
    frozen_at = frozen.closed_at if frozen is not None else None
    mark = frozen.last_entry_id if frozen is not None else None  # entries up to it count
    settlement = aliased(LedgerEntry)
    settled_in_view = [
        settlement.job_id == Job.id,
        settlement.kind.in_(("capture", "release")),
    ]
    if mark is not None:
        settled_in_view.append(settlement.id <= mark)
    groups = _group_columns(session, query)
    filters = _filters(session, query)
    is_capture = settlement.kind == "capture"
    blocked = func.coalesce(settlement.reason, "") == "moderation_blocked"
    moderated = and_(is_capture, blocked)
    billed_plain = and_(is_capture, ~blocked)
    produced = func.coalesce(settlement.video_ms, Job.duration_ms)
    billed_ms = case(
        (is_capture, case((produced < Job.duration_ms, produced), else_=Job.duration_ms)),
        else_=0,
    )
    one = literal(1)
    stmt = (
        select(
            *groups,
            Job.resolution,
            func.count(Job.id),
            func.sum(case((billed_plain, one), else_=0)),
            func.sum(case((moderated, one), else_=0)),
            func.sum(case((settlement.kind == "release", one), else_=0)),
            func.sum(case((settlement.id.is_(None), one), else_=0)),
            func.sum(billed_ms),
            func.sum(case((is_capture, Job.image_count), else_=0)),
            func.sum(case((is_capture, settlement.amount_micro_usd), else_=0)),
            func.sum(case((settlement.id.is_(None), Job.estimate_micro_usd), else_=0)),
        )
        .select_from(Job)
        .join(Team, Team.id == Job.team_id)
        .outerjoin(settlement, and_(*settled_in_view))
        .where(Job.period == query.month, *filters)
        .group_by(*groups, Job.resolution)
    )
    if frozen_at is not None:
        stmt = stmt.where(Job.created_at <= frozen_at)
    rows: dict[tuple[Any, ...], ChargebackRow] = {}
    resolutions: set[str] = set()
    for record in (await session.execute(stmt)).all():
        key = tuple(record[: len(groups)])
        (
            resolution,
            submitted,
            billed,
            billed_moderated,
            released,
            still_open,
            ms,
            images,
            captured,
            held,
        ) = record[len(groups) :]
        row = rows.setdefault(key, _row_for(query, key))
        resolutions.add(resolution)
        row.add(
            ChargebackRow(
                team=None,
                cost_center=None,
                jobs_submitted=int(submitted),
                jobs_billed=int(billed or 0),
                jobs_billed_moderated=int(billed_moderated or 0),
                jobs_released=int(released or 0),
                jobs_open=int(still_open or 0),
                video_ms={resolution: int(ms or 0)},
                images=int(images or 0),
                captured_micro_usd=int(captured or 0),
                held_micro_usd=int(held or 0),
            )
        )
    await _attach_rate_card_versions(session, query, groups, filters, rows)
    ordered = [rows[key] for key in sorted(rows, key=_sort_key)]
    totals = ChargebackRow(team=None, cost_center=None)
    for row in ordered:
        totals.add(row)
    for row in [*ordered, totals]:
        for resolution in resolutions:
            row.video_ms.setdefault(resolution, 0)
    return ChargebackReport(
        query=query,
        generated_at=now or datetime.now(UTC),
        closed_at=frozen_at,
        rows=ordered,
        totals=totals,
        corrections=await _corrections(session, query, start, end, mark),
        daily=await _daily(session, query, groups, filters, mark) if query.daily else [],
        resolutions=sorted(resolutions),
    )


def _group_columns(session: AsyncSession, query: ReportQuery) -> list[ColumnElement[Any]]:
    if query.group_by == "cost_center":
        return [Team.__table__.c.cost_center]
    columns: list[ColumnElement[Any]] = [Team.__table__.c.name, Team.__table__.c.cost_center]
    if query.tag_key is not None:
        columns.append(_tag_value(query.tag_key))
    return columns


def _tag_value(key: str) -> ColumnElement[Any]:
    value: ColumnElement[Any] = Job.tags[key].as_string()
    return value


def _filters(session: AsyncSession, query: ReportQuery) -> list[ColumnElement[bool]]:
    filters: list[ColumnElement[bool]] = []
    if query.team is not None:
        filters.append(Team.name == query.team)
    if query.tag is not None:
        key, value = query.tag
        filters.append(_tag_value(key) == value)
    return filters


def _row_for(query: ReportQuery, key: tuple[Any, ...]) -> ChargebackRow:
    if query.group_by == "cost_center":
        return ChargebackRow(team=None, cost_center=key[0])
    tag = (key[2] if key[2] is not None else UNTAGGED) if query.tag_key is not None else None
    return ChargebackRow(team=key[0], cost_center=key[1], tag=tag)


def _sort_key(key: tuple[Any, ...]) -> tuple[str, ...]:
    return tuple("" if part is None else str(part) for part in key)


async def _attach_rate_card_versions(
    session: AsyncSession,
    query: ReportQuery,
    groups: list[ColumnElement[Any]],
    filters: list[ColumnElement[bool]],
    rows: dict[tuple[Any, ...], ChargebackRow],
) -> None:
    stmt = (
        select(*groups, Job.rate_card_version)
        .select_from(Job)
        .join(Team, Team.id == Job.team_id)
        .where(Job.period == query.month, *filters)
        .group_by(*groups, Job.rate_card_version)
    )
    versions: dict[tuple[Any, ...], set[str]] = defaultdict(set)
    for record in (await session.execute(stmt)).all():
        versions[tuple(record[: len(groups)])].add(record[-1])
    for key, row in rows.items():
        row.rate_card_versions = sorted(versions.get(key, set()))


async def _corrections(
    session: AsyncSession,
    query: ReportQuery,
    start: datetime,
    end: datetime,
    mark: int | None,
) -> list[CorrectionLine]:
    stmt = (
        select(LedgerEntry, Job.upstream_job_id, Team.name, Team.cost_center)
        .join(Job, Job.id == LedgerEntry.job_id)
        .join(Team, Team.id == Job.team_id)
        .join(ClosedPeriod, ClosedPeriod.period == LedgerEntry.period)
        .where(
            LedgerEntry.kind.in_(("capture", "release")),
            LedgerEntry.id > ClosedPeriod.last_entry_id,
            LedgerEntry.created_at >= start,
            LedgerEntry.created_at < end,
            LedgerEntry.period != query.month,
            *_filters(session, query),
        )
        .order_by(LedgerEntry.created_at, LedgerEntry.id)
    )
    if mark is not None:
        stmt = stmt.where(LedgerEntry.id <= mark)
    return [
        CorrectionLine(
            original_period=entry.period,
            team=team,
            cost_center=cost_center,
            kind=entry.kind,
            job_id=entry.job_id,
            upstream_job_id=upstream_job_id,
            amount_micro_usd=entry.amount_micro_usd,
            recorded_at=entry.created_at,
        )
        for entry, upstream_job_id, team, cost_center in (await session.execute(stmt)).all()
    ]


async def _daily(
    session: AsyncSession,
    query: ReportQuery,
    groups: list[ColumnElement[Any]],
    filters: list[ColumnElement[bool]],
    mark: int | None,
) -> list[DailySpend]:
    settlement = aliased(LedgerEntry)
    join = [settlement.job_id == Job.id, settlement.kind == "capture"]
    if mark is not None:
        join.append(settlement.id <= mark)
    day = _utc_day(session, Job.created_at)
    stmt = (
        select(day, *groups, func.sum(settlement.amount_micro_usd))
        .select_from(Job)
        .join(Team, Team.id == Job.team_id)
        .join(settlement, and_(*join))
        .where(Job.period == query.month, *filters)
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


def _group_label(query: ReportQuery, key: tuple[Any, ...]) -> str:
    row = _row_for(query, key)
    return group_label(row)


def group_label(row: ChargebackRow) -> str:
    if row.team is None:
        return row.cost_center or "(no cost center)"
    return f"{row.team} / {row.tag}" if row.tag is not None else row.team


def _utc_day(session: AsyncSession, column: Any) -> ColumnElement[Any]:
    if dialect_name(session) == "postgresql":
        return func.to_char(func.timezone("UTC", column), "YYYY-MM-DD")
    return func.strftime("%Y-%m-%d", column)
