"""Pricing: what a request costs, in integer micro-USD (1 USD = 1,000,000 micro-USD).

Cost = image fee × images + duration × per-second rate of the resolution, computed exactly
(``Fraction``) and rounded half-up to the micro-dollar once, here. No float is ever involved.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from fractions import Fraction

MICROS_PER_USD = 1_000_000
ESTIMATE_HEADER = "X-Gateway-Cost-Estimate-USD"
"""Response header carrying a submit's price (the amount held)."""
# Amounts are stored in signed 64-bit columns; stay far from the edge so sums cannot overflow.
MAX_MICRO_USD = 10**15  # one billion USD
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
        raise ValueError(
            f"rate card {card.version} has no rate for resolution {units.resolution!r}"
        ) from None
    if units.duration_seconds < 0 or units.image_count < 0:
        raise ValueError("billable units cannot be negative")
    exact = Fraction(units.duration_seconds) * per_second
    seconds_cost = math.floor(exact + _HALF)  # half-up for non-negative amounts
    return units.image_count * card.image_fee_micro_usd + seconds_cost


def format_usd(micro_usd: int) -> str:
    """Micro-USD as a decimal string with 6 places: ``1730000`` → ``"1.730000"``.

    Integer arithmetic only (it runs for every line of a large export)."""
    dollars, micro = divmod(abs(micro_usd), 1_000_000)
    return f"{'-' if micro_usd < 0 else ''}{dollars}.{micro:06d}"


_PLAIN_DECIMAL = re.compile(r"[0-9]+(\.[0-9]+)?")


def parse_usd(text: str) -> int:
    """A USD amount as written by people (``"100"``, ``"12.50"``) → micro-USD.

    Plain decimal notation only: an exponent (``"1e3"``), a sign, digit separators
    (``"1_000"``) or inner spaces are refused, as are more decimals than a micro-dollar,
    rather than read in a way the writer may not have meant (a budget 1000× off).
    """
    stripped = text.strip()
    if stripped.startswith("-") and _PLAIN_DECIMAL.fullmatch(stripped[1:]):
        raise ValueError(f"USD amount must be a non-negative number: {text!r}")
    if not _PLAIN_DECIMAL.fullmatch(stripped):
        raise ValueError(
            f"not a USD amount in plain decimal notation (such as 250 or 12.50): {text[:40]!r}"
        )
    amount = Decimal(stripped)
    micros = Fraction(amount) * MICROS_PER_USD
    if micros.denominator != 1:
        raise ValueError(f"USD amount has more than 6 decimal places: {text!r}")
    if micros > MAX_MICRO_USD:
        raise ValueError(f"USD amount is too large: {text!r}")
    return int(micros)
