"""The model's parameter rules through the real HTTP path: every rule refused with 400, its
code and param, and nothing reaching the upstream."""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx
import pytest

from tests.support.api import MODEL, SUBMIT_PATH, submit
from tests.support.images import GIF, JPEG, PNG, WEBP, data_uri
from tests.support.simulator import SimulatorProbe
from tests.support.tenants import Tenant


def body(**fields: Any) -> bytes:
    values: dict[str, Any] = {"model": MODEL, "prompt": "a cat surfing"}
    for name, value in fields.items():
        if value is _DROP:
            values.pop(name)
        else:
            values[name] = value
    return json.dumps(values).encode()


_DROP = object()


def written(after_model: str) -> bytes:
    """A body written by hand, as ``json.dumps`` would not write it: the model, then
    ``after_model``."""
    return b'{"model": "%s", %s}' % (MODEL.encode(), after_model.encode())


RAW = {"model": MODEL, "prompt": "x"}

# (id, raw body, expected code, expected param)
BAD_REQUESTS: list[tuple[str, bytes, str, str | None]] = [
    ("truncated json", b'{"model": "grok', "invalid_json", None),
    ("empty body", b"", "invalid_json", None),
    ("not utf-8", b'{"model": "\xff\xfe"}', "invalid_json", None),
    ("duplicate key", written('"prompt": "a", "prompt": "b"'), "invalid_json", None),
    ("NaN", written('"prompt": "a", "duration": NaN'), "invalid_json", None),
    ("Infinity", written('"prompt": "a", "duration": Infinity'), "invalid_json", None),
    ("NUL in prompt", written('"prompt": "a\\u0000b"'), "invalid_json", None),
    ("array body", b"[1, 2]", "invalid_body", None),
    ("string body", b'"make a video"', "invalid_body", None),
    ("null body", b"null", "invalid_body", None),
    ("missing model", body(model=_DROP), "missing_parameter", "model"),
    ("model not a string", body(model=123), "invalid_type", "model"),
    ("unknown model", body(model="gpt-video-9"), "unknown_model", "model"),
    ("model with trailing space", body(model=MODEL + " "), "unknown_model", "model"),
    ("missing prompt", body(prompt=_DROP), "missing_parameter", "prompt"),
    ("empty prompt", body(prompt=""), "invalid_length", "prompt"),
    ("blank prompt", body(prompt="   \n"), "invalid_length", "prompt"),
    ("invisible prompt", body(prompt="\u200b\u200b\u200b"), "invalid_length", "prompt"),
    ("invisible mix", body(prompt=" \u200b\ufeff\u2060\u3164\u00a0 "), "invalid_length", "prompt"),
    ("prompt too long", body(prompt="x" * 4097), "invalid_length", "prompt"),
    ("prompt not a string", body(prompt=42), "invalid_type", "prompt"),
    ("prompt an object", body(prompt={"text": "cat"}), "invalid_type", "prompt"),
    ("unknown field", body(seed=7), "unknown_parameter", "seed"),
    ("typo in field", body(durration=5), "unknown_parameter", "durration"),
    ("duration string", body(duration="5"), "invalid_type", "duration"),
    ("duration true", body(duration=True), "invalid_type", "duration"),
    ("duration null", body(duration=None), "invalid_type", "duration"),
    ("duration array", body(duration=[5]), "invalid_type", "duration"),
    ("duration zero", body(duration=0), "out_of_range", "duration"),
    ("duration below 1", written('"prompt": "a", "duration": 0.999'), "out_of_range", "duration"),
    ("duration above 15", written('"prompt": "a", "duration": 15.001'), "out_of_range", "duration"),
    ("duration 16", body(duration=16), "out_of_range", "duration"),
    ("duration negative", body(duration=-5), "out_of_range", "duration"),
    (
        "duration huge exponent",
        written('"prompt": "a", "duration": 1e400'),
        "out_of_range",
        "duration",
    ),
    (
        "duration too precise",
        written('"prompt": "a", "duration": 2.0005'),
        "invalid_precision",
        "duration",
    ),
    ("resolution 1080p", body(resolution="1080p"), "invalid_value", "resolution"),
    ("resolution upper case", body(resolution="720P"), "invalid_value", "resolution"),
    ("resolution number", body(resolution=720), "invalid_type", "resolution"),
    ("aspect ratio 21:9", body(aspect_ratio="21:9"), "invalid_value", "aspect_ratio"),
    ("aspect ratio slash", body(aspect_ratio="16/9"), "invalid_value", "aspect_ratio"),
    ("image number", body(image=123), "invalid_type", "image"),
    ("image ftp url", body(image="ftp://example.com/a.png"), "invalid_image_url", "image"),
    ("image file url", body(image="file:///etc/passwd"), "invalid_image_url", "image"),
    ("image javascript url", body(image="javascript:alert(1)"), "invalid_image_url", "image"),
    ("image url without host", body(image="https://"), "invalid_image_url", "image"),
    (
        "image url with space",
        body(image="https://exa mple.com/a.png"),
        "invalid_image_url",
        "image",
    ),
    ("image plain text", body(image="a picture of a cat"), "invalid_image", "image"),
    (
        "data uri bad base64",
        body(image="data:image/png;base64,!!!notbase64!!!"),
        "invalid_base64",
        "image",
    ),
    (
        "data uri truncated base64",
        body(image="data:image/png;base64,iVBORw0KGgo"),
        "invalid_base64",
        "image",
    ),
    (
        "data uri jpeg declared png",
        body(image=data_uri("image/png", JPEG)),
        "image_type_mismatch",
        "image",
    ),
    (
        "data uri random bytes",
        body(image=data_uri("image/jpeg", b"hello world, not an image")),
        "image_type_mismatch",
        "image",
    ),
    (
        "data uri svg",
        body(image=data_uri("image/svg+xml", b"<svg></svg>")),
        "unsupported_image_type",
        "image",
    ),
    ("data uri text", body(image=data_uri("text/plain", b"hi")), "unsupported_image_type", "image"),
    ("data uri not base64", body(image="data:image/png,%89PNG"), "invalid_data_uri", "image"),
    ("data uri no type", body(image="data:;base64,AAAA"), "invalid_data_uri", "image"),
]


