"""The HTML chargeback finance opens (``gateway.reports.html``), on reports built by hand (no
database): names are escaped by the templates' autoescaping, money is shown in dollars and cents
with thousands separators (totals the rounding of the exact total, footnoted when the rounded
lines don't add up to it), the daily chart has a labelled y-axis of round dollar ticks, the
exact micro-dollar figures are in a ``<details>`` toggle, and the page prints (in headless
Chromium: the print stylesheet expands that toggle, repeats table headers, drops shadows)."""

from __future__ import annotations

import itertools
import re
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.core.usd import format_usd
from gateway.ledger.models import EntryKind
from gateway.reports.chargeback import ChargebackReport, ChargebackRow, DailySpend, ReportQuery
from gateway.reports.charts import nice_step
from gateway.reports.corrections import CorrectionLine
from gateway.reports.html import dollars, to_html

MONTH = "2026-11"
HOSTILE = "<script>alert('x')</script> & co"
SVG = "{http://www.w3.org/2000/svg}"


def row(team: str | None, captured: int, held: int = 0, **fields: Any) -> ChargebackRow:
    return ChargebackRow(
        team=team,
        cost_center=fields.pop("cost_center", "CC-1"),
        jobs_submitted=3,
        jobs_billed=2,
        jobs_open=1,
        video_ms={"480p": 2_500, "720p": 0},
        images=1,
        captured_micro_usd=captured,
        held_micro_usd=held,
        rate_card_versions=fields.pop("versions", ["seed-2026-11", "2026-11-15-cut"]),
        **fields,
    )


def correction(
    amount: int, team: str = "late", kind: EntryKind = EntryKind.CAPTURE
) -> CorrectionLine:
    return CorrectionLine(
        original_period="2026-10",
        team=team,
        cost_center="CC-9",
        kind=kind,
        job_id="0" * 32,
        upstream_job_id="vid_0123",
        amount_micro_usd=amount,
        recorded_at=datetime(2026, 11, 1, 0, 30, tzinfo=UTC),
    )


def make_report(
    rows: list[ChargebackRow],
    *,
    corrections: list[CorrectionLine] | None = None,
    daily: list[DailySpend] | None = None,
    group_by: str = "team",
) -> ChargebackReport:
    totals = ChargebackRow(team=None, cost_center=None)
    for each in rows:
        totals.add(each)
    return ChargebackReport(
        query=ReportQuery(month=MONTH, group_by=group_by, daily=daily is not None),
        generated_at=datetime(2026, 12, 2, 9, 0, tzinfo=UTC),
        closed_at=None,
        rows=rows,
        totals=totals,
        corrections=corrections or [],
        daily=daily or [],
        resolutions=["480p", "720p"],
    )


def a_month(peak_day_micro_usd: int = 34_260_000) -> ChargebackReport:
    """Two teams, thirty days of spend, the busiest day costing ``peak_day_micro_usd``."""
    assert peak_day_micro_usd > 29_000_000  # the 29th's
    daily = [
        DailySpend(f"{MONTH}-{day:02d}", team, 500_000 * day)
        for day in range(1, 31)
        for team in ("atlas", "zephyr")
    ]
    daily[-1] = DailySpend(f"{MONTH}-30", "zephyr", peak_day_micro_usd - 15_000_000)
    spent = {
        t: sum(p.captured_micro_usd for p in daily if p.group == t) for t in ("atlas", "zephyr")
    }
    rows = [row("atlas", spent["atlas"], held=2_500_000), row("zephyr", spent["zephyr"])]
    return make_report(rows, daily=daily, corrections=[correction(1_237_500)])


