"""``gateway serve --admin-port`` (PRODUCT §12): ``/admin/*`` and ``/metrics`` answer on the
admin port only, 404 on the tenant port, and the admin port serves nothing else but the health
probes and the portal (where the admin signs in there only); with several workers too.
Without it one port serves all (every other test)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from gateway.portal.web import SESSION_COOKIE
from tests.support.api import submit_to
from tests.support.commands import environment_without_gateway, run_gateway
from tests.support.portal import Portal
from tests.support.processes import GatewayProcess, free_port, replica_env
from tests.support.servers import ServerThread
from tests.support.tenants import make_tenant

ADMIN_TOKEN = "listeners-admin-token-0123456789"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.mark.parametrize("workers", [1, 2])
def test_operator_routes_answer_only_on_the_admin_port(
    workers: int, postgres_url: str, simulator_server: ServerThread, tmp_path: Path
) -> None:
    admin_port = free_port()
    env = replica_env(postgres_url, simulator_server.url, GATEWAY_ADMIN_TOKEN=ADMIN_TOKEN)
    gateway = GatewayProcess(
        env, tmp_path, "split", workers=workers, args=("--admin-port", str(admin_port))
    ).start()
    admin_url = f"http://127.0.0.1:{admin_port}"
    tenant = make_tenant(postgres_url)
    try:
        accepted = submit_to(gateway.url, tenant, duration=5, resolution="480p")
        assert accepted.status_code == 200, accepted.text
        job = accepted.json()["job_id"]
        polled = httpx.get(f"{gateway.url}/v1/jobs/{job}", headers=tenant.headers, timeout=30)
        assert polled.json()["status"] == "completed"  # settled: the test leaves nothing open

        def status(url: str, path: str, headers: dict[str, str]) -> int:
            return httpx.get(url + path, headers=headers, timeout=30).status_code

        tenant_port = {
            path: status(gateway.url, path, ADMIN)
            for path in ("/admin/teams", "/metrics", "/healthz", "/readyz")
        }
        assert tenant_port == {
            "/admin/teams": 404,
            "/metrics": 404,
            "/healthz": 200,
            "/readyz": 200,
        }
        refused = httpx.get(gateway.url + "/admin/teams", headers=ADMIN, timeout=30)
        assert refused.json()["error"]["code"] == "route_not_found"
        assert "x-request-id" in refused.headers

        admin_side = {
            path: status(admin_url, path, ADMIN)
            for path in ("/admin/teams", "/metrics", "/healthz", "/readyz")
        }
        assert admin_side == {"/admin/teams": 200, "/metrics": 200, "/healthz": 200, "/readyz": 200}
        assert status(admin_url, "/v1/usage", tenant.headers) == 404
        assert status(admin_url, f"/v1/jobs/{job}", tenant.headers) == 404
        assert "gateway_requests_total" in httpx.get(admin_url + "/metrics", timeout=30).text
        if workers == 1:
            _the_admin_signs_in_to_the_portal_on_the_admin_port_only(
                gateway.url, admin_url, tenant.key
            )
    finally:
        gateway.stop()


def _the_admin_signs_in_to_the_portal_on_the_admin_port_only(
    tenant_url: str, admin_url: str, api_key: str
) -> None:
    """The portal answers on both ports: a team's key signs in on the tenant port; the admin
    token signs in on the admin port only, and its session's cookie (which a browser sends
    to every port of the host) is no session on the tenant port."""
    on_tenant_port, on_admin_port = Portal(tenant_url), Portal(admin_url)
    try:
        assert on_tenant_port.sign_in(admin_token=ADMIN_TOKEN).status_code == 401
        assert on_tenant_port.sign_in(api_key=api_key).status_code == 303
        assert on_tenant_port.http.get("/portal/").status_code == 200
        signed_in = on_admin_port.sign_in(admin_token=ADMIN_TOKEN)
        assert signed_in.status_code == 303
        assert on_admin_port.http.get("/portal/admin").status_code == 200
        cookie = {SESSION_COOKIE: on_admin_port.http.cookies[SESSION_COOKIE]}
        carried = httpx.get(tenant_url + "/portal/admin", cookies=cookie, timeout=30)
        assert (carried.status_code, carried.headers["location"]) == (303, "/portal/login")
    finally:
        on_tenant_port.close()
        on_admin_port.close()


def test_the_admin_port_must_differ_from_the_tenant_port(
    postgres_url: str, simulator_server: ServerThread
) -> None:
    env = environment_without_gateway(**replica_env(postgres_url, simulator_server.url))
    port = str(free_port())
    clash = run_gateway("serve", "--port", port, "--admin-port", port, env=env, timeout=60)
    assert clash.returncode == 1, clash.stderr
    assert f"--admin-port must differ from --port (both are {port})" in clash.stderr
