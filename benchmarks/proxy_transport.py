"""Which transport should sit under the gateway's ``httpx.AsyncClient``? Measure it.

What is measured
    Closed-loop throughput (requests/s) and latency (p50, p99) of ``POST
    /v1/videos/generations`` through several proxies, all in one run, against the same
    minimal upstream and under the same load (``--connections`` keep-alive connections, each
    sending its next request as soon as the previous answer arrives, for ``--duration``
    seconds after a short warm-up). Every answer must be 2xx; anything else is counted and
    reported as an error.

Variants
    passthrough-httpx        ~40-line FastAPI pass-through, shared ``httpx.AsyncClient`` on
                             httpx's default transport and limits. The baseline.
    passthrough-httpx-pool   the same, on ``build_transport("httpx", max_connections=256)``:
                             httpx's transport class with the gateway's pool limits, to tell
                             "transport" apart from "pool size".
    passthrough-aiohttp      the same app on ``build_transport("aiohttp", max_connections=256)``.
    gateway-httpx            the real gateway (``gateway serve``, one worker, PostgreSQL), the
                             full money path for one hot team: API-key auth and balance,
                             validation, the rate card in force, the conditional hold on the
                             team's one balance row (every request contends for it), the job
                             and its hold entry, forward, record the answer;
                             ``GATEWAY_UPSTREAM_TRANSPORT=httpx``.
    gateway-aiohttp          the same with ``GATEWAY_UPSTREAM_TRANSPORT=aiohttp``.
    raw-aiohttp              aiohttp server + aiohttp client, no ASGI, no httpx: the ceiling
                             (the one variant fast enough to load the other core noticeably).

Why this shape
    The question is how much of one core the HTTP client costs a Python proxy, so each proxy
    runs as a single uvicorn worker (uvloop + httptools, logs off) pinned to one core
    (``--proxy-cpu``), while the upstream stub and the load generator (wrk, else a Python
    aiohttp generator) share the other core (``--load-cpu``) and must never be the
    bottleneck. PostgreSQL (gateway variants) is not ours to pin; it runs where the scheduler
    puts it, which in practice is the less busy load core. The per-core and per-process CPU
    columns show whether all that held: the proxy should sit near 100 % of its core, and a
    busy "other" column means a neighbour (or PostgreSQL) took CPU during that window. This
    machine is noisy, so absolute figures drift from run to run; the ratios against
    ``passthrough-httpx`` measured about a minute earlier in the same run are the figures to
    quote.

    .venv/bin/python benchmarks/proxy_transport.py [--duration 10] [--connections 32]
        [--variants passthrough-httpx passthrough-aiohttp ...]

Results are printed as a table and written as JSON to ``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import http.client
import importlib.metadata
import json
import os
import platform
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
SUBMIT_PATH = "/v1/videos/generations"
REQUEST_BODY = json.dumps(
    {"model": "grok-imagine-video-1-5", "prompt": "a lighthouse at dusk, slow pan"}
)
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
BASELINE = "passthrough-httpx"

Kind = Literal["passthrough", "gateway", "raw"]


@dataclass(frozen=True)
class Variant:
    name: str
    kind: Kind
    transport: str
    description: str


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant(
            "passthrough-httpx",
            "passthrough",
            "default",
            "FastAPI pass-through, httpx default transport (baseline)",
        ),
        Variant(
            "passthrough-httpx-pool",
            "passthrough",
            "httpx",
            "FastAPI pass-through, httpx transport with the gateway's pool limits",
        ),
        Variant(
            "passthrough-aiohttp",
            "passthrough",
            "aiohttp",
            "FastAPI pass-through, build_transport('aiohttp')",
        ),
        Variant("gateway-httpx", "gateway", "httpx", "gateway serve, UPSTREAM_TRANSPORT=httpx"),
        Variant(
            "gateway-aiohttp", "gateway", "aiohttp", "gateway serve, UPSTREAM_TRANSPORT=aiohttp"
        ),
        Variant("raw-aiohttp", "raw", "aiohttp", "aiohttp server + client (ceiling)"),
    )
}
DEFAULT_VARIANTS = (
    "passthrough-httpx",
    "passthrough-httpx-pool",
    "passthrough-aiohttp",
    "gateway-httpx",
    "gateway-aiohttp",
    "raw-aiohttp",
)


class BenchmarkError(RuntimeError):
    """A variant could not be measured (did not start, answered wrongly, ...)."""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- processes


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM if the benchmark itself is killed outright."""
    with contextlib.suppress(Exception):
        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