class Elements(HTMLParser):
    """Every start tag of a page, with its attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def elements(page: str) -> list[tuple[str, dict[str, str | None]]]:
    parser = Elements()
    parser.feed(page)
    return parser.tags


def svg(page: str, chart_id: str) -> ET.Element:
    """The inline SVG chart ``chart_id``, parsed as the XML it must be."""
    match = re.search(rf'<svg id="{chart_id}".*?</svg>', page, re.S)
    assert match is not None, chart_id
    return ET.fromstring(match.group(0))


def between(page: str, start: str, end: str) -> str:
    assert start in page, start
    return page.split(start, 1)[1].split(end, 1)[0]


@pytest.mark.parametrize("group_by", ["team", "cost_center", "tag:project"])
def test_team_tag_and_cost_center_names_are_escaped(group_by: str) -> None:
    team, cost_center, tag = HOSTILE, f"R&D {HOSTILE}", f"<img src=x onerror=alert(1)>{HOSTILE}"
    if group_by == "cost_center":
        hostile = row(None, 1_000_000, cost_center=cost_center)
        label = cost_center
    elif group_by == "team":
        hostile = row(team, 1_000_000, cost_center=cost_center)
        label = team
    else:
        hostile = row(team, 1_000_000, cost_center=cost_center, tag=tag)
        label = f"{team} / {tag}"
    daily = [DailySpend(f"{MONTH}-03", label, 1_000_000)]
    report = make_report(
        [hostile], corrections=[correction(5, team=team)], daily=daily, group_by=group_by
    )
    page = to_html(report)
    tags = elements(page)
    assert "script" not in {tag for tag, _ in tags}
    assert "img" not in {tag for tag, _ in tags}
    assert not [name for _, attrs in tags for name in attrs if name.startswith("on")]
    assert "<script" not in page and "<img" not in page
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; co" in page  # a correction's
    assert "R&amp;D &lt;script&gt;" in page  # the cost center, a column or the group
    if group_by.startswith("tag:"):
        assert "&lt;img src=x onerror=alert(1)&gt;" in page
    for chart in ("spend-per-group", "daily-spend"):
        names = [t.text or "" for t in svg(page, chart).iter(f"{SVG}title")]  # well-formed XML
        assert any(name.startswith(label[:20]) for name in names)


def test_money_is_dollars_and_cents_with_thousands_separators_rounded_half_up() -> None:
    assert dollars(12_345_675_000) == "$12,345.68"  # a half cent rounds up
    assert dollars(12_345_674_999) == "$12,345.67"
    assert dollars(0) == "$0.00"
    assert dollars(5_000) == "$0.01"
    assert dollars(4_999) == "$0.00"
    assert dollars(1_000_000_000_000_000) == "$1,000,000,000.00"
    assert dollars(-12_345_000) == "-$12.35"  # a credit is the mirror image of the charge
    assert dollars(-1_234_567_890) == "-$1,234.57"
    assert dollars(-4_999) == "$0.00"  # never "-$0.00"
    assert dollars(25_000_000, show_cents=False) == "$25"


def test_the_page_shows_dollars_and_cents_and_negative_corrections() -> None:
    report = make_report(
        [row("atlas", 12_345_675_000, held=1_500_000_000), row("zephyr", 7_000_000)],
        corrections=[correction(-12_345_000), correction(2_000_000_000)],
    )
    page = to_html(report)
    assert 'id="total-due">$14,340.33<' in page  # 12,345.675 + 7 - 12.345 + 2,000
    assert ">$12,345.68<" in page and ">$1,500.00<" in page  # a row's captured and held
    corrections = between(page, '<table id="corrections">', "</table>")
    assert ">-$12.35<" in corrections and ">$2,000.00<" in corrections
    assert ">$1,987.66<" in corrections  # their total: -12.345 + 2,000 = 1,987.655
    details = between(page, "<tbody>", "</tbody>")
    assert "12345.675000" not in details  # the six places are only in the toggle


def test_a_total_is_the_rounding_of_the_exact_total_and_says_so_when_lines_differ() -> None:
    exact = to_html(make_report([row("a", 1_000_000), row("b", 2_000_000)]))
    assert 'id="rounding"' not in exact and "†" not in exact
    page = to_html(make_report([row("a", 1_005_000), row("b", 1_005_000)]))
    totals = between(page, '<table id="chargeback">', "</table>").split("<tfoot>")[1]
    assert "$2.01" in totals and "$2.02" not in totals  # not $1.01 + $1.01
    assert page.count('href="#rounding"') >= 2  # the total's cell and its card
    note = between(page, 'id="rounding"', "</div>")
    assert "2.010000" in note and "$2.01" in note and "$2.02" in note


@pytest.mark.parametrize(
    ("peak", "step"),
    [
        (34_260_000, 10_000_000),  # $34.26: $10 ticks
        (1_200_000, 250_000),  # $1.20: $0.25
        (1_000, 10_000),  # a tenth of a cent: never less than a cent
        (12_345_678_000_000, 2_500_000_000_000),  # $12.3 M: $2.5 M
        (100_000_000, 20_000_000),  # $100: $20, five steps exactly
    ],
)
def test_axis_steps_are_round_amounts(peak: int, step: int) -> None:
    assert nice_step(peak) == step
    assert peak <= 5 * step


def test_the_daily_chart_has_a_y_axis_of_round_labelled_dollar_ticks() -> None:
    page = to_html(a_month(peak_day_micro_usd=34_260_000))
    chart = svg(page, "daily-spend")
    ticks = [t for t in chart.iter(f"{SVG}text") if "tick" in t.get("class", "").split()]
    assert [t.text for t in ticks] == ["$0", "$10", "$20", "$30", "$40"]
    ys = [float(t.get("y", "nan")) for t in ticks]
    gaps = {round(a - b, 1) for a, b in itertools.pairwise(ys)}
    assert len(gaps) == 1 and gaps.pop() > 0  # evenly spaced, going up
    grid = list(chart.iter(f"{SVG}line"))
    assert len(grid) == len(ticks)  # a line across the plot at each tick
    # The busiest day's stacked bar reaches $34.26 on that scale: 34.26 / 40 of the axis.
    bars = [r for r in chart.iter(f"{SVG}rect") if r.get("class") == "bar"]
    last_day = [r for r in bars if (r.findtext(f"{SVG}title") or "").startswith(f"{MONTH}-30")]
    top = min(float(r.get("y", "nan")) for r in last_day)
    axis_0, axis_40 = float(grid[0].get("y1", "nan")), float(grid[-1].get("y1", "nan"))
    assert top == pytest.approx(axis_0 - (axis_0 - axis_40) * 34.26 / 40, abs=0.2)
    days = [t.text for t in chart.iter(f"{SVG}text") if t.get("text-anchor") == "middle"]
    assert days == [str(day) for day in range(1, 31)]  # every day of November


def test_small_amounts_get_ticks_in_cents() -> None:
    small = make_report([row("a", 1_200_000)], daily=[DailySpend(f"{MONTH}-02", "a", 1_200_000)])
    chart = svg(to_html(small), "daily-spend")
    labels = [t.text for t in chart.iter(f"{SVG}text") if "tick" in t.get("class", "")]
    assert labels == ["$0.00", "$0.25", "$0.50", "$0.75", "$1.00", "$1.25"]


def test_the_exact_micro_dollar_figures_are_in_a_details_toggle() -> None:
    report = a_month()
    page = to_html(report)
    (toggle,) = [attrs for tag, attrs in elements(page) if tag == "details"]
    assert toggle["id"] == "exact-amounts" and "open" not in toggle  # folded on screen
    details = between(page, '<details id="exact-amounts"', "</details>")
    exact = [
        *[format_usd(r.captured_micro_usd) for r in report.rows],
        *[format_usd(r.held_micro_usd) for r in report.rows],
        *[format_usd(c.billed_micro_usd) for c in report.corrections],
        format_usd(report.totals.captured_micro_usd),
        format_usd(report.totals.held_micro_usd),
        format_usd(report.total_due_micro_usd),
    ]
    for figure in exact:
        assert f">{figure}<" in details
    assert f'id="total-due-exact">{format_usd(report.total_due_micro_usd)}<' in details


def test_rate_card_versions_are_never_broken_inside() -> None:
    page = to_html(make_report([row("a", 1, versions=["2026-11-15-cut", "seed-2026-11"])]))
    cells = between(page, "<tbody>", "</tbody>")
    assert '<span class="version">2026-11-15-cut</span>' in cells
    assert '<span class="version">seed-2026-11</span>' in cells
    css = between(page, "<style>", "</style>")
    assert re.search(r"\.version\{[^}]*white-space:nowrap", css)


def test_the_page_has_a_print_stylesheet() -> None:
    css = between(to_html(a_month()), "<style>", "</style>")
    assert re.search(r"@page\{[^}]*margin", css)
    printed = css.split("@media print{", 1)[1]
    for rule in (
        "box-shadow:none",
        "background:none",
        "thead{display:table-header-group}",
        "tr,.chart",
        "break-inside:avoid",
        "details.exact::details-content{content-visibility:visible",
        'a[href]:not([href^="#"])::after{content:" (" attr(href) ")"}',
    ):
        assert rule in printed, rule


PRINT_PROBE = """
const visible = e => e.checkVisibility();
const style = s => getComputedStyle(document.querySelector(s));
return {
  exact_visible: visible(document.getElementById('total-due-exact')),
  thead: style('#chargeback thead').display,
  tfoot: style('#chargeback tfoot').display,
  card_shadow: style('.card').boxShadow,
  header_background: style('#chargeback thead th').backgroundColor,
  versions_on_one_line: [...document.querySelectorAll('#chargeback .version')].every(
    e => e.getBoundingClientRect().height < 1.6 * parseFloat(getComputedStyle(e).fontSize)),
  overflow: document.documentElement.scrollWidth - document.documentElement.clientWidth,
  resources: performance.getEntriesByType('resource').length,
};
"""


def test_in_chromium_the_toggle_is_folded_on_screen_and_open_when_printed(
    tmp_path: Path,
) -> None:
    from tests.support.browser import chromium_session

    path = tmp_path / "chargeback.html"
    path.write_text(to_html(a_month()))
    with chromium_session() as browser:
        browser.open(path.resolve().as_uri())
        screen = browser.execute(PRINT_PROBE)
        emulate = {"cmd": "Emulation.setEmulatedMedia", "params": {"media": "print"}}
        httpx.post(f"{browser.url}/goog/cdp/execute", json=emulate, timeout=30).raise_for_status()
        printed = browser.execute(PRINT_PROBE)
    assert screen["exact_visible"] is False and printed["exact_visible"] is True
    assert screen["card_shadow"] != "none" and printed["card_shadow"] == "none"
    assert printed["header_background"] == "rgba(0, 0, 0, 0)"  # no ink spent on it
    assert printed["thead"] == "table-header-group"  # repeated on every page
    assert printed["tfoot"] == "table-row-group"  # the totals once, at the end
    assert screen["versions_on_one_line"] and printed["versions_on_one_line"]
    assert screen["overflow"] <= 0
    assert screen["resources"] == printed["resources"] == 0
