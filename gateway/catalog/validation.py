"""Validation of a submit body against the model's parameter rules (its catalog entry).

Everything a client could get wrong is refused with a 400 naming the field and the rule,
before anything is priced or forwarded: a typo must never silently cost money. Error codes:

    invalid_json          body is not strict JSON (malformed, duplicate keys, NaN, not UTF-8)
    invalid_body          body is JSON but not an object
    missing_parameter     a required field is absent (``model``, ``prompt``)
    unknown_model         ``model`` is not in the gateway's catalog
    unknown_parameter     a field the model does not have
    invalid_type          wrong JSON type (``"duration": "5"``, ``true``)
    out_of_range          number outside [minimum, maximum]
    invalid_precision     number with more decimal places than the rule allows
    invalid_length        string shorter or longer than allowed (empty prompt)
    invalid_value         not one of the enum's values
    invalid_image         image is neither URL, data URI nor upload reference
    invalid_image_url     not http(s), no host, too long, or contains spaces/control chars
    invalid_data_uri      malformed data URI, or not base64
    unsupported_image_type data URI type not allowed
    invalid_base64        data URI payload is not valid base64
    image_too_large       decoded image over the size cap
    image_type_mismatch   bytes are not the declared image type
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from gateway.catalog.images import check_image
from gateway.catalog.spec import (
    BooleanRule,
    Catalog,
    EnumRule,
    ImageRule,
    IntegerRule,
    ModelSpec,
    NumberRule,
    ParamRule,
    StringRule,
)
from gateway.core.pricing import BillableUnits
from gateway.errors import InvalidRequest
from gateway.kit.strictjson import StrictJSONError, loads_strict

_TYPE_NAMES = {
    bool: "a boolean",
    str: "a string",
    int: "a number",
    Decimal: "a number",
    list: "an array",
    dict: "an object",
    type(None): "null",
}


@dataclass(frozen=True)
class ValidatedRequest:
    """A submit body that passed every rule; ``values`` has the model's defaults applied."""

    model: ModelSpec
    values: Mapping[str, Any]

    def billable_units(self) -> BillableUnits:
        pricing = self.model.pricing
        image_count = 0
        if pricing.image_param is not None and pricing.image_param in self.values:
            image_count = 1
        return BillableUnits(
            duration_seconds=self.values[pricing.duration_param],
            resolution=self.values[pricing.resolution_param],
            image_count=image_count,
        )


def parse_submission(raw: bytes, catalog: Catalog) -> ValidatedRequest:
    """Strict-parse then validate a raw submit body."""
    try:
        body = loads_strict(raw)
    except StrictJSONError as exc:
        raise InvalidRequest(
            f"request body is not valid JSON: {exc}", code="invalid_json"
        ) from None
    return validate_submission(body, catalog)


def validate_submission(body: Any, catalog: Catalog) -> ValidatedRequest:
    if not isinstance(body, dict):
        raise InvalidRequest(
            f"request body must be a JSON object, not {_describe(body)}", code="invalid_body"
        )
    model_id = body.get("model")
    if model_id is None:
        raise InvalidRequest("model is required", code="missing_parameter", param="model")
    if not isinstance(model_id, str):
        raise InvalidRequest(
            f"model must be a string, not {_describe(model_id)}", code="invalid_type", param="model"
        )
    spec = catalog.get(model_id)
    if spec is None:
        raise InvalidRequest(
            f"model must be one of: {', '.join(catalog.model_ids())}",
            code="unknown_model",
            param="model",
        )

    for name in body:
        if name != "model" and name not in spec.params:
            allowed = ", ".join(["model", *spec.params])
            raise InvalidRequest(
                f"unknown parameter {_clip(name)!r} for {spec.id}; allowed: {allowed}",
                code="unknown_parameter",
                param=_clip(name),
            )

    values: dict[str, Any] = {"model": model_id}
    for name, rule in spec.params.items():
        if name in body:
            values[name] = _check_param(name, body[name], rule)
        elif rule.required:
            raise InvalidRequest(f"{name} is required", code="missing_parameter", param=name)
        else:
            default = getattr(rule, "default", None)
            if default is not None:
                values[name] = default
    return ValidatedRequest(model=spec, values=values)


