"""A synthetic ledger written through the real domain code (rate card in force at submit,
``place_hold``, planned settlements), with controlled times: months with thousands of jobs,
jobs crossing month boundaries, a rate change mid-month, every outcome, tags. It also returns
what every report must add up to, computed independently here."""

from __future__ import annotations

import random
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from sqlalchemy.ext.asyncio import AsyncSession

from gateway.audit.service import Actor
from gateway.core.periods import period_of
from gateway.core.pricing import BillableUnits, price_request
from gateway.jobs.models import Job, JobState
from gateway.ledger import settlement
from gateway.ledger.holds import place_hold
from gateway.ledger.quotas import TeamQuota
from gateway.ledger.rates import rate_card_in_force
from gateway.tenancy import service as tenancy
from tests.support.api import MODEL
from tests.support.rates import add_rates

ACTOR = Actor("generator")
MID_MONTH_VERSION = "2026-11-15-cut"
MID_MONTH = datetime(2026, 11, 15, tzinfo=UTC)


@dataclass
class Expected:
    """What the November report must show, per team and per (team, project)."""

    captured: Counter[str] = field(default_factory=Counter)
    held: Counter[str] = field(default_factory=Counter)
    jobs: Counter[str] = field(default_factory=Counter)
    billed: Counter[str] = field(default_factory=Counter)
    moderated: Counter[str] = field(default_factory=Counter)
    released: Counter[str] = field(default_factory=Counter)
    open: Counter[str] = field(default_factory=Counter)
    images: Counter[str] = field(default_factory=Counter)
    video_ms: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    by_project: Counter[tuple[str, str]] = field(default_factory=Counter)
    versions: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    captured_jobs: int = 0
    captured_with_image: int = 0


async def generate(
    session: AsyncSession, *, jobs: int, seed: int, teams: int = 4, month: str = "2026-11"
) -> tuple[list[str], Expected]:
    rng = random.Random(seed)
    per_second = {"480p": 80_000, "720p": 150_000}
    await add_rates(session, MID_MONTH_VERSION, per_second, actor=ACTOR, effective_from=MID_MONTH)
    names = []
    quotas = {}
    for n in range(teams):
        name = f"fin-{n}-{uuid.uuid4().hex[:6]}"
        team = await tenancy.create_team(
            session,
            name,
            actor=ACTOR,
            cost_center=f"CC-{n % 2}",
            monthly_budget_micro_usd=10**14,
        )
        names.append(name)
        quotas[name] = TeamQuota(team.id, team.monthly_budget_micro_usd, None)
    expected = Expected()
    start = datetime(2026, 10, 30, tzinfo=UTC)
    span = int(timedelta(days=34).total_seconds())
    # Exactly on the boundaries, whatever the random draw.
    fixed = [
        datetime(2026, 10, 31, 23, 59, 59, tzinfo=UTC),
        datetime(2026, 11, 1, tzinfo=UTC),
        datetime(2026, 11, 30, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(2026, 12, 1, tzinfo=UTC),
        MID_MONTH - timedelta(microseconds=1),
        MID_MONTH,
    ]
    vocabulary = settlement.StatusVocabulary({"completed"}, {"failed"}, {"content_moderated"})
    for index in range(jobs):
        created = (
            fixed[index]
            if index < len(fixed)
            else start + timedelta(seconds=rng.randrange(span), microseconds=rng.randrange(10**6))
        )
        name = rng.choice(names)
        duration = rng.choice([1, Decimal("2.5"), 5, 8, 10, 15])
        resolution = rng.choice(["480p", "720p"])
        images = rng.choice([0, 0, 1])
        tags = {"project": rng.choice(["atlas", "zephyr"])} if rng.random() < 0.8 else None
        card = await rate_card_in_force(session, MODEL, created)
        units = BillableUnits(duration, resolution, images)
        estimate = price_request(units, card)
        job = Job(
            id=uuid.uuid4().hex,
            team_id=quotas[name].team_id,
            state=JobState.PENDING.value,
            model=MODEL,
            duration_ms=int(Decimal(duration) * 1000),
            resolution=resolution,
            image_count=images,
            estimate_micro_usd=estimate,
            rate_card_version=card.version,
            period=period_of(created),
            upstream_job_id=f"gen_{uuid.uuid4().hex}",
            tags=tags,
            check_attempts=0,
            needs_review=False,
            created_at=created,
            updated_at=created,
        )
        await place_hold(session, quotas[name], job, policy="unlimited", now=created)
        roll = rng.random()
        settled_at = created + timedelta(minutes=rng.randrange(1, 180))
        body: dict[str, object] | None
        if roll < 0.1:
            body = None  # still running: held
        elif roll < 0.3:
            body = {"status": "failed", "error": {"code": "generation_failed"}}
        elif roll < 0.4:
            body = {
                "status": "failed",
                "error": {"code": "content_moderated"},
                "result": {"duration": duration},
            }
        elif roll < 0.5:
            body = {"status": "completed", "result": {"duration": Decimal(duration) + 3}}
        elif roll < 0.6:
            body = {"status": "completed", "result": {"duration": max(Decimal(duration) / 2, 1)}}
        else:
            body = {"status": "completed"}
        plan = None
        if body is not None:
            outcome = settlement.read_terminal(body, vocabulary)
            assert outcome is not None
            plan = await settlement.plan_from_outcome(session, job, outcome, b"{}")
            assert await settlement.apply_settlement(session, job, plan, now=settled_at)
        if job.period != month:
            continue
        expected.jobs[name] += 1
        expected.versions[name].add(card.version)
        if plan is None:
            expected.open[name] += 1
            expected.held[name] += estimate
        elif plan.state is JobState.RELEASED:
            expected.released[name] += 1
        else:
            expected.captured[name] += plan.captured
            expected.captured_jobs += 1
            expected.captured_with_image += 1 if images else 0
            expected.images[name] += images
            produced = plan.video_ms if plan.video_ms is not None else job.duration_ms
            expected.video_ms[name][resolution] += min(produced, job.duration_ms)
            expected.by_project[(name, (tags or {}).get("project", "(untagged)"))] += plan.captured
            if plan.upstream_error_code == "content_moderated":
                expected.moderated[name] += 1
            else:
                expected.billed[name] += 1
    return names, expected
