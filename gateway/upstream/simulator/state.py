"""The simulator's memory: jobs, their time-based lifecycle, its own billing, and a request log.

A job's status is a pure function of the clock (jobs progress whether or not anyone polls), so
polls never mutate a job; the only per-request growth is the bounded request log.
"""

from __future__ import annotations

import secrets
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from enum import Enum
from typing import Any

from .billing import ZERO_USD, price_usd
from .config import SimulatorConfig
from .markers import Markers, Outcome
from .validation import Submission

REQUEST_LOG_LIMIT = 100_000
"""Most recent requests kept; the log must not exhaust memory under a long benchmark."""

FAILED = "failed"


class Phase(Enum):
    """Where a job is in its life."""

    QUEUED = "queued"
    PROCESSING = "processing"
    TERMINAL = "terminal"


@dataclass(frozen=True, slots=True)
class JobStatus:
    """A job as seen at one instant."""

    phase: Phase
    status: str
    progress: float

    @property
    def terminal(self) -> bool:
        return self.phase is Phase.TERMINAL


@dataclass(slots=True)
class Job:
    """One accepted generation; everything about its end is fixed at submit time."""

    job_id: str
    created: float
    created_at: str
    completed_at: str
    resolution: str
    aspect_ratio: str | None
    images: int
    outcome: Outcome
    video_seconds: Decimal
    """Seconds produced: the ``#sim:duration=N`` figure, else the requested duration."""
    cost_usd: Decimal
    """What the job costs once billed (success or moderated)."""
    terminal_body: bytes | None = None
    """Rendered poll body once terminal; it can never change again, so it is cached."""


@dataclass(frozen=True, slots=True)
class UsageRow:
    """One line of the simulator's own bill."""

    job_id: str
    status: str
    billed: bool
    video_seconds: Decimal
    resolution: str
    images: int
    cost_usd: Decimal


@dataclass(slots=True)
class RequestRecord:
    """One request seen on an API route; header names only, never values (keys stay secret)."""

    method: str
    path: str
    request_id: str | None
    header_names: list[str]
    status: int | None = None
    """``None`` while the request has not been answered (e.g. a ``#sim:hang``)."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "path": self.path,
            "status": self.status,
            "request_id": self.request_id,
            "header_names": self.header_names,
        }


@dataclass
class SimulatorState:
    """Jobs in submission order plus the request log, for one simulator app."""

    config: SimulatorConfig
    clock: Callable[[], float]
    jobs: dict[str, Job] = field(default_factory=dict)
    idempotency: dict[str, tuple[str, str | None]] = field(default_factory=dict)
    """Idempotency-Key → (SHA-256 of the body, job id; None while the submit is in progress)."""
    requests: deque[RequestRecord] = field(default_factory=lambda: deque(maxlen=REQUEST_LOG_LIMIT))

    def create_job(self, submission: Submission, markers: Markers) -> Job:
        """Accept a job now; its outcome and bill follow from the request and the markers."""
        created = self.clock()
        produced = markers.reported_seconds
        video_seconds = submission.duration if produced is None else produced
        images = 1 if submission.has_image else 0
        job = Job(
            job_id="job_" + secrets.token_hex(12),
            created=created,
            created_at=iso_utc(created),
            completed_at=iso_utc(created + self.config.latency),
            resolution=submission.resolution,
            aspect_ratio=submission.aspect_ratio,
            images=images,
            outcome=markers.outcome,
            video_seconds=video_seconds,
            cost_usd=price_usd(
                images=images, video_seconds=video_seconds, resolution=submission.resolution
            ),
        )
        self.jobs[job.job_id] = job
        return job

    def status_of(self, job: Job) -> JobStatus:
        """The job's status now: queued for the first quarter of the latency, then processing."""
        latency = self.config.latency
        elapsed = self.clock() - job.created
        if latency == 0 or elapsed >= latency:
            word = self.config.status_words if job.outcome is Outcome.SUCCESS else FAILED
            return JobStatus(Phase.TERMINAL, word, 1.0)
        if elapsed < latency / 4:
            return JobStatus(Phase.QUEUED, Phase.QUEUED.value, 0.0)
        progress = min(round(elapsed / latency, 2), 0.99)  # 1.0 is reserved for terminal jobs
        return JobStatus(Phase.PROCESSING, Phase.PROCESSING.value, progress)

    def usage_rows(self) -> list[UsageRow]:
        """The simulator's bill as of now: only terminal, produced videos are billed."""
        return [self._usage_row(job) for job in self.jobs.values()]

    def _usage_row(self, job: Job) -> UsageRow:
        status = self.status_of(job)
        billed = status.terminal and job.outcome.billed
        return UsageRow(
            job_id=job.job_id,
            status=status.status,
            billed=billed,
            video_seconds=job.video_seconds if billed else Decimal(0),
            resolution=job.resolution,
            images=job.images,
            cost_usd=job.cost_usd if billed else ZERO_USD,
        )

    def log_request(
        self, method: str, path: str, request_id: str | None, header_names: Iterable[str]
    ) -> RequestRecord:
        """Record a request as it arrives; the caller fills in the status when it answers."""
        record = RequestRecord(method, path, request_id, sorted(header_names))
        self.requests.append(record)
        return record

    def reset(self) -> None:
        """Forget all jobs and requests (between test cases or benchmark runs)."""
        self.jobs.clear()
        self.idempotency.clear()
        self.requests.clear()


def iso_utc(timestamp: float) -> str:
    """ISO-8601 UTC with microseconds and a ``Z`` suffix (what ``fromisoformat`` reads back)."""
    moment = datetime.fromtimestamp(timestamp, UTC)
    return moment.isoformat(timespec="microseconds").removesuffix("+00:00") + "Z"
