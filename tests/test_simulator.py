"""Tests of the built-in upstream simulator, in-process through httpx's ASGI transport.

A fake clock walks jobs through their lifecycle without sleeping; only the ``slow``/``hang``
markers use (short) real delays.
"""

from __future__ import annotations

import asyncio
import base64
import csv
import io
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.upstream.simulator import SimulatorConfig, SimulatorState, create_simulator_app
from gateway.upstream.simulator.validation import (
    ALLOWED_FIELDS,
    Rejection,
    Submission,
    parse_submission,
    validate_fields,
)
from tests.support.api import MODEL, SUBMIT_PATH

KEY = "sk-sim-secret-value-1234"
AUTH = {"Authorization": f"Bearer {KEY}"}
PNG_DATA_URI = (
    "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(24)).decode()
)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class FakeClock:
    """A settable clock: jobs age only when the test says so."""

    def __init__(self, now: float = 1_750_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@asynccontextmanager
async def sim_client(
    config: SimulatorConfig | None = None, clock: Callable[[], float] = time.time
) -> AsyncIterator[tuple[httpx.AsyncClient, SimulatorState]]:
    """A client wired to a fresh simulator app, plus the app's state for inspection."""
    app = create_simulator_app(config or SimulatorConfig(api_key=KEY), clock=clock)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://sim") as client:
        yield client, app.state.simulator


def body(prompt: str = "a cat surfing a wave", **fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "prompt": prompt, **fields}


async def submit(client: httpx.AsyncClient, payload: dict[str, Any]) -> str:
    response = await client.post(SUBMIT_PATH, json=payload, headers=AUTH)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "queued"
    job_id: str = response.json()["job_id"]
    return job_id


async def poll(client: httpx.AsyncClient, job_id: str) -> dict[str, Any]:
    response = await client.get(f"/v1/jobs/{job_id}", headers=AUTH)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    result: dict[str, Any] = response.json()
    return result


async def usage(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/_simulator/usage")
    assert response.status_code == 200
    result: dict[str, Any] = response.json()
    return result


def iso(timestamp: float) -> datetime:
    return EPOCH + timedelta(seconds=timestamp)


# --- authentication -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer "}, {"Authorization": "Basic abc"}, {"x-api-key": ""}],
)
async def test_missing_key_is_401(headers: dict[str, str]) -> None:
    async with sim_client() as (client, state):
        response = await client.post(SUBMIT_PATH, json=body(), headers=headers)
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"
    assert response.json()["error"]["code"] == "missing_api_key"
    assert state.jobs == {}


async def test_wrong_key_is_401_when_a_key_is_configured() -> None:
    async with sim_client() as (client, state):
        bearer = await client.post(
            SUBMIT_PATH, json=body(), headers={"Authorization": "Bearer nope"}
        )
        header = await client.post(SUBMIT_PATH, json=body(), headers={"x-api-key": KEY + "x"})
    for response in (bearer, header):
        assert response.status_code == 401
        assert response.json()["error"] == {
            "type": "authentication_error",
            "code": "invalid_api_key",
            "message": response.json()["error"]["message"],
        }
    assert state.jobs == {}


async def test_bearer_and_x_api_key_are_both_accepted() -> None:
    async with sim_client() as (client, state):
        bearer = await client.post(
            SUBMIT_PATH, json=body(), headers={"Authorization": f"bearer {KEY}"}
        )
        header = await client.post(SUBMIT_PATH, json=body(), headers={"x-api-key": KEY})
    assert [bearer.status_code, header.status_code] == [200, 200]
    assert len(state.jobs) == 2


async def test_any_non_empty_key_is_accepted_without_a_configured_key() -> None:
    async with sim_client(SimulatorConfig()) as (client, _):
        response = await client.post(SUBMIT_PATH, json=body(), headers={"x-api-key": "whatever"})
        job_id = response.json()["job_id"]
        polled = await client.get(f"/v1/jobs/{job_id}", headers={"Authorization": "Bearer zz"})
        anonymous = await client.get(f"/v1/jobs/{job_id}")
    assert response.status_code == 200
    assert polled.status_code == 200
    assert anonymous.status_code == 401


async def test_poll_checks_the_key() -> None:
    async with sim_client() as (client, _):
        job_id = await submit(client, body())
        response = await client.get(f"/v1/jobs/{job_id}", headers={"x-api-key": "wrong"})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"


# --- lifecycle ------------------------------------------------------------------------------


async def test_job_progresses_with_time_from_queued_to_completed() -> None:
    clock = FakeClock()
    created = clock.now
    async with sim_client(SimulatorConfig(api_key=KEY, latency=10.0), clock) as (client, _):
        job_id = await submit(client, body())
        seen = []
        for offset in (0.0, 2.4, 2.5, 7.777, 9.999, 10.0, 50.0):
            clock.now = created + offset
            job = await poll(client, job_id)
            seen.append((job["status"], job["progress"], job["completed_at"]))
            assert job["job_id"] == job_id
            assert job["model"] == MODEL
            assert datetime.fromisoformat(job["created_at"]) == iso(created)
            assert job["created_at"].endswith("Z")
    done_at = iso(created + 10.0)
    assert seen[:5] == [
        ("queued", 0.0, None),
        ("queued", 0.0, None),
        ("processing", 0.25, None),
        ("processing", 0.78, None),
        ("processing", 0.99, None),
    ]
    for status, progress, completed_at in seen[5:]:
        assert (status, progress) == ("completed", 1.0)
        assert completed_at.endswith("Z")
        assert datetime.fromisoformat(completed_at) == done_at


async def test_non_terminal_job_has_null_result_and_error() -> None:
    clock = FakeClock()
    async with sim_client(SimulatorConfig(api_key=KEY, latency=4.0), clock) as (client, _):
        job_id = await submit(client, body())
        clock.advance(2.0)
        job = await poll(client, job_id)
    assert job["status"] == "processing"
    assert job["progress"] == 0.5
    assert (job["result"], job["error"], job["completed_at"]) == (None, None, None)


async def test_zero_latency_success_body() -> None:
    clock = FakeClock()
    async with sim_client(clock=clock) as (client, _):
        job_id = await submit(
            client, body(image="https://example.com/cat.png", duration=6, aspect_ratio="16:9")
        )
        job = await poll(client, job_id)
    url = f"https://sim.invalid/videos/{job_id}.mp4"
    assert job["status"] == "completed"
    assert job["progress"] == 1.0
    assert job["completed_at"] == job["created_at"]
    assert job["error"] is None
    assert job["result"] == {
        "video_url": url,
        "videos": [{"url": url, "duration": 6, "resolution": "720p", "aspect_ratio": "16:9"}],
        "duration": 6,
        "resolution": "720p",
        "usage": {"video_seconds": 6, "resolution": "720p", "images": 1, "cost_usd": "1.058000"},
    }
    assert isinstance(job["result"]["duration"], int)


async def test_status_word_succeeded() -> None:
    config = SimulatorConfig(api_key=KEY, status_words="succeeded")
    async with sim_client(config) as (client, _):
        ok = await poll(client, await submit(client, body()))
        failed = await poll(client, await submit(client, body("x #sim:fail")))
    assert ok["status"] == "succeeded"
    assert failed["status"] == "failed"


async def test_repeated_polls_are_stable_and_do_not_grow_state() -> None:
    clock = FakeClock()
    async with sim_client(SimulatorConfig(api_key=KEY, latency=1.0), clock) as (client, state):
        job_id = await submit(client, body())
        clock.advance(5)
        first = await client.get(f"/v1/jobs/{job_id}", headers=AUTH)
        for _ in range(5):
            again = await client.get(f"/v1/jobs/{job_id}", headers=AUTH)
            assert again.content == first.content
        assert len(state.jobs) == 1
        assert len(state.requests) == 7


# --- outcome markers ------------------------------------------------------------------------


async def test_fail_marker_fails_without_result() -> None:
    async with sim_client() as (client, _):
        job = await poll(client, await submit(client, body("boom #sim:fail", duration=5)))
    assert job["status"] == "failed"
    assert job["result"] is None
    assert job["error"]["code"] == "generation_failed"
    assert job["error"]["message"]


async def test_moderated_marker_fails_with_billed_usage() -> None:
    async with sim_client() as (client, _):
        job = await poll(
            client, await submit(client, body("#sim:moderated", duration=5, resolution="480p"))
        )
    assert job["status"] == "failed"
    assert job["error"]["code"] == "content_moderated"
    assert job["result"] == {
        "video_url": None,
        "videos": [],
        "duration": 5,
        "resolution": "480p",
        "usage": {"video_seconds": 5, "resolution": "480p", "images": 0, "cost_usd": "0.480000"},
    }


@pytest.mark.parametrize(
    ("prompt", "requested", "reported", "cost"),
    [
        ("#sim:duration=4", 10, 4, "0.672000"),
        ("#sim:duration=2.5 please", 10, 2.5, "0.420000"),
        ("long one #sim:duration=30", 5, 30, "5.040000"),
        ("out of range #sim:duration=1234567 is ignored", 3, 3, "0.504000"),
        ("no marker", 7.5, 7.5, "1.260000"),
    ],
)
async def test_duration_marker_reports_and_bills_produced_seconds(
    prompt: str, requested: float, reported: float, cost: str
) -> None:
    async with sim_client() as (client, _):
        job = await poll(client, await submit(client, body(prompt, duration=requested)))
        report = await usage(client)
    assert job["result"]["duration"] == reported
    assert type(job["result"]["duration"]) is type(reported)
    assert job["result"]["videos"][0]["duration"] == reported
    assert job["result"]["usage"] == {
        "video_seconds": reported,
        "resolution": "720p",
        "images": 0,
        "cost_usd": cost,
    }
    assert report["jobs"][0]["video_seconds"] == reported
    assert report["total_cost_usd"] == cost


async def test_http500_marker_creates_no_job() -> None:
    async with sim_client() as (client, state):
        response = await client.post(SUBMIT_PATH, json=body("x #sim:http500"), headers=AUTH)
    assert response.status_code == 500
    assert response.json() == {
        "error": {
            "type": "server_error",
            "code": "internal_error",
            "message": "simulated upstream failure",
        }
    }
    assert state.jobs == {}


async def test_http429_marker_sends_retry_after_and_creates_no_job() -> None:
    config = SimulatorConfig(api_key=KEY, retry_after_seconds=7)
    async with sim_client(config) as (client, state):
        response = await client.post(SUBMIT_PATH, json=body("#sim:http429"), headers=AUTH)
    assert response.status_code == 429
    assert response.headers["retry-after"] == "7"
    assert response.json()["error"]["type"] == "rate_limit_error"
    assert response.json()["error"]["code"] == "rate_limited"
    assert state.jobs == {}


async def test_hang_marker_answers_504_late_and_creates_no_job() -> None:
    config = SimulatorConfig(api_key=KEY, hang_seconds=0.05)
    async with sim_client(config) as (client, state):
        started = time.monotonic()
        response = await client.post(SUBMIT_PATH, json=body("#sim:hang"), headers=AUTH)
        elapsed = time.monotonic() - started
        report = await usage(client)
    assert response.status_code == 504
    assert elapsed >= 0.049  # asyncio may wake a timer up to its clock resolution early
    assert state.jobs == {}
    assert report == {"jobs": [], "total_cost_usd": "0.000000"}
    assert [r.status for r in state.requests] == [504]


async def test_hang_client_gives_up_first_and_request_is_logged_unanswered() -> None:
    async with sim_client() as (client, state):
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await client.post(SUBMIT_PATH, json=body("#sim:hang"), headers=AUTH)
    assert state.jobs == {}
    assert len(state.requests) == 1
    assert state.requests[0].status is None


async def test_slow_marker_delays_then_creates_the_job() -> None:
    async with sim_client() as (client, state):
        started = time.monotonic()
        job_id = await submit(client, body("take your time #sim:slow=0.05"))
        elapsed = time.monotonic() - started
        job = await poll(client, job_id)
    assert elapsed >= 0.049  # asyncio may wake a timer up to its clock resolution early
    assert job["status"] == "completed"
    assert list(state.jobs) == [job_id]


async def test_markers_are_applied_only_after_validation() -> None:
    async with sim_client() as (client, _):
        response = await client.post(
            SUBMIT_PATH, json=body("#sim:http500", duration=99), headers=AUTH
        )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "duration"


# --- validation -----------------------------------------------------------------------------

BAD_BODIES: list[tuple[dict[str, Any], str, str]] = [
    ({"prompt": "x"}, "missing_parameter", "model"),
    (body(model="grok-2"), "model_not_found", "model"),
    (body(model=5), "invalid_parameter", "model"),
    ({"model": MODEL}, "missing_parameter", "prompt"),
    (body(""), "invalid_parameter", "prompt"),
    ({"model": MODEL, "prompt": ["x"]}, "invalid_parameter", "prompt"),
    (body(duration=0.5), "invalid_parameter", "duration"),
    (body(duration=16), "invalid_parameter", "duration"),
    (body(duration="10"), "invalid_parameter", "duration"),
    (body(duration=True), "invalid_parameter", "duration"),
    (body(resolution="1080p"), "invalid_parameter", "resolution"),
    (body(resolution=720), "invalid_parameter", "resolution"),
    (body(resolution=["720p"]), "invalid_parameter", "resolution"),
    (body(aspect_ratio="21:9"), "invalid_parameter", "aspect_ratio"),
    (body(aspect_ratio={"w": 16, "h": 9}), "invalid_parameter", "aspect_ratio"),
    (body(image="ftp://example.com/a.png"), "invalid_parameter", "image"),
    (body(image="https://"), "invalid_parameter", "image"),
    (body(image="data:image/png;base64,a"), "invalid_parameter", "image"),
    (body(image="data:image/png;base64,@@@@"), "invalid_parameter", "image"),
    (body(image="data:text/plain;base64,aGVsbG8="), "invalid_parameter", "image"),
    (body(image="file-abc"), "invalid_parameter", "image"),
    (body(image="fileabcdefgh"), "invalid_parameter", "image"),
    (body(image="upload_abcdef\n"), "invalid_parameter", "image"),
    (body(image=42), "invalid_parameter", "image"),
    (body(seed=1), "unknown_parameter", "seed"),
    (body(Duration=5), "unknown_parameter", "Duration"),
]


@pytest.mark.parametrize(("payload", "code", "param"), BAD_BODIES)
async def test_invalid_bodies_are_400(payload: dict[str, Any], code: str, param: str) -> None:
    async with sim_client() as (client, state):
        response = await client.post(SUBMIT_PATH, json=payload, headers=AUTH)
    assert response.status_code == 400, payload
    error = response.json()["error"]
    assert (error["type"], error["code"], error["param"]) == ("invalid_request_error", code, param)
    assert error["message"]
    assert state.jobs == {}


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"", "invalid_json"),
        (b"{not json", "invalid_json"),
        (b'{"model": "grok-imagine-video-1-5", "prompt": "x", "duration": NaN}', "invalid_json"),
        (
            b'{"model": "grok-imagine-video-1-5", "prompt": "x", "duration": Infinity}',
            "invalid_json",
        ),
        (b"\xff\xfe{}", "invalid_json"),
        (b"[" * 100_000, "invalid_json"),
        (b"[]", "invalid_body"),
        (b'"a string"', "invalid_body"),
        (b"null", "invalid_body"),
    ],
)
async def test_malformed_json_is_400(raw: bytes, code: str) -> None:
    async with sim_client() as (client, _):
        response = await client.post(SUBMIT_PATH, content=raw, headers=AUTH)
    assert response.status_code == 400
    assert response.json() == {
        "error": {
            "type": "invalid_request_error",
            "code": code,
            "param": None,
            "message": response.json()["error"]["message"],
        }
    }


