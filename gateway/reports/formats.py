"""Rendering a chargeback: JSON (shape in ``chargeback.schema.json``), CSV for spreadsheets (one
table; amounts as decimal strings with 6 places), and a self-contained HTML page with inline SVG
charts that loads nothing from anywhere (its Content-Security-Policy forbids it)."""

from __future__ import annotations

import html
import io
from collections.abc import Iterable
from decimal import Decimal
from typing import Any

from gateway.core.usd import format_usd
from gateway.kit.spreadsheet import csv_writer, safe_cell
from gateway.reports.chargeback import JOB_COUNTS, ChargebackReport, ChargebackRow, group_label
from gateway.reports.corrections import CorrectionLine


def _seconds(ms: int) -> str:
    return f"{Decimal(ms) / 1000:.3f}"


def _video_seconds(row: ChargebackRow, resolutions: list[str]) -> dict[str, str]:
    """Seconds of video billed per resolution (every one of the report's, 0 if none)."""
    return {r: _seconds(row.video_ms.get(r, 0)) for r in resolutions}


def _dollars(micro: int) -> str:
    return f"${format_usd(micro)}"


def _row_json(row: ChargebackRow, resolutions: list[str]) -> dict[str, Any]:
    return {
        "team": row.team,
        "cost_center": row.cost_center,
        "tag": row.tag,
        **row.job_counts(),
        "video_seconds": _video_seconds(row, resolutions),
        "images": row.images,
        "captured_usd": format_usd(row.captured_micro_usd),
        "held_usd": format_usd(row.held_micro_usd),
        "rate_card_versions": row.rate_card_versions,
    }


def to_json(report: ChargebackReport) -> dict[str, Any]:
    query = report.query
    totals = _row_json(report.totals, report.resolutions)
    for name in ("team", "cost_center", "tag", "rate_card_versions"):
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
        "original_period",
        *JOB_COUNTS,
        *[f"video_seconds_{r}" for r in resolutions],
        "images",
        "captured_usd",
        "held_usd",
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
        report.query.month,
        *_csv_counts(report, row),
        format_usd(row.captured_micro_usd),
        format_usd(row.held_micro_usd),
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
        c.original_period,
        *no_counts,
        format_usd(c.billed_micro_usd),
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
        report.query.month,
        *_csv_counts(report, totals),
        format_usd(report.total_due_micro_usd),
        format_usd(totals.held_micro_usd),
        safe_cell(" ".join(totals.rate_card_versions)),
    ]


_PALETTE = ("#2b6cb0", "#dd6b20", "#38a169", "#805ad5", "#d53f8c", "#319795", "#b7791f", "#e53e3e")


