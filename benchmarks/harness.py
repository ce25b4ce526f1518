"""Pieces shared by the benchmarks here: managed server processes, CPU pinning and
accounting, the wrk/Python load generators, HTTP checks, a scratch PostgreSQL database and the
``gateway`` CLI. Used by ``proxy_transport.py`` and ``routes.py``; imported as ``harness``
(the scripts run from this directory, which Python puts first on ``sys.path``).
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
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
SUBMIT_PATH = "/v1/videos/generations"
REQUEST_BODY = json.dumps(
    {"model": "grok-imagine-video-1-5", "prompt": "a lighthouse at dusk, slow pan"}
)
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class BenchmarkError(RuntimeError):
    """Something could not be measured (did not start, answered wrongly, ...)."""


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
        """User + system CPU time so far (all threads) of the process and of every process
        in its session (``uvicorn --workers N``'s workers), from /proc."""
        total = 0.0
        for pid in (self.pid, *self.session_members()):
            if (found := process_cpu(pid)) is not None:
                total += found[1]
        return total

    def session_members(self) -> list[int]:
        """The processes of its session other than itself (e.g. uvicorn's worker processes)."""
        members = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == self.pid:
                continue
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = (entry / "stat").read_text()
                # After "(comm)": state, ppid, pgrp, session.
                if int(stat.rpartition(")")[2].split()[3]) == self.pid:
                    members.append(int(entry.name))
        return members

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
        """SIGTERM to its process group (SIGKILL after 5 s); once: later calls do nothing."""
        if self._log.closed:
            return
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


def start_upstream_stub(
    pinning: Pinning, stack: contextlib.ExitStack, work_dir: Path, log_dir: Path
) -> tuple[ManagedProcess, int]:
    """``upstream_stub.py`` on a free port of the load core, stopped with ``stack``, and
    answering submits; returns the process and its port."""
    port = free_port()
    upstream = ManagedProcess(
        "upstream",
        pinning.wrap(
            [sys.executable, str(BENCH_DIR / "upstream_stub.py"), "--port", str(port)],
            pinning.load_cpu,
        ),
        env=child_env(),
        cwd=work_dir,
        log_dir=log_dir,
    )
    stack.callback(upstream.stop)
    wait_until_submit_works(upstream, port, "")
    return upstream, port


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

    def command(
        self,
        url: str,
        *,
        connections: int,
        seconds: int,
        threads: int,
        script: Path = BENCH_DIR / "wrk_post.lua",
    ) -> list[str]:
        """The load command; ``script`` is wrk's Lua script (the Python generator has none:
        it only POSTs ``BENCH_BODY``)."""
        if self.name == "wrk":
            return [
                "wrk",
                f"-t{threads}",
                f"-c{connections}",
                f"-d{seconds}s",
                "--timeout",
                "10s",
                "-s",
                str(script),
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
    url: str,
    *,
    connections: int,
    seconds: int,
    threads: int,
    load_env: dict[str, str],
) -> dict[str, Any]:
    """One closed-loop run against ``url`` on the load core; its ``BENCH_RESULT`` as a dict.

    ``load_env`` configures the Lua script (``BENCH_METHOD``, ``BENCH_BODY``,
    ``BENCH_AUTHORIZATION``, ``BENCH_AUTHORIZATIONS``: see ``wrk_post.lua``).
    """
    command = generator.command(url, connections=connections, seconds=seconds, threads=threads)
    env = child_env(**load_env)
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


def postgres_version(admin_url: str) -> str | None:
    """The server's ``SELECT version()``, or None if it cannot be read."""

    async def read() -> str:
        import asyncpg  # type: ignore[import-untyped]

        connection = await asyncpg.connect(admin_url, timeout=10)
        try:
            return str(await connection.fetchval("SELECT version()"))
        finally:
            await connection.close()

    try:
        return asyncio.run(read())
    except Exception:
        return None


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


def gateway_env(database_url: str, upstream_url: str, extra: Sequence[str] = ()) -> dict[str, str]:
    """The environment of the gateway (CLI and ``serve``) under benchmark.

    ``extra``: ``GATEWAY_X=VALUE`` settings (``--gateway-env``) applied last.
    """
    env = child_env(
        GATEWAY_DATABASE_URL=database_url,
        GATEWAY_UPSTREAM_URL=upstream_url,
        GATEWAY_UPSTREAM_API_KEY="bench-upstream-key",
        GATEWAY_KEY_PEPPER=secrets.token_hex(16),
        GATEWAY_LOG_LEVEL="WARNING",
        GATEWAY_LOG_FORMAT="text",
        # Measure the request path alone: the background reconciler would only add load
        # from jobs earlier windows left open.
        GATEWAY_RECONCILER_ENABLED="false",
    )
    env.update(setting.split("=", 1) for setting in extra)
    return env


def create_team_with_key(
    env: dict[str, str], cwd: Path, team: str, *, monthly_budget_usd: str | None = None
) -> str:
    """``gateway teams create`` + ``gateway keys create --json``; the Authorization header."""
    budget = ["--monthly-budget-usd", monthly_budget_usd] if monthly_budget_usd else []
    gateway_cli(env, cwd, "teams", "create", team, *budget)
    issued = json.loads(gateway_cli(env, cwd, "keys", "create", "--team", team, "--json"))
    return f"Bearer {issued['key']}"


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
    # Plumbing that neither writes the index nor changes anything: what the tree has on top.
    changed = subprocess.run(
        ["git", "-C", str(BENCH_DIR), "diff-index", "--name-only", "HEAD", "--"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
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
        "git_uncommitted_changes": changed,
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


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """Pinning, the PostgreSQL admin URL, extra gateway settings and the JSON path."""
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
        help="extra setting for the gateway, e.g. GATEWAY_DATABASE_POOL_SIZE=32 (repeatable)",
    )
    parser.add_argument("--proxy-cpu", type=int, help="core for the proxy (default: first)")
    parser.add_argument("--load-cpu", type=int, help="core for upstream+load (default: last)")
    parser.add_argument("--no-pin", action="store_true", help="do not use taskset")
    parser.add_argument("--output", type=Path, help="JSON path (default: benchmarks/results/)")


def check_common_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    for setting in args.gateway_env:
        if not setting.startswith("GATEWAY_") or "=" not in setting:
            parser.error(f"--gateway-env wants GATEWAY_NAME=VALUE, not {setting!r}")


T = TypeVar("T")


def run_cleaned_up(work: Callable[[contextlib.ExitStack], T]) -> T:
    """``work(stack)``, then ``stack.close()`` whatever happens: success, failure, Ctrl-C,
    SIGTERM or SIGHUP (which unwind like Ctrl-C); a second Ctrl-C cannot cut the cleanup short.
    Interrupted: exit 130; a ``BenchmarkError``: logged, exit 1."""
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.default_int_handler)
    stack = contextlib.ExitStack()
    try:
        return work(stack)
    except KeyboardInterrupt:
        log("interrupted: stopping the servers and dropping the database")
        raise SystemExit(130) from None
    except BenchmarkError as exc:
        log(f"benchmark failed: {exc}")
        raise SystemExit(1) from None
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)
        stack.close()
        signal.signal(signal.SIGINT, signal.default_int_handler)
