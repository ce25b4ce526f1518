"""The pictures of the HTML chargeback in ``docs/``: the page as a browser shows it, and as it
prints. Re-run it after changing the page's templates, then look at the images.

    .venv/bin/python benchmarks/render_report_images.py            # writes docs/chargeback-*.png
    .venv/bin/python benchmarks/render_report_images.py --out /tmp/look --paper letter

The month is made up here, in memory, with a fixed seed (no database): nine teams over four
cost centers, every day of November 2026, a rate change on the 15th, open jobs, partial videos
(amounts that are not whole cents) and corrections to a closed October. The page is rendered by
the gateway's own ``to_html``; headless Chromium (Debian ``chromium``, ``chromium-driver``)
takes the full-page screenshot and prints the PDF (``tests.support.browser``: WebDriver on
loopback, and a browser that resolves no host but 127.0.0.1);
``pdftoppm`` (Debian ``poppler-utils``) turns the PDF's pages into PNGs.
"""

from __future__ import annotations

import argparse
import base64
import random
import shutil
import subprocess
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.ledger.models import EntryKind  # noqa: E402
from gateway.reports.chargeback import (  # noqa: E402
    ChargebackReport,
    ChargebackRow,
    DailySpend,
    ReportQuery,
)
from gateway.reports.corrections import CorrectionLine  # noqa: E402
from gateway.reports.html import to_html  # noqa: E402
from tests.support.browser import chromium_session  # noqa: E402

MONTH = "2026-11"
CUT = 15  # the day the second rate card takes effect
RATES = {  # micro-USD per second of video, per image
    "seed-2026-11": {"480p": 80_000, "720p": 150_000, "image": 50_000},
    "2026-11-15-cut": {"480p": 70_000, "720p": 130_000, "image": 40_000},
}
TEAMS = [  # name, cost center, jobs a weekday, first day
    ("brand-studio", "CC-1040 Marketing", 420, 1),
    ("growth-marketing", "CC-1040 Marketing", 260, 1),
    ("mobile-app", "CC-2210 Product", 180, 1),
    ("creator-tools", "CC-2210 Product", 150, 1),
    ("localization-and-dubbing-emea", "CC-3100 Operations", 90, 1),
    ("research-video-models", "CC-4000 R&D", 60, 1),
    ("support-macros", "CC-3100 Operations", 25, 1),
    ("sales-demos", "CC-5200 Sales", 12, 1),
    ("intern-sandbox", "CC-4000 R&D", 8, 18),
]
PAPER_CM = {"a4": (29.7, 21.0), "letter": (27.94, 21.59)}  # landscape, as the page asks


def _price(ms: int, per_second: int) -> int:
    """Micro-USD for ``ms`` of video, half-up (as the gateway prices)."""
    return (ms * per_second + 500) // 1000


def sample_report(seed: int = 2026) -> ChargebackReport:
    """A month of nine teams, settled job by job the way the ledger would record it."""
    rng = random.Random(seed)
    rows, daily = [], []
    for name, cost_center, per_day, first_day in TEAMS:
        row = ChargebackRow(team=name, cost_center=cost_center, video_ms={"480p": 0, "720p": 0})
        versions = set()
        for day in range(first_day, 31):
            weekday = datetime(2026, 11, day, tzinfo=UTC).weekday()
            jobs = int(per_day * (0.35 if weekday >= 5 else 1) * rng.uniform(0.6, 1.4))
            version = "seed-2026-11" if day < CUT else "2026-11-15-cut"
            rates = RATES[version]
            captured = 0
            for _ in range(jobs):
                versions.add(version)
                resolution = rng.choice(["480p", "720p", "720p"])
                ms = rng.choice([2_500, 5_000, 8_000, 10_000, 15_000])
                images = rng.choice([0, 0, 1])
                estimate = _price(ms, rates[resolution]) + images * rates["image"]
                row.jobs_submitted += 1
                roll = rng.random()
                if roll < 0.04 and day >= 29:
                    row.jobs_open += 1
                    row.held_micro_usd += estimate
                    continue
                if roll < 0.22:
                    row.jobs_released += 1
                    continue
                if roll < 0.27:
                    row.jobs_billed_moderated += 1
                else:
                    row.jobs_billed += 1
                if rng.random() < 0.1:  # a shorter video than asked for: billed as produced
                    ms = rng.randrange(1_000, ms)
                row.video_ms[resolution] += ms
                row.images += images
                captured += _price(ms, rates[resolution]) + images * rates["image"]
            row.captured_micro_usd += captured
            if captured:
                daily.append(DailySpend(f"{MONTH}-{day:02d}", name, captured))
        row.rate_card_versions = sorted(versions)
        rows.append(row)
    totals = ChargebackRow(team=None, cost_center=None)
    for row in rows:
        totals.add(row)
    daily.sort(key=lambda point: (point.day, point.group))
    return ChargebackReport(
        query=ReportQuery(month=MONTH, daily=True),
        generated_at=datetime(2026, 12, 2, 9, 14, tzinfo=UTC),
        closed_at=datetime(2026, 12, 2, 9, 0, tzinfo=UTC),
        rows=rows,
        totals=totals,
        corrections=_corrections(rng),
        daily=daily,
        resolutions=["480p", "720p"],
    )


