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
import contextlib
import json
import os
import sys
import tempfile
import textwrap
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

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
    run_cleaned_up,
    sample_cpu,
    scratch_database,
    start_upstream_stub,
    wait_until_submit_works,
)
from harness import run_load as run_load_at

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
    return run_load_at(
        generator,
        pinning,
        f"http://127.0.0.1:{port}{SUBMIT_PATH}",
        connections=connections,
        seconds=seconds,
        threads=threads,
        load_env={"BENCH_BODY": REQUEST_BODY, "BENCH_AUTHORIZATION": authorization},
    )


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
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    if args.connections < args.wrk_threads:
        parser.error("--connections must be at least --wrk-threads")
    if args.duration < 1:
        parser.error("--duration must be at least 1 second")
    check_common_arguments(parser, args)
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

    upstream, upstream_port = start_upstream_stub(pinning, stack, work_dir, log_dir)
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
        ctx.gateway_env = gateway_env(database_url, ctx.upstream_url, args.gateway_env)
        gateway_cli(ctx.gateway_env, work_dir, "db", "upgrade")
        # One team with a real budget: every submit takes the conditional hold on the same
        # balance row, the contention a hot team puts on the ledger.
        ctx.authorization = create_team_with_key(
            ctx.gateway_env, work_dir, "bench", monthly_budget_usd="10000000"
        )
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
    try:
        outcomes = run_cleaned_up(lambda stack: run_benchmark(args, pinning, generator, stack))
    except SystemExit as exit_:
        return int(exit_.code or 0)

    print_report(args, pinning, generator, outcomes)
    output = write_json(args, started_at, pinning, generator, outcomes)
    print(f"\nwrote {output}")
    return 1 if any(o.failure or o.errors for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
