"""Request validation for ``POST /v1/videos/generations``, written independently of the gateway.

The simulator stands in for the real upstream, so it must be no stricter than the gateway in
front of it: anything the gateway forwards is accepted here. Hence no prompt length cap, no image
size cap and no check that image bytes match the declared type; those are the gateway's job.
Optional fields given as JSON ``null`` count as absent for the same reason.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

MODEL_ID = "grok-imagine-video-1-5"
DEFAULT_DURATION = Decimal(10)
DEFAULT_RESOLUTION = "720p"
RESOLUTIONS = frozenset({"480p", "720p"})
ASPECT_RATIOS = frozenset({"1:1", "16:9", "9:16", "4:3", "3:4", "3:2", "2:3"})
ALLOWED_FIELDS = frozenset({"model", "prompt", "image", "duration", "resolution", "aspect_ratio"})
MIN_DURATION = Decimal(1)
MAX_DURATION = Decimal(15)

_UPLOAD_REF = re.compile(r"(?:file|upload)[-_][A-Za-z0-9_-]{6,128}")
_DATA_URI = re.compile(r"data:image/[^;,]+(?:;[^,]*)?;base64,(.*)", re.IGNORECASE | re.DOTALL)
_WHITESPACE = re.compile(r"\s+")
_BASE64 = re.compile(r"[A-Za-z0-9+/_-]*=*")


@dataclass(frozen=True, slots=True)
class Submission:
    """A valid generation request, defaults applied."""

    prompt: str
    has_image: bool
    duration: Decimal
    resolution: str
    aspect_ratio: str | None


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a request is refused (HTTP 400)."""

    code: str
    param: str | None
    message: str


def parse_submission(body: bytes) -> Submission | Rejection:
    """Decode the body, then validate it; never raises on client input."""
    document = _decode_json(body)
    if isinstance(document, Rejection):
        return document
    if not isinstance(document, dict):
        return Rejection("invalid_body", None, "request body must be a JSON object")
    return validate_fields(document)


def validate_fields(body: dict[str, Any]) -> Submission | Rejection:
    """Apply the parameter rules in a fixed order, so the reported field is deterministic."""
    for name in body:
        if name not in ALLOWED_FIELDS:
            return Rejection("unknown_parameter", name, f"unknown parameter: {name!r}")
    problem = _check_model(body) or _check_prompt(body) or _check_image(body.get("image"))
    if problem is not None:
        return problem
    duration = _duration(body.get("duration"))
    if isinstance(duration, Rejection):
        return duration
    resolution = body.get("resolution")
    if resolution is not None and not _one_of(resolution, RESOLUTIONS):
        return _invalid("resolution", "resolution must be one of 480p, 720p")
    aspect_ratio = body.get("aspect_ratio")
    if aspect_ratio is not None and not _one_of(aspect_ratio, ASPECT_RATIOS):
        return _invalid("aspect_ratio", f"aspect_ratio must be one of {sorted(ASPECT_RATIOS)}")
    return Submission(
        prompt=body["prompt"],
        has_image=body.get("image") is not None,
        duration=duration,
        resolution=resolution if resolution is not None else DEFAULT_RESOLUTION,
        aspect_ratio=aspect_ratio,
    )


def _decode_json(body: bytes) -> Any:
    """UTF-8 JSON with floats as Decimal; NaN/Infinity and malformed input become a Rejection."""
    try:
        text = body.decode("utf-8")
        return json.loads(text.removeprefix("\ufeff"), parse_float=Decimal, parse_constant=_nan)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return Rejection("invalid_json", None, "request body is not valid UTF-8 JSON")


def _nan(literal: str) -> Any:
    """``json`` accepts NaN and Infinity by default; real JSON does not."""
    raise ValueError(f"{literal} is not valid JSON")


def _one_of(value: Any, choices: frozenset[str]) -> bool:
    """Set membership that cannot raise on an unhashable JSON value (a list, an object)."""
    return isinstance(value, str) and value in choices


def _invalid(param: str, message: str) -> Rejection:
    return Rejection("invalid_parameter", param, message)


def _check_model(body: dict[str, Any]) -> Rejection | None:
    if "model" not in body or body["model"] is None:
        return Rejection("missing_parameter", "model", "model is required")
    model = body["model"]
    if not isinstance(model, str):
        return _invalid("model", "model must be a string")
    if model != MODEL_ID:
        return Rejection("model_not_found", "model", f"model {model!r} does not exist")
    return None


def _check_prompt(body: dict[str, Any]) -> Rejection | None:
    if "prompt" not in body or body["prompt"] is None:
        return Rejection("missing_parameter", "prompt", "prompt is required")
    prompt = body["prompt"]
    if not isinstance(prompt, str) or not prompt:
        return _invalid("prompt", "prompt must be a non-empty string")
    return None


def _check_image(image: Any) -> Rejection | None:
    """A URL with a host, a base64 ``data:image/`` URI, or an uploaded-image reference."""
    if image is None:
        return None
    if isinstance(image, str) and (
        _is_http_url(image) or _is_image_data_uri(image) or _UPLOAD_REF.fullmatch(image)
    ):
        return None
    return _invalid(
        "image", "image must be an http(s) URL, a data:image/...;base64 URI or an upload id"
    )


def _is_http_url(value: str) -> bool:
    """``http(s)://`` followed by a non-empty host (userinfo and port allowed)."""
    lowered = value[:8].lower()
    if lowered.startswith("http://"):
        rest = value[7:]
    elif lowered.startswith("https://"):
        rest = value[8:]
    else:
        return False
    authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
    host = authority.rpartition("@")[2]
    if not host.startswith("["):  # an IPv6 literal keeps its colons
        host = host.partition(":")[0]
    return bool(host)


def _is_image_data_uri(value: str) -> bool:
    """Declared image type and decodable base64 data.

    Lenient on purpose: standard or URL-safe alphabet, whitespace ignored, any amount of
    trailing padding. The only thing that can never decode is a lone trailing character.
    """
    match = _DATA_URI.fullmatch(value)
    if match is None:
        return False
    data = _WHITESPACE.sub("", match.group(1))
    if _BASE64.fullmatch(data) is None:
        return False
    return len(data.rstrip("=")) % 4 != 1


def _duration(value: Any) -> Decimal | Rejection:
    """A JSON number (bools are not numbers here) within 1..15 seconds; default 10."""
    if value is None:
        return DEFAULT_DURATION
    if isinstance(value, bool) or not isinstance(value, int | Decimal):
        return _invalid("duration", "duration must be a number")
    seconds = Decimal(value)
    if not MIN_DURATION <= seconds <= MAX_DURATION:
        return _invalid("duration", "duration must be between 1 and 15 seconds")
    return seconds