def _corrections(rng: random.Random) -> list[CorrectionLine]:
    """October's jobs settled after October closed (on 1 November, late in the night)."""
    lines = []
    recorded = datetime(2026, 11, 1, 0, 12, tzinfo=UTC)
    for team, cost_center, kind, amount in [
        ("brand-studio", "CC-1040 Marketing", EntryKind.CAPTURE, 1_237_500),
        ("brand-studio", "CC-1040 Marketing", EntryKind.CAPTURE, 2_250_000),
        ("mobile-app", "CC-2210 Product", EntryKind.RELEASE, 0),
        ("research-video-models", "CC-4000 R&D", EntryKind.CAPTURE, 783_125),
    ]:
        recorded += timedelta(minutes=rng.randrange(3, 40))
        lines.append(
            CorrectionLine(
                original_period="2026-10",
                team=team,
                cost_center=cost_center,
                kind=kind,
                job_id=f"{rng.getrandbits(128):032x}",
                upstream_job_id=f"vid_{rng.getrandbits(96):024x}",
                amount_micro_usd=amount,
                recorded_at=recorded,
            )
        )
    return lines


def _call(session: str, path: str, body: dict[str, Any] | None = None) -> Any:
    response = httpx.post(session + path, json=body or {}, timeout=60)
    value = response.json()["value"]
    if response.status_code != 200:
        raise RuntimeError(f"WebDriver {path}: {value}")
    return value


def screenshot(session: str, page: Path, out: Path, width: int) -> list[str]:
    """The whole page at ``width`` CSS pixels (the window grown to the page's height); and
    what does not fit that width (each scrolled box, by id)."""
    _call(session, "/window/rect", {"width": width, "height": 1000})
    _call(session, "/url", {"url": page.resolve().as_uri()})
    height = _call(session, "/execute/sync", {"script": _HEIGHT, "args": []})
    _call(session, "/window/rect", {"width": width, "height": int(height) + 140})
    shot = httpx.get(session + "/screenshot", timeout=60).json()["value"]
    out.write_bytes(base64.b64decode(shot))
    overflowing: list[str] = _call(session, "/execute/sync", {"script": _OVERFLOW, "args": []})
    return overflowing


_HEIGHT = "return Math.ceil(document.documentElement.getBoundingClientRect().height) + 32;"
_OVERFLOW = """
const boxes = [document.documentElement, ...document.querySelectorAll('.wide')];
return boxes.filter(b => b.scrollWidth > b.clientWidth + 1)
  .map(b => `${b.firstElementChild ? b.firstElementChild.id : 'page'}: `
    + `${b.scrollWidth}px in ${b.clientWidth}px`);
"""


def print_pages(session: str, page: Path, out: Path, paper: str, dpi: int) -> list[Path]:
    """The page printed on ``paper`` (margins from its own ``@page`` rule), as PNGs."""
    width, height = PAPER_CM[paper]
    _call(session, "/url", {"url": page.resolve().as_uri()})
    pdf = _call(
        session,
        "/print",
        {
            "page": {"width": width, "height": height},
            "margin": {"top": 0, "bottom": 0, "left": 0, "right": 0},
            "background": False,
            "shrinkToFit": False,
        },
    )
    pdf_path = out.with_suffix(".pdf")
    pdf_path.write_bytes(base64.b64decode(pdf))
    if shutil.which("pdftoppm") is None:
        sys.exit("needs pdftoppm (Debian package poppler-utils)")
    with tempfile.TemporaryDirectory() as scratch:
        prefix = Path(scratch) / "page"
        subprocess.run(["pdftoppm", "-png", "-r", str(dpi), pdf_path, prefix], check=True)
        pages = sorted(Path(scratch).glob("page-*.png"), key=lambda p: int(p.stem.split("-")[1]))
        written = []
        for number, image in enumerate(pages, start=1):
            target = out.with_name(f"{out.name}-page{number}.png")
            shutil.move(image, target)
            written.append(target)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs", help="folder for the images")
    parser.add_argument("--paper", choices=sorted(PAPER_CM), default="a4")
    parser.add_argument("--width", type=int, default=1280, help="the screen's width in px")
    parser.add_argument("--dpi", type=int, default=80, help="resolution of the printed pages")
    parser.add_argument("--keep-pdf", action="store_true", help="keep the printed PDF")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        page = Path(scratch) / "chargeback.html"
        page.write_text(to_html(sample_report()))
        if args.keep_pdf:
            shutil.copy(page, args.out / "chargeback-report.html")
        for stale in args.out.glob("chargeback-report-print-page*.png"):
            stale.unlink()
        with chromium_session() as browser:
            session = browser.url
            for box in screenshot(session, page, args.out / "chargeback-report.png", args.width):
                print(f"does not fit {args.width}px: {box}", file=sys.stderr)
            printed = print_pages(
                session, page, args.out / "chargeback-report-print", args.paper, args.dpi
            )
        pdf = (args.out / "chargeback-report-print").with_suffix(".pdf")
        if not args.keep_pdf:
            pdf.unlink()
    for path in [args.out / "chargeback-report.png", *printed]:
        print(path)


if __name__ == "__main__":
    main()
