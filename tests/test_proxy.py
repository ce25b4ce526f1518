"""The drop-in proxy: bodies and statuses passed through, the gateway's headers added, the
job recorded for its team, and the seed's own client code working unmodified."""

from __future__ import annotations

import json
import sys
import textwrap
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.jobs.models import Job
from tests.support.api import MODEL, SUBMIT_PATH, submit
from tests.support.commands import run
from tests.support.servers import StartGateway
from tests.support.simulator import UPSTREAM_KEY, SimulatorProbe
from tests.support.tenants import Tenant, in_session


def job_row(url: str, upstream_job_id: str) -> Job | None:
    async def _get(session: AsyncSession) -> Job | None:
        stmt = select(Job).where(Job.upstream_job_id == upstream_job_id)
        return (await session.execute(stmt)).scalar_one_or_none()

    return in_session(url, _get)


def test_submit_then_poll_through_the_gateway(
    gateway: httpx.Client, simulator: SimulatorProbe, tenant: Tenant, postgres_url: str
) -> None:
    submitted = submit(gateway, tenant, "a fox", image="https://example.com/f.png")
    assert submitted.status_code == 200
    job = submitted.json()
    assert job["status"] == "queued"
    # $0.05 image + 10 s (default) x $0.168 at 720p (default)
    assert submitted.headers["x-gateway-cost-estimate-usd"] == "1.730000"
    assert submitted.headers["x-request-id"]

    polled = gateway.get(f"/v1/jobs/{job['job_id']}", headers=tenant.headers)
    assert polled.status_code == 200
    assert polled.json()["status"] == "completed"
    assert polled.json()["result"]["usage"]["cost_usd"] == "1.730000"

    row = job_row(postgres_url, job["job_id"])
    assert row is not None
    assert (row.state, row.estimate_micro_usd, row.duration_ms, row.resolution) == (
        "captured",
        1_730_000,
        10_000,
        "720p",
    )
    assert row.image_count == 1
    assert row.rate_card_version == "seed-2026-11"


def test_x_api_key_header_is_accepted(
    gateway: httpx.Client, simulator: SimulatorProbe, tenant: Tenant
) -> None:
    response = gateway.post(
        SUBMIT_PATH, json={"model": MODEL, "prompt": "x"}, headers={"x-api-key": tenant.key}
    )
    assert response.status_code == 200
    polled = gateway.get(f"/v1/jobs/{response.json()['job_id']}", headers={"x-api-key": tenant.key})
    assert polled.status_code == 200


def test_request_id_is_echoed_and_sent_upstream(
    gateway: httpx.Client, simulator: SimulatorProbe, tenant: Tenant
) -> None:
    response = submit(gateway, tenant, "x", headers={"X-Request-ID": "trace-abc-123"})
    assert response.headers["x-request-id"] == "trace-abc-123"
    assert simulator.submits()[-1]["request_id"] == "trace-abc-123"

    generated = submit(gateway, tenant, "x")
    assert len(generated.headers["x-request-id"]) == 32
    assert simulator.submits()[-1]["request_id"] == generated.headers["x-request-id"]

    invalid = gateway.get(
        "/v1/jobs/nope", headers={**tenant.headers, "X-Request-ID": "bad id <script>" + "x" * 200}
    )
    assert len(invalid.headers["x-request-id"]) == 32  # replaced, not echoed


def test_only_the_gateway_key_reaches_upstream(
    gateway: httpx.Client, simulator: SimulatorProbe, tenant: Tenant
) -> None:
    """The simulator only accepts UPSTREAM_KEY, so a 200 proves the swap; tags and the tenant's
    own headers stay behind."""
    response = submit(
        gateway, tenant, "x", headers={"X-Gateway-Tags": "project=atlas", "Cookie": "session=1"}
    )
    assert response.status_code == 200
    names = simulator.submits()[-1]["header_names"]
    assert "x-gateway-tags" not in names
    assert "cookie" not in names
    assert "x-api-key" not in names


class RecordingUpstream:
    """An ``httpx.MockTransport`` handler: records what the gateway sent, answers canned bytes."""

    def __init__(self, submit_body: bytes, poll_body: bytes, status: int = 200) -> None:
        self.submit_body = submit_body
        self.poll_body = poll_body
        self.status = status
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        body = self.submit_body if request.method == "POST" else self.poll_body
        return httpx.Response(
            self.status,
            content=body,
            headers={
                "Content-Type": "application/json; charset=utf-8",
                "X-Internal-Upstream": "hidden",
            },
        )


def test_bodies_pass_through_byte_for_byte(start_gateway: StartGateway, tenant: Tenant) -> None:
    submit_answer = b'{ "job_id":"job_bytes01",\n  "status" : "queued", "eta": 1.50 }'
    poll_answer = b'{"job_id":"job_bytes01","status":"processing","progress":0.25,"x":[1,2.0]}'
    upstream = RecordingUpstream(submit_answer, poll_answer)
    server = start_gateway(transport=httpx.MockTransport(upstream))
    sent = b'{"prompt":"a  cat",   "model":"grok-imagine-video-1-5","duration":2.500}'
    with httpx.Client(base_url=server.url) as client:
        submitted = client.post(
            SUBMIT_PATH,
            content=sent,
            headers={**tenant.headers, "Content-Type": "application/json"},
        )
        polled = client.get("/v1/jobs/job_bytes01", headers=tenant.headers)
    assert submitted.content == submit_answer
    assert submitted.headers["content-type"] == "application/json; charset=utf-8"
    assert "x-internal-upstream" not in submitted.headers
    assert submitted.headers["x-gateway-cost-estimate-usd"] == "0.420000"  # 2.5 s x $0.168
    assert polled.content == poll_answer
    forwarded = upstream.requests[0]
    assert forwarded.content == sent  # the client's bytes, not a re-serialisation
    assert forwarded.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert upstream.requests[1].url.path == "/v1/jobs/job_bytes01"