@dataclass
class Pinning:
    """Which cores the proxy and the load side (upstream + load generator) run on."""

    enabled: bool
    proxy_cpu: int
    load_cpu: int
    note: str = ""

    def wrap(self, command: Sequence[str], cpu: int) -> list[str]:
        return ["taskset", "-c", str(cpu), *command] if self.enabled else list(command)


class ManagedProcess:
    """A server subprocess in its own session, its output in a log file, stopped on exit."""

    def __init__(
        self, name: str, command: Sequence[str], *, env: dict[str, str], cwd: Path, log_dir: Path
    ) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("wb")
        self.popen = subprocess.Popen(
            list(command),
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def running(self) -> bool:
        return self.popen.poll() is None

    def cpu_seconds(self) -> float:
        """User + system CPU time so far (all threads), from /proc."""
        found = process_cpu(self.pid)
        return found[1] if found else 0.0

    def logged_problems(self) -> tuple[int, list[str]]:
        """How many ERROR/CRITICAL lines the process logged, and the distinct exception lines."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return 0, []
        count = sum(1 for line in lines if " ERROR " in line or " CRITICAL " in line)
        # The exception line closing a traceback: unindented, not a log record (those start
        # with a timestamp), not traceback furniture.
        furniture = ("Traceback", "The above exception", "During handling", "{")
        kinds: dict[str, None] = {}
        for line in lines:
            if not line or line[0].isspace() or line[0].isdigit() or line.startswith(furniture):
                continue
            kinds.setdefault(line.split(" request_id=")[0][:160], None)
        return count, list(kinds)[:5]

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        if self.running():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, signal.SIGKILL)
                self.popen.wait(timeout=5)
        else:
            # The leader is gone; make sure nothing it started lingers in its group.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)
        self._log.close()


def process_cpu(pid: int, *, with_reaped_children: bool = False) -> tuple[str, float] | None:
    """``(command name, user + system CPU seconds)`` of a live process, from /proc.

    ``with_reaped_children`` adds the CPU of its children that have exited and been waited
    for: that is how short-lived processes (PostgreSQL backends of connections opened and
    closed inside the window) still show up, under their parent.
    """
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    name, _, rest = text.partition(" (")[2].rpartition(")")
    fields = rest.split()
    ticks = int(fields[11]) + int(fields[12])
    if with_reaped_children:
        ticks += int(fields[13]) + int(fields[14])
    return name, ticks / CLOCK_TICKS


def all_processes_cpu() -> dict[int, tuple[str, float]]:
    found: dict[int, tuple[str, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        # Not init's: it reaps every orphan, whose whole lifetime would land in one window.
        if (sample := process_cpu(pid, with_reaped_children=pid != 1)) is not None:
            found[pid] = sample
    return found


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def child_env(**extra: str) -> dict[str, str]:
    """The environment minus anything that could reconfigure a child, plus ``extra``."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("GATEWAY_", "BENCH_"))
    }
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


# --------------------------------------------------------------------------- HTTP checks


def http_call(
    port: int, method: str, path: str, *, body: str | None = None, authorization: str = ""
) -> tuple[int, bytes]:
    headers = {"Content-Type": "application/json"} if body is not None else {}
    if authorization:
        headers["Authorization"] = authorization
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def wait_until_submit_works(
    process: ManagedProcess, port: int, authorization: str, timeout: float = 60.0
) -> str:
    """Poll until a real submit answers 2xx with a job id; return that job id."""
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    while time.monotonic() < deadline:
        if not process.running():
            raise BenchmarkError(
                f"{process.name} exited with code {process.popen.returncode} during startup:\n"
                + process.log_tail()
            )
        try:
            status, raw = http_call(
                port, "POST", SUBMIT_PATH, body=REQUEST_BODY, authorization=authorization
            )
        except OSError as exc:
            last = f"{type(exc).__name__}: {exc}"
        else:
            if 200 <= status <= 299:
                job_id = json.loads(raw).get("job_id")
                if not isinstance(job_id, str):
                    raise BenchmarkError(f"{process.name}: submit answered without a job_id")
                return job_id
            last = f"HTTP {status}: {raw[:300]!r}"
        time.sleep(0.1)
    raise BenchmarkError(
        f"{process.name} did not answer a submit within {timeout:.0f}s ({last}):\n"
        + process.log_tail()
    )