@pytest.mark.parametrize(
    "payload",
    [
        body(" "),
        body("x" * 200_000),
        body(duration=1),
        body(duration=15),
        body(duration=1.5),
        body(duration=15.0),
        body(image="http://example.com"),
        body(image="HTTPS://user:pw@example.com:8443/a.png?x=1#f"),
        body(image="https://[::1]:8080/img"),
        body(image=PNG_DATA_URI),
        body(image="data:image/jpeg;base64,/9j/4AAQ"),
        body(image="data:image/webp;base64,UklGRg"),
        body(image="data:image/png;base64,aGVs\nbG8="),
        body(image="data:image/png;base64,"),
        body(image="file-abcdef"),
        body(image="upload_" + "A" * 128),
        body(image=None, duration=None, resolution=None, aspect_ratio=None),
        body(resolution="480p", aspect_ratio="9:16"),
        *[body(aspect_ratio=ratio) for ratio in ("1:1", "4:3", "3:4", "3:2", "2:3")],
    ],
)
async def test_valid_bodies_are_accepted(payload: dict[str, Any]) -> None:
    async with sim_client() as (client, state):
        response = await client.post(SUBMIT_PATH, json=payload, headers=AUTH)
    assert response.status_code == 200, response.text
    assert list(state.jobs) == [response.json()["job_id"]]


