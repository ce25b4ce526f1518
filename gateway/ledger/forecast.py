"""Month-end spend forecasts: where a level's spend is heading at the period's run rate.

For a period ``[start, end)`` (a UTC calendar month, ``L = end - start``) read at ``now``, with
``e = now - start`` clamped to ``[0, L]`` (both in whole microseconds)::

    window     = max(e, MIN_WINDOW)                  (never shorter than a day)
    projected  = captured × L / window               (rounded half-up to the micro-dollar)
    forecast   = max(projected, captured + held)

- The run rate is what was *captured* (billed) so far over the time elapsed.
- The window is at least ``MIN_WINDOW`` (one day): in a month's first hours the spend so far
  is extrapolated as if it were a whole day's, so a first job at 00:05 on the 1st forecasts
  about 30 × its price, never 8,600 ×.
- Never below what is already captured or held: held money is, in the normal case, money
  about to be captured, and a month cannot end below its captures.

Integers throughout (micro-USD, microseconds): no float is involved.

>>> from datetime import UTC, datetime
>>> def at(*when: int) -> datetime:
...     return datetime(*when, tzinfo=UTC)
>>> month_end_forecast(10_000_000, 0, period="2026-11", now=at(2026, 11, 16))  # half-way
20000000
>>> month_end_forecast(1_000_000, 0, period="2026-11", now=at(2026, 11, 1, 0, 5))  # a day's
30000000
>>> month_end_forecast(5_000_000, 2_000_000, period="2026-11", now=at(2026, 11, 30, 23))
7000000
"""

from __future__ import annotations

from datetime import datetime, timedelta
from functools import lru_cache

from gateway.core.periods import month_bounds

MIN_WINDOW = timedelta(days=1)
"""The shortest time a run rate is measured over (see the module's docstring)."""
_MICROSECOND = timedelta(microseconds=1)


@lru_cache(maxsize=4)
def _bounds(period: str) -> tuple[datetime, int]:
    """The period's start and its length in microseconds (parsed once per period)."""
    start, end = month_bounds(period)
    return start, (end - start) // _MICROSECOND


def month_end_forecast(captured: int, held: int, *, period: str, now: datetime) -> int:
    """The month-end spend of a level that has ``captured`` and ``held`` micro-USD in
    ``period`` so far, projected from the period's run rate at ``now`` (micro-USD)."""
    start, length = _bounds(period)
    elapsed = min(max((now - start) // _MICROSECOND, 0), length)
    window = max(elapsed, MIN_WINDOW // _MICROSECOND)
    projected = (2 * captured * length + window) // (2 * window)  # half-up, captured >= 0
    return max(projected, captured + held)