# --------------------------------------------------------------------------- load


@dataclass(frozen=True)
class LoadGenerator:
    name: str
    version: str

    def command(self, url: str, *, connections: int, seconds: int, threads: int) -> list[str]:
        if self.name == "wrk":
            return [
                "wrk",
                f"-t{threads}",
                f"-c{connections}",
                f"-d{seconds}s",
                "--timeout",
                "10s",
                "-s",
                str(BENCH_DIR / "wrk_post.lua"),
                url,
            ]
        return [
            sys.executable,
            str(BENCH_DIR / "loadgen.py"),
            url,
            "-c",
            str(connections),
            "-d",
            str(seconds),
        ]


def pick_load_generator(choice: str) -> LoadGenerator:
    wrk = shutil.which("wrk")
    if choice == "wrk" and wrk is None:
        raise SystemExit("--loadgen wrk: wrk is not installed (apt-get install -y wrk)")
    if wrk is not None and choice in ("auto", "wrk"):
        probe = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
        first_line = (probe.stdout + probe.stderr).strip().splitlines()
        return LoadGenerator("wrk", first_line[0] if first_line else "wrk")
    return LoadGenerator("python-aiohttp", f"aiohttp {importlib.metadata.version('aiohttp')}")


@dataclass
class CpuSample:
    cores: dict[int, tuple[int, int]]  # cpu -> (busy ticks, total ticks)
    processes: dict[str, float]  # name -> cpu seconds
    children_seconds: float  # reaped children (the load generator), from getrusage
    everyone: dict[int, tuple[str, float]]  # pid -> (name, cpu s incl. reaped children)
    at: float


def read_cores() -> dict[int, tuple[int, int]]:
    cores: dict[int, tuple[int, int]] = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *values = line.split()
        if name.startswith("cpu") and name != "cpu":
            ticks = [int(v) for v in values[:8]]
            idle = ticks[3] + ticks[4]  # idle + iowait
            cores[int(name[3:])] = (sum(ticks) - idle, sum(ticks))
    return cores


def sample_cpu(processes: dict[str, ManagedProcess]) -> CpuSample:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return CpuSample(
        cores=read_cores(),
        processes={name: p.cpu_seconds() for name, p in processes.items()},
        children_seconds=usage.ru_utime + usage.ru_stime,
        everyone=all_processes_cpu(),
        at=time.monotonic(),
    )


def cpu_percentages(before: CpuSample, after: CpuSample) -> dict[str, float]:
    """Per-core busy %, per-process % of one core, and what is left (e.g. PostgreSQL)."""
    wall = after.at - before.at
    result: dict[str, float] = {}
    accounted = 0.0
    for name, seconds in after.processes.items():
        used = seconds - before.processes.get(name, seconds)
        accounted += used
        result[f"{name}_pct"] = round(100 * used / wall, 1)
    loadgen = after.children_seconds - before.children_seconds
    accounted += loadgen
    result["loadgen_pct"] = round(100 * loadgen / wall, 1)
    busy_seconds = 0.0
    for cpu, (busy, total) in after.cores.items():
        busy_before, total_before = before.cores.get(cpu, (busy, total))
        share = (busy - busy_before) / max(1, total - total_before)
        result[f"core{cpu}_pct"] = round(100 * share, 1)
        busy_seconds += share * wall
    result["other_pct"] = round(100 * max(0.0, busy_seconds - accounted) / wall, 1)
    return result


def busiest_others(
    before: CpuSample, after: CpuSample, exclude: set[int], top: int = 4
) -> list[dict[str, Any]]:
    """The other processes that used the most CPU in the window (a noisy neighbour, Postgres).

    Grouped by command name; a process born in the window counts whole, one that died in it
    counts under its parent once reaped, one born and still running before counts its delta.
    """
    wall = after.at - before.at
    by_name: dict[str, float] = {}
    for pid, (name, seconds) in after.everyone.items():
        if pid in exclude:
            continue
        used = seconds - before.everyone[pid][1] if pid in before.everyone else seconds
        if used > 0:
            by_name[name] = by_name.get(name, 0.0) + used
    ranked = sorted(by_name.items(), key=lambda item: item[1], reverse=True)[:top]
    return [{"process": name, "cpu_pct": round(100 * used / wall, 1)} for name, used in ranked]


