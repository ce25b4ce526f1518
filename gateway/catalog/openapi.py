"""The submit body as JSON Schema, generated from the catalog (the rules ``validation`` applies),
so the API documentation can never disagree with what the gateway accepts; and examples that
pass those rules. Built once per process, for the OpenAPI document: nothing here runs per
request.

    >>> from gateway.catalog.spec import load_catalog
    >>> schema = submit_body_schema(load_catalog())
    >>> schema["properties"]["duration"]["maximum"]
    15
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

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

# A valid 1×1 PNG (70 bytes): the smallest image a data-URI example can carry.
TINY_PNG_BASE64 = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAC"
    "hwGA60e6kgAAAABJRU5ErkJggg=="
)
EXAMPLE_IMAGE_URL = "https://images.example.com/source/lighthouse.png"
EXAMPLE_PROMPT = "A lighthouse on a cliff at dusk; waves crash below as the camera pushes in."


def submit_body_schema(catalog: Catalog) -> dict[str, Any]:
    """The body of ``POST /v1/videos/generations``: one object schema per catalog model (a
    ``oneOf`` on ``model`` when there are several)."""
    schemas = [model_body_schema(spec) for spec in catalog.models]
    if len(schemas) == 1:
        return schemas[0]  # untitled: generated clients name it after the operation
    for spec, schema in zip(catalog.models, schemas, strict=True):
        schema["title"] = f"{spec.id} request"
    return {
        "oneOf": schemas,
        "description": "The body's rules depend on its model: one schema per catalog model.",
    }


def model_body_schema(spec: ModelSpec) -> dict[str, Any]:
    """One model's submit body: ``model`` and its parameters, nothing else (a typo is a 400)."""
    properties: dict[str, Any] = {
        "model": {
            "type": "string",
            "enum": [spec.id],
            "description": spec.description or f"The model: {spec.id}.",
        }
    }
    for name, rule in spec.params.items():
        properties[name] = _param_schema(spec, name, rule)
    required = ["model", *(name for name, rule in spec.params.items() if rule.required)]
    return {
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": False,
        "description": (
            f"A {spec.id} generation. Any other field is refused (400 unknown_parameter): a "
            "typo must never silently cost money. Defaults apply when a field is omitted."
        ),
    }


def submit_examples(catalog: Catalog) -> dict[str, dict[str, Any]]:
    """Named examples (OpenAPI ``examples``) for each model: text only, a URL image and a
    data-URI image; each passes the model's rules."""
    examples: dict[str, dict[str, Any]] = {}
    several = len(catalog.models) > 1
    for spec in catalog.models:
        prefix = f"{spec.id}: " if several else ""
        key = f"{spec.id}_" if several else ""
        required = _required_values(spec)
        examples[key + "text_only"] = {
            "summary": prefix + "Text only, the model's defaults for everything else",
            "value": required,
        }
        image = spec.pricing.image_param
        if image is None:
            continue
        examples[key + "image_url"] = {
            "summary": prefix + "A source image by URL, a shorter and cheaper video",
            "value": {**required, image: EXAMPLE_IMAGE_URL, **_cheaper(spec)},
        }
        rule = spec.params[image]
        assert isinstance(rule, ImageRule)
        if "image/png" in rule.data_uri_types:
            examples[key + "image_data_uri"] = {
                "summary": prefix + "A source image inline, as a base64 data URI (a 1×1 PNG)",
                "value": {
                    **required,
                    image: f"data:image/png;base64,{TINY_PNG_BASE64}",
                    **_other_choices(spec),
                },
            }
    return examples


def _required_values(spec: ModelSpec) -> dict[str, Any]:
    values: dict[str, Any] = {"model": spec.id}
    for name, rule in spec.params.items():
        if rule.required:
            values[name] = _sample(rule)
    return values


def _cheaper(spec: ModelSpec) -> dict[str, Any]:
    """Five seconds (within the rule's range) at the first resolution: a cheap request."""
    duration = spec.params[spec.pricing.duration_param]
    resolution = spec.params[spec.pricing.resolution_param]
    assert isinstance(duration, NumberRule | IntegerRule)
    assert isinstance(resolution, EnumRule)
    seconds = min(max(Decimal(5), Decimal(duration.minimum)), Decimal(duration.maximum))
    return {
        spec.pricing.duration_param: _json_number(seconds),
        spec.pricing.resolution_param: resolution.values[0],
    }


