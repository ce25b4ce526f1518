"""The chargeback as the page finance opens: one self-contained HTML file (inline CSS, inline
SVG charts, no script, nothing fetched; its Content-Security-Policy forbids it), rendered from
the Jinja2 templates in ``templates/`` with autoescaping on, so a team, tag or cost center
named ``<script>`` is shown as text.

Amounts are shown in dollars and cents, rounded half-up (halves away from zero) from the exact
micro-dollars, the rounding the gateway uses everywhere. A total is the rounding of the exact
total, never the sum of rounded lines: when the two differ, a footnote says so. The exact
figures (as in the CSV and JSON) are in an "Exact amounts" toggle, expanded when printed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from jinja2 import Environment, PackageLoader, StrictUndefined

from gateway.core.usd import format_usd
from gateway.reports.chargeback import ChargebackReport, ReportQuery, group_label
from gateway.reports.charts import daily_chart, group_colors, spend_chart

CENT = 10_000  # micro-USD


def cents(micro_usd: int) -> int:
    """Micro-USD rounded half-up (halves away from zero) to whole cents: a credit rounds to
    the mirror image of the same charge."""
    whole, rest = divmod(abs(micro_usd), CENT)
    rounded = whole + 1 if rest >= CENT // 2 else whole
    return -rounded if micro_usd < 0 else rounded


def dollars(micro_usd: int, *, show_cents: bool = True) -> str:
    """Micro-USD for people, to the cent: ``12_345_675_000`` → ``"$12,345.68"``, ``-1_500_000``
    → ``"-$1.50"``. ``show_cents=False`` for amounts known to be whole dollars (axis ticks)."""
    amount = cents(micro_usd)
    whole, cent = divmod(abs(amount), 100)
    sign = "-" if amount < 0 else ""
    return f"{sign}${whole:,}.{cent:02d}" if show_cents else f"{sign}${whole:,}"


def _seconds(ms: int) -> str:
    return f"{ms // 1000:,}.{ms % 1000:03d}"


def _moment(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


_TEMPLATES = Environment(
    loader=PackageLoader("gateway.reports", "templates"),
    autoescape=True,  # every template here is HTML (or CSS and SVG inside it)
    undefined=StrictUndefined,  # a misspelt name fails the render instead of printing nothing
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
    auto_reload=False,  # templates ship in the package: never stat them again per render
)
_TEMPLATES.filters.update(
    dollars=dollars,
    exact_usd=format_usd,
    seconds=_seconds,
    thousands="{:,}".format,
    moment=_moment,
    label=group_label,
)


@dataclass(frozen=True)
class RoundingNote:
    """A total whose rounding differs from the sum of its rounded lines."""

    name: str
    lines_micro_usd: int
    """The sum of the lines as each is shown (rounded to the cent)."""
    total_micro_usd: int


def _rounding_note(name: str, lines: list[int], total: int) -> RoundingNote | None:
    shown = sum(cents(line) for line in lines) * CENT
    return None if shown == cents(total) * CENT else RoundingNote(name, shown, total)


def rounding_notes(report: ChargebackReport) -> dict[str, RoundingNote]:
    """The totals on the page that are not the sum of the rounded lines above them."""
    rows, late, totals = report.rows, report.corrections, report.totals
    notes = {
        "captured": _rounding_note(
            "Captured", [row.captured_micro_usd for row in rows], totals.captured_micro_usd
        ),
        "held": _rounding_note("Held", [row.held_micro_usd for row in rows], totals.held_micro_usd),
        "corrections": _rounding_note(
            "Corrections", [c.billed_micro_usd for c in late], report.corrections_micro_usd
        ),
        "total_due": _rounding_note(
            "Total due",
            [totals.captured_micro_usd, report.corrections_micro_usd],
            report.total_due_micro_usd,
        ),
    }
    if totals.granted_micro_usd is not None:
        notes["granted"] = _rounding_note(
            "Budget grants",
            [row.granted_micro_usd or 0 for row in rows],
            totals.granted_micro_usd,
        )
    return {key: note for key, note in notes.items() if note is not None}


def to_html(report: ChargebackReport) -> str:
    """The page (``templates/chargeback.html.j2``)."""
    query = report.query
    spend = [(group_label(row), row.captured_micro_usd) for row in report.rows]
    colors = group_colors(spend)
    return _TEMPLATES.get_template("chargeback.html.j2").render(
        report=report,
        query=query,
        group_heading=_group_heading(query),
        spend_chart=spend_chart(spend, colors),
        daily_chart=daily_chart(query.month, report.daily, colors) if report.daily else None,
        rounding=rounding_notes(report),
    )


def _group_heading(query: ReportQuery) -> str:
    """What a row of the report is: its column's heading."""
    if query.group_by == "cost_center":
        return "Cost center"
    if query.group_by == "project":
        return "Team / project"
    return f"Team / {query.tag_key}" if query.tag_key is not None else "Team"
