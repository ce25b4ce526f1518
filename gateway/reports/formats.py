"""Rendering a chargeback for machines: JSON (shape in ``chargeback.schema.json``) and CSV for
spreadsheets (one table; amounts as decimal strings with 6 places, the exact micro-dollars). The
page for people is ``reports.html``. ``granted_usd`` (grants, grouped by team) is context for
the budgets, never part of a bill or of the total due; it is empty (null) in other groupings."""

from __future__ import annotations

import io
from decimal import Decimal
from typing import Any

from gateway.core.usd import format_usd
from gateway.kit.spreadsheet import csv_writer, safe_cell
from gateway.reports.chargeback import JOB_COUNTS, ChargebackReport, ChargebackRow
from gateway.reports.corrections import CorrectionLine


def _seconds(ms: int) -> str:
    return f"{Decimal(ms) / 1000:.3f}"


def _video_seconds(row: ChargebackRow, resolutions: list[str]) -> dict[str, str]:
    """Seconds of video billed per resolution (every one of the report's, 0 if none)."""
    return {r: _seconds(row.video_ms.get(r, 0)) for r in resolutions}


def _optional_usd(micro_usd: int | None) -> str | None:
    return format_usd(micro_usd) if micro_usd is not None else None


def _row_json(row: ChargebackRow, resolutions: list[str]) -> dict[str, Any]:
    return {
        "team": row.team,
        "cost_center": row.cost_center,
        "tag": row.tag,
        "project": row.project,
        **row.job_counts(),
        "video_seconds": _video_seconds(row, resolutions),
        "images": row.images,
        "captured_usd": format_usd(row.captured_micro_usd),
        "held_usd": format_usd(row.held_micro_usd),
        "granted_usd": _optional_usd(row.granted_micro_usd),
        "rate_card_versions": row.rate_card_versions,
    }


def to_json(report: ChargebackReport) -> dict[str, Any]:
    query = report.query
    totals = _row_json(report.totals, report.resolutions)
    for name in ("team", "cost_center", "tag", "project", "rate_card_versions"):
        totals.pop(name)
    totals["corrections_usd"] = format_usd(report.corrections_micro_usd)
    totals["total_due_usd"] = format_usd(report.total_due_micro_usd)
    return {
        "month": query.month,
        "currency": "USD",
        "group_by": query.group_by,
        "filters": {"team": query.team, "tag": "=".join(query.tag) if query.tag else None},
        "closed": report.closed_at is not None,
        "closed_at": report.closed_at.isoformat() if report.closed_at else None,
        "generated_at": report.generated_at.isoformat(),
        "rows": [_row_json(row, report.resolutions) for row in report.rows],
        "totals": totals,
        "corrections": [
            {
                "original_period": c.original_period,
                "team": c.team,
                "cost_center": c.cost_center,
                "kind": c.kind,
                "job_id": c.job_id,
                "upstream_job_id": c.upstream_job_id,
                "amount_usd": format_usd(c.amount_micro_usd),
                "billed_usd": format_usd(c.billed_micro_usd),
                "recorded_at": c.recorded_at.isoformat(),
            }
            for c in report.corrections
        ],
        "daily": [
            {"day": d.day, "group": d.group, "captured_usd": format_usd(d.captured_micro_usd)}
            for d in report.daily
        ],
    }


def to_csv(report: ChargebackReport) -> str:
    """A line per group (``charge``), per correction to a closed month, and the ``total``."""
    out = io.StringIO()
    writer = csv_writer(out)
    writer.writerow(_csv_header(report.resolutions))
    writer.writerows(_charge_line(report, row) for row in report.rows)
    writer.writerows(_correction_line(report, c) for c in report.corrections)
    writer.writerow(_total_line(report))
    return out.getvalue()


def _csv_header(resolutions: list[str]) -> list[str]:
    return [
        "line",
        "team",
        "cost_center",
        "tag",
        "project",
        "original_period",
        *JOB_COUNTS,
        *[f"video_seconds_{r}" for r in resolutions],
        "images",
        "captured_usd",
        "held_usd",
        "granted_usd",
        "rate_card_versions",
    ]


def _csv_counts(report: ChargebackReport, row: ChargebackRow) -> list[Any]:
    """The job counts, video seconds and images of ``row``."""
    return [
        *row.job_counts().values(),
        *_video_seconds(row, report.resolutions).values(),
        row.images,
    ]


def _charge_line(report: ChargebackReport, row: ChargebackRow) -> list[Any]:
    return [
        "charge",
        safe_cell(row.team or ""),
        safe_cell(row.cost_center or ""),
        safe_cell(row.tag or ""),
        safe_cell(row.project or ""),
        report.query.month,
        *_csv_counts(report, row),
        format_usd(row.captured_micro_usd),
        format_usd(row.held_micro_usd),
        _optional_usd(row.granted_micro_usd) or "",
        safe_cell(" ".join(row.rate_card_versions)),
    ]


def _correction_line(report: ChargebackReport, c: CorrectionLine) -> list[Any]:
    """Its month, what it bills, and its kind of entry in the rate card versions' column."""
    no_counts = [""] * (len(JOB_COUNTS) + len(report.resolutions) + 1)
    return [
        "correction",
        safe_cell(c.team),
        safe_cell(c.cost_center or ""),
        "",
        "",
        c.original_period,
        *no_counts,
        format_usd(c.billed_micro_usd),
        "",
        "",
        safe_cell(c.kind),
    ]


def _total_line(report: ChargebackReport) -> list[Any]:
    """The totals; its captured column is the month's total due (corrections included)."""
    totals = report.totals
    return [
        "total",
        "",
        "",
        "",
        "",
        report.query.month,
        *_csv_counts(report, totals),
        format_usd(report.total_due_micro_usd),
        format_usd(totals.held_micro_usd),
        _optional_usd(totals.granted_micro_usd) or "",
        safe_cell(" ".join(totals.rate_card_versions)),
    ]
