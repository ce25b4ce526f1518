"""Real gateway replicas: ``python -m gateway serve`` subprocesses sharing one database."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.support.commands import environment_without_gateway
from tests.support.pgbouncer import for_gateway
from tests.support.simulator import UPSTREAM_KEY
from tests.support.tenants import PEPPER


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class GatewayProcess:
    """One replica. ``kill()`` is SIGKILL (no cleanup at all); ``start()`` brings it back."""

    def __init__(
        self,
        env: dict[str, str],
        log_dir: Path,
        name: str,
        workers: int = 1,
        args: tuple[str, ...] = (),
    ) -> None:
        self.workers = workers
        self.args = args
        self.env = environment_without_gateway(**env)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_dir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> GatewayProcess:
        with self.log_path.open("ab") as log:  # the child keeps its own copy of the fd
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "gateway",
                    "serve",
                    "--port",
                    str(self.port),
                    "--workers",
                    str(self.workers),
                    *self.args,
                ],
                env=self.env,
                stdout=log,
                stderr=log,
            )
        deadline = time.monotonic() + 30
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"gateway exited: {self.log_path.read_text()[-2000:]}")
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("gateway did not become ready in 30 s")
            time.sleep(0.1)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()


class SimulatorProcess:
    """``gateway simulator`` in its own process: nothing it does competes with the test (or a
    gateway) for one interpreter's GIL, as an in-process simulator thread would."""

    def __init__(self, log_dir: Path, *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = args
        self.log_path = log_dir / "simulator.log"
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> SimulatorProcess:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "gateway",
                    "simulator",
                    "--port",
                    str(self.port),
                    *self.args,
                ],
                stdout=log,
                stderr=log,
            )
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(self.url + "/_simulator/usage", timeout=1).raise_for_status()
                return self
            except httpx.TransportError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    log = self.log_path.read_text()
                    raise RuntimeError(f"simulator did not start: {log}") from None
                time.sleep(0.1)

    def __exit__(self, *_exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)

    def pause(self) -> None:
        """SIGSTOP: the process stops answering but keeps its connections open."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)


# Upstream calls that end within 1 s, unanswered submits re-sent after 2 s: for runs against a
# simulator that honours Idempotency-Key (a re-send learns the job a lost answer created).
RESEND_QUICKLY: dict[str, float | bool] = {
    "upstream_connect_timeout_seconds": 0.25,
    "upstream_write_timeout_seconds": 0.25,
    "upstream_read_timeout_seconds": 0.25,
    "upstream_pool_timeout_seconds": 0.25,
    "upstream_honors_idempotency_key": True,
    "unanswered_submit_resend_after_seconds": 2.0,
}
# The same for runs with slow answers (#sim:slow=1): calls end within 2.75 s, re-sent after 4 s.
RESEND_AFTER_SLOW_ANSWERS: dict[str, float | bool] = {
    **RESEND_QUICKLY,
    "upstream_read_timeout_seconds": 2.0,
    "unanswered_submit_resend_after_seconds": 4.0,
}


def as_environment(settings: dict[str, float | bool]) -> dict[str, str]:
    """Settings overrides as the ``GATEWAY_*`` variables a replica process reads."""
    return {f"GATEWAY_{name.upper()}": str(value).lower() for name, value in settings.items()}


def replica_env(database_url: str, upstream_url: str, **extra: str) -> dict[str, str]:
    """What every test replica needs: its database, the simulator and its key, the test
    pepper, quiet logs, and no reconciler of its own unless ``extra`` turns it on."""
    gateway_url, pooled = for_gateway(database_url)  # through PgBouncer when the run says so
    return {
        "GATEWAY_DATABASE_URL": gateway_url,
        "GATEWAY_DATABASE_PGBOUNCER": "true" if pooled else "false",
        "GATEWAY_UPSTREAM_URL": upstream_url,
        "GATEWAY_UPSTREAM_API_KEY": UPSTREAM_KEY,
        "GATEWAY_KEY_PEPPER": PEPPER,
        "GATEWAY_RECONCILER_ENABLED": "false",
        "GATEWAY_LOG_LEVEL": "WARNING",
        **extra,
    }
