"""``deploy/docker-compose.yml``, the production shape to try locally (no Docker engine here to
run it): valid under the Compose Specification's schema, and wired as the README says: the
replicas talk to Postgres through PgBouncer in transaction mode, nginx balances their tenant
ports, Prometheus scrapes their admin ports with the alert rules loaded (``promtool`` checks
that configuration), and Grafana is provisioned with the dashboard."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.support.environment import require_tool

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
SCHEMA = Path(__file__).resolve().parent / "data" / "compose-spec.json"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    return loaded


def test_the_compose_file_follows_the_compose_specification(compose: dict[str, Any]) -> None:
    schema = json.loads(SCHEMA.read_text())
    errors = [
        f"{'/'.join(map(str, e.path))}: {e.message}"
        for e in jsonschema.Draft201909Validator(schema).iter_errors(compose)
    ]
    assert errors == []


def test_every_file_the_stack_mounts_is_in_the_repository(compose: dict[str, Any]) -> None:
    mounted = [
        volume.split(":", 1)[0]
        for service in compose["services"].values()
        for volume in service.get("volumes", [])
        if volume.startswith("./")
    ]
    assert len(mounted) >= 5
    for path in mounted:
        assert (DEPLOY / path).exists(), path


def test_the_stack_is_the_production_shape(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {
        "postgres",
        "pgbouncer",
        "migrate",
        "simulator",
        "gateway-a",
        "gateway-b",
        "nginx",
        "prometheus",
        "grafana",
    } <= set(services)
    assert services["pgbouncer"]["environment"]["PGBOUNCER_POOL_MODE"] == "transaction"
    for name in ("gateway-a", "gateway-b"):
        env = services[name]["environment"]
        assert "@pgbouncer:6432/" in env["GATEWAY_DATABASE_URL"]
        assert env["GATEWAY_DATABASE_PGBOUNCER"] == "true"
        assert env["GATEWAY_UPSTREAM_URL"] == "http://simulator:9000"
        assert "ports" not in services[name]  # reached through nginx only
    admin_port = services["gateway-a"]["environment"]["GATEWAY_ADMIN_PORT"]
    nginx = (DEPLOY / "nginx" / "nginx.conf").read_text()
    assert re.findall(r"server (gateway-[ab]):(\d+)", nginx) == [
        ("gateway-a", "8000"),
        ("gateway-b", "8000"),
    ]
    prometheus = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    (scrape,) = prometheus["scrape_configs"]
    assert scrape["static_configs"][0]["targets"] == [
        f"gateway-a:{admin_port}",
        f"gateway-b:{admin_port}",
    ]
    provisioned = DEPLOY / "grafana" / "provisioning"
    datasource = yaml.safe_load((provisioned / "datasources" / "prometheus.yml").read_text())
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"


def test_promtool_accepts_the_prometheus_configuration(tmp_path: Path) -> None:
    promtool = require_tool(
        "promtool", install="Debian package prometheus", skipped="the Prometheus config check"
    )
    for name in ("prometheus.yml", "gateway-alerts.yml"):
        shutil.copy(DEPLOY / "prometheus" / name, tmp_path / name)
    checked = subprocess.run(
        [promtool, "check", "config", str(tmp_path / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS" in checked.stdout + checked.stderr
