"""The simulator's own price list and arithmetic.

This is the independent record the gateway's ledger is reconciled against, so it deliberately
shares no code with the gateway's pricing: a bug there must show up as a mismatch, not be copied.
Money is ``Decimal`` throughout; a float never touches an amount.
"""

from __future__ import annotations

from decimal import MAX_PREC, ROUND_HALF_UP, Context, Decimal, localcontext

IMAGE_FEE_USD = Decimal("0.05")
"""Fee per source image (seed rate card)."""

PER_SECOND_USD: dict[str, Decimal] = {
    "480p": Decimal("0.096"),
    "720p": Decimal("0.168"),
}
"""Per-second rate of generated video by resolution (seed rate card)."""

ZERO_USD = Decimal("0.000000")
_MICRO = Decimal("0.000001")
# Exact arithmetic whatever the number of digits, so quantize can never overflow the precision.
_EXACT = Context(prec=MAX_PREC, rounding=ROUND_HALF_UP)


def price_usd(*, images: int, video_seconds: Decimal, resolution: str) -> Decimal:
    """Cost of one job: image fees plus seconds at the resolution's rate, half-up to 6 places."""
    with localcontext(_EXACT):
        raw = images * IMAGE_FEE_USD + video_seconds * PER_SECOND_USD[resolution]
        return raw.quantize(_MICRO, rounding=ROUND_HALF_UP)


def format_usd(amount: Decimal) -> str:
    """Render an amount as a plain decimal string with exactly 6 places (never exponent form)."""
    with localcontext(_EXACT):
        return f"{amount.quantize(_MICRO, rounding=ROUND_HALF_UP):f}"


def total_usd(amounts: list[Decimal]) -> Decimal:
    """Exact sum of already-rounded amounts (no second rounding)."""
    with localcontext(_EXACT):
        return sum(amounts, ZERO_USD)
