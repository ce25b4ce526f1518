"""The gateway's error tree and the HTTP status each branch maps to.

Every error a client can see is one of these; one handler (``gateway.kit.http``) renders them
as ``{"error": {"type", "code", "param", "message"}}``. Expected business outcomes are 4xx
and never page anyone; only ``GatewayError`` itself (a bug) is a 500.

    GatewayError ............................ 500 api_error / internal_error
    ├── InvalidRequest ...................... 400 invalid_request_error (code names the rule)
    │   ├── PayloadTooLarge ................. 413 invalid_request_error / request_too_large
    │   └── HeadersTooLarge ................. 431 invalid_request_error / request_headers_too_large
    ├── AuthenticationFailed ................ 401 authentication_error
    ├── PermissionDenied .................... 403 permission_error
    ├── NotFound ............................ 404 not_found_error
    ├── MethodNotAllowed .................... 405 invalid_request_error / method_not_allowed
    ├── Conflict ............................ 409 invalid_request_error / conflict
    ├── Unprocessable ....................... 422 invalid_request_error (idempotency key reuse)
    ├── QuotaExceeded ....................... 429 quota_error / quota_exceeded, concurrency_limit
    ├── ServiceUnavailable .................. 503 api_error (e.g. ledger_unavailable)
    └── UpstreamError ....................... 502 upstream_error / upstream_error
        ├── UpstreamInvalidResponse ......... 502 upstream_error / upstream_invalid_response
        └── UpstreamTimeout ................. 504 upstream_error / upstream_timeout

Upstream 4xx answers are not errors of ours: they are passed through unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping


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
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.param = param
        self.headers: dict[str, str] = dict(headers or {})
        self.details: dict[str, str | None] = {}

    def to_body(self) -> dict[str, dict[str, str | None]]:
        return {
            "error": {
                "type": self.error_type,
                "code": self.code,
                "param": self.param,
                "message": self.message,
                **self.details,
            }
        }


class InvalidRequest(GatewayError):
    """The request breaks a documented rule; ``code`` names the rule, ``param`` the field."""

    status_code = 400
    error_type = "invalid_request_error"
    default_code = "invalid_request"


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


class ServiceUnavailable(GatewayError):
    """The gateway cannot meter the request, so it refuses rather than forward unmetered work."""

    status_code = 503
    error_type = "api_error"
    default_code = "service_unavailable"


class UpstreamError(GatewayError):
    """The upstream could not be reached or answered with a server error."""

    status_code = 502
    error_type = "upstream_error"
    default_code = "upstream_error"
    outcome_unknown = False
    """True when the request may have been acted on although no answer came back (a connection
    lost after sending, a timeout): a submit's hold must then wait, not be released."""


class UpstreamInvalidResponse(UpstreamError):
    """The upstream answered 2xx with a body the gateway cannot read (not JSON, no job id)."""

    default_code = "upstream_invalid_response"
    outcome_unknown = True


class UpstreamTimeout(UpstreamError):
    status_code = 504
    default_code = "upstream_timeout"
    outcome_unknown = True
