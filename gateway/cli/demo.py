"""``gateway demo``: zero-setup tour. Embedded SQLite, the simulator as upstream, a demo team and
key, one sample job end to end through real HTTP, and the curl lines to try it yourself."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import signal
import tempfile
from pathlib import Path
from typing import Any

import click
import httpx
from pydantic import SecretStr

from gateway.app import create_app
from gateway.audit.service import Actor
from gateway.cli._common import database, fail
from gateway.config import Settings
from gateway.db.engine import create_sessionmaker
from gateway.db.migrations import upgrade_to_head
from gateway.db.session import transaction
from gateway.kit.servers import EmbeddedServer, bind_socket
from gateway.observability.logging import configure_logging
from gateway.tenancy import repository as tenancy_repository
from gateway.tenancy import service as tenancy
from gateway.upstream.simulator import SimulatorConfig, create_simulator_app

DEMO_TEAM = "demo"
DEMO_ACTOR = Actor("cli:demo")
SAMPLE_REQUEST = {
    "model": "grok-imagine-video-1-5",
    "prompt": "A paper boat drifts down a rain-soaked street, camera following slowly.",
    "image": "https://example.com/paper-boat.png",
    "duration": 6,
    "resolution": "720p",
}
TERMINAL = {"completed", "succeeded", "done", "failed", "error", "expired"}


@click.command()
@click.option("--once", is_flag=True, help="Run the sample job, print its cost, exit 0.")
@click.option(
    "--port",
    default=8000,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="Gateway port (0: any free port; a busy port falls back to a free one).",
)
@click.option(
    "--latency",
    default=2.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Simulated seconds a job takes.",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Keep the demo database here (default: a temporary directory, removed on exit).",
)
def demo(once: bool, port: int, latency: float, data_dir: Path | None) -> None:
    """Start gateway + simulator, run a sample job, show how to call it."""
    configure_logging("text", "WARNING", [])
    with contextlib.ExitStack() as stack:
        if data_dir is None:
            data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gw-demo-")))
        data_dir.mkdir(parents=True, exist_ok=True)
        ok = asyncio.run(_demo(once=once, port=port, latency=latency, data_dir=data_dir))
    if not ok:
        fail("the sample job did not complete", code=1)


async def _demo(*, once: bool, port: int, latency: float, data_dir: Path) -> bool:
    upstream_key = secrets.token_urlsafe(24)
    admin_token = secrets.token_urlsafe(24)
    sim_socket = bind_socket()
    try:
        gateway_socket = bind_socket(port=port)
    except OSError:
        click.echo(f"port {port} is busy; using a free port instead", err=True)
        gateway_socket = bind_socket()
    sim_url = f"http://127.0.0.1:{sim_socket.getsockname()[1]}"
    gateway_url = f"http://127.0.0.1:{gateway_socket.getsockname()[1]}"

    settings = Settings(
        _env_file=None,
        database_url=f"sqlite+aiosqlite:///{data_dir / 'gateway-demo.db'}",
        upstream_url=sim_url,
        upstream_api_key=SecretStr(upstream_key),
        key_pepper=SecretStr(secrets.token_urlsafe(24)),
        admin_token=SecretStr(admin_token),
        log_format="text",
        log_level="WARNING",
        environment="development",
    )
    tenant_key = await _prepare_database(settings)

    simulator = EmbeddedServer.for_app(
        create_simulator_app(SimulatorConfig(api_key=upstream_key, latency=latency))
    )
    gateway = EmbeddedServer.for_app(create_app(settings))
    tasks = [await simulator.start(sim_socket), await gateway.start(gateway_socket)]

    def stop() -> None:
        simulator.should_exit = True
        gateway.should_exit = True

    _print_banner(gateway_url, sim_url, tenant_key, admin_token, data_dir)
    try:
        ok = await _run_sample(gateway_url, tenant_key)
        if not once:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop)
            click.echo(f"\nServing on {gateway_url} until Ctrl-C.")
            await asyncio.gather(*tasks)
    finally:
        stop()
        await asyncio.gather(*tasks, return_exceptions=True)
    return ok


async def _prepare_database(settings: Settings) -> str:
    async with database(settings, require_schema=False, create=True) as engine:
        await upgrade_to_head(engine)
        async with transaction(create_sessionmaker(engine)) as session:
            if await tenancy_repository.get_team_by_name(session, DEMO_TEAM) is None:
                await tenancy.create_team(
                    session,
                    DEMO_TEAM,
                    actor=DEMO_ACTOR,
                    cost_center="CC-DEMO",
                    monthly_budget_micro_usd=100_000_000,
                )
            issued = await tenancy.create_key(
                session,
                DEMO_TEAM,
                pepper=settings.key_pepper.get_secret_value(),
                actor=DEMO_ACTOR,
                name="demo",
            )
        return issued.token


def _print_banner(
    gateway_url: str, sim_url: str, key: str, admin_token: str, data_dir: Path
) -> None:
    facts = [
        ("gateway", f"{gateway_url}   (drop-in base URL for the video API)"),
        ("API docs", f"{gateway_url}/docs   (served by the gateway: works offline)"),
        ("metrics", f"{gateway_url}/metrics"),
        ("upstream", f"{sim_url}   (built-in simulator; its bill: {sim_url}/_simulator/usage)"),
        ("database", f"{data_dir / 'gateway-demo.db'} (embedded SQLite)"),
        ("team", f"{DEMO_TEAM} (budget $100.00/month)"),
        ("API key", key),
        ("admin token", f"{admin_token}   (this run only; for /admin/*)"),
    ]
    lines = "\n".join(f"  {label + ':':<13} {value}" for label, value in facts)
    click.echo(
        f"""
