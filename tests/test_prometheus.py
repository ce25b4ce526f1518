"""The operator side with the real tools (Debian package ``prometheus``): the alert rules pass
``promtool check`` and their unit tests, a real Prometheus server scraping a running gateway
sees the same billed dollars as the ledger, and every dashboard and alert query is valid
PromQL over metric names the gateway really exports."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.api import submit
from tests.support.commands import run
from tests.support.environment import require_tool
from tests.support.ledger import team_ledger
from tests.support.processes import free_port
from tests.support.servers import ServerThread, StartGateway
from tests.support.simulator import SimulatorProbe
from tests.support.tenants import make_tenant

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
RULES = DEPLOY / "prometheus" / "gateway-alerts.yml"
RULE_TESTS = DEPLOY / "prometheus" / "gateway-alerts.test.yml"
DASHBOARD = DEPLOY / "grafana" / "gateway-dashboard.json"


def require(tool: str) -> str:
    return require_tool(
        tool, install="Debian package 'prometheus', see README", skipped="Prometheus tests SKIPPED"
    )


def test_alert_rules_are_valid_and_pass_their_unit_tests() -> None:
    promtool = require("promtool")
    checked = run([promtool, "check", "rules", str(RULES)])
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 7 rules found" in checked.stdout
    tested = run([promtool, "test", "rules", str(RULE_TESTS)], timeout=120, cwd=RULE_TESTS.parent)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_every_alert_rule_has_a_unit_test() -> None:
    alerts = set(re.findall(r"^\s+- alert: (\w+)", RULES.read_text(), re.MULTILINE))
    tested = set(re.findall(r"alertname: (\w+)", RULE_TESTS.read_text()))
    assert len(alerts) == 7
    assert alerts == tested


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def alert_queries() -> list[str]:
    text = RULES.read_text()
    return [m.strip() for m in re.findall(r"expr: \|\n((?:\s{10}.*\n)+)", text)] + re.findall(
        r"expr: ([^|\n].*)", text
    )


def test_dashboard_covers_what_operators_watch() -> None:
    titles = " ".join(p["title"].lower() for p in json.loads(DASHBOARD.read_text())["panels"])
    for topic in (
        "spend",
        "budget utilisation",
        "request rate",
        "latency",
        "upstream errors",
        "holds outstanding",
        "settlement lag",
    ):
        assert topic in titles


@pytest.fixture
def prometheus(tmp_path: Path, start_gateway: StartGateway) -> Iterator[tuple[str, ServerThread]]:
    binary = require("prometheus")
    gateway = start_gateway(metrics_refresh_interval_seconds=0.2)
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: gateway\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{gateway.port}']\n"
    )
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(url + "/-/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            assert time.monotonic() < deadline, "prometheus did not become ready"
            time.sleep(0.2)
        yield url, gateway
    finally:
        process.terminate()
        process.wait(timeout=20)
        if process.stderr is not None:
            process.stderr.close()


def promql(url: str, query: str) -> dict[str, Any]:
    answer: dict[str, Any] = httpx.get(url + "/api/v1/query", params={"query": query}).json()
    return answer


def test_prometheus_sees_the_ledgers_billed_dollars(
    prometheus: tuple[str, ServerThread], simulator: SimulatorProbe, postgres_url: str
) -> None:
    url, gateway = prometheus
    team = make_tenant(postgres_url)
    with httpx.Client(base_url=gateway.url) as client:
        for prompt, fields in (
            ("a", {}),
            ("b #sim:moderated", {"resolution": "480p"}),
            ("c #sim:duration=4", {"image": "https://e.com/i.png"}),
            ("d #sim:fail", {}),
        ):
            job_id = submit(client, team, prompt, **fields).json()["job_id"]
            client.get(f"/v1/jobs/{job_id}", headers=team.headers)
    ledger = team_ledger(postgres_url, team.team)
    captured = sum(e.amount_micro_usd for e in ledger.entries if e.kind == "capture")
    assert captured == 1_680_000 + 960_000 + 722_000  # 10 s 720p; 10 s 480p; image + 4 s 720p

    query = f'sum(gateway_billed_usd_total{{team="{team.team}"}})'
    deadline = time.monotonic() + 30
    while True:
        result = promql(url, query)["data"]["result"]
        if result and round(float(result[0]["value"][1]), 6) == captured / 1_000_000:
            break
        assert time.monotonic() < deadline, f"Prometheus never saw {captured / 1e6}: {result}"
        time.sleep(0.5)
    spend = promql(url, f'max(gateway_team_spend_usd{{team="{team.team}"}})')["data"]["result"]
    assert round(float(spend[0]["value"][1]), 6) == captured / 1_000_000


def test_dashboard_and_alert_queries_are_valid_over_exported_metrics(
    prometheus: tuple[str, ServerThread], simulator: SimulatorProbe, postgres_url: str
) -> None:
    url, gateway = prometheus
    exported = {
        sample.name
        for family in text_string_to_metric_families(httpx.get(gateway.url + "/metrics").text)
        for sample in family.samples
    } | {
        family.name + suffix
        for family in text_string_to_metric_families(httpx.get(gateway.url + "/metrics").text)
        for suffix in ("", "_total", "_bucket", "_count", "_sum")
    }
    queries = dashboard_queries() + alert_queries()
    assert len(queries) >= 20
    for query in queries:
        for name in re.findall(r"\bgateway_[a-z_]+", query):
            assert name in exported, f"{name} (in {query!r}) is not exported by the gateway"
        answer = promql(url, query)
        assert answer["status"] == "success", (query, answer)
