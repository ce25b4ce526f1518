"""Pricing: what a request costs, in integer micro-USD (1 USD = 1,000,000 micro-USD).

Cost = image fee × images + duration × per-second rate of the resolution, computed exactly
(``Fraction``) and rounded half-up to the micro-dollar once, here. No float is ever involved.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from fractions import Fraction

from gateway.errors import RateCardMissing

ESTIMATE_HEADER = "X-Gateway-Cost-Estimate-USD"
"""Response header carrying a submit's price (the amount held)."""
_HALF = Fraction(1, 2)


@dataclass(frozen=True)
class RateCard:
    """One version of a model's prices. Amounts are micro-USD."""

    version: str
    effective_from: datetime
    image_fee_micro_usd: int
    per_second_micro_usd: Mapping[str, int]


@dataclass(frozen=True)
class BillableUnits:
    """What a request asks the upstream to produce, as far as money is concerned."""

    duration_seconds: Decimal | int
    resolution: str
    image_count: int


def price_request(units: BillableUnits, card: RateCard) -> int:
    """Price in micro-USD, rounded half-up once.

    >>> card = RateCard("v1", datetime(2026, 1, 1), 50_000, {"720p": 168_000})
    >>> price_request(BillableUnits(Decimal("2.5"), "720p", 1), card)
    470000
    """
    try:
        per_second = card.per_second_micro_usd[units.resolution]
    except KeyError:
        raise RateCardMissing(
            f"rate card {card.version} has no rate for resolution {units.resolution!r}; the "
            "request cannot be priced, so it was not forwarded"
        ) from None
    if units.duration_seconds < 0 or units.image_count < 0:
        raise ValueError("billable units cannot be negative")
    exact = Fraction(units.duration_seconds) * per_second
    seconds_cost = math.floor(exact + _HALF)  # half-up for non-negative amounts
    return units.image_count * card.image_fee_micro_usd + seconds_cost
