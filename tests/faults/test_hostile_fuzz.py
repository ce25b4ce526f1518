"""Hypothesis-driven hostile requests: arbitrary headers on tenant routes (credentials, tags,
idempotency keys, request ids, content types, repeated headers), arbitrary job ids in the
poll path, and arbitrary JSON in admin bodies. Never a 5xx; every refusal in the documented
error shape; nothing refused is forwarded or held; what is accepted is held exactly once.
(Bodies of submits are fuzzed in tests/test_property.py, the OpenAPI in test_openapi_fuzz.)"""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.app import create_app
from gateway.jobs.models import Job
from gateway.tenancy.models import Team
from tests.support.api import MODEL, SUBMIT_PATH
from tests.support.servers import ServerThread, running
from tests.support.settings import gateway_settings
from tests.support.simulator import SimulatorProbe
from tests.support.strategies import scalars
from tests.support.tenants import Tenant, in_session, make_tenant

ADMIN = "admin-token-hostile-fuzz-0123456789"
FUZZ = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
visible = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)
latin1 = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=40)


def header_values(tenant: Tenant) -> dict[str, st.SearchStrategy[str]]:
    token = st.sampled_from([tenant.key, tenant.key + "x", "gwk_" + "a" * 40, ADMIN, ""])
    return {
        "Authorization": st.one_of(
            token.map(lambda t: f"Bearer {t}"),
            token.map(lambda t: f"bearer   {t}  "),
            token.map(lambda t: f"Basic {t}"),
            latin1,
        ),
        "x-api-key": st.one_of(token, latin1),
        "X-Gateway-Tags": st.one_of(
            st.sampled_from(["project=atlas", "project=atlas,user=dana", "=x", "a=", "A=b"]),
            latin1,
        ),
        "Idempotency-Key": st.one_of(visible, latin1),
        "X-Request-ID": st.one_of(visible, latin1),
        "Content-Type": st.sampled_from(
            ["application/json", "text/plain", "application/json; charset=latin-1", ""]
        ),
        "Accept": latin1,
    }


def hostile_headers(tenant: Tenant) -> st.SearchStrategy[list[tuple[str, str]]]:
    values = header_values(tenant)
    one = st.sampled_from(sorted(values)).flatmap(
        lambda name: values[name].map(lambda value: (name, value))
    )
    return st.lists(one, max_size=6)


@dataclass(frozen=True)
class RawResponse:
    status_code: int
    headers: dict[str, str]
    text: str

    def json(self) -> Any:
        return json.loads(self.text)


def raw_post(
    client: httpx.Client, path: str, body: bytes, headers: list[tuple[str, str]]
) -> RawResponse:
    """A POST written byte by byte: header values an HTTP client library would refuse to send
    (trailing spaces, latin-1) reach the gateway as a hostile client sends them."""
    url = httpx.URL(str(client.base_url))
    lines = [f"POST {path} HTTP/1.1", f"Host: {url.host}", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in headers]
    lines.append("Connection: close")
    request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
    with socket.create_connection((url.host, url.port or 80), timeout=30) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, payload = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parsed = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        parsed[name.strip().lower()] = value.strip()
    return RawResponse(int(status_line.split()[1]), parsed, payload.decode("utf-8", "replace"))


def jobs_of(database_url: str, team: str) -> int:
    async def _count(session: AsyncSession) -> int:
        stmt = select(func.count()).select_from(Job).join(Team).where(Team.name == team)
        return int((await session.execute(stmt)).scalar_one())

    return in_session(database_url, _count)


def assert_error_shape(response: httpx.Response | RawResponse) -> None:
    error = response.json()["error"]
    assert isinstance(error["type"], str) and isinstance(error["code"], str), error
    assert isinstance(error["message"], str) and error["message"], error


@pytest.fixture(scope="module")
def fuzz_tenant(postgres_url: str) -> Tenant:
    return make_tenant(postgres_url, budget_micro_usd=None)


