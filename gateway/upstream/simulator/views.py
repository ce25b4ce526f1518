"""Rendering of poll bodies and of the simulator's usage report (JSON and CSV).

Kept apart from the state so the lifecycle rules and the wire format can change independently.
"""

from __future__ import annotations

import csv
import io
import json
from decimal import Decimal
from typing import Any

from .billing import format_usd, total_usd
from .markers import Outcome
from .state import Job, JobStatus, UsageRow
from .validation import MODEL_ID

VIDEO_URL_TEMPLATE = "https://sim.invalid/videos/{job_id}.mp4"
USAGE_CSV_COLUMNS = (
    "job_id",
    "status",
    "billed",
    "video_seconds",
    "resolution",
    "images",
    "cost_usd",
)


def json_number(value: Decimal) -> int | float:
    """Seconds as a JSON int when integral (``10``), else a float (``2.5``), as upstream sends."""
    if value == value.to_integral_value():
        return int(value)
    return float(value)


def job_body(job: Job, status: JobStatus) -> dict[str, Any]:
    """The poll body; every key is always present so clients need no ``get`` defaults."""
    return {
        "job_id": job.job_id,
        "model": MODEL_ID,
        "status": status.status,
        "progress": status.progress,
        "created_at": job.created_at,
        "completed_at": job.completed_at if status.terminal else None,
        "result": _result(job) if status.terminal else None,
        "error": _error(job) if status.terminal else None,
    }


def _usage(job: Job) -> dict[str, Any]:
    return {
        "video_seconds": json_number(job.video_seconds),
        "resolution": job.resolution,
        "images": job.images,
        "cost_usd": format_usd(job.cost_usd),
    }


def _result(job: Job) -> dict[str, Any] | None:
    """Success carries the video; moderation keeps the bill but no video; failure has neither."""
    seconds = json_number(job.video_seconds)
    if job.outcome is Outcome.SUCCESS:
        url = VIDEO_URL_TEMPLATE.format(job_id=job.job_id)
        video = {
            "url": url,
            "duration": seconds,
            "resolution": job.resolution,
            "aspect_ratio": job.aspect_ratio,
        }
        return {
            "video_url": url,
            "videos": [video],
            "duration": seconds,
            "resolution": job.resolution,
            "usage": _usage(job),
        }
    if job.outcome is Outcome.MODERATED:
        return {
            "video_url": None,
            "videos": [],
            "duration": seconds,
            "resolution": job.resolution,
            "usage": _usage(job),
        }
    return None


def _error(job: Job) -> dict[str, str] | None:
    if job.outcome is Outcome.MODERATED:
        return {
            "code": "content_moderated",
            "message": "the generated video was blocked by the content safety check",
        }
    if job.outcome is Outcome.FAIL:
        return {"code": "generation_failed", "message": "the generation failed (simulated)"}
    return None


def usage_payload(rows: list[UsageRow]) -> dict[str, Any]:
    """``{"jobs": [...], "total_cost_usd": "..."}`` with amounts as 6-place decimal strings."""
    return {
        "jobs": [
            {
                "job_id": row.job_id,
                "status": row.status,
                "billed": row.billed,
                "video_seconds": json_number(row.video_seconds),
                "resolution": row.resolution,
                "images": row.images,
                "cost_usd": format_usd(row.cost_usd),
            }
            for row in rows
        ],
        "total_cost_usd": format_usd(total_usd([row.cost_usd for row in rows])),
    }


def usage_csv(rows: list[UsageRow]) -> str:
    """The same rows as CSV; numbers are spelled exactly as in the JSON report."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(USAGE_CSV_COLUMNS)
    for row in rows:
        writer.writerow(
            (
                row.job_id,
                row.status,
                "true" if row.billed else "false",
                json.dumps(json_number(row.video_seconds)),
                row.resolution,
                row.images,
                format_usd(row.cost_usd),
            )
        )
    return buffer.getvalue()
