"""One entry point for the chargeback in every format, for the CLI and the admin API alike."""

from __future__ import annotations

import io
import json
import operator
from collections.abc import AsyncIterator
from typing import Literal

from sqlalchemy.ext.asyncio import AsyncSession

from gateway.config import Settings
from gateway.kit.spreadsheet import csv_writer
from gateway.reports.chargeback import ReportQuery, chargeback
from gateway.reports.focus import COLUMNS, FocusIdentity, focus_rows
from gateway.reports.formats import to_csv, to_json
from gateway.reports.html import to_html

Format = Literal["json", "csv", "html", "focus"]
MEDIA_TYPES: dict[str, str] = {
    "json": "application/json",
    "csv": "text/csv; charset=utf-8",
    "html": "text/html; charset=utf-8",
    "focus": "text/csv; charset=utf-8",
}


def focus_identity(settings: Settings) -> FocusIdentity:
    return FocusIdentity(
        billing_account_id=settings.focus_billing_account_id,
        billing_account_name=settings.focus_billing_account_name,
        invoice_issuer=settings.focus_invoice_issuer,
        provider=settings.focus_provider,
        publisher=settings.focus_publisher,
        service_name=settings.focus_service_name,
    )


async def render_report(session: AsyncSession, query: ReportQuery, fmt: Format) -> str:
    """JSON, CSV or HTML (aggregates: small whatever the ledger's size)."""
    report = await chargeback(session, query)
    if fmt == "json":
        return json.dumps(to_json(report), indent=2) + "\n"
    if fmt == "csv":
        return to_csv(report)
    return to_html(report)


async def focus_csv_chunks(
    session: AsyncSession, month: str, settings: Settings, *, team: str | None = None
) -> AsyncIterator[str]:
    """The FOCUS export as CSV text in chunks (rows are streamed from the database)."""
    buffer = io.StringIO()
    writer = csv_writer(buffer)
    writer.writerow(COLUMNS)
    # Every row has every column (tested; a missing one would raise KeyError here, not
    # write an empty cell). Picking them in C rather than through csv.DictWriter's
    # per-column generator saves a third of the export's time on a large month.
    in_order = operator.itemgetter(*COLUMNS)
    async for row in focus_rows(session, month, focus_identity(settings), team=team):
        writer.writerow(in_order(row))
        if buffer.tell() > 64 * 1024:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()