def test_hostile_headers_on_submit(
    gateway: httpx.Client, simulator: SimulatorProbe, fuzz_tenant: Tenant, postgres_url: str
) -> None:
    @FUZZ
    @given(headers=hostile_headers(fuzz_tenant), authorised=st.booleans())
    def check(headers: list[tuple[str, str]], authorised: bool) -> None:
        if authorised:  # half the cases get past authentication, to reach what follows it
            headers = [h for h in headers if h[0] != "Authorization"]
            headers.append(("Authorization", f"Bearer {fuzz_tenant.key}"))
        before_jobs = jobs_of(postgres_url, fuzz_tenant.team)
        before_submits = len(simulator.submits())
        body = json.dumps({"model": MODEL, "prompt": "fuzzed headers"}).encode()
        response = raw_post(gateway, SUBMIT_PATH, body, headers)
        event(f"status {response.status_code}")
        assert response.status_code < 500, response.text
        forwarded = len(simulator.submits()) - before_submits
        held = jobs_of(postgres_url, fuzz_tenant.team) - before_jobs
        if response.headers.get("idempotent-replayed") == "true":  # the first answer, again
            assert (forwarded, held) == (0, 0), headers
        elif response.status_code == 200:
            assert (forwarded, held) == (1, 1), headers
        else:
            assert_error_shape(response)
            assert (forwarded, held) == (0, 0), (headers, response.text)

    check()


def test_hostile_job_ids_in_the_poll_path(
    gateway: httpx.Client, simulator: SimulatorProbe, fuzz_tenant: Tenant
) -> None:
    @FUZZ
    @given(job_id=st.text(min_size=1, max_size=300))
    def check(job_id: str) -> None:
        response = gateway.get("/v1/jobs/" + quote(job_id, safe=""), headers=fuzz_tenant.headers)
        assert response.status_code in (400, 404), (response.status_code, response.text)
        assert_error_shape(response)

    check()
    assert simulator.requests() == []  # an unknown id never reaches the upstream


@pytest.fixture(scope="module")
def admin_gateway(postgres_url: str, simulator_server: ServerThread) -> Any:
    app = create_app(gateway_settings(postgres_url, simulator_server.url, admin_token=ADMIN))
    with running(app) as server:
        yield server


json_values = st.one_of(
    scalars(max_text_size=20),
    st.sampled_from(["1e3", "0.000001", "100", "-5", "1_000", "NaN", "12.5", "9" * 30]),
    st.lists(st.integers(), max_size=2),
)
team_fields = st.fixed_dictionaries(
    {},
    optional={
        "name": st.one_of(st.text(max_size=70), json_values),
        "monthly_budget_usd": json_values,
        "cost_center": json_values,
        "max_concurrent_jobs": json_values,
        "soft_limit_percent": json_values,
        "disabled": json_values,
        "surprise": json_values,
    },
)


def test_hostile_admin_bodies(admin_gateway: ServerThread, postgres_url: str) -> None:
    admin = {"Authorization": f"Bearer {ADMIN}"}

    @FUZZ
    @given(create=team_fields, change=team_fields)
    def check(create: dict[str, Any], change: dict[str, Any]) -> None:
        with httpx.Client(base_url=admin_gateway.url, headers=admin, timeout=30) as client:
            created = client.post("/admin/teams", json=create)
            event(f"create {created.status_code}")
            assert created.status_code in (201, 400, 409, 422), created.text
            if created.status_code != 201:
                assert_error_shape(created)
                return
            name = created.json()["name"]
            assert client.get(f"/admin/teams/{quote(name, safe='')}").json() == created.json()
            changed = client.patch(f"/admin/teams/{quote(name, safe='')}", json=change)
            event(f"patch {changed.status_code}")
            assert changed.status_code in (200, 400, 409, 422), changed.text
            if changed.status_code != 200:
                assert_error_shape(changed)

    check()
