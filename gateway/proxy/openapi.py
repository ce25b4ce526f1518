"""The tenant routes' documentation: what FastAPI cannot see, because the handlers read their
requests themselves (``gateway.proxy.endpoints``). Built once, when the router is; the models
here describe bodies for the document only and never touch a request.

Successful submit and poll bodies are the upstream's, passed through byte for byte: their
schemas name the fields the upstream sends (as the built-in simulator does) and allow more.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from gateway.catalog.openapi import submit_body_schema, submit_examples
from gateway.catalog.spec import Catalog
from gateway.core.pricing import ESTIMATE_HEADER
from gateway.errors import CONCURRENCY_RETRY_AFTER_SECONDS
from gateway.proxy.schemas import UsageScopeOut
from gateway.web.openapi import (
    REQUEST_ID_HEADER,
    TENANT_SECURITY,
    ErrorObject,
    QuotaErrorEnvelope,
    error_doc,
    header_doc,
)


class _Upstream(BaseModel):
    """A body the upstream writes: the fields it is known to send; it may send more."""

    model_config = ConfigDict(extra="allow")


class JobAccepted(_Upstream):
    """The upstream's acceptance: poll ``GET /v1/jobs/{job_id}`` with its ``job_id``."""

    job_id: str = Field(examples=["job_3f9c2a7e1b4d8a6c0e5f9b21"])
    status: str = Field(description="Usually queued", examples=["queued"])


class JobUsage(_Upstream):
    video_seconds: float | None = Field(default=None, examples=[10])
    resolution: str | None = Field(default=None, examples=["720p"])
    images: int | None = Field(default=None, examples=[0])
    cost_usd: str | None = Field(default=None, description="USD decimal string")


class JobVideo(_Upstream):
    url: str | None = None
    duration: float | None = None
    resolution: str | None = None
    aspect_ratio: str | None = None


class JobResult(_Upstream):
    """Present once the job is terminal and a video was produced (even if then blocked)."""

    video_url: str | None = Field(default=None, description="null when moderated")
    videos: list[JobVideo] | None = None
    duration: float | None = None
    resolution: str | None = None
    usage: JobUsage | None = None


class JobError(_Upstream):
    code: str | None = Field(default=None, examples=["content_moderated"])
    message: str | None = None


class JobStatus(_Upstream):
    """A job as the upstream reports it; for a settled job, the terminal answer the gateway
    recorded (the upstream is not asked again)."""

    job_id: str
    status: str = Field(
        description="queued or processing while it runs; then a success word (completed, "
        "succeeded, done) or a failure word (failed, error, expired)",
        examples=["completed"],
    )
    model: str | None = Field(default=None, examples=["grok-imagine-video-1-5"])
    progress: float | None = Field(default=None, examples=[1.0])
    created_at: str | None = Field(default=None, examples=["2026-11-03T09:12:44.120000Z"])
    completed_at: str | None = None
    result: JobResult | None = None
    error: JobError | None = Field(
        default=None,
        description="Why it failed: content_moderated (produced, then blocked: billed) or "
        "another code (nothing produced: not billed)",
    )


_QUOTA_HEADER = {
    "X-Quota-Remaining-USD": header_doc(
        "What is left of the team's budget this period (USD decimal string, or unlimited)",
        {"type": "string", "examples": ["485.930000", "unlimited"]},
    )
}
_TENANT_HEADERS = {**REQUEST_ID_HEADER, **_QUOTA_HEADER}
_RETRY_AFTER = {
    "Retry-After": header_doc("Seconds to wait before retrying", {"type": "integer"}),
}

_AUTH: dict[int | str, dict[str, Any]] = {
    401: error_doc(
        "authentication_error: missing_api_key, invalid_authorization (not Bearer), "
        "invalid_api_key, api_key_revoked, api_key_expired; with company JWTs also "
        "invalid_token, token_expired, token_not_yet_valid, invalid_issuer, invalid_audience, "
        "token_algorithm_not_allowed, missing_claim, unknown_signing_key. Nothing forwarded.",
        headers={"WWW-Authenticate": header_doc("Bearer")},
    ),
    403: error_doc(
        "permission_error: team_disabled; with company JWTs team_not_found, team_claim_missing"
    ),
}
_LEDGER_UNAVAILABLE = (
    "api_error: ledger_unavailable (with Retry-After): the gateway's database cannot be used, "
    "so it fails closed and forwards nothing"
)
_UPSTREAM_502 = error_doc(
    "upstream_error: upstream_error (unreachable, reset, or its 5xx), "
    "upstream_invalid_response (a 2xx body the gateway cannot read), upstream_auth_failed "
    "(the upstream refused the gateway's own key: an operator problem)"
)