async def test_exponent_float_and_bom_are_accepted() -> None:
    raw = b'\xef\xbb\xbf{"model": "grok-imagine-video-1-5", "prompt": "x", "duration": 1.2e1}'
    async with sim_client() as (client, _):
        response = await client.post(SUBMIT_PATH, content=raw, headers=AUTH)
        job = await poll(client, response.json()["job_id"])
    assert job["result"]["duration"] == 12


VALID_IMAGES = st.one_of(
    st.none(),
    st.builds(
        lambda h: f"https://{h}.example/x.png", st.from_regex(r"[a-z]{1,20}", fullmatch=True)
    ),
    st.builds(
        lambda data: "data:image/png;base64," + base64.b64encode(data).decode(),
        st.binary(max_size=64),
    ),
    st.from_regex(r"(file|upload)[-_][A-Za-z0-9_-]{6,128}", fullmatch=True),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    prompt=st.text(min_size=1),
    image=VALID_IMAGES,
    duration=st.one_of(
        st.none(),
        st.integers(1, 15),
        st.decimals(min_value=1, max_value=15, allow_nan=False, allow_infinity=False),
    ),
    resolution=st.sampled_from([None, "480p", "720p"]),
    aspect_ratio=st.sampled_from([None, "1:1", "16:9", "9:16", "4:3", "3:4", "3:2", "2:3"]),
)
def test_every_body_within_the_rules_is_accepted(
    prompt: str,
    image: str | None,
    duration: int | Decimal | None,
    resolution: str | None,
    aspect_ratio: str | None,
) -> None:
    fields: dict[str, Any] = {"model": MODEL, "prompt": prompt}
    for name, value in [
        ("image", image),
        ("resolution", resolution),
        ("aspect_ratio", aspect_ratio),
    ]:
        if value is not None:
            fields[name] = value
    raw = json.dumps(fields)
    if duration is not None:  # spliced in as written, so Decimals keep their exact digits
        raw = raw[:-1] + f', "duration": {duration}}}'
    parsed = parse_submission(raw.encode())
    assert isinstance(parsed, Submission), parsed
    assert parsed.has_image is (image is not None)
    assert parsed.resolution == (resolution or "720p")
    assert parsed.duration == (Decimal(10) if duration is None else Decimal(duration))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_arbitrary_bytes_never_raise(raw: bytes) -> None:
    assert isinstance(parse_submission(raw), Submission | Rejection)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.decimals(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=10,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(sorted(ALLOWED_FIELDS)) | st.text(), JSON_VALUES))
