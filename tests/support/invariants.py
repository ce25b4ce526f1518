"""The books after a run: the ledger checked against itself and against the simulator's bill.

Used by every test that ends a run of faults (and by ``benchmarks/soak.py``): first
``settle_everything`` lets the reconciler finish what the run left open, then
``check_books`` asserts, over the whole database:

1. every job has exactly one hold and exactly one settlement; nothing is left open;
2. each balance row, at every level (team, project, key), equals the sums of its jobs'
   entries (nothing held), within its budget plus grants;
3. per upstream job, the ledger's capture (+ corrections) equals what the simulator billed,
   every job the simulator billed is in the ledger, and nothing is billed that it did not run;
4. the finance reconciliation against the simulator's usage export finds zero differences.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.core.clock import utcnow
from gateway.core.usd import parse_usd
from gateway.jobs.models import OPEN_STATES, Job
from gateway.ledger.models import KeyBalance, LedgerEntry, ProjectBalance, TeamBalance
from gateway.reports import reconciliation
from gateway.runtime import open_runtime
from gateway.services.reconciler import ReconcileReport
from tests.support.settings import RELEASE_AT_ONCE, gateway_settings
from tests.support.tenants import in_session


@dataclass(frozen=True)
class Books:
    """What ``check_books`` found (all of it consistent, or it would have raised)."""

    jobs: int
    upstream_jobs: int
    captured_micro_usd: int
    differences: int


def reconcile_pass(
    database_url: str,
    simulator_url: str,
    *,
    at: datetime | None = None,
    ahead: timedelta | None = None,
    **overrides: Any,
) -> ReconcileReport:
    """One reconciler pass with the test settings and ``overrides``: by default now, over
    everything (every submitted job polled, whatever its schedule); with ``at``, as if run at
    that moment, on the reconciler's own schedule; with ``ahead``, over everything on a clock
    that far ahead of the real one, as if run that much later."""
    assert at is None or ahead is None, "give at most one of at= or ahead="
    settings = gateway_settings(database_url, simulator_url, **overrides)

    async def _pass() -> ReconcileReport:
        async with open_runtime(settings) as runtime:
            if at is not None:
                moment = at
                return await runtime.reconciler(clock=lambda: moment).run_once()
            if ahead is not None:
                later = ahead
                clock = lambda: utcnow() + later  # noqa: E731
                return await runtime.reconciler(clock=clock).run_once(everything=True)
            return await runtime.reconciler().run_once(everything=True)

    return asyncio.run(_pass())


def settle_everything(
    database_url: str, simulator_url: str, *, resend_after: float | None = None, **timing: Any
) -> None:
    """Finish what a run left open: recover unanswered submits (once due for a re-send, when
    ``resend_after`` says the upstream honours keys), settle finished jobs, and finally
    release the holds of submits the upstream never created.

    Instead of sleeping ``resend_after`` seconds for the re-sends to fall due, every pass runs
    on a reconciler clock that far ahead. Only the reconciler's clock moves: the upstream's
    jobs still take their real time to finish."""
    ahead = timedelta(seconds=resend_after) if resend_after is not None else None
    for _ in range(6):
        reconcile_pass(database_url, simulator_url, ahead=ahead, **timing)
    reconcile_pass(
        database_url,
        simulator_url,
        ahead=ahead,
        **(timing | {"upstream_honors_idempotency_key": False} | RELEASE_AT_ONCE),
    )
    reconcile_pass(database_url, simulator_url, ahead=ahead, **timing)


Balance = TeamBalance | ProjectBalance | KeyBalance


def _read_ledger(
    url: str,
) -> tuple[list[Job], list[LedgerEntry], list[tuple[str, object, Balance]]]:
    async def _read(
        session: AsyncSession,
    ) -> tuple[list[Job], list[LedgerEntry], list[tuple[str, object, Balance]]]:
        jobs = list((await session.execute(select(Job))).scalars())
        entries = list((await session.execute(select(LedgerEntry))).scalars())
        balances: list[tuple[str, object, Balance]] = []
        balances += [
            ("team", b.team_id, b) for b in (await session.execute(select(TeamBalance))).scalars()
        ]
        balances += [
            ("project", b.project_id, b)
            for b in (await session.execute(select(ProjectBalance))).scalars()
        ]
        balances += [
            ("key", b.api_key_id, b) for b in (await session.execute(select(KeyBalance))).scalars()
        ]
        return jobs, entries, balances

    return in_session(url, _read)


def check_books(database_url: str, simulator_url: str, context: str = "") -> Books:
    jobs, entries, balances = _read_ledger(database_url)

    # 1. one hold and one settlement per job; nothing left open
    kinds_by_job: dict[str, Counter[str]] = defaultdict(Counter)
    for entry in entries:
        kinds_by_job[entry.job_id][entry.kind] += 1
    for job in jobs:
        kinds = kinds_by_job[job.id]
        assert kinds["hold"] == 1, (job.id, kinds, context)
        assert kinds["capture"] + kinds["release"] == 1, (job.id, job.state, kinds, context)
    open_jobs = [j.id for j in jobs if j.state in {s.value for s in OPEN_STATES}]
    assert not open_jobs, (open_jobs, context)

    # 2. balances equal the sums of their entries, within budget, at every level
    by_job = {j.id: j for j in jobs}
    captured_by_level: Counter[tuple[str, object, str]] = Counter()
    for entry in entries:
        if entry.kind == "capture":
            job = by_job[entry.job_id]
            captured_by_level[("team", entry.team_id, entry.period)] += entry.amount_micro_usd
            if job.project_id is not None:
                captured_by_level[("project", job.project_id, entry.period)] += (
                    entry.amount_micro_usd
                )
            if job.key_held:
                captured_by_level[("key", job.api_key_id, entry.period)] += entry.amount_micro_usd
    for level, owner, balance in balances:
        where = (level, owner, balance.period, context)
        assert balance.held_micro_usd == 0, where
        assert balance.captured_micro_usd == captured_by_level[(level, owner, balance.period)], (
            where
        )
        if balance.budget_micro_usd is not None:
            limit = balance.budget_micro_usd + balance.granted_micro_usd
            assert balance.held_micro_usd + balance.captured_micro_usd <= limit, where

    # 3. the ledger agrees with what the upstream billed, job by job
    usage = httpx.get(simulator_url + "/_simulator/usage", timeout=30).json()
    upstream_billed = {row["job_id"]: parse_usd(row["cost_usd"]) for row in usage["jobs"]}
    by_id = {j.id: j for j in jobs}
    by_upstream_id = {j.upstream_job_id: j for j in jobs if j.upstream_job_id}
    ledger_billed: Counter[str] = Counter()
    for entry in entries:
        if entry.kind in ("capture", "correction"):
            job = by_id[entry.job_id]
            assert job.upstream_job_id is not None, (job.id, context)  # billed only what ran
            ledger_billed[job.upstream_job_id] += entry.amount_micro_usd
    missing = set(upstream_billed) - set(by_upstream_id)
    assert not missing, f"upstream jobs missing from the ledger: {missing} {context}"
    for upstream_id, cost in upstream_billed.items():
        assert ledger_billed[upstream_id] == cost, (upstream_id, cost, context)
    assert sum(ledger_billed.values()) == parse_usd(usage["total_cost_usd"]), context

    # 4. the finance reconciliation finds nothing to report against the simulator's export
    async def _reconcile(session: AsyncSession) -> Any:
        charges = reconciliation.parse_usage(json.dumps(usage))
        ledger = await reconciliation.ledger_charges(session, {c.job_id for c in charges})
        return reconciliation.compare(charges, ledger, tolerance_micro_usd=0)

    comparison = in_session(database_url, _reconcile)
    differences = comparison.as_json()["differences"]
    assert comparison.clean, (differences[:5], context)
    assert comparison.compared_jobs >= len(upstream_billed)
    return Books(
        jobs=len(jobs),
        upstream_jobs=len(upstream_billed),
        captured_micro_usd=sum(ledger_billed.values()),
        differences=len(differences),
    )
