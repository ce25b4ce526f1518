"""Jobs built in memory for domain-level tests, as a submit creates one before its hold."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from gateway.jobs.models import Job, JobState
from tests.support.api import MODEL


def pending_job(
    team_id: int, estimate_micro_usd: int, *, period: str, at: datetime, **fields: Any
) -> Job:
    """A pending job of ``team_id``: 10 s at 720p of the catalog's model on the seed rate card,
    created (and last updated) ``at``; ``fields`` set any other column or override these."""
    values: dict[str, Any] = {
        "id": uuid.uuid4().hex,
        "team_id": team_id,
        "state": JobState.PENDING.value,
        "model": MODEL,
        "duration_ms": 10_000,
        "resolution": "720p",
        "image_count": 0,
        "estimate_micro_usd": estimate_micro_usd,
        "rate_card_version": "seed-2026-11",
        "period": period,
        "check_attempts": 0,
        "needs_review": False,
        "created_at": at,
        "updated_at": at,
    }
    values.update(fields)
    return Job(**values)