SUBMIT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "model": JobAccepted,
        "description": "Accepted upstream: its body, byte for byte. The price is held against "
        "the team's budget until the job settles.",
        "headers": {
            **_TENANT_HEADERS,
            ESTIMATE_HEADER: header_doc(
                "The request's price, which is what is held (USD decimal string)",
                {"type": "string", "examples": ["1.680000"]},
            ),
            "Idempotent-Replayed": header_doc(
                "true when this is the stored answer to an earlier request with the same "
                "Idempotency-Key"
            ),
        },
    },
    400: error_doc(
        "invalid_request_error, never forwarded, never billed; param names the field or "
        "header. Body: invalid_json, invalid_body, missing_parameter, unknown_model, "
        "unknown_parameter, invalid_type, out_of_range, invalid_precision, invalid_length, "
        "invalid_value, invalid_image, invalid_image_url, invalid_data_uri, "
        "unsupported_image_type, invalid_base64, image_too_large, image_type_mismatch. "
        "Headers: invalid_idempotency_key, invalid_tags. An upstream 400 is passed through."
    ),
    **_AUTH,
    409: error_doc(
        "invalid_request_error / idempotency_key_in_use: the first request with this "
        "Idempotency-Key is still in flight; retry later with the same key"
    ),
    413: error_doc("invalid_request_error / request_too_large: the body is over the cap"),
    422: error_doc(
        "invalid_request_error / idempotency_key_reused: the Idempotency-Key was used with "
        "another body"
    ),
    429: error_doc(
        "quota_error; not forwarded, not billed. quota_exceeded: the request does not fit "
        "what is left of the period's budget, with the figures; no Retry-After, since "
        "retrying cannot help before the budget is raised or the period ends. "
        "concurrency_limit: the team has max_concurrent_jobs in flight; Retry-After: "
        f"{CONCURRENCY_RETRY_AFTER_SECONDS} (a slot frees when a job finishes and a poll or "
        "the reconciler settles it). The upstream's own 429 is passed through with its "
        "Retry-After.",
        model=QuotaErrorEnvelope,
        headers={**_QUOTA_HEADER, **_RETRY_AFTER},
    ),
    502: _UPSTREAM_502,
    503: error_doc(
        f"{_LEDGER_UNAVAILABLE}; rate_card_missing: no rate card in force for the model; "
        "forward_window_passed: held up too long to forward safely, nothing sent or billed, "
        "retry",
        headers=_RETRY_AFTER,
    ),
    504: error_doc(
        "upstream_error: upstream_timeout (the upstream did not answer in time; the hold "
        "stays until the reconciler learns the outcome), upstream_outcome_unknown (retry with "
        "the same Idempotency-Key to learn the job)"
    ),
}

POLL_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "model": JobStatus,
        "description": "The upstream's answer, byte for byte; a terminal one settles the job "
        "in the ledger, exactly once.",
        "headers": _TENANT_HEADERS,
    },
    **_AUTH,
    404: error_doc(
        "not_found_error / job_not_found: no such job for this team (another team's job looks "
        "the same); an upstream 404 is passed through"
    ),
    429: error_doc(
        "The upstream's rate limit, passed through with its Retry-After", headers=_RETRY_AFTER
    ),
    502: _UPSTREAM_502,
    503: error_doc(_LEDGER_UNAVAILABLE, headers=_RETRY_AFTER),
    504: error_doc("upstream_error / upstream_timeout: the upstream did not answer in time"),
}

USAGE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The team's money for the current period, and each budget level's that "
        "applies to the caller (team, the key's project, the key) with its month-end forecast",
        "headers": _TENANT_HEADERS,
    },
    **_AUTH,
    503: error_doc(_LEDGER_UNAVAILABLE, headers=_RETRY_AFTER),
}

_SUBMIT_HEADERS = [
    {
        "name": "Idempotency-Key",
        "in": "header",
        "required": False,
        "schema": {"type": "string", "maxLength": 255},
        "description": "Retries with the same key and body get the first answer, once.",
    },
    {
        "name": "X-Gateway-Tags",
        "in": "header",
        "required": False,
        "schema": {"type": "string"},
        "description": "Cost-allocation tags, key=value,... (never forwarded upstream)",
        "example": "project=atlas,user=dana",
    },
    {
        "name": "X-Gateway-Project",
        "in": "header",
        "required": False,
        "schema": {"type": "string", "maxLength": 64},
        "description": "The team's project to charge (never forwarded upstream). A key bound "
        "to a project charges it without this header; naming another is 403 "
        "project_not_allowed; an unknown project is 400 unknown_project.",
        "example": "launch-video",
    },
]


def submit_openapi(catalog: Catalog) -> dict[str, Any]:
    """``openapi_extra`` of the submit: its headers and its body, generated from the catalog
    (the handler reads the raw body itself, so FastAPI cannot document it)."""
    return {
        "parameters": _SUBMIT_HEADERS,
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": submit_body_schema(catalog),
                    "examples": submit_examples(catalog),
                }
            },
        },
        "security": TENANT_SECURITY,
    }