def test_arbitrary_json_objects_never_raise(document: dict[str, Any]) -> None:
    assert isinstance(validate_fields(document), Submission | Rejection)


async def test_unknown_job_is_404() -> None:
    async with sim_client() as (client, _):
        response = await client.get("/v1/jobs/job_000000000000000000000000", headers=AUTH)
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "not_found_error"
    assert response.json()["error"]["code"] == "job_not_found"


async def test_unknown_routes_answer_json_errors() -> None:
    async with sim_client() as (client, _):
        missing = await client.get("/v1/nothing", headers=AUTH)
        wrong_method = await client.get(SUBMIT_PATH, headers=AUTH)
    assert missing.status_code == 404
    assert missing.json()["error"]["type"] == "not_found_error"
    assert wrong_method.status_code == 405
    assert wrong_method.json()["error"]["code"] == "method_not_allowed"


# --- the simulator's own billing record ----------------------------------------------------


async def test_usage_figures_are_exact() -> None:
    clock = FakeClock()
    config = SimulatorConfig(api_key=KEY, latency=10.0)
    async with sim_client(config, clock) as (client, _):
        ids = [
            await submit(client, body(image=PNG_DATA_URI)),
            await submit(client, body(duration=5, resolution="480p")),
            await submit(client, body("#sim:moderated", duration=3)),
            await submit(client, body("#sim:fail", image="file-abcdef")),
        ]
        clock.advance(10.0)
        late = await submit(client, body(duration=15))  # still queued: not billed yet
        report = await usage(client)
    assert report["jobs"] == [
        {
            "job_id": ids[0],
            "status": "completed",
            "billed": True,
            "video_seconds": 10,
            "resolution": "720p",
            "images": 1,
            "cost_usd": "1.730000",
        },
        {
            "job_id": ids[1],
            "status": "completed",
            "billed": True,
            "video_seconds": 5,
            "resolution": "480p",
            "images": 0,
            "cost_usd": "0.480000",
        },
        {
            "job_id": ids[2],
            "status": "failed",
            "billed": True,
            "video_seconds": 3,
            "resolution": "720p",
            "images": 0,
            "cost_usd": "0.504000",
        },
        {
            "job_id": ids[3],
            "status": "failed",
            "billed": False,
            "video_seconds": 0,
            "resolution": "720p",
            "images": 1,
            "cost_usd": "0.000000",
        },
        {
            "job_id": late,
            "status": "queued",
            "billed": False,
            "video_seconds": 0,
            "resolution": "720p",
            "images": 0,
            "cost_usd": "0.000000",
        },
    ]
    assert report["total_cost_usd"] == "2.714000"