@pytest.mark.parametrize(
    ("raw", "code", "param"),
    [pytest.param(raw, code, param, id=name) for name, raw, code, param in BAD_REQUESTS],
)
def test_bad_request_is_refused_and_not_forwarded(
    gateway: httpx.Client,
    simulator: SimulatorProbe,
    tenant: Tenant,
    raw: bytes,
    code: str,
    param: str | None,
) -> None:
    response = gateway.post(
        SUBMIT_PATH,
        content=raw,
        headers={**tenant.headers, "Content-Type": "application/json"},
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["code"] == code
    assert error["param"] == param
    assert error["message"]
    assert simulator.submits() == []


def test_table_covers_at_least_thirty_rules() -> None:
    assert len(BAD_REQUESTS) >= 30
    assert len({name for name, *_ in BAD_REQUESTS}) == len(BAD_REQUESTS)


@pytest.mark.parametrize(
    "image",
    [
        pytest.param("https://example.com/cat.png", id="https url"),
        pytest.param("http://example.com/cat.png?size=large#x", id="http url"),
        pytest.param(data_uri("image/png", PNG), id="png data uri"),
        pytest.param(data_uri("image/jpeg", JPEG), id="jpeg data uri"),
        pytest.param(data_uri("image/jpg", JPEG), id="jpg alias"),
        pytest.param(data_uri("image/gif", GIF), id="gif data uri"),
        pytest.param(data_uri("image/webp", WEBP), id="webp data uri"),
        pytest.param("file-abc123DEF456", id="upload reference"),
    ],
)
def test_valid_images_are_forwarded(
    gateway: httpx.Client, simulator: SimulatorProbe, tenant: Tenant, image: str
) -> None:
    response = submit(gateway, tenant, "a cat", image=image)
    assert response.status_code == 200, response.text
    assert len(simulator.submits()) == 1


def test_data_uri_error_never_echoes_the_image(
    gateway: httpx.Client, simulator: SimulatorProbe, tenant: Tenant
) -> None:
    payload = base64.b64encode(JPEG * 4).decode()
    response = submit(gateway, tenant, "a", image=f"data:image/png;base64,{payload}")
    assert response.status_code == 400
    assert payload[:24] not in response.text


def test_image_at_ten_mebibytes_is_accepted_and_one_byte_more_is_not(
    gateway: httpx.Client, simulator: SimulatorProbe, tenant: Tenant
) -> None:
    cap = 10 * 1024 * 1024
    at_cap = PNG + b"\x00" * (cap - len(PNG))
    ok = submit(gateway, tenant, "big", image=data_uri("image/png", at_cap))
    assert ok.status_code == 200, ok.text[:300]
    over = submit(gateway, tenant, "big", image=data_uri("image/png", at_cap + b"\x00"))
    assert over.status_code == 400
    assert over.json()["error"]["code"] == "image_too_large"
    assert len(simulator.submits()) == 1
