"""What does the gateway cost per route? Each tenant route against a pass-through, in one run.

What is measured
    Closed-loop throughput (requests/s), latency (p50, p99) and the proxy process's CPU time
    per request of the gateway (``gateway serve``, one worker, PostgreSQL, the aiohttp upstream
    transport, reconciler off) and of the baseline (``passthrough_app.py``: a FastAPI
    pass-through on the same transport, ``BENCH_TRANSPORT=aiohttp``), both in front of the same
    minimal upstream (``upstream_stub.py``). Every scenario measures the baseline and then the
    gateway, back to back, so each ratio compares two windows a few seconds apart.

Scenarios (``--scenarios``; wrk, ``--connections`` 32, ``--duration`` 10 s after a 2 s warm-up)
    submit-hot        POST /v1/videos/generations with one team's key: every submit contends
                      for that team's balance row.            Baseline: pass-through POST.
    submit-50-teams   the same, each request with the next of 50 teams' keys in turn.
                                                               Baseline: pass-through POST.
    poll-running      GET /v1/jobs/{id} of a job the gateway recorded whose upstream answer is
                      "in_progress": goes upstream every time. Baseline: pass-through GET.
    poll-finished     GET /v1/jobs/{id} of a job already settled: answered from the gateway's
                      record, upstream not asked.             Baseline: pass-through GET.
    usage             GET /v1/usage.                          Baseline: pass-through GET.
    latency-1conn     one connection (wrk -c1 -t1): p50/p99 of submit, poll-running and
                      poll-finished against the baseline's; the added p50 in ms.
Parts
    --scale           (default on) ``gateway serve --workers 2`` and the baseline with two
                      uvicorn workers, both unpinned: submit-hot vs submit-50-teams.
    --big-ledger      (default on) then 1,000,000 jobs / ~2,000,000 ledger entries of 40 other
                      teams this month, in bulk SQL (``ledger_fill.py``), ANALYZEd; submit-hot
                      and poll-finished again, as a ratio to the empty-ledger figures.

Why this shape
    As in ``proxy_transport.py``: each proxy is pinned to one core (``--proxy-cpu``), the
    upstream stub and wrk to the other (``--load-cpu``), PostgreSQL wherever the scheduler puts
    it. The baseline and the gateway run side by side on the proxy core, only one loaded at a
    time. The machine is noisy, so absolute figures drift from run to run; the ratios against
    the baseline measured in the same run, and the CPU time per request, are the figures.
    Every answer must be 2xx; any error is reported and makes the exit code 1.

    .venv/bin/python benchmarks/routes.py [--quick] [--duration 10] [--scenarios ...]
        [--no-scale] [--no-big-ledger] [--ledger-jobs 1000000]

Results are printed as a table and written as JSON to ``benchmarks/results/routes-*.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
import textwrap
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from harness import (
    BENCH_DIR,
    REQUEST_BODY,
    RESULTS_DIR,
    SUBMIT_PATH,
    BenchmarkError,
    LoadGenerator,
    ManagedProcess,
    Pinning,
    add_common_arguments,
    busiest_others,
    check_common_arguments,
    child_env,
    cpu_percentages,
    create_team_with_key,
    decide_pinning,
    environment_facts,
    free_port,
    gateway_cli,
    gateway_command,
    gateway_env,
    http_call,
    log,
    pick_load_generator,
    postgres_version,
    run_cleaned_up,
    run_load,
    sample_cpu,
    scratch_database,
    start_upstream_stub,
    wait_until_submit_works,
)
from ledger_fill import fill_ledger, vacuum_analyze

SCENARIOS = (
    "submit-hot",
    "submit-levels",
    "submit-50-teams",
    "poll-running",
    "poll-finished",
    "usage",
    "latency-1conn",
)
TEAMS_ROTATED = 50
STARVED_PCT = 90  # a saturated proxy pinned to its core below this: a neighbour took CPU
LEDGER_TEAMS = 40
USAGE_PATH = "/v1/usage"
# upstream_stub.py answers a job submitted with "#running" in its body "in_progress" forever
# (one of the gateway's running_status_words, so the gateway keeps asking upstream).
RUNNING_BODY = json.dumps(
    {"model": "grok-imagine-video-1-5", "prompt": "a lighthouse at dusk, slow pan #running"}
)


def poll_path(job_id: str) -> str:
    return f"/v1/jobs/{job_id}"


# --------------------------------------------------------------------------- measurements


@dataclass(frozen=True)
class Load:
    """What wrk sends: one request, or one per key in turn (``authorizations``)."""

    method: str
    path: str
    body: str | None = None
    authorization: str = ""
    authorizations: tuple[str, ...] = ()

    def env(self) -> dict[str, str]:
        env = {"BENCH_METHOD": self.method, "BENCH_AUTHORIZATION": self.authorization}
        if self.body is not None:
            env["BENCH_BODY"] = self.body
        if self.authorizations:
            env["BENCH_AUTHORIZATIONS"] = "\n".join(self.authorizations)
        return env

    def describe(self) -> str:
        keys = f", {len(self.authorizations)} keys in turn" if self.authorizations else ""
        return f"{self.method} {self.path}{keys}"


@dataclass
class Window:
    """One measured wrk run against one proxy."""

    target: str  # "gateway" or "baseline"
    request: str
    connections: int
    requests_per_s: float | None = None
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
    cpu_us_per_request: float | None = None  # the proxy's own CPU (all its processes)
    upstream_calls_per_request: float | None = None  # what the stub answered, per request
    cpu: dict[str, float] = field(default_factory=dict)
    busiest_others: list[dict[str, Any]] = field(default_factory=list)
    sample_error_answer: str | None = None  # one answer like the failing ones, if any
    failure: str | None = None
    log_tail: str | None = None

    @property
    def ok(self) -> bool:
        return self.failure is None and self.requests_per_s is not None

    @property
    def bad(self) -> bool:
        return self.failure is not None or self.errors > 0 or self.warmup_errors > 0


@dataclass
class Row:
    scenario: str
    part: str  # "empty-ledger", "latency", "scale" or "big-ledger"
    gateway: Window
    baseline: Window | None
    ratios: dict[str, float] = field(default_factory=dict)

    def compute_ratios(self) -> None:
        g, b = self.gateway, self.baseline
        if b is None or not (g.ok and b.ok):
            return
        figures = (g.requests_per_s, b.requests_per_s, g.p50_ms, b.p50_ms, g.p99_ms, b.p99_ms)
        g_rps, b_rps, g_p50, b_p50, g_p99, b_p99 = (float(f or 0) for f in figures)
        self.ratios = {
            "throughput": round(g_rps / b_rps, 3) if b_rps else 0.0,
            "p50": round(g_p50 / b_p50, 2) if b_p50 else 0.0,
            "p99": round(g_p99 / b_p99, 2) if b_p99 else 0.0,
            "added_p50_ms": round(g_p50 - b_p50, 3),
        }
        if g.cpu_us_per_request and b.cpu_us_per_request:
            self.ratios["cpu_per_request"] = round(g.cpu_us_per_request / b.cpu_us_per_request, 2)


@dataclass
class Proxy:
    name: str
    process: ManagedProcess
    port: int
    workers: int
    pinned: bool


@dataclass
class Context:
    args: argparse.Namespace
    pinning: Pinning
    generator: LoadGenerator
    upstream: ManagedProcess
    upstream_port: int
    work_dir: Path
    log_dir: Path
    gateway_env: dict[str, str]
    hot_key: str = ""
    rotated_keys: tuple[str, ...] = ()
    running_job: str = ""
    finished_job: str = ""
    gateway: Proxy | None = None
    baseline: Proxy | None = None
    ledger: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def upstream_counts(ctx: Context) -> int:
    """Submits + polls the stub has answered so far."""
    status, raw = http_call(ctx.upstream_port, "GET", "/_bench/counts")
    if status != 200:
        raise BenchmarkError(f"the upstream stub's counts answered {status}")
    counts = json.loads(raw)
    return int(counts["submits"]) + int(counts["polls"])


def measure(ctx: Context, proxy: Proxy, load: Load, *, connections: int) -> Window:
    """Warm up, then one measured run of ``load`` against ``proxy`` with CPU accounting."""
    target = "gateway" if proxy is ctx.gateway else "baseline"
    window = Window(target, load.describe(), connections)
    process = proxy.process
    run = {
        "connections": connections,
        "threads": 1,
        "load_env": load.env(),
    }
    url = f"http://127.0.0.1:{proxy.port}{load.path}"
    try:
        if not process.running():
            raise BenchmarkError(f"{proxy.name} is not running (exit {process.popen.returncode})")
        if ctx.args.warmup > 0:
            warm = run_load(ctx.generator, ctx.pinning, url, seconds=ctx.args.warmup, **run)
            window.warmup_errors = int(warm["non2xx"]) + sum(warm["socket_errors"].values())
        watched = {"proxy": process, "upstream": ctx.upstream}
        calls_before = drained(ctx)
        before = sample_cpu(watched)
        result = run_load(ctx.generator, ctx.pinning, url, seconds=ctx.args.duration, **run)
        after = sample_cpu(watched)
        calls = upstream_counts(ctx) - calls_before
        if not process.running():
            raise BenchmarkError(f"{proxy.name} died during the run")
    except BenchmarkError as exc:
        window.failure = str(exc)
        window.log_tail = process.log_tail()
        return window

    window.cpu = cpu_percentages(before, after)
    exclude = {process.pid, *process.session_members(), ctx.upstream.pid}
    window.busiest_others = busiest_others(before, after, exclude)
    latency = result["latency_us"]
    window.requests = int(result["requests"])
    window.requests_per_s = round(result["requests"] / (result["duration_us"] / 1e6), 1)
    window.p50_ms = latency["p50"] / 1000
    window.p90_ms = latency["p90"] / 1000
    window.p99_ms = latency["p99"] / 1000
    window.mean_ms = round(latency["mean"] / 1000, 3)
    window.max_ms = latency["max"] / 1000
    window.non2xx = int(result["non2xx"])
    window.socket_errors = {k: int(v) for k, v in result["socket_errors"].items()}
    window.errors = window.non2xx + sum(window.socket_errors.values())
    if window.requests:
        proxy_seconds = after.processes["proxy"] - before.processes["proxy"]
        window.cpu_us_per_request = round(1e6 * proxy_seconds / window.requests, 1)
        window.upstream_calls_per_request = round(calls / window.requests, 3)
    if window.bad:
        window.log_tail = process.log_tail()
        window.sample_error_answer = sample_answer(proxy, load)
    return window


def drained(ctx: Context, timeout: float = 5.0) -> int:
    """Wait until the requests wrk abandoned at the end of its last run are through (the
    stub's count stops moving), so that work is not charged to the next window; the count."""
    deadline = time.monotonic() + timeout
    last, steady = upstream_counts(ctx), 0
    while steady < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
        now = upstream_counts(ctx)
        steady = steady + 1 if now == last else 0
        last = now
    return last


def sample_answer(proxy: Proxy, load: Load) -> str:
    """One request like the load's, answered now: what a failing answer looked like."""
    authorization = load.authorizations[0] if load.authorizations else load.authorization
    try:
        status, raw = http_call(
            proxy.port, load.method, load.path, body=load.body, authorization=authorization
        )
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"
    return f"HTTP {status}: {raw[:300].decode(errors='replace')}"


def describe_window(window: Window) -> str:
    if not window.ok:
        return f"FAILED: {(window.failure or '').splitlines()[0]}"
    text = (
        f"{window.requests_per_s:.0f} req/s, p50 {window.p50_ms:.2f} ms, "
        f"p99 {window.p99_ms:.2f} ms, {window.cpu_us_per_request or 0:.0f} µs CPU/req, "
        f"errors {window.errors}"
    )
    if window.warmup_errors:
        text += f" (+{window.warmup_errors} in warm-up)"
    return text


def measure_row(
    ctx: Context,
    rows: list[Row],
    scenario: str,
    part: str,
    gateway_load: Load,
    baseline_load: Load | None,
    *,
    connections: int,
) -> Row:
    """The baseline's window, then the gateway's: one row of the table."""
    assert ctx.gateway is not None
    assert ctx.baseline is not None
    baseline = None
    if baseline_load is not None:
        log(f"  {scenario}: baseline {baseline_load.describe()} at {connections} conn.")
        baseline = measure(ctx, ctx.baseline, baseline_load, connections=connections)
        log(f"    baseline {describe_window(baseline)}")
    log(f"  {scenario}: gateway {gateway_load.describe()} at {connections} conn.")
    gateway = measure(ctx, ctx.gateway, gateway_load, connections=connections)
    log(f"    gateway  {describe_window(gateway)}")
    if not ctx.upstream.running():
        raise BenchmarkError(f"the upstream stub died:\n{ctx.upstream.log_tail()}")
    row = Row(scenario, part, gateway, baseline)
    row.compute_ratios()
    rows.append(row)
    return row


# --------------------------------------------------------------------------- the servers


def start_proxies(ctx: Context, stack: contextlib.ExitStack, *, workers: int) -> None:
    """The baseline and the gateway, side by side; pinned to the proxy core for one worker."""
    pinned = workers == 1 and ctx.pinning.enabled
    suffix = "" if workers == 1 else f"-{workers}w"

    def place(command: list[str]) -> list[str]:
        return ctx.pinning.wrap(command, ctx.pinning.proxy_cpu) if pinned else command

    baseline_port, gateway_port = free_port(), free_port()
    baseline = ManagedProcess(
        f"baseline{suffix}",
        place(
            [
                sys.executable,
                str(BENCH_DIR / "passthrough_app.py"),
                "--port",
                str(baseline_port),
                "--workers",
                str(workers),
            ]
        ),
        env=child_env(
            BENCH_UPSTREAM_URL=f"http://127.0.0.1:{ctx.upstream_port}", BENCH_TRANSPORT="aiohttp"
        ),
        cwd=ctx.work_dir,
        log_dir=ctx.log_dir,
    )
    stack.callback(baseline.stop)
    gateway = ManagedProcess(
        f"gateway{suffix}",
        place(
            [
                *gateway_command(),
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(gateway_port),
                "--workers",
                str(workers),
            ]
        ),
        env=ctx.gateway_env,
        cwd=ctx.work_dir,
        log_dir=ctx.log_dir,
    )
    stack.callback(gateway.stop)
    ctx.baseline = Proxy("baseline", baseline, baseline_port, workers, pinned)
    ctx.gateway = Proxy("gateway", gateway, gateway_port, workers, pinned)
    started = time.monotonic()
    wait_until_submit_works(baseline, baseline_port, "")
    wait_until_submit_works(gateway, gateway_port, ctx.hot_key)
    placement = f"pinned to cpu{ctx.pinning.proxy_cpu}" if pinned else "unpinned"
    log(
        f"baseline and gateway up ({workers} worker(s) each, {placement}) in "
        f"{time.monotonic() - started:.1f} s"
    )


def stop_proxies(ctx: Context) -> None:
    for proxy in (ctx.gateway, ctx.baseline):
        if proxy is not None and proxy.process.running():
            proxy.process.stop()
            count, kinds = proxy.process.logged_problems()
            if count:
                ctx.notes.append(
                    f"{proxy.process.name} logged {count} ERROR lines (clients see them only "
                    f"if 'errors' > 0): {kinds}"
                )


def create_rotated_teams(ctx: Context) -> None:
    """50 more teams, a key each, through the CLI (a few at a time: each call is a process)."""
    started = time.monotonic()
    names = [f"bench-t{n:02d}" for n in range(1, TEAMS_ROTATED + 1)]
    pool = ThreadPoolExecutor(max_workers=3)
    try:
        keys = list(
            pool.map(lambda name: create_team_with_key(ctx.gateway_env, ctx.work_dir, name), names)
        )
    finally:
        # Interrupted or failed: the calls not started yet are not started at all.
        pool.shutdown(wait=True, cancel_futures=True)
    ctx.rotated_keys = tuple(keys)
    log(f"created {len(keys)} teams and keys in {time.monotonic() - started:.1f} s")


def create_levels_key(ctx: Context) -> str:
    """A team, a project and a key bound to it, each with a monthly budget (too large to run
    out in the windows): every submit reserves at all three levels (issue 15)."""
    env, cwd, team = ctx.gateway_env, ctx.work_dir, "bench-levels"
    budget = ["--monthly-budget-usd", "100000000"]
    gateway_cli(env, cwd, "teams", "create", team, *budget)
    gateway_cli(env, cwd, "projects", "create", "--team", team, "launch", *budget)
    issued = json.loads(
        gateway_cli(
            env, cwd, "keys", "create", "--team", team, "--project", "launch", *budget, "--json"
        )
    )
    return f"Bearer {issued['key']}"


def prepare_jobs(ctx: Context) -> None:
    """A running job and a settled one, both recorded by the gateway, for the poll scenarios."""
    assert ctx.gateway is not None
    port, key = ctx.gateway.port, ctx.hot_key

    process = ctx.gateway.process

    def call(method: str, path: str, body: str | None = None) -> dict[str, Any]:
        status, raw = http_call(port, method, path, body=body, authorization=key)
        if status != 200:
            raise BenchmarkError(
                f"gateway: {method} {path} answered {status}: {raw[:300]!r}\n" + process.log_tail()
            )
        answer: dict[str, Any] = json.loads(raw)
        return answer

    ctx.running_job = call("POST", SUBMIT_PATH, RUNNING_BODY)["job_id"]
    polled = call("GET", poll_path(ctx.running_job))
    if polled.get("status") != "in_progress":
        raise BenchmarkError(f"the running job polled as {polled!r}")
    ctx.finished_job = call("POST", SUBMIT_PATH, REQUEST_BODY)["job_id"]
    call("GET", poll_path(ctx.finished_job))  # the stub says completed: the gateway settles it
    before = upstream_counts(ctx)
    settled = call("GET", poll_path(ctx.finished_job))
    if upstream_counts(ctx) != before:
        ctx.notes.append(
            "the settled job's poll went upstream: poll-finished is not answered from the record"
        )
    log(
        f"running job {ctx.running_job}; settled job {ctx.finished_job} "
        f"(status {settled.get('status')!r})"
    )


# --------------------------------------------------------------------------- the ledger


async def _fill(database_url: str, jobs: int) -> dict[str, Any]:
    from sqlalchemy.ext.asyncio import create_async_engine

    now = datetime.now(UTC)
    month_start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    span = max(60.0, (now - month_start).total_seconds() - 60)
    engine = create_async_engine(database_url.replace("postgresql://", "postgresql+asyncpg://", 1))
    try:
        started = time.perf_counter()
        async with engine.begin() as connection:
            counts = await fill_ledger(
                connection,
                jobs=jobs,
                teams=LEDGER_TEAMS,
                month=now.strftime("%Y-%m"),
                start=month_start,
                span_seconds=span,
                team_prefix="ledger",
                job_prefix="ledger",
                upstream_prefix="ledger-up-",
                log=lambda message: log(f"  {message}"),
            )
        inserted = time.perf_counter() - started
        async with engine.connect() as connection:
            await vacuum_analyze(connection)
        return {
            **counts,
            "month": now.strftime("%Y-%m"),
            "insert_s": round(inserted, 1),
            "vacuum_analyze_s": round(time.perf_counter() - started - inserted, 1),
        }
    finally:
        await engine.dispose()


# --------------------------------------------------------------------------- the run


@dataclass
class Results:
    """What the run measured so far: reported even when a later step fails."""

    ctx: Context | None = None
    rows: list[Row] = field(default_factory=list)
    failure: str | None = None


def run_benchmark(
    args: argparse.Namespace,
    pinning: Pinning,
    generator: LoadGenerator,
    stack: contextlib.ExitStack,
    results: Results,
) -> None:
    work_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gw-routes-")))
    log_dir = work_dir / "logs"
    log_dir.mkdir()
    upstream, upstream_port = start_upstream_stub(pinning, stack, work_dir, log_dir)

    database_url = stack.enter_context(scratch_database(args.postgres_url))
    env = gateway_env(
        database_url,
        f"http://127.0.0.1:{upstream_port}",
        ["GATEWAY_UPSTREAM_TRANSPORT=aiohttp", *args.gateway_env],
    )
    ctx = Context(args, pinning, generator, upstream, upstream_port, work_dir, log_dir, env)
    results.ctx = ctx
    gateway_cli(env, work_dir, "db", "upgrade")
    # No monthly budget: unlimited (the default budget policy); every submit still takes its
    # hold on the team's balance row.
    ctx.hot_key = create_team_with_key(env, work_dir, "bench")
    log("gateway database migrated; team 'bench' and its key created")
    scenarios = [s for s in SCENARIOS if s in args.scenarios]
    if "submit-50-teams" in scenarios or args.scale:
        create_rotated_teams(ctx)
    levels_key = create_levels_key(ctx) if "submit-levels" in scenarios else ""

    rows = results.rows
    start_proxies(ctx, stack, workers=1)
    prepare_jobs(ctx)
    hot = ctx.hot_key
    submit = Load("POST", SUBMIT_PATH, REQUEST_BODY, authorization=hot)
    levels = Load("POST", SUBMIT_PATH, REQUEST_BODY, authorization=levels_key)
    rotated = Load("POST", SUBMIT_PATH, REQUEST_BODY, authorizations=ctx.rotated_keys)
    running = Load("GET", poll_path(ctx.running_job), authorization=hot)
    finished = Load("GET", poll_path(ctx.finished_job), authorization=hot)
    usage = Load("GET", USAGE_PATH, authorization=hot)
    # The baseline gets the same requests (it ignores the keys); for usage, a poll.
    pairs = {
        "submit-hot": (submit, submit),
        "submit-levels": (levels, levels),
        "submit-50-teams": (rotated, rotated),
        "poll-running": (running, running),
        "poll-finished": (finished, finished),
        "usage": (usage, finished),
    }
    connections = args.connections
    log(f"empty ledger, {connections} connections:")
    for scenario in scenarios:
        if scenario in pairs:
            gateway_load, baseline_load = pairs[scenario]
            measure_row(
                ctx,
                rows,
                scenario,
                "empty-ledger",
                gateway_load,
                baseline_load,
                connections=connections,
            )
    if "latency-1conn" in scenarios:
        log("one connection:")
        for name, load in (
            ("submit", submit),
            ("poll-running", running),
            ("poll-finished", finished),
        ):
            measure_row(ctx, rows, f"latency-1conn {name}", "latency", load, load, connections=1)

    if args.scale:
        stop_proxies(ctx)
        start_proxies(ctx, stack, workers=2)
        log(f"2 workers each, unpinned, {connections} connections:")
        for scenario in ("submit-hot", "submit-50-teams"):
            gateway_load, baseline_load = pairs[scenario]
            measure_row(
                ctx,
                rows,
                f"{scenario} 2 workers",
                "scale",
                gateway_load,
                baseline_load,
                connections=connections,
            )
        stop_proxies(ctx)
        if args.big_ledger:
            start_proxies(ctx, stack, workers=1)

    if args.big_ledger:
        log(f"filling the gateway's database: {args.ledger_jobs:,} jobs of {LEDGER_TEAMS} teams")
        ctx.ledger = asyncio.run(_fill(database_url, args.ledger_jobs))
        log(
            f"ledger filled in {ctx.ledger['insert_s']} s, VACUUM ANALYZE "
            f"{ctx.ledger['vacuum_analyze_s']} s"
        )
        log(f"big ledger, {connections} connections:")
        for scenario in ("submit-hot", "poll-finished"):
            gateway_load, baseline_load = pairs[scenario]
            measure_row(
                ctx,
                rows,
                f"{scenario} big ledger",
                "big-ledger",
                gateway_load,
                baseline_load,
                connections=connections,
            )
    stop_proxies(ctx)


# --------------------------------------------------------------------------- report


def _f(value: float | None, spec: str, width: int) -> str:
    return f"{value:{width}{spec}}" if value is not None else f"{'-':>{width}}"


def format_table(rows: list[Row]) -> str:
    header = (
        f"{'scenario':<28} {'conn':>4} {'gw req/s':>8} {'base r/s':>8} {'ratio':>6} "
        f"{'gw p50':>7} {'gw p99':>7} {'base p50':>8} {'base p99':>8} {'+p50 ms':>7} "
        f"{'gw µs/req':>9} {'base µs/req':>11} {'gw up/req':>9} {'errors':>7}"
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        g, b = row.gateway, row.baseline
        errors = f"{g.errors + g.warmup_errors}/{(b.errors + b.warmup_errors) if b else 0}"
        if not g.ok and (b is None or not b.ok):
            lines.append(f"{row.scenario:<28} FAILED: {(g.failure or '').splitlines()[0]}")
            continue
        lines.append(
            f"{row.scenario:<28} {g.connections:>4} {_f(g.requests_per_s, '.0f', 8)} "
            f"{_f(b.requests_per_s if b else None, '.0f', 8)} "
            f"{_f(row.ratios.get('throughput'), '.3f', 6)} "
            f"{_f(g.p50_ms, '.2f', 7)} {_f(g.p99_ms, '.2f', 7)} "
            f"{_f(b.p50_ms if b else None, '.2f', 8)} {_f(b.p99_ms if b else None, '.2f', 8)} "
            f"{_f(row.ratios.get('added_p50_ms'), '.2f', 7)} "
            f"{_f(g.cpu_us_per_request, '.0f', 9)} "
            f"{_f(b.cpu_us_per_request if b else None, '.0f', 11)} "
            f"{_f(g.upstream_calls_per_request, '.2f', 9)} {errors:>7}"
        )
    return "\n".join(lines)


def format_cpu_table(rows: list[Row], pinning: Pinning) -> str:
    proxy_core, load_core = f"core{pinning.proxy_cpu}_pct", f"core{pinning.load_cpu}_pct"
    header = (
        f"{'scenario':<28} {'target':<8} {'proxy%':>6} {'stub%':>5} {'wrk%':>5} {'other%':>6} "
        f"{'pxcore%':>7} {'ldcore%':>7}  busiest others (% of a core)"
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        for window in (row.baseline, row.gateway):
            if window is None or not window.ok:
                continue
            c = window.cpu
            others = ", ".join(
                f"{o['process']} {o['cpu_pct']:.0f}" for o in window.busiest_others[:3]
            )
            lines.append(
                f"{row.scenario:<28} {window.target:<8} {c.get('proxy_pct', 0):>6.0f} "
                f"{c.get('upstream_pct', 0):>5.0f} {c.get('loadgen_pct', 0):>5.0f} "
                f"{c.get('other_pct', 0):>6.0f} {c.get(proxy_core, 0):>7.0f} "
                f"{c.get(load_core, 0):>7.0f}  {others or '-'}"
            )
    return "\n".join(lines)


def summaries(ctx: Context, rows: list[Row]) -> dict[str, Any]:
    """The derived figures: added latency, the big ledger's and two workers' effects."""
    by_name = {row.scenario: row for row in rows}

    def rps(name: str, side: str = "gateway") -> float | None:
        row = by_name.get(name)
        window = None if row is None else row.gateway if side == "gateway" else row.baseline
        return window.requests_per_s if window is not None and window.ok else None

    def cpu(name: str) -> float | None:
        row = by_name.get(name)
        return row.gateway.cpu_us_per_request if row is not None and row.gateway.ok else None

    def ratio(top: float | None, bottom: float | None) -> float | None:
        return round(top / bottom, 3) if top is not None and bottom else None

    result: dict[str, Any] = {}
    added = {
        name: by_name[f"latency-1conn {name}"].ratios.get("added_p50_ms")
        for name in ("submit", "poll-running", "poll-finished")
        if f"latency-1conn {name}" in by_name
    }
    if added:
        result["added_p50_ms_at_1_connection"] = added
    if "submit-levels" in by_name and "submit-hot" in by_name:
        result["levels"] = {
            "submit_levels_req_s": rps("submit-levels"),
            "submit_hot_req_s": rps("submit-hot"),
            "levels_vs_team_only": ratio(rps("submit-levels"), rps("submit-hot")),
            "cpu_per_request_vs_team_only": ratio(cpu("submit-levels"), cpu("submit-hot")),
        }
    if ctx.ledger:
        result["big_ledger"] = {
            **ctx.ledger,
            "gateway_vs_empty_ledger": {
                name: ratio(rps(f"{name} big ledger"), rps(name))
                for name in ("submit-hot", "poll-finished")
            },
            "gateway_cpu_per_request_vs_empty_ledger": {
                name: ratio(cpu(f"{name} big ledger"), cpu(name))
                for name in ("submit-hot", "poll-finished")
            },
            "baseline_vs_empty_ledger_run": {
                name: ratio(rps(f"{name} big ledger", "baseline"), rps(name, "baseline"))
                for name in ("submit-hot", "poll-finished")
            },
        }
    if "submit-hot 2 workers" in by_name:
        hot2, rot2 = rps("submit-hot 2 workers"), rps("submit-50-teams 2 workers")
        result["two_workers"] = {
            "submit_hot_req_s": hot2,
            "submit_50_teams_req_s": rot2,
            "50_teams_vs_hot": ratio(rot2, hot2),
            "vs_one_worker": {
                "submit-hot": ratio(hot2, rps("submit-hot")),
                "submit-50-teams": ratio(rot2, rps("submit-50-teams")),
            },
            "cpu_per_request_vs_one_worker": {
                "submit-hot": ratio(cpu("submit-hot 2 workers"), cpu("submit-hot")),
                "submit-50-teams": ratio(cpu("submit-50-teams 2 workers"), cpu("submit-50-teams")),
            },
            "baseline_vs_one_worker": ratio(
                rps("submit-hot 2 workers", "baseline"), rps("submit-hot", "baseline")
            ),
        }
    return result


def format_summaries(derived: dict[str, Any]) -> list[str]:
    def x(value: float | None) -> str:
        return f"×{value:.2f}" if value is not None else "n/a"

    lines = []
    if added := derived.get("added_p50_ms_at_1_connection"):
        lines.append(
            "added p50 at 1 connection (gateway p50 - baseline p50): "
            + ", ".join(
                f"{name} {value:+.2f} ms" if value is not None else f"{name} n/a"
                for name, value in added.items()
            )
        )
    if levels := derived.get("levels"):
        lines.append(
            f"submit with team, project and key budgets: {levels['submit_levels_req_s'] or 0:.0f}"
            f" req/s, {x(levels['levels_vs_team_only'])} of the team-only submit "
            f"({levels['submit_hot_req_s'] or 0:.0f} req/s); CPU/req "
            f"{x(levels['cpu_per_request_vs_team_only'])}"
        )
    if big := derived.get("big_ledger"):
        gw, base = big["gateway_vs_empty_ledger"], big["baseline_vs_empty_ledger_run"]
        per = big["gateway_cpu_per_request_vs_empty_ledger"]
        lines.append(
            f"big ledger ({big['jobs']:,} jobs, {big['entries']:,} entries of "
            f"{big['teams']} other teams in {big['month']}; insert {big['insert_s']} s, "
            f"VACUUM ANALYZE {big['vacuum_analyze_s']} s) vs the empty ledger: gateway req/s "
            f"submit-hot {x(gw['submit-hot'])}, poll-finished {x(gw['poll-finished'])}; "
            f"gateway CPU/req {x(per['submit-hot'])}, {x(per['poll-finished'])} (baseline "
            f"req/s drift between the same windows: {x(base['submit-hot'])}, "
            f"{x(base['poll-finished'])})"
        )
    if two := derived.get("two_workers"):
        vs, per = two["vs_one_worker"], two["cpu_per_request_vs_one_worker"]
        hot, rot = two["submit_hot_req_s"], two["submit_50_teams_req_s"]
        lines.append(
            f"2 workers, unpinned: submit-hot {hot or 0:.0f} req/s ({x(vs['submit-hot'])} of "
            f"1 pinned worker, CPU/req {x(per['submit-hot'])}), submit-50-teams "
            f"{rot or 0:.0f} req/s ({x(vs['submit-50-teams'])}, CPU/req "
            f"{x(per['submit-50-teams'])}); 50 teams / hot team {x(two['50_teams_vs_hot'])}; "
            f"baseline 2 workers {x(two['baseline_vs_one_worker'])} of 1"
        )
    return lines


def print_report(ctx: Context, rows: list[Row], derived: dict[str, Any]) -> None:
    args, pinning = ctx.args, ctx.pinning
    placement = (
        f"proxies on cpu{pinning.proxy_cpu} (the 2-worker rows: unpinned), upstream stub + wrk "
        f"on cpu{pinning.load_cpu}"
        if pinning.enabled
        else f"NOT pinned ({pinning.note})"
    )
    print()
    print(
        f"{args.connections} connections (latency rows: 1), {args.duration} s per window after "
        f"{args.warmup} s warm-up, {ctx.generator.version.split(' [')[0]}; {placement}"
    )
    print(
        "baseline: FastAPI pass-through on the aiohttp transport; gateway: gateway serve on "
        "PostgreSQL, aiohttp transport; ratio = gateway req/s / baseline req/s, same run"
    )
    print(format_table(rows))
    print(
        textwrap.fill(
            "µs/req: CPU time of the proxy's own processes per request (robust to a neighbour "
            "stealing the core). +p50 ms: gateway p50 - baseline p50. gw up/req: upstream calls "
            "per gateway request (0 = answered from the gateway's record). errors: non-2xx + "
            "socket errors, gateway/baseline, warm-up included; any makes the exit code 1.",
            width=100,
        )
    )
    for line in format_summaries(derived):
        print(textwrap.fill(line, width=100, subsequent_indent="  "))
    print()
    print("where the CPU went in each window (% of one core):")
    print(format_cpu_table(rows, pinning))
    starved = [
        f"{row.scenario} ({window.target} {window.cpu.get('proxy_pct', 0):.0f} %)"
        for row in rows
        if row.part != "scale"
        for window in (row.baseline, row.gateway)
        if window is not None
        and window.ok
        and window.connections > 1
        and window.cpu.get("proxy_pct", 100) < STARVED_PCT
    ]
    if starved and pinning.enabled:
        print(
            textwrap.fill(
                f"NOTE: the proxy got less than {STARVED_PCT} % of its core in: "
                + ", ".join(starved)
                + ". A neighbour took the rest (see other%), so those req/s read low; their "
                "µs/req still hold.",
                width=100,
            )
        )
    for note in ctx.notes:
        print(f"NOTE: {note}")
    for row in rows:
        for window in (row.baseline, row.gateway):
            if window is not None and window.bad:
                print(
                    f"\n{row.scenario} ({window.target}): {window.errors} errors (non-2xx "
                    f"{window.non2xx}, socket {window.socket_errors}), {window.warmup_errors} "
                    f"in warm-up{'; FAILED: ' + window.failure if window.failure else ''}"
                )
                if window.sample_error_answer:
                    print(f"a request like these, sent afterwards: {window.sample_error_answer}")
                print("log tail:")
                print(window.log_tail or "(empty)")


def write_json(
    ctx: Context, started_at: datetime, rows: list[Row], derived: dict[str, Any]
) -> Path:
    args = ctx.args
    output: Path = args.output or RESULTS_DIR / (
        f"routes-{started_at.strftime('%Y%m%dT%H%M%SZ')}.json"
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "benchmark": "routes",
        "started_at": started_at.isoformat(),
        "settings": {
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "connections": args.connections,
            "scenarios": args.scenarios,
            "scale": args.scale,
            "big_ledger": args.big_ledger,
            "ledger_jobs": args.ledger_jobs,
            "quick": args.quick,
            "load_generator": asdict(ctx.generator),
            "gateway_env": args.gateway_env,
            "pinning": asdict(ctx.pinning),
            "submit_body": json.loads(REQUEST_BODY),
            "running_submit_body": json.loads(RUNNING_BODY),
        },
        "environment": {
            **environment_facts(),
            "postgres": postgres_version(args.postgres_url),
            "wrk": ctx.generator.version,
        },
        "rows": [asdict(row) for row in rows],
        "derived": derived,
        "notes": ctx.notes,
    }
    output.write_text(json.dumps(report, indent=2) + "\n")
    return output


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="The gateway's cost per route against a pass-through (see the docstring).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--duration", type=int, help="measured seconds per window (default 10; --quick: 3)"
    )
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured seconds before it")
    parser.add_argument("--connections", type=int, default=32, help="closed-loop connections")
    parser.add_argument(
        "--scenarios",
        nargs="+",
        default=list(SCENARIOS),
        choices=SCENARIOS,
        metavar="SCENARIO",
        help=f"any of: {', '.join(SCENARIOS)}",
    )
    parser.add_argument(
        "--big-ledger",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="fill the ledger in bulk, then re-measure submit-hot and poll-finished",
    )
    parser.add_argument(
        "--ledger-jobs",
        type=int,
        help="jobs in the big ledger (default 1,000,000; --quick: 100,000)",
    )
    parser.add_argument(
        "--scale",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also gateway serve --workers 2 (unpinned): submit-hot vs submit-50-teams",
    )
    parser.add_argument(
        "--quick", action="store_true", help="a smoke test: 3 s windows, a 100,000-job ledger"
    )
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    if args.duration is None:
        args.duration = 3 if args.quick else 10
    if args.ledger_jobs is None:
        args.ledger_jobs = 100_000 if args.quick else 1_000_000
    if args.duration < 1:
        parser.error("--duration must be at least 1 second")
    if args.connections < 1:
        parser.error("--connections must be at least 1")
    if not 1 <= args.ledger_jobs <= 10**12 - 1:
        parser.error("--ledger-jobs must be between 1 and 999,999,999,999")
    check_common_arguments(parser, args)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started_at = datetime.now(UTC)
    pinning = decide_pinning(args)
    if pinning.note:
        log(f"WARNING: {pinning.note}")
    generator = pick_load_generator("wrk")
    log(f"load generator: {generator.version}")
    results = Results()

    def work(stack: contextlib.ExitStack) -> None:
        try:
            run_benchmark(args, pinning, generator, stack, results)
        except BenchmarkError as exc:
            results.failure = str(exc)
            raise

    code = 0
    try:
        run_cleaned_up(work)
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    ctx, rows = results.ctx, results.rows
    if ctx is None or not rows:
        return code or 1
    if code:
        ctx.notes.append(
            f"the run stopped early (exit {code}): {(results.failure or 'interrupted')}"
        )
    derived = summaries(ctx, rows)
    print_report(ctx, rows, derived)
    output = write_json(ctx, started_at, rows, derived)
    print(f"\nwrote {output}")
    if code:
        return code
    failed = [
        f"{row.scenario} ({window.target})"
        for row in rows
        for window in (row.baseline, row.gateway)
        if window is not None and window.bad
    ]
    if failed:
        log(f"errors or failures in: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
