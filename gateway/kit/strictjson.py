"""Strict JSON for request bodies that cost money.

Stricter than ``json.loads`` on purpose: duplicate keys are refused (we would validate one
value while the upstream might use the other), ``NaN``/``Infinity`` are refused (not JSON),
NUL characters are refused (no field has a use for them and databases reject them), and
non-integral numbers become ``Decimal`` so no float ever enters pricing.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any


class StrictJSONError(ValueError):
    """The body is not strict JSON; the message says why, without echoing the body."""


def _refuse_constant(name: str) -> Any:
    raise StrictJSONError(f"{name} is not valid JSON")


def _object_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise StrictJSONError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _contains_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_contains_nul(k) or _contains_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_contains_nul(item) for item in value)
    return False


def loads_strict(raw: bytes) -> Any:
    """Parse UTF-8 JSON bytes strictly.

    >>> loads_strict(b'{"duration": 2.5}')
    {'duration': Decimal('2.5')}
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise StrictJSONError("body is not valid UTF-8") from exc
    try:
        value = json.loads(
            text,
            parse_float=Decimal,
            parse_constant=_refuse_constant,
            object_pairs_hook=_object_without_duplicates,
        )
        if "\\u0000" in text and _contains_nul(value):  # JSON can only carry NUL escaped
            raise StrictJSONError("NUL characters (\\u0000) are not accepted")
        return value
    except StrictJSONError:
        raise
    except json.JSONDecodeError as exc:
        raise StrictJSONError(f"malformed JSON at line {exc.lineno} column {exc.colno}") from exc
    except (RecursionError, ValueError) as exc:
        # RecursionError: absurd nesting; ValueError: e.g. an integer beyond the digit limit.
        raise StrictJSONError("JSON is nested too deeply or has an oversized number") from exc