def _bar_chart(title: str, bars: list[tuple[str, int]], *, chart_id: str) -> str:
    width, bar_height, gap, label_width = 760, 22, 8, 220
    height = 40 + len(bars) * (bar_height + gap)
    peak = max((value for _, value in bars), default=0) or 1
    parts = [
        f'<svg id="{chart_id}" class="chart" role="img" aria-label="{html.escape(title)}" '
        f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        'xmlns="http://www.w3.org/2000/svg">',
        f'<text x="0" y="18" class="chart-title">{html.escape(title)}</text>',
    ]
    for index, (label, value) in enumerate(bars):
        y = 32 + index * (bar_height + gap)
        length = int((width - label_width - 110) * value / peak)
        color = _PALETTE[index % len(_PALETTE)]
        parts.append(
            f'<text x="{label_width - 8}" y="{y + 16}" text-anchor="end">{html.escape(label)}</text>'
            f'<rect class="bar" x="{label_width}" y="{y}" width="{max(length, 1)}" '
            f'height="{bar_height}" fill="{color}"><title>{html.escape(label)}: '
            f"{_dollars(value)}</title></rect>"
            f'<text x="{label_width + length + 6}" y="{y + 16}">{_dollars(value)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _daily_chart(report: ChargebackReport) -> str:
    days = sorted({point.day for point in report.daily})
    groups = sorted({point.group for point in report.daily})
    width, height, left = 760, 280, 70
    if not days:
        return '<p class="empty">No captured spend this month.</p>'
    totals_by_day = {
        day: sum(p.captured_micro_usd for p in report.daily if p.day == day) for day in days
    }
    peak = max(totals_by_day.values()) or 1
    slot = (width - left - 10) / len(days)
    parts = [
        f'<svg id="daily-spend" class="chart" role="img" aria-label="Daily spend per team" '
        f'viewBox="0 0 {width} {height + 60}" width="{width}" height="{height + 60}" '
        'xmlns="http://www.w3.org/2000/svg">',
        '<text x="0" y="18" class="chart-title">Daily spend per team (USD, by day of submit)</text>',
        f'<line x1="{left}" y1="{height}" x2="{width}" y2="{height}" stroke="#999"/>',
        f'<text x="0" y="36" class="small">max {_dollars(peak)}/day</text>',
    ]
    colors = {group: _PALETTE[i % len(_PALETTE)] for i, group in enumerate(groups)}
    for index, day in enumerate(days):
        x = left + index * slot
        base = float(height)
        for point in (p for p in report.daily if p.day == day):
            bar = (height - 40) * point.captured_micro_usd / peak
            base -= bar
            parts.append(
                f'<rect class="bar" x="{x + 1:.1f}" y="{base:.1f}" width="{max(slot - 2, 1):.1f}" '
                f'height="{bar:.1f}" fill="{colors[point.group]}"><title>{html.escape(day)} '
                f"{html.escape(point.group)}: {_dollars(point.captured_micro_usd)}</title></rect>"
            )
        if len(days) <= 16 or index % max(len(days) // 8, 1) == 0:
            parts.append(
                f'<text x="{x + slot / 2:.1f}" y="{height + 16}" text-anchor="middle" '
                f'class="small">{html.escape(day[5:])}</text>'
            )
    for index, group in enumerate(groups):
        parts.append(
            f'<rect x="{left + (index % 4) * 170}" y="{height + 28 + (index // 4) * 16}" '
            f'width="10" height="10" fill="{colors[group]}"/>'
            f'<text x="{left + 14 + (index % 4) * 170}" y="{height + 37 + (index // 4) * 16}" '
            f'class="small">{html.escape(group)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:32px;color:#1a202c}
h1{font-size:22px;margin-bottom:4px} .meta{color:#555;margin-bottom:24px}
.cards{display:flex;gap:16px;margin:16px 0 24px} .card{border:1px solid #ddd;border-radius:8px;
padding:12px 16px;min-width:160px} .card b{display:block;font-size:20px}
table{border-collapse:collapse;margin:12px 0 28px;font-size:13px} th,td{border-bottom:1px solid
#e2e8f0;padding:6px 10px;text-align:right} th:first-child,td:first-child,td.text{text-align:left} td:first-child{white-space:nowrap}
thead th{background:#f7fafc} tfoot td{font-weight:bold;border-top:2px solid #999}
.chart{display:block;margin:8px 0 24px;font-size:12px} .chart-title{font-size:14px;font-weight:600}
.small{font-size:10px;fill:#555} .empty{color:#777} .closed{color:#c05621;font-weight:600}
"""


def to_html(report: ChargebackReport) -> str:
    query = report.query
    esc = html.escape
    closed = (
        f'<span class="closed">Closed {esc(report.closed_at.isoformat())}</span>'
        if report.closed_at
        else "Open month: figures can still change"
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; img-src data:">
<title>Chargeback {esc(query.month)}</title><style>{_STYLE}</style></head>
<body>
<h1>Video generation chargeback — {esc(query.month)}</h1>
<div class="meta">Grouped by {esc(query.group_by)} · {closed} · generated {esc(report.generated_at.isoformat())}</div>
{_summary_cards(report)}
{_spend_chart(report)}
{_daily_chart(report) if report.daily else ""}
<h2>Details</h2>
{_details_table(report)}
{_corrections_table(report)}
</body></html>
"""


def _summary_cards(report: ChargebackReport) -> str:
    totals = report.totals
    return f"""<div class="cards">
<div class="card">Total due<b id="total-due">{_dollars(report.total_due_micro_usd)}</b></div>
<div class="card">Captured<b>{_dollars(totals.captured_micro_usd)}</b></div>
<div class="card">Still held (not in total)<b>{_dollars(totals.held_micro_usd)}</b></div>
<div class="card">Jobs billed<b>{totals.jobs_billed + totals.jobs_billed_moderated}</b></div>
</div>"""


def _spend_chart(report: ChargebackReport) -> str:
    group = "cost center" if report.query.group_by == "cost_center" else "team"
    spend = [(group_label(row), row.captured_micro_usd) for row in report.rows]
    return _bar_chart(f"Spend per {group}", spend, chart_id="spend-per-group")


def _details_table(report: ChargebackReport) -> str:
    header = "".join(f"<th>Video s {html.escape(r)}</th>" for r in report.resolutions)
    body = "".join(_detail_row(row, report.resolutions) for row in report.rows)
    return f"""<table id="chargeback"><thead><tr><th>Group</th><th>Cost center</th><th>Submitted</th>
<th>Billed</th><th>Billed (moderated)</th><th>Released</th><th>Open</th>{header}<th>Images</th>
<th>Captured</th><th>Held</th><th>Rate cards</th></tr></thead>
<tbody>{body}</tbody>
{_totals_footer(report.totals, report.resolutions)}</table>"""


def _cells(values: Iterable[object]) -> str:
    return "".join(f"<td>{value}</td>" for value in values)


def _detail_row(row: ChargebackRow, resolutions: list[str]) -> str:
    esc = html.escape
    return (
        f'<tr><td class="text">{esc(group_label(row))}</td>'
        f'<td class="text">{esc(row.cost_center or "")}</td>'
        f"{_cells(row.job_counts().values())}"
        f"{_cells(_video_seconds(row, resolutions).values())}<td>{row.images}</td>"
        f"<td>{_dollars(row.captured_micro_usd)}</td>"
        f"<td>{_dollars(row.held_micro_usd)}</td>"
        f'<td class="text">{esc(" ".join(row.rate_card_versions))}</td></tr>'
    )


def _totals_footer(totals: ChargebackRow, resolutions: list[str]) -> str:
    seconds = _cells(_video_seconds(totals, resolutions).values())
    return f"""<tfoot><tr><td class="text">Total</td><td></td><td>{totals.jobs_submitted}</td>
<td>{totals.jobs_billed}</td><td>{totals.jobs_billed_moderated}</td><td>{totals.jobs_released}</td>
<td>{totals.jobs_open}</td>{seconds}<td>{totals.images}</td>
<td>{_dollars(totals.captured_micro_usd)}</td><td>{_dollars(totals.held_micro_usd)}</td>
<td class="text">{html.escape(" ".join(totals.rate_card_versions))}</td></tr></tfoot>"""


def _corrections_table(report: ChargebackReport) -> str:
    """The corrections to closed months recorded this month (nothing when there are none)."""
    if not report.corrections:
        return ""
    esc = html.escape
    lines = "".join(
        f'<tr><td class="text">{esc(c.original_period)}</td><td class="text">{esc(c.team)}</td>'
        f'<td class="text">{esc(c.kind)}</td><td class="text">{esc(c.upstream_job_id or c.job_id)}</td>'
        f"<td>{_dollars(c.billed_micro_usd)}</td></tr>"
        for c in report.corrections
    )
    return (
        "<h2>Corrections to closed months, recorded this month</h2>"
        '<table id="corrections"><thead><tr><th>Month</th><th>Team</th><th>Entry</th>'
        f"<th>Job</th><th>Billed</th></tr></thead><tbody>{lines}</tbody></table>"
    )