def _check_param(name: str, value: Any, rule: ParamRule) -> Any:
    if isinstance(rule, StringRule):
        return _check_string(name, value, rule)
    if isinstance(rule, NumberRule):
        return _check_number(name, value, rule)
    if isinstance(rule, IntegerRule):
        return _check_integer(name, value, rule)
    if isinstance(rule, BooleanRule):
        if not isinstance(value, bool):
            raise _wrong_type(name, "a boolean", value)
        return value
    if isinstance(rule, EnumRule):
        if not isinstance(value, str):
            raise _wrong_type(name, "a string", value)
        if value not in rule.values:
            raise InvalidRequest(
                f"{name} must be one of {', '.join(rule.values)}; got {_clip(value)!r}",
                code="invalid_value",
                param=name,
            )
        return value
    if isinstance(rule, ImageRule):
        if not isinstance(value, str):
            raise _wrong_type(name, "a string", value)
        check_image(value, rule, name)
        return value
    raise AssertionError(f"unhandled rule {rule!r}")  # pragma: no cover - catalog types are closed


# Characters that show nothing: spaces and separators (Z*), controls (Cc), format characters
# such as U+200B ZERO WIDTH SPACE and U+FEFF (Cf), unassigned code points (Cn), lone
# combining marks (Mn, Me), and the letters and symbols known to render blank.
_INVISIBLE_CATEGORIES = frozenset({"Zs", "Zl", "Zp", "Cc", "Cf", "Cn", "Cs", "Mn", "Me"})
_BLANK_GLYPHS = frozenset("\u115f\u1160\u3164\uffa0\u2800\u034f\u17b4\u17b5")


def _visible_length(text: str, enough: int) -> int:
    """How many characters of ``text`` a person would see, counting up to ``enough``."""
    seen = 0
    for char in text:
        if char not in _BLANK_GLYPHS and unicodedata.category(char) not in _INVISIBLE_CATEGORIES:
            seen += 1
            if seen >= enough:
                break
    return seen


def _check_string(name: str, value: Any, rule: StringRule) -> str:
    if not isinstance(value, str):
        raise _wrong_type(name, "a string", value)
    # A prompt of invisible characters only (U+200B...) is blank: it must not be billed.
    length = _visible_length(value, rule.min_length) if rule.min_length else len(value)
    if length < rule.min_length or len(value) > rule.max_length:
        raise InvalidRequest(
            f"{name} must be between {max(rule.min_length, 0)} and {rule.max_length} "
            f"characters (non-blank); got {len(value)}",
            code="invalid_length",
            param=name,
        )
    return value


def _check_number(name: str, value: Any, rule: NumberRule) -> Decimal | int:
    if isinstance(value, bool) or not isinstance(value, int | Decimal):
        raise _wrong_type(name, "a number", value)
    number: Decimal | int = value
    if not rule.minimum <= number <= rule.maximum:
        raise _out_of_range(name, rule, _clip(str(value)))
    if rule.max_decimal_places is not None and isinstance(number, Decimal):
        step = Decimal(1).scaleb(-rule.max_decimal_places)
        if number != number.quantize(step):
            raise InvalidRequest(
                f"{name} may have at most {rule.max_decimal_places} decimal places",
                code="invalid_precision",
                param=name,
            )
    return number


def _check_integer(name: str, value: Any, rule: IntegerRule) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _wrong_type(name, "an integer", value)
    if not rule.minimum <= value <= rule.maximum:
        raise _out_of_range(name, rule, str(value))
    return value


def _out_of_range(name: str, rule: NumberRule | IntegerRule, shown: str) -> InvalidRequest:
    return InvalidRequest(
        f"{name} must be between {rule.minimum} and {rule.maximum}; got {shown}",
        code="out_of_range",
        param=name,
    )


def _wrong_type(name: str, expected: str, value: Any) -> InvalidRequest:
    return InvalidRequest(
        f"{name} must be {expected}, not {_describe(value)}", code="invalid_type", param=name
    )


def _describe(value: Any) -> str:
    return _TYPE_NAMES.get(type(value), type(value).__name__)


def _clip(text: str, limit: int = 64) -> str:
    return text if len(text) <= limit else text[:limit] + "…"
