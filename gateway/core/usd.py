"""USD amounts as the gateway writes and reads them: integers in micro-USD (1 USD =
1,000,000), formatted with six places, parsed exactly from plain decimal notation. The bottom
of the gateway: it imports nothing of it, so even the error tree can format its figures."""

from __future__ import annotations

import re
from decimal import Decimal
from fractions import Fraction

MICROS_PER_USD = 1_000_000
# Amounts are stored in signed 64-bit columns; stay far from the edge so sums cannot overflow.
MAX_MICRO_USD = 10**15  # one billion USD


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
