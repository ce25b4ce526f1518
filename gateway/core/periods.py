"""Billing periods: calendar months in UTC, written ``YYYY-MM``. A job's cost belongs to the
period in which it was submitted, whenever it settles."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from gateway.errors import InvalidRequest

_MONTH = re.compile(r"[0-9]{4}-(0[1-9]|1[0-2])")


def period_of(moment: datetime) -> str:
    utc = moment.astimezone(UTC)
    return f"{utc.year:04d}-{utc.month:02d}"  # a third of strftime's cost, on every request


def month_bounds(month: str) -> tuple[datetime, datetime]:
    """``[start, end)`` of a ``YYYY-MM`` month in UTC (400 for anything else)."""
    invalid = InvalidRequest("month must look like 2026-11", code="invalid_value", param="month")
    # strptime alone would take "2026-1" (and close or report a period that never exists).
    if not _MONTH.fullmatch(month):
        raise invalid
    try:  # year 0000 does not exist; 9999-12 has no end
        start = datetime.strptime(month, "%Y-%m").replace(tzinfo=UTC)
        if start.month == 12:
            return start, start.replace(year=start.year + 1, month=1)
        return start, start.replace(month=start.month + 1)
    except ValueError:
        raise invalid from None