def run_load(
    generator: LoadGenerator,
    pinning: Pinning,
    port: int,
    *,
    connections: int,
    seconds: int,
    threads: int,
    authorization: str,
) -> dict[str, Any]:
    command = generator.command(
        f"http://127.0.0.1:{port}{SUBMIT_PATH}",
        connections=connections,
        seconds=seconds,
        threads=threads,
    )
    env = child_env(BENCH_BODY=REQUEST_BODY, BENCH_AUTHORIZATION=authorization)
    completed = subprocess.run(
        pinning.wrap(command, pinning.load_cpu),
        env=env,
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=False,
    )
    for line in completed.stdout.splitlines():
        if line.startswith("BENCH_RESULT "):
            result: dict[str, Any] = json.loads(line.removeprefix("BENCH_RESULT "))
            return result
    raise BenchmarkError(
        f"{generator.name} exited with code {completed.returncode} and no result:\n"
        + (completed.stdout + completed.stderr)[-2000:]
    )


# --------------------------------------------------------------------------- database


def database_url_for(admin_url: str, name: str) -> str:
    parts = urlsplit(admin_url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


async def _admin(admin_url: str, statement: str) -> None:
    import asyncpg  # type: ignore[import-untyped]  # the gateway's own driver

    connection = await asyncpg.connect(admin_url, timeout=10)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


@contextlib.contextmanager
def scratch_database(admin_url: str) -> Iterator[str]:
    """A fresh database for this run (URL yielded), dropped afterwards whatever happens."""
    name = f"gw_bench_{secrets.token_hex(6)}"
    asyncio.run(_admin(admin_url, f'CREATE DATABASE "{name}"'))
    log(f"created database {name}")
    try:
        yield database_url_for(admin_url, name)
    finally:
        try:
            asyncio.run(_admin(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            log(f"dropped database {name}")
        except Exception as exc:
            log(f"WARNING: could not drop database {name}: {exc}")


def gateway_command() -> list[str]:
    script = Path(sys.executable).with_name("gateway")
    return [str(script)] if script.exists() else [sys.executable, "-m", "gateway"]


def gateway_cli(env: dict[str, str], cwd: Path, *args: str) -> str:
    completed = subprocess.run(
        [*gateway_command(), *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if completed.returncode != 0:
        raise BenchmarkError(
            f"`gateway {' '.join(args)}` failed ({completed.returncode}):\n{completed.stderr}"
        )
    return completed.stdout


# --------------------------------------------------------------------------- one variant


@dataclass
class Outcome:
    name: str
    description: str
    requests_per_s: float | None = None
    requests_per_cpu_s: float | None = None  # per second of proxy CPU: robust to neighbours
    p50_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    mean_ms: float | None = None
    max_ms: float | None = None
    requests: int = 0
    errors: int = 0
    non2xx: int = 0
    socket_errors: dict[str, int] = field(default_factory=dict)
    warmup_errors: int = 0
    startup_s: float | None = None
    cpu: dict[str, float] = field(default_factory=dict)
    busiest_others: list[dict[str, Any]] = field(default_factory=list)
    logged_errors: int = 0
    logged_error_kinds: list[str] = field(default_factory=list)
    ratios: dict[str, float] = field(default_factory=dict)
    failure: str | None = None
    log_tail: str | None = None


@dataclass
class Context:
    args: argparse.Namespace
    pinning: Pinning
    generator: LoadGenerator
    upstream: ManagedProcess
    upstream_url: str
    log_dir: Path
    work_dir: Path
    gateway_env: dict[str, str] | None = None
    authorization: str = ""


def start_variant(ctx: Context, variant: Variant, port: int) -> tuple[ManagedProcess, str]:
    """Start the proxy for ``variant``; returns it and the Authorization header to send."""
    python = sys.executable
    if variant.kind == "passthrough":
        command = [python, str(BENCH_DIR / "passthrough_app.py"), "--port", str(port)]
        env = child_env(BENCH_UPSTREAM_URL=ctx.upstream_url, BENCH_TRANSPORT=variant.transport)
        authorization = ""
    elif variant.kind == "raw":
        command = [
            python,
            str(BENCH_DIR / "raw_aiohttp_proxy.py"),
            "--port",
            str(port),
            "--upstream",
            ctx.upstream_url,
        ]
        env = child_env()
        authorization = ""
    else:
        if ctx.gateway_env is None:
            raise BenchmarkError("the gateway variants need the database set up first")
        command = [
            *gateway_command(),
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ]
        env = {**ctx.gateway_env, "GATEWAY_UPSTREAM_TRANSPORT": variant.transport}
        authorization = ctx.authorization
    process = ManagedProcess(
        variant.name,
        ctx.pinning.wrap(command, ctx.pinning.proxy_cpu),
        env=env,
        cwd=ctx.work_dir,
        log_dir=ctx.log_dir,
    )
    return process, authorization


def measure_variant(ctx: Context, variant: Variant) -> Outcome:
    outcome = Outcome(variant.name, variant.description)
    port = free_port()
    started = time.monotonic()
    process, authorization = start_variant(ctx, variant, port)
    try:
        job_id = wait_until_submit_works(process, port, authorization)
        outcome.startup_s = round(time.monotonic() - started, 2)
        if variant.kind == "gateway":
            # The poll route too, once: the job is the caller's, so it must be found.
            status, raw = http_call(port, "GET", f"/v1/jobs/{job_id}", authorization=authorization)
            if status != 200:
                raise BenchmarkError(f"GET /v1/jobs/{job_id} answered {status}: {raw[:300]!r}")
        load = {
            "connections": ctx.args.connections,
            "threads": ctx.args.wrk_threads,
            "authorization": authorization,
        }
        if ctx.args.warmup > 0:
            warm = run_load(ctx.generator, ctx.pinning, port, seconds=ctx.args.warmup, **load)
            outcome.warmup_errors = int(warm["non2xx"]) + sum(warm["socket_errors"].values())
        watched = {"proxy": process, "upstream": ctx.upstream}
        before = sample_cpu(watched)
        result = run_load(ctx.generator, ctx.pinning, port, seconds=ctx.args.duration, **load)
        after = sample_cpu(watched)
        outcome.cpu = cpu_percentages(before, after)
        outcome.busiest_others = busiest_others(
            before, after, {os.getpid(), process.pid, ctx.upstream.pid}
        )
        if not process.running():
            raise BenchmarkError(f"{variant.name} died during the run:\n{process.log_tail()}")
    except BenchmarkError as exc:
        outcome.failure = str(exc)
        outcome.log_tail = process.log_tail()
        return outcome
    finally:
        process.stop()
        outcome.logged_errors, outcome.logged_error_kinds = process.logged_problems()

    latency = result["latency_us"]
    outcome.requests = int(result["requests"])
    outcome.requests_per_s = round(result["requests"] / (result["duration_us"] / 1e6), 1)
    if outcome.cpu.get("proxy_pct"):
        outcome.requests_per_cpu_s = round(
            outcome.requests_per_s / (outcome.cpu["proxy_pct"] / 100), 1
        )
    outcome.p50_ms = latency["p50"] / 1000
    outcome.p90_ms = latency["p90"] / 1000
    outcome.p99_ms = latency["p99"] / 1000
    outcome.mean_ms = round(latency["mean"] / 1000, 3)
    outcome.max_ms = latency["max"] / 1000
    outcome.non2xx = int(result["non2xx"])
    outcome.socket_errors = {k: int(v) for k, v in result["socket_errors"].items()}
    outcome.errors = outcome.non2xx + sum(outcome.socket_errors.values())
    if outcome.errors or outcome.warmup_errors:
        outcome.log_tail = process.log_tail()
    return outcome


def add_ratios(outcomes: list[Outcome], baseline_name: str) -> None:
    baseline = next((o for o in outcomes if o.name == baseline_name and not o.failure), None)
    if baseline is None or not baseline.requests_per_s or not baseline.p50_ms:
        return
    for outcome in outcomes:
        if outcome.requests_per_s is None or outcome.p50_ms is None or outcome.p99_ms is None:
            continue
        outcome.ratios = {
            "throughput": round(outcome.requests_per_s / baseline.requests_per_s, 2),
            "p50": round(outcome.p50_ms / baseline.p50_ms, 2),
            "p99": round(outcome.p99_ms / (baseline.p99_ms or 1), 2),
        }
        if outcome.requests_per_cpu_s and baseline.requests_per_cpu_s:
            outcome.ratios["per_cpu"] = round(
                outcome.requests_per_cpu_s / baseline.requests_per_cpu_s, 2
            )


# --------------------------------------------------------------------------- report


def format_table(outcomes: list[Outcome], pinning: Pinning) -> str:
    proxy_core = f"core{pinning.proxy_cpu}_pct"
    load_core = f"core{pinning.load_cpu}_pct"
    header = (
        f"{'variant':<24} {'req/s':>7} {'x base':>6} {'p50 ms':>8} {'x base':>6} "
        f"{'p99 ms':>8} {'x base':>6} {'errors':>6} {'req/cpu-s':>9} {'x base':>6} "
        f"{'proxy%':>6} {'other%':>6} {'pxcore%':>7} {'ldcore%':>7}"
    )
    lines = [header, "-" * len(header)]
    for o in outcomes:
        if o.failure or o.requests_per_s is None:
            lines.append(f"{o.name:<24} FAILED: {(o.failure or '').splitlines()[0]}")
            continue
        r = o.ratios
        c = o.cpu
        lines.append(
            f"{o.name:<24} {o.requests_per_s:>7.0f} {r.get('throughput', 0):>6.2f} "
            f"{o.p50_ms:>8.2f} {r.get('p50', 0):>6.2f} {o.p99_ms:>8.2f} {r.get('p99', 0):>6.2f} "
            f"{o.errors:>6} {o.requests_per_cpu_s or 0:>9.0f} {r.get('per_cpu', 0):>6.2f} "
            f"{c.get('proxy_pct', 0):>6.0f} {c.get('other_pct', 0):>6.0f} "
            f"{c.get(proxy_core, 0):>7.0f} {c.get(load_core, 0):>7.0f}"
        )
    return "\n".join(lines)


def environment_facts() -> dict[str, Any]:
    versions = {}
    for package in (
        "httpx",
        "httpx-aiohttp",
        "aiohttp",
        "fastapi",
        "starlette",
        "uvicorn",
        "uvloop",
        "httptools",
        "sqlalchemy",
        "asyncpg",
    ):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[package] = importlib.metadata.version(package)
    commit = subprocess.run(
        ["git", "-C", str(BENCH_DIR), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    cpu_model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_model": cpu_model,
        "cpu_count": os.cpu_count(),
        "git_commit": commit or None,
        "packages": versions,
    }


# --------------------------------------------------------------------------- main


def decide_pinning(args: argparse.Namespace) -> Pinning:
    allowed = sorted(os.sched_getaffinity(0))
    proxy_cpu = args.proxy_cpu if args.proxy_cpu is not None else allowed[0]
    load_cpu = args.load_cpu if args.load_cpu is not None else allowed[-1]
    if args.no_pin:
        return Pinning(False, proxy_cpu, load_cpu, "pinning disabled (--no-pin)")
    if shutil.which("taskset") is None:
        return Pinning(False, proxy_cpu, load_cpu, "taskset not found: processes NOT pinned")
    if proxy_cpu == load_cpu or not {proxy_cpu, load_cpu} <= set(allowed):
        return Pinning(
            False, proxy_cpu, load_cpu, f"need two usable cores (have {allowed}): NOT pinned"
        )
    return Pinning(True, proxy_cpu, load_cpu)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Proxy throughput/latency by upstream transport (see module docstring).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--duration", type=int, default=10, help="measured seconds per variant")
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured seconds before it")
    parser.add_argument("--connections", type=int, default=32, help="closed-loop connections")
    parser.add_argument(
        "--variants",
        nargs="+",
        default=list(DEFAULT_VARIANTS),
        choices=list(VARIANTS),
        metavar="VARIANT",
        help=f"any of: {', '.join(VARIANTS)}",
    )
    parser.add_argument("--baseline", default=BASELINE, help="variant the ratios are against")
    parser.add_argument("--loadgen", choices=["auto", "wrk", "python"], default="auto")
    parser.add_argument("--wrk-threads", type=int, default=1)
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get(
            "BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
        help="admin connection used to create and drop the scratch database "
        "(env BENCH_POSTGRES_URL)",
    )
    parser.add_argument(
        "--gateway-env",
        action="append",
        default=[],
        metavar="GATEWAY_X=VALUE",
        help="extra setting for the gateway variants, e.g. GATEWAY_DATABASE_POOL_SIZE=32 "
        "(repeatable)",
    )
    parser.add_argument("--proxy-cpu", type=int, help="core for the proxy (default: first)")
    parser.add_argument("--load-cpu", type=int, help="core for upstream+load (default: last)")
    parser.add_argument("--no-pin", action="store_true", help="do not use taskset")
    parser.add_argument("--output", type=Path, help="JSON path (default: benchmarks/results/)")
    args = parser.parse_args(argv)
    if args.connections < args.wrk_threads:
        parser.error("--connections must be at least --wrk-threads")
    if args.duration < 1:
        parser.error("--duration must be at least 1 second")
    for setting in args.gateway_env:
        if not setting.startswith("GATEWAY_") or "=" not in setting:
            parser.error(f"--gateway-env wants GATEWAY_NAME=VALUE, not {setting!r}")
    return args


def run_benchmark(
    args: argparse.Namespace,
    pinning: Pinning,
    generator: LoadGenerator,
    stack: contextlib.ExitStack,
) -> list[Outcome]:
    work_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gw-bench-")))
    log_dir = work_dir / "logs"
    log_dir.mkdir()

    upstream_port = free_port()
    upstream = ManagedProcess(
        "upstream",
        pinning.wrap(
            [sys.executable, str(BENCH_DIR / "upstream_stub.py"), "--port", str(upstream_port)],
            pinning.load_cpu,
        ),
        env=child_env(),
        cwd=work_dir,
        log_dir=log_dir,
    )
    stack.callback(upstream.stop)
    wait_until_submit_works(upstream, upstream_port, "")
    ctx = Context(
        args=args,
        pinning=pinning,
        generator=generator,
        upstream=upstream,
        upstream_url=f"http://127.0.0.1:{upstream_port}",
        log_dir=log_dir,
        work_dir=work_dir,
    )

    variants = [VARIANTS[name] for name in dict.fromkeys(args.variants)]
    if any(v.kind == "gateway" for v in variants):
        database_url = stack.enter_context(scratch_database(args.postgres_url))
        ctx.gateway_env = child_env(
            GATEWAY_DATABASE_URL=database_url,
            GATEWAY_UPSTREAM_URL=ctx.upstream_url,
            GATEWAY_UPSTREAM_API_KEY="bench-upstream-key",
            GATEWAY_KEY_PEPPER=secrets.token_hex(16),
            GATEWAY_LOG_LEVEL="WARNING",
            GATEWAY_LOG_FORMAT="text",
            # Measure the request path alone; nothing here polls, so the background
            # reconciler would only add load from earlier variants' jobs.
            GATEWAY_RECONCILER_ENABLED="false",
        )
        ctx.gateway_env.update(setting.split("=", 1) for setting in args.gateway_env)
        gateway_cli(ctx.gateway_env, work_dir, "db", "upgrade")
        # One team with a real budget: every submit takes the conditional hold on the same
        # balance row, the contention a hot team puts on the ledger.
        gateway_cli(
            ctx.gateway_env,
            work_dir,
            "teams",
            "create",
            "bench",
            "--monthly-budget-usd",
            "10000000",
        )
        issued = json.loads(
            gateway_cli(ctx.gateway_env, work_dir, "keys", "create", "--team", "bench", "--json")
        )
        ctx.authorization = f"Bearer {issued['key']}"
        log("gateway database migrated; team 'bench' and its key created")

    outcomes: list[Outcome] = []
    for index, variant in enumerate(variants, 1):
        log(f"[{index}/{len(variants)}] {variant.name}: {variant.description}")
        outcome = measure_variant(ctx, variant)
        if outcome.failure:
            log(f"    FAILED: {outcome.failure}")
        else:
            log(
                f"    {outcome.requests_per_s:.0f} req/s, p50 {outcome.p50_ms:.2f} ms, "
                f"p99 {outcome.p99_ms:.2f} ms, errors {outcome.errors} "
                f"(proxy CPU {outcome.cpu.get('proxy_pct', 0):.0f} %)"
            )
        outcomes.append(outcome)
        if not upstream.running():
            raise BenchmarkError(f"the upstream stub died:\n{upstream.log_tail()}")
    add_ratios(outcomes, args.baseline)
    return outcomes


def print_report(
    args: argparse.Namespace,
    pinning: Pinning,
    generator: LoadGenerator,
    outcomes: list[Outcome],
) -> None:
    placement = (
        f"proxy on cpu{pinning.proxy_cpu}, upstream + load generator on cpu{pinning.load_cpu}"
        if pinning.enabled
        else f"NOT pinned ({pinning.note})"
    )
    print()
    print(
        f"{args.connections} connections, {args.duration} s per variant after "
        f"{args.warmup} s warm-up, load generator {generator.name}; {placement}"
    )
    print(f"ratios ('x base') are against {args.baseline} measured in this run")
    print(format_table(outcomes, pinning))
    legend = (
        "req/cpu-s: requests per second of the proxy's own CPU time (less sensitive to a "
        "neighbour stealing the proxy's core). CPU columns, % of one core over the measured "
        "window: proxy = the proxy process; other = everything but the proxy, the upstream "
        "stub and the load generator (PostgreSQL, other users, kernel work not charged to a "
        "process); pxcore/ldcore = how busy the proxy's core and the load side's core were "
        "(the proxy's should be ~100, the load side's well below)."
    )
    print(textwrap.fill(legend, width=100))
    print(
        textwrap.fill(
            "busiest other processes in each measured window (% of one core; rough: a child "
            "reaped in the window counts whole under its parent, e.g. PostgreSQL backends "
            "under postgres):",
            width=100,
        )
    )
    for outcome in outcomes:
        others = ", ".join(f"{o['process']} {o['cpu_pct']:.0f}" for o in outcome.busiest_others)
        print(f"  {outcome.name:<24} {others or '-'}")
    for outcome in outcomes:
        if outcome.logged_errors:
            print(
                f"NOTE: {outcome.name} logged {outcome.logged_errors} ERROR lines "
                f"(clients see them only if 'errors' > 0): {outcome.logged_error_kinds}"
            )
    for outcome in outcomes:
        if outcome.errors or outcome.warmup_errors or outcome.failure:
            print(
                f"\n{outcome.name}: {outcome.errors} errors (non-2xx {outcome.non2xx}, "
                f"socket {outcome.socket_errors}), {outcome.warmup_errors} in warm-up; "
                "proxy log tail:"
            )
            print(outcome.log_tail or "(empty)")


def write_json(
    args: argparse.Namespace,
    started_at: datetime,
    pinning: Pinning,
    generator: LoadGenerator,
    outcomes: list[Outcome],
) -> Path:
    output: Path = args.output or RESULTS_DIR / (
        f"proxy_transport-{started_at.strftime('%Y%m%dT%H%M%SZ')}.json"
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "benchmark": "proxy_transport",
        "started_at": started_at.isoformat(),
        "settings": {
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "connections": args.connections,
            "baseline": args.baseline,
            "load_generator": asdict(generator),
            "wrk_threads": args.wrk_threads,
            "gateway_env": args.gateway_env,
            "pinning": asdict(pinning),
            "request_body": json.loads(REQUEST_BODY),
        },
        "environment": environment_facts(),
        "variants": [asdict(o) for o in outcomes],
    }
    output.write_text(json.dumps(report, indent=2) + "\n")
    return output


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started_at = datetime.now(UTC)
    pinning = decide_pinning(args)
    if pinning.note:
        log(f"WARNING: {pinning.note}")
    generator = pick_load_generator(args.loadgen)
    log(f"load generator: {generator.version}")

    # SIGTERM and SIGHUP unwind like Ctrl-C, so the cleanup below still runs.
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.default_int_handler)
    stack = contextlib.ExitStack()
    try:
        outcomes = run_benchmark(args, pinning, generator, stack)
    except KeyboardInterrupt:
        log("interrupted: stopping the servers and dropping the database")
        return 130
    except BenchmarkError as exc:
        log(f"benchmark failed: {exc}")
        return 1
    finally:
        # A second Ctrl-C must not cut the cleanup short.
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)
        stack.close()
        signal.signal(signal.SIGINT, signal.default_int_handler)

    print_report(args, pinning, generator, outcomes)
    output = write_json(args, started_at, pinning, generator, outcomes)
    print(f"\nwrote {output}")
    return 1 if any(o.failure or o.errors for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
