"""Admin API bodies. Amounts go out as USD decimal strings with 6 places and come in as a JSON
number or a decimal string, converted exactly to micro-USD (never through a float)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    WithJsonSchema,
)

from gateway.core.usd import parse_usd

T = TypeVar("T")


def _micro_usd(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | Decimal | str):
        raise ValueError("must be a USD amount: a number or a decimal string such as '250.00'")
    return parse_usd(str(value))


UsdAmount = Annotated[
    int,
    BeforeValidator(_micro_usd),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": r"^[0-9]+(\.[0-9]{1,6})?$"},
                {"type": "number", "minimum": 0},
            ],
            "description": "USD, at most 6 decimal places",
            "examples": ["250.00"],
        }
    ),
]
"""Input: USD as number or string. The validated value is micro-USD (int)."""

MonthText = Annotated[
    str, Field(pattern=r"^[0-9]{4}-(0[1-9]|1[0-2])$", examples=["2026-11"], description="YYYY-MM")
]
PER_JOB_CAP = "A request priced above this is refused (400 cost_cap_exceeded); null: no cap"
Role = Literal["member", "manager"]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str
    code: str
    param: str | None
    message: str


class ErrorBody(BaseModel):
    error: ErrorDetail


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": description}
    for status, description in (
        (400, "Invalid request"),
        (401, "Missing or invalid credentials"),
        (403, "Not an admin"),
        (404, "Not found"),
        (409, "Conflicts with the current state"),
        (503, "Database unavailable"),
    )
}


class Page(BaseModel, Generic[T]):
    data: list[T]
    next_cursor: str | None = Field(
        description="Pass as ?cursor= for the next page; null on the last page."
    )


class TeamCreate(_In):
    name: str = Field(min_length=1, max_length=64, examples=["video-lab"])
    monthly_budget_usd: UsdAmount | None = Field(
        default=None, description="Per calendar month (UTC); null: the default policy"
    )
    cost_center: str | None = Field(default=None, max_length=64, examples=["CC-1234"])
    max_concurrent_jobs: StrictInt | None = Field(default=None, ge=1)
    soft_limit_percent: StrictInt | None = Field(default=None, ge=1, le=100, examples=[80])
    max_cost_per_job_usd: UsdAmount | None = Field(default=None, description=PER_JOB_CAP)


class TeamUpdate(_In):
    """Only the fields present are changed; ``null`` clears an optional setting."""

    monthly_budget_usd: UsdAmount | None = None
    max_cost_per_job_usd: UsdAmount | None = Field(default=None, description=PER_JOB_CAP)
    cost_center: str | None = Field(default=None, max_length=64)
    max_concurrent_jobs: StrictInt | None = Field(default=None, ge=1)
    soft_limit_percent: StrictInt | None = Field(default=None, ge=1, le=100)
    disabled: StrictBool | None = Field(
        default=None, description="true stops the team's keys and tokens at once"
    )


class TeamOut(BaseModel):
    id: int
    name: str
    cost_center: str | None
    monthly_budget_usd: str | None = Field(examples=["250.000000"])
    max_concurrent_jobs: int | None
    soft_limit_percent: int | None
    disabled: bool
    created_at: datetime
    max_cost_per_job_usd: str | None = Field(default=None, examples=["5.000000"])


class ProjectCreate(_In):
    name: str = Field(min_length=1, max_length=64, examples=["launch-video"])
    monthly_budget_usd: UsdAmount | None = Field(
        default=None, description="Per calendar month (UTC); null: only the team's applies"
    )
    max_cost_per_job_usd: UsdAmount | None = Field(default=None, description=PER_JOB_CAP)
    soft_limit_percent: StrictInt | None = Field(default=None, ge=1, le=100, examples=[80])


class ProjectUpdate(_In):
    """Only the fields present are changed; ``null`` clears a setting. A budget change applies
    to the month under way (409 ``budget_below_usage`` below what the project used)."""

    monthly_budget_usd: UsdAmount | None = None
    max_cost_per_job_usd: UsdAmount | None = Field(default=None, description=PER_JOB_CAP)
    soft_limit_percent: StrictInt | None = Field(default=None, ge=1, le=100)


class ProjectOut(BaseModel):
    id: int
    team: str
    name: str
    monthly_budget_usd: str | None = Field(examples=["100.000000"])
    max_cost_per_job_usd: str | None
    soft_limit_percent: int | None
    created_at: datetime


class KeyCreate(_In):
    name: str | None = Field(default=None, max_length=128, examples=["render-farm"])
    expires_in_days: StrictInt | None = Field(default=None, ge=1, le=3650)
    project: str | None = Field(
        default=None,
        max_length=64,
        examples=["launch-video"],
        description="A project of the team: the key's jobs are that project's",
    )
    role: Role = Field(default="member", description="manager: may manage the team's keys")
    monthly_budget_usd: UsdAmount | None = Field(
        default=None, description="The key's own budget per calendar month (UTC); null: none"
    )
    max_cost_per_job_usd: UsdAmount | None = Field(default=None, description=PER_JOB_CAP)


class KeyUpdate(_In):
    """Only the fields present are changed; ``null`` clears a budget or cap, or unbinds the
    project. A budget change applies to the month under way."""

    project: str | None = Field(default=None, max_length=64)
    role: Role | None = None
    monthly_budget_usd: UsdAmount | None = None
    max_cost_per_job_usd: UsdAmount | None = Field(default=None, description=PER_JOB_CAP)


class KeyRotate(_In):
    overlap_seconds: StrictInt = Field(
        default=3600, ge=0, le=30 * 86_400, description="How long the old key keeps working"
    )


class JobRelease(_In):
    note: str | None = Field(
        default=None, max_length=500, description="Why (kept in the audit log)"
    )


class KeyOut(BaseModel):
    id: str = Field(description="Public key id; the key itself is never shown again")
    team: str
    name: str | None
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None
    active: bool
    project: str | None = None
    role: str = "member"
    monthly_budget_usd: str | None = None
    max_cost_per_job_usd: str | None = None


class IssuedKeyOut(BaseModel):
    id: str
    key: str = Field(description="Shown once: store it now")
    team: str
    name: str | None
    expires_at: datetime | None
    project: str | None = None
    role: str = "member"
    monthly_budget_usd: str | None = None
    max_cost_per_job_usd: str | None = None


class GrantIn(_In):
    """Give no ``project`` and no ``key_id`` for the team itself; at most one of them."""

    amount_usd: UsdAmount = Field(description="Added to the level's budget for the period only")
    period: MonthText | None = Field(default=None, description="YYYY-MM; default: this month")
    reason: str = Field(min_length=1, max_length=255, examples=["launch week"])
    project: str | None = Field(default=None, max_length=64)
    key_id: str | None = Field(default=None, max_length=64)


class GrantOut(BaseModel):
    id: int
    team: str
    scope: str = Field(description="team, project or key")
    project: str | None
    key_id: str | None
    period: str
    amount_usd: str
    reason: str
    granted_by: str
    created_at: datetime


class LevelBalanceOut(BaseModel):
    """One level's money for a period; ``remaining_usd`` counts the grants."""

    scope: str
    name: str
    period: str
    budget_usd: str | None
    granted_usd: str
    captured_usd: str
    held_usd: str
    remaining_usd: str | None


