"""Billing periods: calendar months in UTC, written ``YYYY-MM``. A job's cost belongs to the
period in which it was submitted, whenever it settles."""

from __future__ import annotations

from datetime import UTC, datetime

from gateway.errors import InvalidRequest


def period_of(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m")


def month_bounds(month: str) -> tuple[datetime, datetime]:
    """``[start, end)`` of a ``YYYY-MM`` month in UTC (400 for anything else)."""
    try:
        start = datetime.strptime(month, "%Y-%m").replace(tzinfo=UTC)
    except ValueError:
        raise InvalidRequest(
            "month must look like 2026-11", code="invalid_value", param="month"
        ) from None
    if start.month == 12:
        return start, start.replace(year=start.year + 1, month=1)
    return start, start.replace(month=start.month + 1)