@pytest.mark.parametrize("status", [400, 402, 404, 422])
def test_upstream_client_errors_pass_through(
    start_gateway: StartGateway, tenant: Tenant, status: int
) -> None:
    answer = b'{"error":{"type":"invalid_request_error","message":"upstream says no"}}'
    server = start_gateway(transport=httpx.MockTransport(RecordingUpstream(answer, answer, status)))
    with httpx.Client(base_url=server.url) as client:
        response = submit(client, tenant, "x")
    assert response.status_code == status
    assert response.content == answer


def test_body_over_the_limit_is_refused_with_413(
    start_gateway: StartGateway, simulator: SimulatorProbe, tenant: Tenant
) -> None:
    server = start_gateway(max_request_body_bytes=4096)
    big = json.dumps({"model": MODEL, "prompt": "x" * 5000}).encode()
    with httpx.Client(base_url=server.url) as client:
        declared = client.post(SUBMIT_PATH, content=big, headers=tenant.headers)

        def chunks() -> Any:
            yield big[:3000]
            yield big[3000:]

        streamed = client.post(SUBMIT_PATH, content=chunks(), headers=tenant.headers)
        small = submit(client, tenant, "ok")
    for response in (declared, streamed):
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "request_too_large"
        assert response.json()["error"]["type"] == "invalid_request_error"
    assert small.status_code == 200
    assert len(simulator.submits()) == 1


def test_unknown_route_and_method_use_the_error_format(
    gateway: httpx.Client, simulator: SimulatorProbe, tenant: Tenant
) -> None:
    missing = gateway.get("/v1/nothing", headers=tenant.headers)
    assert missing.status_code == 404
    assert missing.json()["error"]["type"] == "not_found_error"
    wrong_method = gateway.delete(SUBMIT_PATH, headers=tenant.headers)
    assert wrong_method.status_code == 405
    assert wrong_method.json()["error"]["code"] == "method_not_allowed"


SEED_SNIPPET = textwrap.dedent(
    """
    import requests

    response = requests.post(
        "https://api.empiriolabs.ai/v1/videos/generations",
        headers={"Authorization": "Bearer YOUR_EMPIRIOLABS_API_KEY"},
        json={
            "model": "grok-imagine-video-1-5",
            "prompt": "Describe what you want Grok Imagine Video 1.5 to generate.",
        },
    )
    job = response.json()

    # Generation runs as an async job. Poll until it completes.
    import time
    while True:
        status = requests.get(
            f"https://api.empiriolabs.ai/v1/jobs/{job['job_id']}",
            headers={"Authorization": "Bearer YOUR_EMPIRIOLABS_API_KEY"},
        ).json()
        if status.get("status") in ("completed", "failed"):
            print(status)
            break
        time.sleep(5)
    """
)


def test_seed_python_snippet_runs_unmodified_but_for_base_url_and_key(
    gateway_server: Any, simulator: SimulatorProbe, tenant: Tenant
) -> None:
    """The seed page's own code, changing only the base URL and the key (a drop-in)."""
    script = SEED_SNIPPET.replace("https://api.empiriolabs.ai", gateway_server.url).replace(
        "YOUR_EMPIRIOLABS_API_KEY", tenant.key
    )
    assert script.count(gateway_server.url) == 2
    result = run([sys.executable, "-c", script])
    assert result.returncode == 0, result.stderr
    printed = result.stdout.strip()
    assert printed.startswith("{") and "'status': 'completed'" in printed
    assert "'video_url': 'https://sim.invalid/videos/job_" in printed
    assert len(simulator.submits()) == 1


def test_client_hanging_up_mid_body_is_499_not_an_error(
    start_gateway: StartGateway,
    simulator: SimulatorProbe,
    tenant: Tenant,
    caplog: pytest.LogCaptureFixture,
) -> None:
    import logging
    import socket
    import time

    server = start_gateway()
    caplog.set_level(logging.INFO)
    with socket.create_connection(("127.0.0.1", server.port)) as raw:
        raw.sendall(
            b"POST /v1/videos/generations HTTP/1.1\r\nHost: x\r\n"
            + f"Authorization: Bearer {tenant.key}\r\n".encode()
            + b'Content-Type: application/json\r\nContent-Length: 5000\r\n\r\n{"model":'
        )
        time.sleep(0.3)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        access = [r for r in caplog.records if r.name == "gateway.access"]
        if access:
            break
        time.sleep(0.05)
    assert [getattr(r, "status", None) for r in access] == [499]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert simulator.requests() == []


def test_oversized_headers_are_431(
    gateway: httpx.Client, simulator: SimulatorProbe, tenant: Tenant
) -> None:
    response = submit(gateway, tenant, "x", headers={"X-Padding": "a" * 40_000})
    assert response.status_code == 431
    assert response.json()["error"]["code"] == "request_headers_too_large"
    assert simulator.requests() == []
