"""The ``gateway`` command line, as operators and scripts use it: its options, output and
exit codes are a stable interface."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner, Result

from gateway.cli import main
from tests.support.api import MODEL, SUBMIT_PATH
from tests.support.commands import GATEWAY, environment_without_gateway, run_gateway
from tests.support.processes import free_port
from tests.support.servers import StartGateway
from tests.support.simulator import UPSTREAM_KEY, SimulatorProbe
from tests.support.tenants import PEPPER


@pytest.fixture
def sqlite_file(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}"


@pytest.fixture
def cli(sqlite_file: str) -> CliRunner:
    return CliRunner(env={"GATEWAY_DATABASE_URL": sqlite_file, "GATEWAY_KEY_PEPPER": PEPPER})


def invoke(runner: CliRunner, *args: str) -> Result:
    return runner.invoke(main, list(args), catch_exceptions=False)


def test_db_upgrade_then_current(cli: CliRunner) -> None:
    missing = invoke(cli, "db", "current")  # an SQLite file is made by `db upgrade` only
    assert missing.exit_code == 1 and "does not exist: run `gateway db upgrade`" in missing.output
    upgraded = invoke(cli, "db", "upgrade")
    assert upgraded.exit_code == 0 and "(head)" in upgraded.output
    assert "at head" in invoke(cli, "db", "current").output


def test_teams_and_keys_lifecycle(
    cli: CliRunner, sqlite_file: str, start_gateway: StartGateway, simulator: SimulatorProbe
) -> None:
    invoke(cli, "db", "upgrade")
    created = invoke(
        cli,
        "teams",
        "create",
        "video-lab",
        "--monthly-budget-usd",
        "250.5",
        "--cost-center",
        "CC-42",
        "--max-concurrent-jobs",
        "3",
    )
    assert created.exit_code == 0, created.output
    teams = json.loads(invoke(cli, "teams", "list", "--json").output)
    assert [
        (t["name"], t["cost_center"], t["monthly_budget_usd"], t["max_concurrent_jobs"])
        for t in teams
    ] == [("video-lab", "CC-42", "250.500000", 3)]
    assert "video-lab" in invoke(cli, "teams", "list").output

    issued = json.loads(invoke(cli, "keys", "create", "--team", "video-lab", "--json").output)
    assert set(issued) == {"id", "key", "team"}
    assert issued["team"] == "video-lab"
    assert issued["key"].startswith(f"gwk_{issued['id']}_")

    listed = invoke(cli, "keys", "list", "--team", "video-lab", "--json").output
    assert issued["id"] in listed and issued["key"] not in listed

    server = start_gateway(database_url=sqlite_file)
    headers = {"Authorization": f"Bearer {issued['key']}"}
    body = {"model": MODEL, "prompt": "x"}
    assert httpx.post(server.url + SUBMIT_PATH, json=body, headers=headers).status_code == 200

    revoked = invoke(cli, "keys", "revoke", issued["id"])
    assert revoked.exit_code == 0 and issued["id"] in revoked.output
    refused = httpx.post(server.url + SUBMIT_PATH, json=body, headers=headers)
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "api_key_revoked"


@pytest.mark.parametrize(
    ("args", "message", "code"),
    [
        (["teams", "create", "dup"], "already exists", 1),
        (["teams", "create", "neg", "--monthly-budget-usd", "-5"], "non-negative", 2),
        (["teams", "create", "cents", "--monthly-budget-usd", "1.0000001"], "6 decimal places", 2),
        (["teams", "create", "bad name"], "team name", 1),
        (["keys", "create", "--team", "nobody"], "no team named", 1),
        (["keys", "revoke", "nosuchkey"], "no API key", 1),
    ],
)
def test_cli_errors_are_clear_and_exit_nonzero(
    cli: CliRunner, args: list[str], message: str, code: int
) -> None:
    """Exit 1 for a refused change, 2 for an option whose value cannot work (usage)."""
    invoke(cli, "db", "upgrade")
    invoke(cli, "teams", "create", "dup")
    result = invoke(cli, *args)
    assert result.exit_code == code
    assert message in result.output


def wait_for(url: str, timeout: float = 20) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return httpx.get(url, timeout=1)
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_serve_refuses_a_schema_behind_then_serves_with_migrate(
    tmp_path: Path, simulator: SimulatorProbe
) -> None:
    database = f"sqlite+aiosqlite:///{tmp_path / 'serve.db'}"
    env = environment_without_gateway(
        GATEWAY_DATABASE_URL=database,
        GATEWAY_UPSTREAM_URL=simulator.url,
        GATEWAY_UPSTREAM_API_KEY=UPSTREAM_KEY,
    )
    port = free_port()
    refused = run_gateway("serve", "--port", str(port), env=env)
    assert refused.returncode == 1
    assert "gateway db upgrade" in refused.stderr and "--migrate" in refused.stderr

    process = subprocess.Popen(
        [*GATEWAY, "serve", "--port", str(port), "--migrate"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert wait_for(f"http://127.0.0.1:{port}/readyz").json()["status"] == "ready"
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    # uvicorn re-raises SIGTERM once its graceful shutdown is done (the conventional exit).
    assert process.returncode in (0, -signal.SIGTERM), stderr
    assert "Application shutdown complete." in stderr
    for line in stderr.splitlines():  # JSON logs by default
        json.loads(line)


def test_simulator_stops_on_sigterm_even_with_a_hanging_submit() -> None:
    port = free_port()
    process = subprocess.Popen(
        [*GATEWAY, "simulator", "--port", str(port)],
        env=environment_without_gateway(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )

    def submit_that_hangs() -> None:
        with contextlib.suppress(httpx.HTTPError):  # cut off by the shutdown
            httpx.post(
                f"http://127.0.0.1:{port}{SUBMIT_PATH}",
                json={"model": MODEL, "prompt": "#sim:hang"},
                headers={"Authorization": "Bearer any"},
                timeout=60,
            )

    hanging = threading.Thread(target=submit_that_hangs, daemon=True)
    try:
        wait_for(f"http://127.0.0.1:{port}/_simulator/usage")
        hanging.start()
        time.sleep(0.5)  # the submit is now held open by the simulator
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=20)
    finally:
        process.kill()
    assert time.monotonic() - started < 10, stderr
    assert process.returncode in (0, -signal.SIGTERM), stderr


def test_serve_refuses_sqlite_with_several_workers(tmp_path: Path) -> None:
    env = environment_without_gateway(
        GATEWAY_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'w.db'}"
    )
    result = run_gateway("serve", "--workers", "2", env=env)
    assert result.returncode == 1 and "Postgres" in result.stderr


def test_simulator_command_honours_its_options() -> None:
    port = free_port()
    process = subprocess.Popen(
        [
            *GATEWAY,
            "simulator",
            "--port",
            str(port),
            "--api-key",
            "sim-key-1",
            "--latency",
            "0",
            "--status-words",
            "succeeded",
        ],
        env=environment_without_gateway(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(base + "/_simulator/usage")
        body = {"model": MODEL, "prompt": "x", "resolution": "480p", "duration": 5}
        assert httpx.post(base + SUBMIT_PATH, json=body).status_code == 401
        assert (
            httpx.post(base + SUBMIT_PATH, json=body, headers={"x-api-key": "nope"}).status_code
            == 401
        )
        job = httpx.post(base + SUBMIT_PATH, json=body, headers={"x-api-key": "sim-key-1"}).json()
        polled = httpx.get(
            f"{base}/v1/jobs/{job['job_id']}", headers={"Authorization": "Bearer sim-key-1"}
        ).json()
        assert polled["status"] == "succeeded"
        usage = httpx.get(base + "/_simulator/usage").json()
        assert usage["total_cost_usd"] == "0.480000"
        assert usage["jobs"][0]["cost_usd"] == "0.480000"
        csv_text = httpx.get(base + "/_simulator/usage?format=csv").text
        assert (
            csv_text.splitlines()[0]
            == "job_id,status,billed,video_seconds,resolution,images,cost_usd"
        )
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=30)


def test_demo_once_completes_a_job_and_prints_its_cost() -> None:
    env = environment_without_gateway()
    result = run_gateway("demo", "--once", "--port", "0", "--latency", "0.3", env=env, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "completed progress=1.0" in out
    # $0.05 image + 6 s x $0.168 at 720p, priced by the gateway and billed by the simulator alike
    assert "cost: $1.058000 priced by the gateway; $1.058000 billed by the upstream" in out
    assert "curl http://127.0.0.1:" in out and "Authorization: Bearer $GATEWAY_KEY" in out
    # ... with where to look next: the docs, the metrics, the admin API and its token
    gateway_url = out.split("gateway:", 1)[1].split()[0]
    assert f"API docs:     {gateway_url}/docs" in out
    assert f"metrics:      {gateway_url}/metrics" in out
    token = out.split("admin token:", 1)[1].split()[0]
    assert f'curl {gateway_url}/admin/teams -H "Authorization: Bearer {token}"' in out
    # ... and captured once in the ledger, the hold released into it
    assert "captured $1.058000, held $0.000000, remaining $98.942000 of $100.000000" in out


def test_reconcile_settles_every_outstanding_job_not_one_batch(
    cli: CliRunner, sqlite_file: str, start_gateway: StartGateway, simulator: SimulatorProbe
) -> None:
    """`gateway reconcile` settles outstanding jobs now: all of them, a page at a time, not
    the first GATEWAY_RECONCILER_BATCH_SIZE (it settled 3 of 7 here before)."""
    invoke(cli, "db", "upgrade")
    invoke(cli, "teams", "create", "video-lab")
    key = json.loads(invoke(cli, "keys", "create", "--team", "video-lab", "--json").output)["key"]
    server = start_gateway(database_url=sqlite_file)
    headers = {"Authorization": f"Bearer {key}"}
    for _ in range(7):
        body = {"model": MODEL, "prompt": "x", "duration": 1}
        assert httpx.post(server.url + SUBMIT_PATH, json=body, headers=headers).status_code == 200
    env = {
        "GATEWAY_UPSTREAM_URL": simulator.url,
        "GATEWAY_UPSTREAM_API_KEY": UPSTREAM_KEY,
        "GATEWAY_RECONCILER_BATCH_SIZE": "3",
    }
    settled = json.loads(cli.invoke(main, ["reconcile", "--json"], env=env).output)
    assert (settled["polled"], settled["settled"], settled["still_running"]) == (7, 7, 0)
    usage = httpx.get(server.url + "/v1/usage", headers=headers).json()
    assert usage["held_usd"] == "0.000000"


def test_config_show_prints_every_setting_with_secrets_redacted(sqlite_file: str) -> None:
    runner = CliRunner(
        env={
            "GATEWAY_DATABASE_URL": "postgresql://gw:hunter2@127.0.0.1:5432/ledger",
            "GATEWAY_ADMIN_TOKEN": "admin-token-value-0123456789",
            "GATEWAY_ALERT_WEBHOOK_URL": "https://hooks.example.test/services/T0/B0/s3cr3t",
            "GATEWAY_RECONCILER_INTERVAL_SECONDS": "20",
        }
    )
    shown = invoke(runner, "config", "show", "--json")
    assert shown.exit_code == 0
    config = json.loads(shown.stdout)
    from gateway.config import Settings

    assert set(config) == {f"GATEWAY_{name.upper()}" for name in Settings.model_fields}
    assert config["GATEWAY_DATABASE_URL"] == {
        "value": "postgresql://gw:***@127.0.0.1:5432/ledger",
        "source": "environment",
    }
    assert config["GATEWAY_ADMIN_TOKEN"]["value"] == "******** (set)"
    assert config["GATEWAY_KEY_PEPPER"] == {"value": "", "source": "default"}
    assert config["GATEWAY_ALERT_WEBHOOK_URL"]["value"] == "https://hooks.example.test/********"
    assert config["GATEWAY_RECONCILER_INTERVAL_SECONDS"] == {"value": 20.0, "source": "environment"}
    table = invoke(runner, "config", "show").stdout
    for secret in ("hunter2", "admin-token-value", "s3cr3t"):
        assert secret not in shown.stdout and secret not in table
    assert "GATEWAY_RECONCILER_INTERVAL_SECONDS" in table and "environment" in table


def test_every_command_that_prints_data_has_json(cli: CliRunner) -> None:
    assert json.loads(invoke(cli, "db", "upgrade", "--json").stdout)["at_head"] is True
    current = json.loads(invoke(cli, "db", "current", "--json").stdout)
    assert current["at_head"] is True and current["problem"] is None
    assert json.loads(invoke(cli, "db", "check", "--json").stdout)["at_head"] is True
    invoke(cli, "teams", "create", "video-lab")
    issued = json.loads(invoke(cli, "keys", "create", "--team", "video-lab", "--json").stdout)
    revoked = json.loads(invoke(cli, "keys", "revoke", issued["id"], "--json").stdout)
    assert revoked["id"] == issued["id"] and revoked["revoked_at"] is not None
    card = json.loads(
        invoke(
            cli,
            *("rates", "set", "--version", "2027-01", "--image-fee-usd", "0.04", "--json"),
            *("--per-second-usd", "480p=0.09", "--per-second-usd", "720p=0.15"),
        ).stdout
    )
    assert card["per_second_usd"] == {"480p": "0.090000", "720p": "0.150000"}
    closed = json.loads(invoke(cli, "report", "close-month", "--month", "2026-10", "--json").stdout)
    assert closed["month"] == "2026-10" and closed["closed_by"].startswith("cli:")
    assert json.loads(invoke(cli, "report", "closed", "--json").stdout) == [closed]


def test_tables_stay_aligned_whatever_the_cell_widths(cli: CliRunner) -> None:
    invoke(cli, "db", "upgrade")
    invoke(cli, "teams", "create", "a")
    invoke(cli, "teams", "create", "a-team-with-a-much-longer-name", "--cost-center", "CC-1")
    for name in ("x", "a-service-name-longer-than-any-column-header"):
        invoke(cli, "keys", "create", "--team", "a", "--name", name)
    for args in (["teams", "list"], ["keys", "list", "--team", "a"]):
        lines = invoke(cli, *args).stdout.splitlines()
        header, rule, *rows = lines
        assert set(rule) == {"─"} and len(rows) == 2
        starts = [i for i, c in enumerate(header) if c != " " and (i == 0 or header[i - 1] == " ")]
        for row in rows:  # every left-aligned column starts where its header does
            assert row[starts[1] - 1] == " " and row[starts[1]] != " ", (header, row)
