"""Observability: exact metric values after a scripted flow, one JSON access line per request,
soft/hard-limit webhooks (retried, once per team, period and threshold), and metrics that add
up across ``gateway serve --workers 2``."""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.observability.logging import build_handler
from tests.support.api import MODEL, SUBMIT_PATH, submit
from tests.support.processes import GatewayProcess, replica_env
from tests.support.servers import StartGateway, serving
from tests.support.simulator import UPSTREAM_KEY, SimulatorProbe
from tests.support.tenants import PEPPER, make_tenant
from tests.support.webhooks import WebhookReceiver

POLL_ROUTE = "/v1/jobs/{job_id}"


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``/metrics`` as {(name, sorted labels): value}."""
    text = httpx.get(url + "/metrics").text
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict[Any, float], name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def wait_until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


def test_metrics_after_a_scripted_flow_have_exact_values(
    start_gateway: StartGateway, simulator: SimulatorProbe, postgres_url: str
) -> None:
    team = make_tenant(postgres_url, budget_micro_usd=5_000_000)
    server = start_gateway(metrics_refresh_interval_seconds=0.1)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        ok = submit(client, team).json()["job_id"]
        moderated = submit(client, team, prompt="x #sim:moderated").json()["job_id"]
        for job_id in (ok, moderated):
            assert client.get(f"/v1/jobs/{job_id}", headers=team.headers).status_code == 200
        assert submit(client, team).status_code == 429  # 3 x 1.68 > 5.00
        assert submit(client, team, duration="5").status_code == 400
        assert (
            submit(client, team, prompt="#sim:http500", resolution="480p", duration=5).status_code
            == 502
        )
        client.get("/healthz")
        client.get("/readyz")

    name = team.team

    def settled_in_gauges() -> bool:
        samples = scrape(server.url)
        spend = value(samples, "gateway_team_spend_usd", team=name)
        held = value(samples, "gateway_team_held_usd", team=name)
        return spend == 3.36 and held == 0

    wait_until(settled_in_gauges)
    m = scrape(server.url)
    requests = {
        (labels["route"], labels["method"], labels["status"]): v
        for (metric, pairs), v in m.items()
        if metric == "gateway_requests_total" and (labels := dict(pairs))["team"] == name
    }
    assert requests == {
        (SUBMIT_PATH, "POST", "200"): 2,
        (SUBMIT_PATH, "POST", "429"): 1,
        (SUBMIT_PATH, "POST", "400"): 1,
        (SUBMIT_PATH, "POST", "502"): 1,
        (POLL_ROUTE, "GET", "200"): 2,
    }
    assert not [k for k in m if k[0] == "gateway_requests_total" and ("route", "/healthz") in k[1]]
    assert not [k for k in m if k[0] == "gateway_requests_total" and ("route", "/metrics") in k[1]]
    assert value(m, "gateway_request_duration_seconds_count", route=SUBMIT_PATH) == 5
    assert value(m, "gateway_request_duration_seconds_count", route=POLL_ROUTE) == 2
    # three submits reached the upstream (the 429 and the 400 never did), two polls
    assert value(m, "gateway_upstream_request_duration_seconds_count", route=SUBMIT_PATH) == 3
    assert value(m, "gateway_upstream_request_duration_seconds_count", route=POLL_ROUTE) == 2
    assert value(m, "gateway_upstream_errors_total", kind="server_error") == 1
    billed = {"team": name, "model": MODEL, "resolution": "720p"}
    assert value(m, "gateway_billed_usd_total", **billed) == pytest.approx(3.36, abs=1e-9)
    assert value(m, "gateway_video_seconds_total", **billed) == 20
    assert value(m, "gateway_settlements_total", outcome="captured") == 1
    assert value(m, "gateway_settlements_total", outcome="moderation_billed") == 1
    assert value(m, "gateway_settlements_total", outcome="released") == 1
    assert value(m, "gateway_quota_rejections_total", team=name) == 1
    assert value(m, "gateway_validation_rejections_total", code="invalid_type") == 1
    assert value(m, "gateway_idempotent_replays_total") == 0
    assert value(m, "gateway_cost_mismatch_total") == 0
    # ledger gauges, read from the database
    assert value(m, "gateway_team_budget_usd", team=name) == 5.0
    assert value(m, "gateway_team_spend_usd", team=name) == 3.36
    assert value(m, "gateway_team_held_usd", team=name) == 0
    assert value(m, "gateway_jobs_in_flight", team=name) == 0


def test_one_json_access_line_per_request_with_its_fields(
    start_gateway: StartGateway,
    simulator: SimulatorProbe,
    postgres_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    team = make_tenant(postgres_url)
    stream = io.StringIO()
    handler = build_handler("json", [UPSTREAM_KEY, PEPPER], stream=stream)
    logging.getLogger().addHandler(handler)
    try:
        server = start_gateway()
        with httpx.Client(base_url=server.url) as client:
            submitted = submit(client, team, "x", headers={"X-Request-ID": "req-submit-1"})
            job_id = submitted.json()["job_id"]
            client.get(f"/v1/jobs/{job_id}", headers={**team.headers, "X-Request-ID": "req-poll-1"})
    finally:
        logging.getLogger().removeHandler(handler)
    access = [
        json.loads(line)
        for line in stream.getvalue().splitlines()
        if '"logger":"gateway.access"' in line
    ]
    by_id = {}
    for line in access:
        by_id.setdefault(line["request_id"], []).append(line)
    (submit_line,) = by_id["req-submit-1"]
    (poll_line,) = by_id["req-poll-1"]
    assert {
        k: submit_line[k] for k in ("method", "route", "status", "team", "job_id", "estimate_usd")
    } == {
        "method": "POST",
        "route": SUBMIT_PATH,
        "status": 200,
        "team": team.team,
        "job_id": job_id,
        "estimate_usd": "1.680000",
    }
    assert submit_line["duration_ms"] > 0 and submit_line["upstream_ms"] > 0
    assert poll_line["route"] == POLL_ROUTE and poll_line["captured_usd"] == "1.680000"
    assert poll_line["job_id"] == job_id


@pytest.fixture
def receiver() -> Iterator[tuple[WebhookReceiver, str]]:
    hook = WebhookReceiver(fail_first=1)
    with serving("/hook", hook.handle, methods=["POST"]) as url:
        yield hook, url


def test_budget_alerts_are_sent_once_per_threshold_and_retried(
    start_gateway: StartGateway,
    simulator: SimulatorProbe,
    postgres_url: str,
    receiver: tuple[WebhookReceiver, str],
) -> None:
    hook, url = receiver
    team = make_tenant(postgres_url, budget_micro_usd=6_000_000, soft_limit_percent=50)
    server = start_gateway(
        alert_webhook_url=url,
        alert_webhook_secret="hook-secret-123",
        alert_delivery_interval_seconds=0.1,
        alert_webhook_retry_base_seconds=0.1,
    )
    with httpx.Client(base_url=server.url) as client:
        assert submit(client, team).status_code == 200  # 1.68 of 6.00: under 50 %
        assert submit(client, team).status_code == 200  # 3.36: past the 3.00 soft limit
        assert submit(client, team).status_code == 200  # 5.04: still past, no second alert
        assert submit(client, team).status_code == 429  # 6.72 > 6.00: the hard limit
        assert submit(client, team).status_code == 429  # again: no second alert
    wait_until(lambda: len(hook.delivered(team.team)) == 2)
    time.sleep(0.5)  # nothing more arrives
    delivered = sorted(hook.delivered(team.team), key=lambda alert: alert["threshold"])
    assert len(hook.delivered(team.team)) == 2
    assert [
        (a["threshold"], a["team"], a["budget_usd"], a["limit_usd"], a["used_usd"])
        for a in delivered
    ] == [
        ("hard_limit", team.team, "6.000000", "6.000000", "5.040000"),
        ("soft_limit", team.team, "6.000000", "3.000000", "3.360000"),
    ]
    # the first attempt was refused and retried under the same Idempotency-Key, signed
    refused = [(h, b) for h, b, status in hook.received if status == 500]
    assert len(refused) == 1  # the receiver refuses its very first delivery only
    refused_headers, refused_body = refused[0]
    retries = [h for h, b, _ in hook.received if b == refused_body]
    assert len(retries) == 2
    assert {h["idempotency-key"] for h in retries} == {refused_headers["idempotency-key"]}
    for headers, body, _ in hook.received:
        expected = hmac.new(b"hook-secret-123", body, hashlib.sha256).hexdigest()
        assert headers["x-gateway-signature"] == f"sha256={expected}"


def test_metrics_add_up_across_workers(
    postgres_url: str, simulator: SimulatorProbe, tmp_path: Any
) -> None:
    team = make_tenant(postgres_url)
    env = replica_env(postgres_url, simulator.url)
    process = GatewayProcess(env, tmp_path, "workers", workers=2).start()
    try:
        for _ in range(12):  # a new connection each time, spread over the workers
            with httpx.Client(base_url=process.url) as client:
                assert submit(client, team).status_code == 200
        for _ in range(4):  # whichever worker answers the scrape sees the sum
            samples = scrape(process.url)
            total = value(
                samples,
                "gateway_requests_total",
                route=SUBMIT_PATH,
                method="POST",
                status="200",
                team=team.team,
            )
            assert total == 12
    finally:
        process.stop()
