"""Fallback closed-loop load generator (aiohttp on uvloop), used when ``wrk`` is not installed.

``--connections`` workers each keep one keep-alive connection busy for ``--duration``
seconds: send a POST, read the whole answer, record the latency, send the next. It prints one
line in the same format as ``wrk_post.lua``: ``BENCH_RESULT {...}`` with latencies in
microseconds. It is slower than wrk, so give it its own core (the orchestrator pins it).

    python benchmarks/loadgen.py http://127.0.0.1:9002/v1/videos/generations -c 32 -d 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time

import aiohttp
import uvloop


def _percentile(sorted_values: list[int], fraction: float) -> int:
    if not sorted_values:
        return 0
    index = min(len(sorted_values) - 1, round(fraction * (len(sorted_values) - 1)))
    return sorted_values[index]


async def run(
    url: str, body: bytes, headers: dict[str, str], connections: int, duration: float
) -> dict[str, object]:
    latencies_us: list[int] = []
    non2xx = 0
    errors = {"connect": 0, "read": 0, "write": 0, "timeout": 0}
    connector = aiohttp.TCPConnector(limit=connections)
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        started = time.perf_counter()
        deadline = started + duration

        async def worker() -> None:
            nonlocal non2xx
            while time.perf_counter() < deadline:
                sent = time.perf_counter_ns()
                try:
                    async with session.post(url, data=body, headers=headers) as response:
                        await response.read()
                        status = response.status
                except TimeoutError:
                    errors["timeout"] += 1
                    continue
                except aiohttp.ClientConnectorError:
                    errors["connect"] += 1
                    continue
                except aiohttp.ClientError:
                    errors["read"] += 1
                    continue
                latencies_us.append((time.perf_counter_ns() - sent) // 1000)
                if not 200 <= status <= 299:
                    non2xx += 1

        await asyncio.gather(*(worker() for _ in range(connections)))
        elapsed = time.perf_counter() - started
    ordered = sorted(latencies_us)
    return {
        "requests": len(ordered),
        "responses": len(ordered),
        "duration_us": int(elapsed * 1_000_000),
        "non2xx": non2xx,
        "socket_errors": errors,
        "latency_us": {
            "mean": sum(ordered) / len(ordered) if ordered else 0.0,
            "p50": _percentile(ordered, 0.50),
            "p90": _percentile(ordered, 0.90),
            "p99": _percentile(ordered, 0.99),
            "max": ordered[-1] if ordered else 0,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="closed-loop POST load (wrk fallback)")
    parser.add_argument("url")
    parser.add_argument("-c", "--connections", type=int, default=32)
    parser.add_argument("-d", "--duration", type=float, default=10.0)
    args = parser.parse_args()
    body = os.environ.get(
        "BENCH_BODY", '{"model": "grok-imagine-video-1-5", "prompt": "bench"}'
    ).encode()
    headers = {"Content-Type": "application/json"}
    if authorization := os.environ.get("BENCH_AUTHORIZATION"):
        headers["Authorization"] = authorization
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        result = runner.run(run(args.url, body, headers, args.connections, args.duration))
    print("BENCH_RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
