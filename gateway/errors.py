"""The gateway's error tree and the HTTP status each branch maps to.

Every error a client can see is one of these; one handler (``gateway.web.handlers``) renders
them as ``{"error": {"type", "code", "param", "message", ...details}}``. Expected business
outcomes are 4xx and never page anyone; only ``GatewayError`` itself (a bug) is a 500. What an
error means is its class, never a flag set on an instance: ``except UpstreamOutcomeUnknown``
says "the upstream may have acted on it".

    GatewayError ............................ 500 api_error / internal_error
    ├── FrameworkRefusal .................... the framework's own status / http_error
    ├── InvalidRequest ...................... 400 invalid_request_error (code names the rule)
    │   ├── WebhookDestinationNotAllowed .... 400 invalid_request_error /
    │   │                                     webhook_destination_not_allowed
    │   ├── RequestTimeout .................. 408 invalid_request_error / request_timeout
    │   ├── PayloadTooLarge ................. 413 invalid_request_error / request_too_large
    │   └── HeadersTooLarge ................. 431 invalid_request_error / request_headers_too_large
    ├── AuthenticationFailed ................ 401 authentication_error
    ├── PermissionDenied .................... 403 permission_error
    ├── NotFound ............................ 404 not_found_error
    ├── MethodNotAllowed .................... 405 invalid_request_error / method_not_allowed
    ├── Conflict ............................ 409 invalid_request_error / conflict
    ├── Unprocessable ....................... 422 invalid_request_error (idempotency key reuse)
    ├── QuotaExceeded ....................... 429 quota_error
    │   ├── BudgetExhausted ................. 429 quota_error / quota_exceeded (with the figures)
    │   └── ConcurrencyLimited .............. 429 quota_error / concurrency_limit (Retry-After)
    ├── ServiceUnavailable .................. 503 api_error (ledger_unavailable, ...)
    │   └── RateCardMissing ................. 503 api_error / rate_card_missing
    └── UpstreamError ....................... 502 upstream_error: the upstream did not act on it
        │                                     (the connection was refused, it answered 5xx)
        ├── UpstreamAuthFailed .............. 502 upstream_error / upstream_auth_failed
        ├── UpstreamConnectTimeout .......... 504 upstream_error / upstream_timeout: never sent
        └── UpstreamOutcomeUnknown .......... 502 upstream_error: sent, and perhaps acted on
            │                                 (connection lost, a proxy's 502/504): the
            │                                 submit's hold must wait, not be released
            ├── UpstreamInvalidResponse ..... 502 upstream_error / upstream_invalid_response
            └── UpstreamTimeout ............. 504 upstream_error / upstream_timeout
                └── OutcomeUnknown .......... 504 upstream_error / upstream_outcome_unknown

Upstream 4xx answers are not errors of ours: they are passed through unchanged.

Details beside ``code`` keep their JSON types: counts, limits, seconds and sizes are numbers;
money is a USD decimal string (keys ending in ``_usd``), as everywhere in the API.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

from gateway.core.usd import format_usd

Detail = str | int | None
"""A value beside ``code`` in the error object: a number stays a JSON number."""

CONCURRENCY_RETRY_AFTER_SECONDS = 5
"""``Retry-After`` of a ``concurrency_limit`` 429. A slot frees when one of the team's jobs
finishes and is settled: by its owner's next poll (the upstream's own client polls every 5 s)
or by the reconciler (every ``GATEWAY_RECONCILER_INTERVAL_SECONDS``, 15 s by default) if
nobody polls. Five seconds is one poll interval: soon enough not to waste a freed slot,
long enough not to turn a busy team into a busy loop."""


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


class GatewayError(Exception):
    """Base of every error rendered to clients. Unexpected: answered as a 500."""

    status_code: int = 500
    error_type: str = "api_error"
    default_code: str = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
        details: Mapping[str, Detail] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.param = param
        self.headers: dict[str, str] = dict(headers or {})
        self.details: dict[str, Detail] = dict(details or {})

    def to_body(self) -> dict[str, dict[str, Detail]]:
        return {
            "error": {
                "type": self.error_type,
                "code": self.code,
                "param": self.param,
                "message": self.message,
                **self.details,
            }
        }


class FrameworkRefusal(GatewayError):
    """The web framework refused the request with a status of its own choosing (a route's
    404 and 405 have classes of their own); rendered in the one error shape all the same."""

    def __init__(self, message: str, status_code: int) -> None:
        super().__init__(message, code="http_error")
        self.status_code = status_code
        self.error_type = "invalid_request_error" if status_code < 500 else "api_error"


class InvalidRequest(GatewayError):
    """The request breaks a documented rule; ``code`` names the rule, ``param`` the field."""

    status_code = 400
    error_type = "invalid_request_error"
    default_code = "invalid_request"


class WebhookDestinationNotAllowed(InvalidRequest):
    """A webhook URL whose host is, or resolves to, an address that is not publicly routable
    (loopback, private, link-local, ...) while ``GATEWAY_WEBHOOK_ALLOW_PRIVATE_NETWORKS`` is
    off: the gateway would otherwise POST into its own network on a team's behalf."""

    default_code = "webhook_destination_not_allowed"


class RequestTimeout(InvalidRequest):
    status_code = 408
    default_code = "request_timeout"


class PayloadTooLarge(InvalidRequest):
    status_code = 413
    default_code = "request_too_large"


class HeadersTooLarge(InvalidRequest):
    status_code = 431
    default_code = "request_headers_too_large"


