"""Reconciling the ledger with the upstream's own bill.

Reads the upstream's usage export (CSV or JSON: a list of rows, or an object holding one under
``jobs``, ``data`` or ``items``; the built-in simulator's ``/_simulator/usage`` is one such
file) and compares, job by job, what the upstream billed with what the ledger recorded
(captures plus corrections for review). Differences:

- ``missing_in_ledger``: billed by the upstream, not (or not billed) in the ledger;
- ``not_billed_upstream``: billed in the ledger, not billed by the upstream;
- ``amount_differs``: both billed, amounts differ by more than the tolerance.

The export's column names are mapped with ``ColumnMap`` (defaults match the simulator:
``job_id``, ``cost_usd``, ``billed``, ``video_seconds``, ``resolution``, ``images``), so a real
provider's file (``Id``, ``Amount``, ...) needs no conversion.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.core.usd import MICROS_PER_USD, format_usd
from gateway.jobs.models import Job
from gateway.kit.spreadsheet import csv_writer, safe_cell
from gateway.ledger.models import EntryKind, LedgerEntry
from gateway.tenancy.models import Team

FIELDS = ("job_id", "cost_usd", "billed", "video_seconds", "resolution", "images")
_TRUE = {"true", "1", "yes", "y", "t"}


class UsageFileError(ValueError):
    """The upstream export cannot be read; the message says where and why."""


@dataclass(frozen=True)
class ColumnMap:
    """Our field name → the column (or JSON key) holding it in the upstream's export."""

    columns: Mapping[str, str] = field(default_factory=dict)

    def source(self, name: str) -> str:
        return self.columns.get(name, name)

    @classmethod
    def parse(cls, items: Iterable[str]) -> ColumnMap:
        columns: dict[str, str] = {}
        for item in items:
            ours, sep, theirs = item.partition("=")
            if not sep or ours not in FIELDS or not theirs:
                raise UsageFileError(
                    f"column mapping {item!r} must be FIELD=COLUMN with FIELD one of {FIELDS}"
                )
            columns[ours] = theirs
        return cls(columns)


@dataclass(frozen=True)
class UpstreamCharge:
    """One row of the export: what the upstream charged for a job (0 if not billed)."""

    job_id: str
    cost_micro_usd: int


@dataclass(frozen=True)
class LedgerCharge:
    job_id: str
    team: str
    billed_micro_usd: int


@dataclass(frozen=True)
class Difference:
    kind: str
    job_id: str
    team: str | None
    ledger_micro_usd: int
    upstream_micro_usd: int

    @property
    def delta_micro_usd(self) -> int:
        return self.ledger_micro_usd - self.upstream_micro_usd


@dataclass
class Reconciliation:
    compared_jobs: int
    upstream_total_micro_usd: int
    ledger_total_micro_usd: int
    tolerance_micro_usd: int
    differences: list[Difference]

    @property
    def clean(self) -> bool:
        return not self.differences

    def as_json(self) -> dict[str, Any]:
        return {
            "compared_jobs": self.compared_jobs,
            "upstream_total_usd": format_usd(self.upstream_total_micro_usd),
            "ledger_total_usd": format_usd(self.ledger_total_micro_usd),
            "tolerance_usd": format_usd(self.tolerance_micro_usd),
            "differences": [
                {
                    "kind": d.kind,
                    "job_id": d.job_id,
                    "team": d.team,
                    "ledger_usd": format_usd(d.ledger_micro_usd),
                    "upstream_usd": format_usd(d.upstream_micro_usd),
                    "delta_usd": format_usd(d.delta_micro_usd),
                }
                for d in self.differences
            ],
        }


