"""Billing periods: calendar months in UTC, written ``YYYY-MM``. A job's cost belongs to the
period in which it was submitted, whenever it settles."""

from __future__ import annotations

from datetime import UTC, datetime


def period_of(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m")