POLL_OPENAPI: dict[str, Any] = {
    "parameters": [
        {
            "name": "job_id",
            "in": "path",
            "required": True,
            "schema": {"type": "string"},
            "description": "The job id the submit answered with.",
        }
    ],
    "security": TENANT_SECURITY,
}
USAGE_OPENAPI: dict[str, Any] = {"security": TENANT_SECURITY}


# The quote (POST /v1/quote). Unlike the upstream's bodies above, the gateway writes this
# answer itself, and these models also serialise it (``gateway.proxy.endpoints.create_quote``).


class QuoteLineOut(BaseModel):
    """One line of the price. The lines add up to ``total_usd`` exactly."""

    item: str = Field(
        description="image (the image fee), or video_seconds_<resolution>",
        examples=["video_seconds_720p"],
    )
    quantity: str = Field(
        description="How many: images, or seconds (a decimal string, as sent)", examples=["10"]
    )
    unit_price_usd: str = Field(
        description="Per image, or per second (USD decimal string)", examples=["0.168000"]
    )
    amount_usd: str = Field(
        description="The line's amount (USD decimal string); the seconds' line is rounded "
        "half-up to the micro-dollar, once, as the submit's price is",
        examples=["1.680000"],
    )


class QuoteRefusal(ErrorObject):
    """The ``error`` object the submit would answer with now, exactly (its details beside
    ``code``): cost_cap_exceeded (400; scope, scope_name, cap_usd, requested_usd),
    quota_exceeded (429; scope, scope_name, period, budget_usd, granted_usd, used_usd,
    requested_usd, resets_at: the first level without room, team then project then key) or
    concurrency_limit (429; jobs_in_flight, max_concurrent_jobs)."""


class QuoteScopeOut(UsageScopeOut):
    """A budget level the job would be held on, as ``GET /v1/usage`` shows it, and what this
    job would leave of it."""

    remaining_after_usd: str | None = Field(
        description="remaining_usd minus this job's price; negative when the job does not fit "
        "this level (by that much); null when the level has no budget of its own",
        examples=["484.250000"],
    )


class QuoteOut(BaseModel):
    """What a submit of the same body and headers would cost, and whether it would be
    accepted now. Nothing is held, forwarded, billed or recorded; a quote reserves nothing,
    so another submit may take the room it saw."""

    model: str = Field(examples=["grok-imagine-video-1-5"])
    rate_card_version: str = Field(
        description="The rate card in force, which the submit would be priced by",
        examples=["seed-2026-11"],
    )
    lines: list[QuoteLineOut]
    total_usd: str = Field(
        description="The price: what the submit would hold (its X-Gateway-Cost-Estimate-USD)",
        examples=["1.680000"],
    )
    accepted: bool = Field(description="Whether the submit would be accepted now")
    refusal: QuoteRefusal | None = Field(
        description="null when accepted; else the error object the submit would answer with"
    )
    scopes: list[QuoteScopeOut] = Field(
        description="Every level the job would be held on: the team, its project (the key's, "
        "or the one X-Gateway-Project names), its key"
    )


QUOTE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "model": QuoteOut,
        "description": "The price, line by line, and whether the submit would be accepted now "
        "(a per-job cap, a budget or the concurrency cap that would refuse it is an answer "
        "here, not an error). Never forwarded, held or billed.",
        "headers": _TENANT_HEADERS,
    },
    400: error_doc(
        "invalid_request_error: the submit's own validation errors, for the body (the same "
        "codes) and the headers (invalid_tags, unknown_project); never forwarded, never billed"
    ),
    401: _AUTH[401],
    403: error_doc(
        "permission_error: team_disabled; project_not_allowed (the key is bound to another "
        "project than X-Gateway-Project names); with company JWTs team_not_found, "
        "team_claim_missing"
    ),
    413: error_doc("invalid_request_error / request_too_large: the body is over the cap"),
    503: error_doc(
        f"{_LEDGER_UNAVAILABLE}; rate_card_missing: no rate card in force for the model",
        headers=_RETRY_AFTER,
    ),
}

_QUOTE_HEADERS = [
    {
        "name": "Idempotency-Key",
        "in": "header",
        "required": False,
        "schema": {"type": "string", "maxLength": 255},
        "description": "Accepted and ignored (a quote claims and replays nothing), so a quote "
        "can be sent with the submit's very headers.",
    },
    *(header for header in _SUBMIT_HEADERS if header["name"] != "Idempotency-Key"),
]


def quote_openapi(catalog: Catalog) -> dict[str, Any]:
    """``openapi_extra`` of the quote: the submit's body and headers."""
    return {**submit_openapi(catalog), "parameters": _QUOTE_HEADERS}