class AuthenticationFailed(GatewayError):
    status_code = 401
    error_type = "authentication_error"
    default_code = "invalid_api_key"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message, code=code, headers={"WWW-Authenticate": "Bearer"})


class PermissionDenied(GatewayError):
    status_code = 403
    error_type = "permission_error"
    default_code = "permission_denied"


class NotFound(GatewayError):
    status_code = 404
    error_type = "not_found_error"
    default_code = "not_found"


class MethodNotAllowed(GatewayError):
    status_code = 405
    error_type = "invalid_request_error"
    default_code = "method_not_allowed"


class Conflict(GatewayError):
    status_code = 409
    error_type = "invalid_request_error"
    default_code = "conflict"


class Unprocessable(GatewayError):
    status_code = 422
    error_type = "invalid_request_error"
    default_code = "unprocessable"


class QuotaExceeded(GatewayError):
    """The team's budget (or concurrency cap) leaves no room: not forwarded, not billed."""

    status_code = 429
    error_type = "quota_error"
    default_code = "quota_exceeded"


class BudgetExhausted(QuotaExceeded):
    """The request does not fit what is left of the period's budget. Carries the period's
    figures (micro-USD), for the error object and the hard-limit alert. No ``Retry-After``:
    a retry cannot succeed before the budget is raised or the period ends."""

    def __init__(
        self,
        *,
        period: str,
        budget: int,
        held: int,
        captured: int,
        requested: int,
        scope: str = "team",
        scope_name: str | None = None,
        granted: int = 0,
        resets_at: datetime | None = None,
    ) -> None:
        used = held + captured
        named = f"{scope} {scope_name!r}" if scope_name else f"the {scope}"
        super().__init__(
            f"this request costs {format_usd(requested)} USD but the budget of {named} for "
            f"{period} is {format_usd(budget)} USD, of which {format_usd(used)} USD is used or "
            "held; not forwarded, not billed",
            details={
                "scope": scope,
                "scope_name": scope_name,
                "period": period,
                "budget_usd": format_usd(budget),
                "granted_usd": format_usd(granted),
                "used_usd": format_usd(used),
                "requested_usd": format_usd(requested),
                "resets_at": _iso(resets_at) if resets_at is not None else None,
            },
        )
        self.period, self.budget, self.held, self.captured = period, budget, held, captured
        self.scope, self.granted = scope, granted
        """``budget``: what the level may spend in the period (its budget plus grants)."""


class CostCapExceeded(InvalidRequest):
    """Priced above the smallest per-job cost cap that applies: refused before anything is
    held (a typo of ``duration: 15`` never costs money)."""

    default_code = "cost_cap_exceeded"

    def __init__(self, *, scope: str, scope_name: str, cap: int, requested: int) -> None:
        super().__init__(
            f"this request costs {format_usd(requested)} USD, above the per-job cap of "
            f"{format_usd(cap)} USD set on {scope} {scope_name!r}; not forwarded, not billed",
            details={
                "scope": scope,
                "scope_name": scope_name,
                "cap_usd": format_usd(cap),
                "requested_usd": format_usd(requested),
            },
        )


class ConcurrencyLimited(QuotaExceeded):
    """The team has its ``max_concurrent_jobs`` in flight: a retry succeeds once one of them
    finishes, hence ``Retry-After``."""

    default_code = "concurrency_limit"

    def __init__(self, *, in_flight: int, limit: int) -> None:
        super().__init__(
            f"the team already has {in_flight} jobs in flight, its limit is {limit}; retry "
            "when one finishes",
            headers={"Retry-After": str(CONCURRENCY_RETRY_AFTER_SECONDS)},
            details={"jobs_in_flight": in_flight, "max_concurrent_jobs": limit},
        )


class ServiceUnavailable(GatewayError):
    """The gateway cannot meter the request, so it refuses rather than forward unmetered work."""

    status_code = 503
    error_type = "api_error"
    default_code = "service_unavailable"


class RateCardMissing(ServiceUnavailable):
    """No rate card in force for the model, or none with a rate for the resolution: the
    request cannot be priced, so it is not forwarded."""

    default_code = "rate_card_missing"


class UpstreamError(GatewayError):
    """The upstream could not be reached or refused with a server error: it did not act."""

    status_code = 502
    error_type = "upstream_error"
    default_code = "upstream_error"


class UpstreamAuthFailed(UpstreamError):
    """The upstream refused the gateway's own key: an operator problem, not the tenant's."""

    default_code = "upstream_auth_failed"


class UpstreamConnectTimeout(UpstreamError):
    """Timed out before the request left (connecting, or waiting for a pooled connection)."""

    status_code = 504
    default_code = "upstream_timeout"


class UpstreamOutcomeUnknown(UpstreamError):
    """Sent, but no usable answer came back: the upstream may have acted on it, so a submit's
    hold must wait for the reconciler rather than be released."""


class UpstreamInvalidResponse(UpstreamOutcomeUnknown):
    """The upstream answered 2xx with a body the gateway cannot read (not JSON, no job id)."""

    default_code = "upstream_invalid_response"


class UpstreamTimeout(UpstreamOutcomeUnknown):
    status_code = 504
    default_code = "upstream_timeout"


class OutcomeUnknown(UpstreamTimeout):
    """A submit whose job the gateway could not give back (the reconciler had claimed it, or
    the release could not be recorded): it may yet run upstream."""

    default_code = "upstream_outcome_unknown"