class GrantedOut(GrantOut):
    balance: LevelBalanceOut = Field(description="The level's balance after the grant")


class RateCardIn(_In):
    model: str = Field(examples=["grok-imagine-video-1-5"])
    version: str = Field(min_length=1, max_length=64, examples=["2027-01"])
    image_fee_usd: UsdAmount
    per_second_usd: dict[str, UsdAmount] = Field(examples=[{"480p": "0.096", "720p": "0.168"}])
    effective_from: AwareDatetime | None = Field(
        default=None, description="When the version takes effect (default: now)"
    )


class RateCardOut(BaseModel):
    model: str
    version: str
    effective_from: datetime
    image_fee_usd: str
    per_second_usd: dict[str, str]


class LedgerEntryOut(BaseModel):
    id: int
    kind: str = Field(description="hold, capture, release or correction")
    amount_usd: str
    rate_card_version: str
    reason: str | None
    video_seconds: str | None
    upstream_cost_usd: str | None
    needs_review: bool
    created_at: datetime


class JobOut(BaseModel):
    id: str
    upstream_job_id: str | None
    team: str
    state: str = Field(description="pending, submitted, unknown, captured or released")
    model: str
    duration_seconds: str
    resolution: str
    image_count: int
    estimate_usd: str
    rate_card_version: str
    period: str
    needs_review: bool
    upstream_status: str | None
    upstream_error_code: str | None
    created_at: datetime
    settled_at: datetime | None


class JobDetailOut(JobOut):
    entries: list[LedgerEntryOut]


class AuditOut(BaseModel):
    id: int
    at: datetime
    actor: str
    action: str
    target_type: str
    target_id: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    request_id: str | None


# Team webhooks


class WebhookCreate(_In):
    url: str = Field(
        min_length=1,
        max_length=2048,
        examples=["https://hooks.example.com/video-gateway"],
        description="http or https, no user or password, no fragment; must resolve to public "
        "addresses only (unless GATEWAY_WEBHOOK_ALLOW_PRIVATE_NETWORKS)",
    )
    events: list[str] | None = Field(
        default=None,
        min_length=1,
        max_length=16,
        examples=[["job.succeeded", "job.failed", "job.moderated"]],
        description="job.succeeded, job.failed, job.moderated, budget.soft_limit, "
        "budget.exhausted (job.* and budget.* name a family); default: all five",
    )


class WebhookOut(BaseModel):
    id: str = Field(examples=["wh_3f2a9c1d5e7b8a60"])
    team: str
    url: str
    events: list[str]
    created_by: str
    created_at: datetime
    deleted_at: datetime | None


class WebhookCreatedOut(WebhookOut):
    secret: str = Field(
        description="whsec_ + base64 of 32 bytes: verifies each delivery's webhook-signature "
        "(Standard Webhooks). Shown only in this answer."
    )


class WebhookDeliveryOut(BaseModel):
    id: int
    event_id: str = Field(description="Also the webhook-id header of every attempt")
    type: str
    state: Literal["pending", "delivered", "failed"]
    attempts: int
    last_status_code: int | None
    last_error: str | None = Field(
        description="The last failed attempt's reason (kept once delivered)"
    )
    last_attempt_at: datetime | None
    next_attempt_at: datetime | None
    delivered_at: datetime | None
    created_at: datetime


class WebhookDeliveryPage(BaseModel):
    data: list[WebhookDeliveryOut]
    next_before: int | None = Field(
        description="Pass as ?before= for the next (older) page; null on the last page."
    )
