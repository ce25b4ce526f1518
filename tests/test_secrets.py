"""Secrets stay secret: the upstream key, tenant keys and data-URI image bytes never appear in a
response or a log line, at DEBUG on every logger, across success and failure paths."""

from __future__ import annotations

import base64
import io
import logging

import httpx
import pytest

from gateway.observability.logging import RedactingFilter, build_handler
from tests.support.api import MODEL, SUBMIT_PATH, submit
from tests.support.images import PNG
from tests.support.servers import StartGateway
from tests.support.simulator import UPSTREAM_KEY, SimulatorProbe
from tests.support.tenants import PEPPER, Tenant


def test_no_secret_in_any_response_or_log_line(
    start_gateway: StartGateway,
    simulator: SimulatorProbe,
    tenant: Tenant,
    caplog: pytest.LogCaptureFixture,
) -> None:
    image_payload = base64.b64encode(PNG + b"\x17" * 600).decode()
    formatted = io.StringIO()
    handler = build_handler("json", [UPSTREAM_KEY, PEPPER], stream=formatted)
    root = logging.getLogger()
    root.addHandler(handler)
    caplog.set_level(logging.DEBUG)
    responses: list[httpx.Response] = []
    try:
        server = start_gateway(upstream_read_timeout_seconds=0.5)
        wrong_key_server = start_gateway(upstream_api_key="sk-wrong-upstream-key-123456")
        with httpx.Client(base_url=server.url, timeout=30) as client:
            submitted = submit(client, tenant, "ok", image=f"data:image/png;base64,{image_payload}")
            responses.append(submitted)
            responses.append(
                client.get(f"/v1/jobs/{submitted.json()['job_id']}", headers=tenant.headers)
            )
            for prompt in ("#sim:http500", "#sim:http429", "#sim:hang", "#sim:moderated"):
                responses.append(
                    client.post(
                        SUBMIT_PATH,
                        json={"model": MODEL, "prompt": prompt},
                        headers={"x-api-key": tenant.key},
                    )
                )
            responses.append(  # invalid image: the error must not quote it
                submit(client, tenant, "x", image=f"data:image/jpeg;base64,{image_payload}")
            )
            responses.append(  # a wrong tenant key that looks almost right
                client.post(
                    SUBMIT_PATH,
                    json={"model": MODEL, "prompt": "x"},
                    headers={"Authorization": f"Bearer {tenant.key[:-2]}zz"},
                )
            )
        with httpx.Client(base_url=wrong_key_server.url, timeout=30) as client:
            responses.append(submit(client, tenant, "x"))
    finally:
        root.removeHandler(handler)

    assert [r.status_code for r in responses] == [200, 200, 502, 429, 504, 200, 400, 401, 502]
    secrets = [UPSTREAM_KEY, tenant.key, PEPPER, image_payload[:40], "sk-wrong-upstream-key"]
    for response in responses:
        exposed = response.text + " " + " ".join(f"{k}: {v}" for k, v in response.headers.items())
        for secret in secrets:
            assert secret not in exposed

    # What the code hands to logging, before any redaction safety net:
    raw_lines = []
    for record in caplog.records:
        raw_lines.append(record.getMessage())
        raw_lines.append(str(record.__dict__))
        if record.exc_info:
            raw_lines.append(logging.Formatter().formatException(record.exc_info))
    assert len(caplog.records) > 10  # the flow really logged (access lines, upstream errors)
    # ... and what the configured handler writes out:
    written = formatted.getvalue()
    assert written.count('"logger":"gateway.access"') >= len(responses)
    for secret in secrets:
        assert not any(secret in line for line in raw_lines), f"{secret[:12]}... logged"
        assert secret not in written


def test_redaction_safety_net_masks_each_kind_of_secret() -> None:
    redactor = RedactingFilter(["configured-secret-value"])
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJkYW5hIn0.c2lnbmF0dXJlLXZhbHVl"
    key = "gwk_abcdefgh12345678_" + "S" * 43
    record = logging.LogRecord(
        "t",
        logging.INFO,
        __file__,
        1,
        "auth=%s x=%s jwt=%s img=%s cfg=%s",
        ("Bearer tok123", key, jwt, "data:image/png;base64," + "A" * 64, "configured-secret-value"),
        None,
    )
    record.detail = f"header Authorization: Bearer {key}"
    redactor.filter(record)
    text = record.getMessage() + record.detail
    for secret in ("tok123", "S" * 43, jwt, "A" * 64, "configured-secret-value"):
        assert secret not in text
    assert "gwk_abcdefgh12345678_[redacted]" in text  # the public key id stays, for debugging


def test_no_secret_in_logs_across_admin_and_jwt_flows(
    start_gateway: StartGateway,
    simulator: SimulatorProbe,
    postgres_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    import time

    import jwt as pyjwt

    from tests.support.tenants import make_tenant

    admin_token = "admin-SECRET-token-9f8e7d6c5b4a"
    jwt_secret = "jwt-SECRET-hs256-key-0a1b2c3d4e5f6789"
    formatted = io.StringIO()
    handler = build_handler(
        "json", [UPSTREAM_KEY, PEPPER, admin_token, jwt_secret], stream=formatted
    )
    root = logging.getLogger()
    root.addHandler(handler)
    caplog.set_level(logging.DEBUG)
    team = make_tenant(postgres_url)
    now = int(time.time())
    claims = {"iss": "https://idp", "sub": "dana", "iat": now, "exp": now + 60, "team": team.team}
    good_jwt = pyjwt.encode(claims, jwt_secret, algorithm="HS256")
    expired_jwt = pyjwt.encode({**claims, "exp": now - 3600}, jwt_secret, algorithm="HS256")
    admin_jwt = pyjwt.encode({**claims, "roles": ["gateway-admin"]}, jwt_secret, algorithm="HS256")
    try:
        server = start_gateway(
            admin_token=admin_token, jwt_issuer="https://idp", jwt_secret=jwt_secret
        )
        with httpx.Client(base_url=server.url, timeout=30) as client:
            admin = {"Authorization": f"Bearer {admin_token}"}
            issued = client.post(f"/admin/teams/{team.team}/keys", json={}, headers=admin).json()
            new_key = issued["key"]
            body = {"model": MODEL, "prompt": "x"}
            for token in (new_key, good_jwt, expired_jwt, admin_token):
                client.post(SUBMIT_PATH, json=body, headers={"Authorization": f"Bearer {token}"})
            client.get("/admin/jobs", headers={"Authorization": f"Bearer {admin_jwt}"})
            client.get("/admin/audit", headers=admin)
            client.post(f"/admin/keys/{issued['id']}/rotate", json={}, headers=admin)
    finally:
        root.removeHandler(handler)

    secrets = [
        admin_token,
        jwt_secret,
        good_jwt,
        expired_jwt,
        admin_jwt,
        new_key,
        UPSTREAM_KEY,
        PEPPER,
    ]
    raw_lines = [record.getMessage() + str(record.__dict__) for record in caplog.records]
    assert len(raw_lines) > 8
    written = formatted.getvalue()
    assert written.count('"logger":"gateway.access"') >= 8
    for secret in secrets:
        assert not any(secret in line for line in raw_lines), f"{secret[:10]}... logged"
        assert secret not in written
