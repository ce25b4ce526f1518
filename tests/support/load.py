"""A small closed-loop load of tenant requests, for fault tests: what each client saw, when.

Each worker submits, sometimes polls one of its jobs, and records every answer with its time,
so a test can assert what clients saw during a fault (fail closed: 503, never 500) and how long
the gateway took to recover once the fault was lifted.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.support.api import submit_async
from tests.support.tenants import Tenant


@dataclass(frozen=True)
class Answer:
    at: float
    """``time.monotonic()`` when the answer arrived."""
    op: str
    status: int
    """HTTP status; 0 when the connection failed."""
    code: str | None = None
    """``error.code`` of an error body."""


@dataclass
class Load:
    answers: list[Answer] = field(default_factory=list)
    jobs: dict[str, list[str]] = field(default_factory=dict)
    """Accepted job ids per team."""
    refused: int = 0
    """Connections refused and sent on to the next URL (``retry_refused``)."""

    def statuses(self, op: str | None = None) -> Counter[int]:
        return Counter(a.status for a in self.answers if op is None or a.op == op)

    def codes(self, status: int) -> Counter[str | None]:
        return Counter(a.code for a in self.answers if a.status == status)

    @property
    def accepted(self) -> int:
        return sum(len(ids) for ids in self.jobs.values())

    def first_success_after(self, moment: float, op: str = "submit") -> float | None:
        """Seconds from ``moment`` to the first 200 of ``op`` answered after it."""
        later = [a.at for a in self.answers if a.op == op and a.status == 200 and a.at >= moment]
        return min(later) - moment if later else None


def _code(response: httpx.Response) -> str | None:
    if response.status_code < 400:
        return None
    try:
        error = response.json().get("error")
    except ValueError:
        return "not-json"
    return error.get("code") if isinstance(error, dict) else None


async def run_load(
    urls: Sequence[str],
    tenants: Sequence[Tenant],
    *,
    seconds: float,
    workers: int = 8,
    poll_every: int = 2,
    prompt: str = "load",
    markers: Sequence[str] = ("",),
    pause: float = 0.0,
    load: Load | None = None,
    retry_refused: bool = False,
) -> Load:
    """``workers`` clients for ``seconds``, round-robin over ``urls`` and ``tenants``; every
    ``poll_every``-th request of a worker polls one of its team's accepted jobs. Submits cycle
    through ``markers`` (simulator outcome markers appended to the prompt). ``retry_refused``:
    a request whose connection is refused (it never reached a gateway) goes to the next URL,
    as a load balancer would send it, until every URL has refused it."""
    load = load or Load()
    for tenant in tenants:
        load.jobs.setdefault(tenant.team, [])
    deadline = time.monotonic() + seconds
    counter = itertools.count()

    async def worker(index: int, client: httpx.AsyncClient) -> None:
        for step in itertools.count():
            if time.monotonic() >= deadline:
                return
            n = next(counter)
            tenant = tenants[n % len(tenants)]
            jobs = load.jobs[tenant.team]
            poll = step % poll_every == poll_every - 1 and jobs
            op = "poll" if poll else "submit"

            polled = jobs[n % len(jobs)] if poll else None
            text = f"{prompt} {n}{markers[n % len(markers)]}"
            response: httpx.Response | None = None
            for attempt in range(len(urls) if retry_refused else 1):
                try:
                    url = urls[(n + index + attempt) % len(urls)]
                    response = await _send(client, url, tenant, polled, text, 1 + n % 15)
                except httpx.ConnectError:
                    if retry_refused:
                        load.refused += 1
                        continue
                except httpx.TransportError:
                    pass
                break
            if response is None:
                load.answers.append(Answer(time.monotonic(), op, 0, "connection_failed"))
                continue
            load.answers.append(Answer(time.monotonic(), op, response.status_code, _code(response)))
            if op == "submit" and response.status_code == 200:
                jobs.append(response.json()["job_id"])
            if pause:
                await asyncio.sleep(pause)

    limits = httpx.Limits(max_connections=workers * 2, max_keepalive_connections=workers * 2)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        await asyncio.gather(*(worker(i, client) for i in range(workers)))
    return load


async def _send(
    client: httpx.AsyncClient,
    url: str,
    tenant: Tenant,
    polled: str | None,
    prompt: str,
    duration: int,
) -> httpx.Response:
    """A poll of ``polled``, or a submit of ``prompt``."""
    if polled is not None:
        return await client.get(f"{url}/v1/jobs/{polled}", headers=tenant.headers)
    return await submit_async(client, tenant, prompt, url=url, duration=duration)


@dataclass(frozen=True)
class Outage:
    """A fault that ``start``s ``after`` seconds into a load run and ``end``s ``lasting``
    seconds later (a proxy killed and restarted, a process paused and resumed)."""

    start: Callable[[], None]
    end: Callable[[], None]
    lasting: float
    after: float = 1.0


def load_during(
    outage: Outage, urls: Sequence[str], tenants: Sequence[Tenant], **options: Any
) -> tuple[Load, float]:
    """``run_load(urls, tenants, **options)`` with ``outage`` run in a thread of its own.
    Returns the load and when the outage ended (``time.monotonic()``)."""
    ended_at: list[float] = []

    def run_outage() -> None:
        time.sleep(outage.after)
        outage.start()
        time.sleep(outage.lasting)
        outage.end()
        ended_at.append(time.monotonic())

    thread = threading.Thread(target=run_outage)
    thread.start()
    load = asyncio.run(run_load(urls, tenants, **options))
    thread.join()
    assert ended_at, "the outage did not end"
    return load, ended_at[0]