def _other_choices(spec: ModelSpec) -> dict[str, Any]:
    """Every optional enum that is not the resolution, set to its first value."""
    return {
        name: rule.values[0]
        for name, rule in spec.params.items()
        if isinstance(rule, EnumRule)
        and not rule.required
        and name != spec.pricing.resolution_param
    }


def _sample(rule: ParamRule) -> Any:
    if isinstance(rule, StringRule):
        return EXAMPLE_PROMPT[: rule.max_length]
    if isinstance(rule, NumberRule | IntegerRule):
        return _json_number(Decimal(rule.default if rule.default is not None else rule.minimum))
    if isinstance(rule, EnumRule):
        return rule.default or rule.values[0]
    if isinstance(rule, BooleanRule):
        return bool(rule.default)
    return EXAMPLE_IMAGE_URL


def _param_schema(spec: ModelSpec, name: str, rule: ParamRule) -> dict[str, Any]:
    schema: dict[str, Any]
    if isinstance(rule, StringRule):
        schema = {"type": "string", "maxLength": rule.max_length}
        if rule.min_length:
            schema["minLength"] = rule.min_length
        text = (
            f"Text, {rule.min_length} to {rule.max_length} characters; spaces, zero-width and "
            "other invisible characters do not count towards the minimum."
        )
    elif isinstance(rule, NumberRule):
        schema = {
            "type": "number",
            "minimum": _json_number(rule.minimum),
            "maximum": _json_number(rule.maximum),
        }
        if rule.default is not None:
            schema["default"] = _json_number(rule.default)
        text = (
            f"A JSON number from {_json_number(rule.minimum)} to {_json_number(rule.maximum)} "
            "(not a string, not a boolean)"
        )
        if rule.max_decimal_places is not None:
            schema["x-max-decimal-places"] = rule.max_decimal_places
            text += f", at most {rule.max_decimal_places} decimal places"
        text += "."
    elif isinstance(rule, IntegerRule):
        schema = {"type": "integer", "minimum": rule.minimum, "maximum": rule.maximum}
        if rule.default is not None:
            schema["default"] = rule.default
        text = f"A whole number from {rule.minimum} to {rule.maximum}."
    elif isinstance(rule, BooleanRule):
        schema = {"type": "boolean"}
        if rule.default is not None:
            schema["default"] = rule.default
        text = "true or false."
    elif isinstance(rule, EnumRule):
        schema = {"type": "string", "enum": list(rule.values)}
        if rule.default is not None:
            schema["default"] = rule.default
        text = f"One of {', '.join(rule.values)}."
    else:
        schema = {"type": "string"}
        text = _image_text(rule)
    schema["description"] = " ".join([*_meaning(spec, name, rule), text])
    return schema


def _meaning(spec: ModelSpec, name: str, rule: ParamRule) -> list[str]:
    """What the parameter means, as far as the catalog says: its own description once the
    rules carry one, and what it does to the price."""
    said: str = getattr(rule, "description", None) or ""  # a field the rules may grow
    parts = [said] if said else []
    pricing = spec.pricing
    if name == pricing.duration_param:
        parts.append("Seconds of video to generate; billed per second at the resolution's rate.")
    elif name == pricing.resolution_param:
        parts.append("Output resolution; sets the per-second rate.")
    elif name == pricing.image_param:
        parts.append("Source image to animate; adds the per-image fee.")
    elif rule.required and isinstance(rule, StringRule):
        parts.append("Required.")
    if (
        not rule.required
        and getattr(rule, "default", None) is None
        and not isinstance(rule, ImageRule)
    ):
        parts.append("Optional; when omitted the upstream chooses (e.g. from the source image).")
    return parts


def _image_text(rule: ImageRule) -> str:
    types = ", ".join(t.removeprefix("image/") for t in rule.data_uri_types)
    text = (
        f"An http(s) URL with a host (at most {rule.max_url_length} characters), or a "
        f"data:image/...;base64 URI ({types}; valid base64 of at most {rule.max_bytes} bytes "
        "whose bytes really are the declared type)"
    )
    if rule.upload_ref_pattern is not None:
        text += f", or an uploaded-image reference matching {rule.upload_ref_pattern}"
    return text + ". Optional: without it the video is generated from the prompt alone."


def _json_number(value: Decimal | int) -> int | float:
    """A catalog figure as a JSON number: an int when it is whole (``10``, not ``10.0``)."""
    number = Decimal(value)
    if number == number.to_integral_value():
        return int(number)
    return float(number)
