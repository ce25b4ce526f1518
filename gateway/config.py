"""Settings, read from ``GATEWAY_*`` environment variables (and an optional ``.env`` file).

Every knob of the gateway lives here; nothing else reads the environment. The README's
configuration table lists each variable with its default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MIB = 1024 * 1024

# Values that must never reach production: empty, or the ones our own docs use as examples.
_PLACEHOLDER_SECRETS = frozenset(
    {"", "change-me", "changeme", "secret", "admin", "password", "dev", "test", "demo"}
)
_MIN_PRODUCTION_SECRET_LENGTH = 16


class Settings(BaseSettings):
    """Gateway configuration. See README "Configuration" for the operator-facing table."""

    model_config = SettingsConfigDict(
        env_prefix="GATEWAY_", env_file=".env", extra="ignore", frozen=True
    )

    environment: Literal["development", "production"] = "development"

    # Storage. SQLite is the embedded single-process default; Postgres is production.
    database_url: str = "sqlite+aiosqlite:///./gateway.db"
    database_pool_size: int = Field(default=20, ge=1)
    """Postgres connections per process. Keep processes × (pool + overflow) under the server's
    ``max_connections``; transactions are short, so requests queue briefly for a connection."""
    database_max_overflow: int = Field(default=0, ge=0)
    database_pool_timeout_seconds: float = Field(default=10.0, gt=0)
    database_connect_timeout_seconds: float = Field(default=5.0, gt=0)
    """A connection attempt to a database that does not answer gives up after this (503)."""
    database_idle_ping_seconds: float = Field(default=30.0, ge=0)
    """A pooled connection idle this long is pinged before use (a silent network drop shows
    no close); one the server closed is replaced at once, without a ping."""
    database_pgbouncer: bool = False
    """The database URL points at PgBouncer in transaction pooling mode: no prepared statement
    outlives its transaction (see ``gateway.db.engine.create_engine``)."""
    database_direct_statements: bool = True
    """On Postgres, run the tenant hot path's few statements directly on the driver (one
    round trip per poll, two per submit; see ``gateway.db.direct``). False: every statement
    through the ORM, as on SQLite (slower; for comparison and diagnosis)."""

    # Upstream (the paid API we front).
    upstream_url: str = "https://api.empiriolabs.ai"
    upstream_api_key: SecretStr = SecretStr("")
    upstream_transport: Literal["aiohttp", "httpx"] = "aiohttp"
    upstream_connect_timeout_seconds: float = Field(default=5.0, gt=0)
    upstream_read_timeout_seconds: float = Field(default=30.0, gt=0)
    upstream_write_timeout_seconds: float = Field(default=30.0, gt=0)
    upstream_pool_timeout_seconds: float = Field(default=5.0, gt=0)
    upstream_max_connections: int = Field(default=256, ge=1)

    # Tenancy.
    admin_token: SecretStr = SecretStr("")
    key_pepper: SecretStr = SecretStr("")
    key_pepper_previous: SecretStr = SecretStr("")
    """During a pepper rotation, the pepper being replaced: keys hashed under it still work,
    and each is re-hashed under ``key_pepper`` the first time it is used."""
    key_last_used_resolution_seconds: float = Field(default=60.0, ge=0)
    """``last_used_at`` of a key is written at most this often (it costs a write)."""

    # Company identity provider (JWT). On when an issuer and one key source are set.
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    jwt_algorithms: str = ""
    """Comma-separated allow-list; default: HS256 with a secret, RS256,ES256 with a key/JWKS."""
    jwt_secret: SecretStr = SecretStr("")
    jwt_public_key: str | None = None
    jwt_jwks_url: str | None = None
    jwt_team_claim: str = "team"
    """Claim naming the team; a dotted path reaches into nested claims (``org.team``)."""
    jwt_roles_claim: str = "roles"
    jwt_admin_role: str = "gateway-admin"
    jwt_leeway_seconds: int = Field(default=30, ge=0, le=300)
    jwt_required_claims: str = "exp,iat,sub"
    jwt_auto_create_teams: bool = False
    """Create a team on first sight of its name in a valid token (else 403 team_not_found)."""
    jwt_jwks_cache_seconds: float = Field(default=300.0, gt=0)
    jwt_jwks_min_refresh_interval_seconds: float = Field(default=30.0, ge=0)
    """An unknown ``kid`` refetches the JWKS at most this often (a flood cannot amplify)."""

    # Money.
    default_budget_policy: Literal["unlimited", "deny"] = "unlimited"
    """What a team without a monthly budget may spend: ``unlimited``, or nothing (``deny``)."""
    moderation_error_codes: frozenset[str] = frozenset(
        {"content_moderated", "content_policy_violation", "moderation_blocked"}
    )
    """Failure codes meaning "produced, then blocked": billed, like a success."""
    success_status_words: frozenset[str] = frozenset({"completed", "succeeded", "done"})
    failure_status_words: frozenset[str] = frozenset({"failed", "error", "expired"})
    running_status_words: frozenset[str] = frozenset(
        {"queued", "pending", "processing", "running", "in_progress", "starting", "submitted"}
    )
    """Words meaning "not done yet". Any other word is treated as running too, but counted
    (``gateway_upstream_unknown_status_total``) and logged."""
    idempotency_key_ttl_hours: int = Field(default=24, ge=24)

    # Reconciler (settles jobs nobody polls; one per replica, safe to run in many).
    reconciler_enabled: bool = True
    reconciler_interval_seconds: float = Field(default=15.0, gt=0)
    reconciler_first_check_after_seconds: float = Field(default=30.0, ge=0)
    reconciler_max_backoff_seconds: float = Field(default=600.0, gt=0)
    reconciler_batch_size: int = Field(default=100, ge=1)
    reconciler_concurrency: int = Field(default=8, ge=1)
    unanswered_submit_release_after_seconds: float = Field(default=600.0, gt=0)
    """A hold whose submit never got an answer (crash, timeout) is released after this."""
    upstream_honors_idempotency_key: bool = False
    """Set when the upstream answers a re-sent submit with the same ``Idempotency-Key`` with
    the job it already created. Then a submit left unanswered (a replica killed mid-request, a
    timeout) is re-sent by the reconciler to learn its job id, instead of being released."""
    unanswered_submit_resend_after_seconds: float = Field(default=120.0, gt=0)
    release_grace_after_outage_seconds: float = Field(default=120.0, ge=0)
    """After this process saw the database fail, unanswered submits are not released for
    this long: replicas may still hold their upstream answers in their outboxes."""
    outbox_dir: Path | None = None
    """Where upstream answers the ledger could not take yet are kept (one subdirectory per
    database); default: ``video-gateway-outbox`` in the system's temporary directory."""
    hold_max_age_seconds: float = Field(default=86_400.0, gt=0)
    """Jobs held longer than this are flagged for review (and keep being polled)."""

    # Observability.
    metrics_refresh_interval_seconds: float = Field(default=15.0, gt=0)
    """How often each process re-reads the ledger gauges (budgets, spend, holds) from the DB."""
    alert_webhook_url: str | None = None
    """Where budget alerts (soft limit crossed, hard limit hit) are POSTed as JSON."""
    alert_webhook_secret: SecretStr = SecretStr("")
    """If set, each webhook body is signed: ``X-Gateway-Signature: sha256=<hex HMAC>``."""
    alert_webhook_max_attempts: int = Field(default=8, ge=1)
    alert_delivery_interval_seconds: float = Field(default=5.0, gt=0)
    alert_webhook_retry_base_seconds: float = Field(default=5.0, gt=0)
    """First retry after this; each further retry waits twice as long (at most an hour)."""

    # Finance exports (FOCUS 1.2): who bills, who is billed.
    focus_billing_account_id: str = "video-gateway"
    focus_billing_account_name: str = "Video generation (billing gateway)"
    focus_invoice_issuer: str = "EmpirioLabs"
    focus_provider: str = "EmpirioLabs"
    focus_publisher: str = "xAI"
    focus_service_name: str = "Grok Imagine Video"

    # Requests. 16 MiB leaves room for a 10 MiB image as a base64 data URI (~13.4 MiB).
    max_request_body_bytes: int = Field(default=16 * MIB, ge=1024)
    max_header_bytes: int = Field(default=32 * 1024, ge=1024)
    """Total size of a request's headers; over it → 431. (uvicorn's httptools parser itself
    sets no limit, so a fronting proxy's header limit still bounds memory.)"""
    http_header_timeout_seconds: float = Field(default=10.0, gt=0)
    """From a connection opening (or the next request starting) to the end of its headers;
    over it → 408 and closed (slowloris)."""
    http_body_timeout_seconds: float = Field(default=60.0, gt=0)
    """From the end of a request's headers to the end of its body; over it → 408 and closed."""
    http_max_connections: int = Field(default=1000, ge=1)
    """Open client connections per process; the next one is answered 503 and closed."""
    shutdown_grace_seconds: float = Field(default=30.0, gt=0)
    """From SIGTERM to the process's exit, at most (match Kubernetes'
    ``terminationGracePeriodSeconds``): the drain pause, then the requests in flight, then
    the application's shutdown."""
    shutdown_drain_seconds: float = Field(default=5.0, ge=0)
    """After SIGTERM, how long readiness answers 503 while the listener still accepts (so a
    load balancer can take the replica out of rotation before connections are refused)."""
    admin_port: int | None = Field(default=None, ge=1, le=65535)
    """A second listener for ``/admin/*`` and ``/metrics`` (``gateway serve --admin-port``):
    they answer 404 on the tenant port. Unset: one port serves all."""
    catalog_path: Path | None = None

    # Logging.
    log_format: Literal["json", "text"] = "json"
    log_level: str = "INFO"

    @property
    def jwt_enabled(self) -> bool:
        has_key = bool(
            self.jwt_secret.get_secret_value() or self.jwt_public_key or self.jwt_jwks_url
        )
        return bool(self.jwt_issuer) and has_key

    def jwt_algorithm_list(self) -> list[str]:
        if self.jwt_algorithms.strip():
            return [a.strip() for a in self.jwt_algorithms.split(",") if a.strip()]
        if self.jwt_secret.get_secret_value():
            return ["HS256"]
        return ["RS256", "ES256"]

    @property
    def upstream_exchange_limit_seconds(self) -> float:
        """The longest one upstream call may take, start to end (enforced as a deadline on
        the whole exchange, besides httpx's per-phase timeouts)."""
        return (
            self.upstream_connect_timeout_seconds
            + self.upstream_write_timeout_seconds
            + self.upstream_read_timeout_seconds
            + self.upstream_pool_timeout_seconds
        )

    @property
    def forward_window_seconds(self) -> float:
        """How long after its hold a submit may still be forwarded. Later, it is refused
        unsent (503), so every submit is over, answered or timed out, before the reconciler
        may re-send it or release its hold."""
        first_action = self.unanswered_submit_release_after_seconds
        if self.upstream_honors_idempotency_key:
            first_action = min(first_action, self.unanswered_submit_resend_after_seconds)
        return first_action - self.upstream_exchange_limit_seconds

    @property
    def resend_window_seconds(self) -> float:
        """How long after its hold the reconciler may still re-send an unanswered submit: a
        re-send must be over before the hold can be released."""
        return self.unanswered_submit_release_after_seconds - self.upstream_exchange_limit_seconds

    @model_validator(mode="after")
    def _release_waits_for_any_submit_in_flight(self) -> Settings:
        """Releasing an unanswered hold (or re-sending its submit) while the submit may still
        be in flight could let the upstream bill a job the ledger has given up on."""
        longest = self.upstream_exchange_limit_seconds
        limits = [("RELEASE", self.unanswered_submit_release_after_seconds)]
        if self.upstream_honors_idempotency_key:
            limits.append(("RESEND", self.unanswered_submit_resend_after_seconds))
        for name, value in limits:
            if value <= longest:
                raise ValueError(
                    f"GATEWAY_UNANSWERED_SUBMIT_{name}_AFTER_SECONDS ({value:g}) must exceed "
                    "the longest a submit can be in flight: connect + write + read + pool "
                    f"timeouts = {longest:g} s"
                )
        resend = self.unanswered_submit_resend_after_seconds
        if self.upstream_honors_idempotency_key and resend >= self.resend_window_seconds:
            raise ValueError(
                f"GATEWAY_UNANSWERED_SUBMIT_RESEND_AFTER_SECONDS ({resend:g}) must be below "
                "the release timeout minus connect + write + read + pool timeouts "
                f"({self.resend_window_seconds:g} s), or no submit is ever re-sent"
            )
        return self

    @model_validator(mode="after")
    def _jwt_settings_are_coherent(self) -> Settings:
        if not self.jwt_enabled:
            return self
        algorithms = self.jwt_algorithm_list()
        allowed = {
            "HS256",
            "HS384",
            "HS512",
            "RS256",
            "RS384",
            "RS512",
            "ES256",
            "ES384",
            "ES512",
            "PS256",
            "PS384",
            "PS512",
            "EdDSA",
        }
        unknown = [a for a in algorithms if a not in allowed]
        if unknown:  # "none" included: unsigned tokens are never accepted
            raise ValueError(f"GATEWAY_JWT_ALGORITHMS has unsupported entries: {unknown}")
        if any(a.startswith("HS") for a in algorithms) and not self.jwt_secret.get_secret_value():
            raise ValueError("HS* algorithms need GATEWAY_JWT_SECRET")
        if any(not a.startswith("HS") for a in algorithms) and not (
            self.jwt_public_key or self.jwt_jwks_url
        ):
            raise ValueError("RS*/ES*/PS* algorithms need GATEWAY_JWT_PUBLIC_KEY or _JWKS_URL")
        return self

    @model_validator(mode="after")
    def _refuse_placeholder_secrets_in_production(self) -> Settings:
        if self.environment != "production":
            return self
        problems = []
        for name in ("admin_token", "key_pepper", "upstream_api_key"):
            value: SecretStr = getattr(self, name)
            secret = value.get_secret_value()
            if (
                secret.strip().lower() in _PLACEHOLDER_SECRETS
                or len(secret) < _MIN_PRODUCTION_SECRET_LENGTH
            ):
                problems.append(
                    f"GATEWAY_{name.upper()} must be set to a real secret of at least "
                    f"{_MIN_PRODUCTION_SECRET_LENGTH} characters in production"
                )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def secrets(self) -> list[str]:
        """Every configured secret value, for the log redaction safety net."""
        values = (
            self.upstream_api_key,
            self.admin_token,
            self.key_pepper,
            self.key_pepper_previous,
            self.alert_webhook_secret,
            self.jwt_secret,
        )
        return [v.get_secret_value() for v in values if v.get_secret_value()]
