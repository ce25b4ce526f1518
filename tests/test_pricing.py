"""Pricing in integer micro-USD: image fee + duration × per-second rate, half-up once."""

from __future__ import annotations

import ast
import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from gateway.catalog.spec import load_catalog
from gateway.catalog.validation import parse_submission
from gateway.core.pricing import BillableUnits, RateCard, price_request
from gateway.core.usd import format_usd, parse_usd
from gateway.errors import RateCardMissing
from tests.support.api import MODEL

SEED = load_catalog().get(MODEL)
assert SEED is not None
CARD = SEED.pricing.rate_card.to_rate_card()
ODD = RateCard("odd", datetime(2026, 1, 1, tzinfo=UTC), 33_333, {"480p": 96_001, "720p": 7})


def price(body: dict[str, object], card: RateCard = CARD) -> int:
    request = parse_submission(
        json.dumps({"model": SEED.id, "prompt": "p", **body}).encode(), load_catalog()
    )
    return price_request(request.billable_units(), card)


@pytest.mark.parametrize(
    ("body", "micro_usd"),
    [
        ({}, 1_680_000),  # defaults: 10 s at 720p, no image
        ({"image": "https://e.com/a.png"}, 1_730_000),
        ({"resolution": "480p"}, 960_000),
        ({"resolution": "480p", "image": "https://e.com/a.png"}, 1_010_000),
        ({"duration": 1}, 168_000),
        ({"duration": 15}, 2_520_000),
        ({"duration": 1, "resolution": "480p"}, 96_000),
        ({"duration": 15, "resolution": "480p"}, 1_440_000),
        ({"duration": 15, "resolution": "720p", "image": "https://e.com/a.png"}, 2_570_000),
        ({"duration": 2.5}, 420_000),
        ({"duration": 2.5, "resolution": "480p"}, 240_000),
        ({"duration": 1.001}, 168_168),
        ({"duration": 14.999}, 2_519_832),
        ({"duration": 7.125, "resolution": "480p"}, 684_000),
        ({"duration": 3.333}, 559_944),
        ({"duration": 1.0}, 168_000),
        ({"duration": 10, "aspect_ratio": "9:16"}, 1_680_000),  # aspect ratio is free
        ({"duration": 5, "image": "file-abcdef123"}, 890_000),  # uploaded image: same fee
    ],
)
def test_seed_rate_card(body: dict[str, object], micro_usd: int) -> None:
    assert price(body) == micro_usd


@pytest.mark.parametrize(
    ("duration", "resolution", "images", "micro_usd"),
    [
        # 1.5 × 7 = 10.5 → half-up to 11 (banker's rounding would give 10)
        (Decimal("1.5"), "720p", 0, 11),
        (Decimal("2.5"), "720p", 0, 18),  # 17.5 → 18 (banker's: 18)
        (Decimal("1.001"), "480p", 0, 96_097),  # 96097.001 → 96097
        (Decimal("1.005"), "480p", 1, 96_481 + 33_333),  # 96481.005 → 96481
        (Decimal("1.0005"), "480p", 0, 96_049),  # 96049.0005 → 96049
        (Decimal("3.5"), "720p", 2, 66_666 + 25),  # 24.5 → 25
        (Decimal("0.5"), "720p", 0, 4),  # 3.5 → 4
    ],
)
def test_rounds_half_up_once(
    duration: Decimal, resolution: str, images: int, micro_usd: int
) -> None:
    assert price_request(BillableUnits(duration, resolution, images), ODD) == micro_usd


def test_result_is_an_int_never_a_float() -> None:
    value = price_request(BillableUnits(Decimal("2.5"), "720p", 1), CARD)
    assert type(value) is int


def test_unknown_resolution_and_negative_units_are_refused() -> None:
    # A card without the resolution is the operator's gap, answered 503 rate_card_missing.
    with pytest.raises(RateCardMissing, match="1080p") as refused:
        price_request(BillableUnits(5, "1080p", 0), CARD)
    assert refused.value.status_code == 503
    assert refused.value.code == "rate_card_missing"
    with pytest.raises(ValueError, match="negative"):
        price_request(BillableUnits(Decimal(-1), "720p", 0), CARD)


@pytest.mark.parametrize(
    ("micro", "text"),
    [(0, "0.000000"), (1, "0.000001"), (1_730_000, "1.730000"), (123_456_789_012, "123456.789012")],
)
def test_format_usd(micro: int, text: str) -> None:
    assert format_usd(micro) == text
    assert parse_usd(text) == micro


@pytest.mark.parametrize("micro", [-1, -999_999, -1_000_000, -1_730_001, -123_456_789_012])
def test_format_usd_of_negative_amounts(micro: int) -> None:
    """Corrections can be negative: the sign goes in front, the digits are exact."""
    text = format_usd(micro)
    assert text.startswith("-")
    assert Decimal(text) == Decimal(micro).scaleb(-6)
    assert text == f"{Decimal(micro).scaleb(-6):.6f}"


@pytest.mark.parametrize(
    "bad",
    [
        "-1",
        "abc",
        "1.0000001",
        "NaN",
        "Infinity",
        "1e30",
        "",
        "1e3",
        "1E+3",
        "1_000",
        "+5",
        "1 000",
        ".5",
    ],
)
def test_parse_usd_refuses_what_it_cannot_represent_exactly(bad: str) -> None:
    with pytest.raises(ValueError, match="USD amount"):
        parse_usd(bad)


def test_no_float_in_the_money_path() -> None:
    """Static check: the money code (pricing, rate cards, quotas, holds, settlement, the
    catalog's money types) never touches float or true division."""
    root = Path(__file__).resolve().parent.parent / "gateway"
    # reconciler.py and snapshot.py use float for time (backoff, ages in seconds), not money.
    timing = {"reconciler.py", "snapshot.py"}
    money = [p for p in (root / "ledger").glob("*.py") if p.name not in timing]
    assert len(money) >= 8
    for path in [*money, root / "catalog" / "spec.py"]:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            assert not (isinstance(node, ast.Name) and node.id == "float"), f"float in {path}"
            assert not (isinstance(node, ast.Constant) and isinstance(node.value, float)), (
                f"float literal in {path}"
            )
            if isinstance(node, ast.BinOp):
                assert not isinstance(node.op, ast.Div), f"true division in {path}:{node.lineno}"