Video billing gateway demo
{lines}

Try it:
  export GATEWAY_KEY={key}
  curl {gateway_url}/v1/usage -H "Authorization: Bearer $GATEWAY_KEY"
  curl {gateway_url}/v1/videos/generations \\
    -H "Authorization: Bearer $GATEWAY_KEY" -H "Content-Type: application/json" \\
    -d '{{"model": "grok-imagine-video-1-5", "prompt": "A fox runs through snow", "duration": 5}}'
  curl {gateway_url}/v1/jobs/JOB_ID -H "Authorization: Bearer $GATEWAY_KEY"
  curl {gateway_url}/admin/teams -H "Authorization: Bearer {admin_token}"

Simulator outcomes (add to the prompt): #sim:fail  #sim:moderated  #sim:duration=N
  #sim:http500  #sim:http429  #sim:hang
"""
    )


async def _run_sample(gateway_url: str, key: str) -> bool:
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=gateway_url, headers=headers, timeout=30) as client:
        click.echo("Sample job: 6 s at 720p from a source image")
        submitted = await client.post("/v1/videos/generations", json=SAMPLE_REQUEST)
        if submitted.status_code != 200:
            click.echo(f"  submit failed: HTTP {submitted.status_code} {submitted.text}")
            return False
        job_id = submitted.json()["job_id"]
        estimate = submitted.headers.get("x-gateway-cost-estimate-usd")
        click.echo(f"  submitted {job_id}; gateway price estimate ${estimate}")
        status: dict[str, Any] = {}
        for _ in range(600):
            polled = await client.get(f"/v1/jobs/{job_id}")
            status = polled.json()
            click.echo(f"  {status.get('status')} progress={status.get('progress')}")
            if status.get("status") in TERMINAL:
                break
            await asyncio.sleep(0.5)
        usage = (await client.get("/v1/usage")).json()
    result = status.get("result") or {}
    billed_upstream = (result.get("usage") or {}).get("cost_usd")
    click.echo(f"  video: {result.get('video_url')}")
    click.echo(
        f"  cost: ${estimate} priced by the gateway; ${billed_upstream} billed by the upstream"
    )
    click.echo(
        f"  ledger for team {usage['team']} ({usage['period']}): captured ${usage['captured_usd']},"
        f" held ${usage['held_usd']}, remaining ${usage['remaining_usd']} of ${usage['budget_usd']}"
    )
    return status.get("status") in {"completed", "succeeded", "done"}