async def test_usage_bills_a_job_once_it_is_terminal_even_unpolled() -> None:
    clock = FakeClock()
    async with sim_client(SimulatorConfig(api_key=KEY, latency=2.0), clock) as (client, _):
        await submit(client, body(duration=1, resolution="480p"))
        before = await usage(client)
        clock.advance(2.0)
        after = await usage(client)
    assert before["total_cost_usd"] == "0.000000"
    assert before["jobs"][0]["status"] == "queued"
    assert after["total_cost_usd"] == "0.096000"
    assert after["jobs"][0]["billed"] is True


async def test_usage_csv_parses_back_to_the_json_rows() -> None:
    async with sim_client() as (client, _):
        await submit(client, body("#sim:duration=2.5", image="https://a.example/i.png"))
        await submit(client, body("#sim:fail"))
        await submit(client, body("#sim:moderated", resolution="480p", duration=7))
        report = await usage(client)
        response = await client.get("/_simulator/usage", params={"format": "csv"})
        bad = await client.get("/_simulator/usage", params={"format": "xml"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert list(rows[0]) == [
        "job_id",
        "status",
        "billed",
        "video_seconds",
        "resolution",
        "images",
        "cost_usd",
    ]
    as_json = [
        {
            **row,
            "billed": {"true": True, "false": False}[row["billed"]],
            "video_seconds": json.loads(row["video_seconds"]),
            "images": int(row["images"]),
        }
        for row in rows
    ]
    assert as_json == report["jobs"]
    assert [row["cost_usd"] for row in rows] == ["0.470000", "0.000000", "0.672000"]
    assert bad.status_code == 400


async def test_costs_are_exact_decimals_rounded_half_up() -> None:
    # 1.000171875 s x $0.096 = $0.0960165 exactly: half-up gives ...017 (half-even or a float
    # detour would give ...016).
    async with sim_client() as (client, _):
        raw = b'{"model": "grok-imagine-video-1-5", "prompt": "x", "resolution": "480p", '
        response = await client.post(
            SUBMIT_PATH, content=raw + b'"duration": 1.000171875}', headers=AUTH
        )
        job = await poll(client, response.json()["job_id"])
        report = await usage(client)
    assert job["result"]["usage"]["cost_usd"] == "0.096017"
    assert report["total_cost_usd"] == "0.096017"


async def test_usage_is_empty_initially() -> None:
    async with sim_client() as (client, _):
        assert await usage(client) == {"jobs": [], "total_cost_usd": "0.000000"}
        response = await client.get("/_simulator/usage?format=csv")
    assert response.text.splitlines() == [
        "job_id,status,billed,video_seconds,resolution,images,cost_usd"
    ]


# --- request log and reset ------------------------------------------------------------------


async def test_request_log_records_every_api_request_but_never_the_key() -> None:
    async with sim_client() as (client, _):
        await client.post(SUBMIT_PATH, json=body(), headers={"x-request-id": "r-1"})
        await client.post(
            SUBMIT_PATH, json=body(duration=99), headers={**AUTH, "X-Request-ID": "r-2"}
        )
        await client.post(SUBMIT_PATH, json=body("#sim:http429"), headers={"x-api-key": KEY})
        await client.post(SUBMIT_PATH, json=body("#sim:http500"), headers=AUTH)
        job_id = await submit(client, body())
        await client.get(f"/v1/jobs/{job_id}", headers={"x-api-key": KEY})
        await client.get("/_simulator/usage")
        response = await client.get("/_simulator/requests")
    assert KEY not in response.text
    log = response.json()["requests"]
    assert [(r["method"], r["path"], r["status"], r["request_id"]) for r in log] == [
        ("POST", SUBMIT_PATH, 401, "r-1"),
        ("POST", SUBMIT_PATH, 400, "r-2"),
        ("POST", SUBMIT_PATH, 429, None),
        ("POST", SUBMIT_PATH, 500, None),
        ("POST", SUBMIT_PATH, 200, None),
        ("GET", f"/v1/jobs/{job_id}", 200, None),
    ]
    for record in log:
        assert record["header_names"] == sorted(record["header_names"])
        assert all(name == name.lower() for name in record["header_names"])
    assert "authorization" in log[1]["header_names"]
    assert "x-api-key" in log[2]["header_names"]
    assert "authorization" not in log[0]["header_names"]


async def test_reset_clears_jobs_and_requests() -> None:
    async with sim_client() as (client, state):
        job_id = await submit(client, body())
        response = await client.post("/_simulator/reset")
        assert response.status_code == 204
        assert response.content == b""
        assert state.jobs == {}
        assert (await client.get("/_simulator/requests")).json() == {"requests": []}
        assert await usage(client) == {"jobs": [], "total_cost_usd": "0.000000"}
        gone = await client.get(f"/v1/jobs/{job_id}", headers=AUTH)
    assert gone.status_code == 404


async def test_job_ids_are_unique_and_well_formed() -> None:
    async with sim_client() as (client, _):
        ids = {await submit(client, body()) for _ in range(20)}
    assert len(ids) == 20
    for job_id in ids:
        assert job_id.startswith("job_")
        assert len(job_id) == 4 + 24
        int(job_id[4:], 16)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"api_key": ""},
        {"latency": -1.0},
        {"latency": float("nan")},
        {"status_words": "done"},
        {"retry_after_seconds": -1},
        {"hang_seconds": -0.5},
    ],
)
def test_config_rejects_nonsense(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the message varies per field
        SimulatorConfig(**kwargs)


async def test_idempotency_key_returns_the_same_job_without_billing_again() -> None:
    app = create_simulator_app(SimulatorConfig())
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://sim"
    ) as c:
        headers = {"Authorization": "Bearer k", "Idempotency-Key": "gw-1"}
        body = {"model": MODEL, "prompt": "a cat"}
        first = await c.post(SUBMIT_PATH, json=body, headers=headers)
        again = await c.post(SUBMIT_PATH, json=body, headers=headers)
        other = await c.post(SUBMIT_PATH, json={**body, "prompt": "a dog"}, headers=headers)
        fresh = await c.post(SUBMIT_PATH, json=body, headers={"Authorization": "Bearer k"})
        usage = (await c.get("/_simulator/usage")).json()
    assert first.json()["job_id"] == again.json()["job_id"]
    assert other.status_code == 422
    assert fresh.json()["job_id"] != first.json()["job_id"]
    assert len(usage["jobs"]) == 2
    assert usage["total_cost_usd"] == "3.360000"