def _money(value: Any, where: str) -> int:
    if isinstance(value, bool):
        raise UsageFileError(f"{where}: cost is not a number")
    try:
        amount = Decimal(str(value).strip().lstrip("$"))
    except InvalidOperation:
        raise UsageFileError(f"{where}: cost {str(value)[:20]!r} is not a number") from None
    if not amount.is_finite():
        raise UsageFileError(f"{where}: cost is not a finite number")
    return int((amount * MICROS_PER_USD).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def parse_usage(text: str, columns: ColumnMap = ColumnMap()) -> list[UpstreamCharge]:
    """Rows of a JSON or CSV usage export."""
    stripped = text.lstrip()
    if stripped.startswith(("{", "[")):
        try:
            data = json.loads(stripped, parse_float=Decimal)  # amounts stay exact
        except json.JSONDecodeError as exc:
            raise UsageFileError(f"not valid JSON: line {exc.lineno}") from None
        if isinstance(data, dict):
            lists = [data[k] for k in ("jobs", "data", "items") if isinstance(data.get(k), list)]
            if not lists:
                raise UsageFileError("JSON object has no 'jobs', 'data' or 'items' list")
            data = lists[0]
        if not isinstance(data, list):
            raise UsageFileError("JSON usage must be a list of rows")
        records: list[Mapping[str, Any]] = data
    else:
        reader = csv.DictReader(io.StringIO(text))
        # Checked on the header, so a file that is not a usage export at all is refused even
        # when it has no rows (rather than read as "the upstream billed nothing").
        missing = [
            columns.source(field)
            for field in ("job_id", "cost_usd")
            if columns.source(field) not in (reader.fieldnames or [])
        ]
        if missing:
            raise UsageFileError(f"CSV header has no {', '.join(map(repr, missing))} column")
        records = list(reader)
    charges = []
    for index, record in enumerate(records, start=1):
        where = f"row {index}"
        if not isinstance(record, Mapping):
            raise UsageFileError(f"{where} is not an object")
        job_id = record.get(columns.source("job_id"))
        if not isinstance(job_id, str) or not job_id:
            raise UsageFileError(f"{where}: no {columns.source('job_id')!r} column")
        cost = _money(record.get(columns.source("cost_usd"), "0") or "0", where)
        billed_value = record.get(columns.source("billed"))
        if billed_value is None:
            billed = cost != 0  # a credit (negative) nets against the job's charges
        elif isinstance(billed_value, bool):
            billed = billed_value
        else:
            billed = str(billed_value).strip().lower() in _TRUE
        charges.append(UpstreamCharge(job_id, cost if billed else 0))
    return charges


async def ledger_charges(
    session: AsyncSession, upstream_ids: set[str], period: str | None = None
) -> dict[str, LedgerCharge]:
    """The ledger's billed figure per upstream job id, aggregated in SQL: the jobs the export
    names, plus every job of ``period`` (or, without one, every job in the ledger), so that a
    job the upstream did not bill is compared too."""
    billed = func.coalesce(
        func.sum(LedgerEntry.amount_micro_usd).filter(
            LedgerEntry.kind.in_((EntryKind.CAPTURE, EntryKind.CORRECTION))
        ),
        0,
    )
    base = (
        select(Job.upstream_job_id, Team.name, billed)
        .join(Team, Team.id == Job.team_id)
        .outerjoin(LedgerEntry, LedgerEntry.job_id == Job.id)
        .where(Job.upstream_job_id.is_not(None))
        .group_by(Job.upstream_job_id, Job.id, Team.name)
    )
    found: dict[str, LedgerCharge] = {}

    def collect(rows: Iterable[Any]) -> None:
        for upstream_id, team, amount in rows:
            if upstream_id is not None and upstream_id not in found:
                found[upstream_id] = LedgerCharge(upstream_id, team, int(amount))

    ids = sorted(upstream_ids)
    for chunk_start in range(0, len(ids), 1000):
        chunk = ids[chunk_start : chunk_start + 1000]
        collect((await session.execute(base.where(Job.upstream_job_id.in_(chunk)))).all())
    scope = base.where(Job.period == period) if period is not None else base
    collect((await session.execute(scope)).all())
    return found


def compare(
    upstream: list[UpstreamCharge], ledger: Mapping[str, LedgerCharge], *, tolerance_micro_usd: int
) -> Reconciliation:
    by_id: dict[str, int] = {}
    for charge in upstream:
        by_id[charge.job_id] = by_id.get(charge.job_id, 0) + charge.cost_micro_usd
    differences = []
    for job_id in sorted(set(by_id) | set(ledger)):
        theirs = by_id.get(job_id, 0)
        mine = ledger[job_id].billed_micro_usd if job_id in ledger else 0
        team = ledger[job_id].team if job_id in ledger else None
        if theirs and not mine:
            kind = "missing_in_ledger"
        elif mine and not theirs:
            kind = "not_billed_upstream"
        elif abs(mine - theirs) > tolerance_micro_usd:
            kind = "amount_differs"
        else:
            continue
        differences.append(Difference(kind, job_id, team, mine, theirs))
    return Reconciliation(
        compared_jobs=len(set(by_id) | set(ledger)),
        upstream_total_micro_usd=sum(by_id.values()),
        ledger_total_micro_usd=sum(c.billed_micro_usd for c in ledger.values()),
        tolerance_micro_usd=tolerance_micro_usd,
        differences=differences,
    )


def to_table(result: Reconciliation) -> str:
    lines = [
        f"compared {result.compared_jobs} jobs: upstream billed "
        f"${format_usd(result.upstream_total_micro_usd)}, ledger "
        f"${format_usd(result.ledger_total_micro_usd)} "
        f"(tolerance ${format_usd(result.tolerance_micro_usd)})",
    ]
    if result.clean:
        lines.append("no differences")
        return "\n".join(lines) + "\n"
    lines.append(
        f"{'KIND':<20} {'JOB':<32} {'TEAM':<20} {'LEDGER':>14} {'UPSTREAM':>14} {'DELTA':>14}"
    )
    for d in result.differences:
        lines.append(
            f"{d.kind:<20} {d.job_id:<32} {d.team or '-':<20} {format_usd(d.ledger_micro_usd):>14} "
            f"{format_usd(d.upstream_micro_usd):>14} {format_usd(d.delta_micro_usd):>14}"
        )
    lines.append(f"{len(result.differences)} differences")
    return "\n".join(lines) + "\n"


def to_csv(result: Reconciliation) -> str:
    out = io.StringIO()
    writer = csv_writer(out)
    writer.writerow(["kind", "job_id", "team", "ledger_usd", "upstream_usd", "delta_usd"])
    for row in result.as_json()["differences"]:
        writer.writerow(
            [
                row["kind"],
                safe_cell(row["job_id"]),
                safe_cell(row["team"] or ""),
                row["ledger_usd"],
                row["upstream_usd"],
                row["delta_usd"],
            ]
        )
    return out.getvalue()
