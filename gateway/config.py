"""Settings, read from ``GATEWAY_*`` environment variables (and an optional ``.env`` file).

Every knob of the gateway lives here; nothing else reads the environment. Each field's
attribute docstring is its operator-facing meaning: README "Configuration" is generated from
these fields (``make docs``, ``gateway.settings_reference``), and a test fails when it drifts.
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


class MissingSetting(ValueError):
    """A setting the command needs is not set (the message names the variable)."""


class Settings(BaseSettings):
    """Gateway configuration. See README "Configuration" for the operator-facing table."""

    model_config = SettingsConfigDict(
        env_prefix="GATEWAY_",
        env_file=".env",
        extra="ignore",
        frozen=True,
        # Each field's docstring becomes its description: the README table's "meaning".
        use_attribute_docstrings=True,
    )

    environment: Literal["development", "production"] = "development"
    """``production`` refuses to start unless ``GATEWAY_ADMIN_TOKEN``, ``GATEWAY_KEY_PEPPER``
    and ``GATEWAY_UPSTREAM_API_KEY`` are real secrets (≥ 16 characters, not a placeholder).
    The Docker image sets ``production``."""

    # Storage. Postgres is production; SQLite is for one process (``gateway demo`` brings its own).
    database_url: str | None = None
    """Required outside ``gateway demo``: there is no implicit database file.
    ``postgresql://...``, ``postgres://...`` or ``postgresql+asyncpg://...`` (production;
    several replicas share it) or ``sqlite:///...`` (embedded, single process). Async drivers
    are chosen automatically. The libpq parameters a managed Postgres prints work: ``sslmode``
    (``disable`` … ``verify-full``, as libpq means them; ``verify-ca``/``verify-full`` check
    against ``sslrootcert``, else the system's CAs), ``sslrootcert``, ``application_name``,
    ``connect_timeout`` (seconds; wins over ``GATEWAY_DATABASE_CONNECT_TIMEOUT_SECONDS``) and
    ``options`` (``-c name=value`` server settings). Any other parameter, or a value these
    cannot take, is refused with a message before a connection is tried."""
    database_pool_size: int = Field(default=20, ge=1)
    """Postgres connections per process. Keep processes × (pool + overflow) below the server's
    ``max_connections``; transactions are short, so requests queue briefly for a connection."""
    database_max_overflow: int = Field(default=0, ge=0)
    """Extra connections opened under bursts (closed again after use: churn)."""
    database_pool_timeout_seconds: float = Field(default=10.0, gt=0)
    """Wait for a pooled connection; exceeded → 503 ``ledger_unavailable``."""
    database_connect_timeout_seconds: float = Field(default=5.0, gt=0)
    """A connection attempt to a database that does not answer gives up after this (503)."""
    database_idle_ping_seconds: float = Field(default=30.0, ge=0)
    """A pooled connection idle this long is pinged before use (a silent network drop shows
    no close). One the server closed (restart, failover, ``pg_terminate_backend``) is replaced
    at checkout without a ping, so it costs no request. ``0`` pings on every checkout."""
    database_pgbouncer: bool = False
    """``true`` when ``GATEWAY_DATABASE_URL`` points at PgBouncer in transaction pooling mode:
    no prepared statement outlives its transaction (asyncpg's and SQLAlchemy's statement caches
    off, unique statement names, each direct statement in a transaction of its own; see
    ``gateway.db.engine.create_engine``). Costs round trips; tested against a real PgBouncer
    (``tests/test_pgbouncer.py``), where without it about half the answers were 500s (prepared
    statements lost between server connections)."""
    database_direct_statements: bool = True
    """On Postgres, the tenant hot path's few statements run directly on the driver, past the
    ORM: one round trip per poll or usage read, two per submit (see "Performance" and
    ``gateway.db.direct``). ``false`` sends every statement through the ORM, as on SQLite:
    slower, for comparison and diagnosis."""

    # Upstream (the paid API we front).
    upstream_url: str = "https://api.empiriolabs.ai"
    """Base URL of the upstream API (or of ``gateway simulator``)."""
    upstream_api_key: SecretStr = SecretStr("")
    """The real upstream key, sent as ``Authorization: Bearer``; only the gateway holds it."""
    upstream_transport: Literal["aiohttp", "httpx"] = "aiohttp"
    """HTTP transport under httpx: ``aiohttp`` (httpx-aiohttp, chosen by benchmark) or
    ``httpx`` (httpx's own)."""
    upstream_connect_timeout_seconds: float = Field(default=5.0, gt=0)
    """Connect timeout."""
    upstream_read_timeout_seconds: float = Field(default=30.0, gt=0)
    """Read timeout; exceeded → 504 ``upstream_timeout``."""
    upstream_write_timeout_seconds: float = Field(default=30.0, gt=0)
    """Write timeout."""
    upstream_pool_timeout_seconds: float = Field(default=5.0, gt=0)
    """Wait for a free pooled connection."""
    upstream_max_connections: int = Field(default=256, ge=1)
    """Size of the shared upstream connection pool (per process)."""

    # Tenancy.
    admin_token: SecretStr = SecretStr("")
    """Bearer token for ``/admin/`` (empty: only admin-role JWTs)."""
    key_pepper: SecretStr = SecretStr("")
    """Server-side secret for API key hashes (HMAC-SHA256). Changing it alone invalidates every
    key: rotate with ``GATEWAY_KEY_PEPPER_PREVIOUS``."""
    key_pepper_previous: SecretStr = SecretStr("")
    """During a pepper rotation, the pepper being replaced: keys hashed under it keep working,
    and each is re-hashed under ``GATEWAY_KEY_PEPPER`` the first time it is used (see
    "Production")."""
    key_last_used_resolution_seconds: float = Field(default=60.0, ge=0)
    """A key's ``last_used_at`` is written at most this often (it costs a write)."""

    # Company identity provider (JWT). On when an issuer and one key source are set.
    jwt_issuer: str | None = None
    """Expected ``iss``; JWT auth is on when this and a key source are set."""
    jwt_audience: str | None = None
    """Expected ``aud`` (checked when set)."""
    jwt_algorithms: str = ""
    """Comma-separated allow-list (``none`` refused at startup). Empty: ``HS256`` with a
    secret, else ``RS256,ES256`` (with a public key or JWKS)."""
    jwt_secret: SecretStr = SecretStr("")
    """HS* key."""
    jwt_public_key: str | None = None
    """PEM public key for RS*/ES*/PS*."""
    jwt_jwks_url: str | None = None
    """JWKS endpoint (cached; refetched on an unknown ``kid``)."""
    jwt_team_claim: str = "team"
    """Claim naming the team; a dotted path reaches into nested claims (``org.team``)."""
    jwt_roles_claim: str = "roles"
    """Claim listing roles (array or space-separated string)."""
    jwt_admin_role: str = "gateway-admin"
    """Role that opens ``/admin/``."""
    jwt_leeway_seconds: int = Field(default=30, ge=0, le=300)
    """Clock skew allowed on ``exp``/``nbf``/``iat``."""
    jwt_required_claims: str = "exp,iat,sub"
    """Claims a token must carry (plus ``iss``, and ``aud`` when set)."""
    jwt_auto_create_teams: bool = False
    """Create a team the first time a valid token names it (else 403 ``team_not_found``)."""
    jwt_jwks_cache_seconds: float = Field(default=300.0, gt=0)
    """JWKS cache lifetime."""
    jwt_jwks_min_refresh_interval_seconds: float = Field(default=30.0, ge=0)
    """An unknown ``kid`` refetches the JWKS at most this often (a flood cannot amplify)."""

    # Money.
    default_budget_policy: Literal["unlimited", "deny"] = "unlimited"
    """What a team without ``--monthly-budget-usd`` may spend: ``unlimited``, or nothing
    (``deny``)."""
    moderation_error_codes: frozenset[str] = frozenset(
        {"content_moderated", "content_policy_violation", "moderation_blocked"}
    )
    """Failure codes meaning "produced, then blocked": billed, like a success (JSON list)."""
    success_status_words: frozenset[str] = frozenset({"completed", "succeeded", "done"})
    """Upstream status words meaning success (JSON list)."""
    failure_status_words: frozenset[str] = frozenset({"failed", "error", "expired"})
    """Upstream status words meaning failure (JSON list)."""
    running_status_words: frozenset[str] = frozenset(
        {"queued", "pending", "processing", "running", "in_progress", "starting", "submitted"}
    )
    """Words meaning "not done yet" (JSON list). A word in none of the three lists is treated
    as running (never settled on a guess), counted in ``gateway_upstream_unknown_status_total``
    and logged with the word, so it can be added to the right list."""
    idempotency_key_ttl_hours: int = Field(default=24, ge=24)
    """How long an ``Idempotency-Key`` is remembered (at least 24)."""

    # Reconciler (settles jobs nobody polls; one per replica, safe to run in many).
    reconciler_enabled: bool = True
    """Run the reconciler in this process (every replica may; they share the work)."""
    reconciler_interval_seconds: float = Field(default=15.0, gt=0)
    """Time between passes; also the first backoff step."""
    reconciler_first_check_after_seconds: float = Field(default=30.0, ge=0)
    """A job is left to its client's polls this long before the reconciler polls it."""
    reconciler_max_backoff_seconds: float = Field(default=600.0, gt=0)
    """Longest wait between two polls of one job."""
    reconciler_batch_size: int = Field(default=100, ge=1)
    """Jobs claimed per pass."""
    reconciler_concurrency: int = Field(default=8, ge=1)
    """Upstream polls in flight per pass."""
    unanswered_submit_release_after_seconds: float = Field(default=600.0, gt=0)
    """An unanswered submit's hold (crash, timeout) is released after this and flagged for
    review; a retry with its ``Idempotency-Key`` then gets 504 ``upstream_outcome_unknown``.
    Must exceed connect + write + read + pool timeouts (refused at startup otherwise). See
    "Timing rules" under "Money"."""
    upstream_honors_idempotency_key: bool = False
    """Set only if the upstream answers a re-sent submit carrying the same ``Idempotency-Key``
    with the job it already created. Then submits left unanswered (a replica killed
    mid-request, a lost answer, a timeout) are re-sent by the reconciler to learn their job id
    and recovered exactly; otherwise their holds are released after
    ``GATEWAY_UNANSWERED_SUBMIT_RELEASE_AFTER_SECONDS`` and flagged for review. The built-in
    simulator honours keys."""
    unanswered_submit_resend_after_seconds: float = Field(default=120.0, gt=0)
    """With ``GATEWAY_UPSTREAM_HONORS_IDEMPOTENCY_KEY``: when an unanswered submit is first
    re-sent. Must exceed connect + write + read + pool timeouts, and be below the release
    timeout minus them (refused at startup otherwise)."""
    release_grace_after_outage_seconds: float = Field(default=120.0, ge=0)
    """After this process saw the database fail, the reconciler releases no unanswered submit
    for this long: replicas may still hold the upstream's answers in their outboxes."""
    outbox_dir: Path | None = Field(
        default=None, json_schema_extra={"default_doc": "``$TMPDIR/video-gateway-outbox``"}
    )
    """Where upstream answers the ledger could not record yet are kept (fsync'd, one
    subdirectory per database) until the database is back; replayed at startup. Unset:
    ``video-gateway-outbox`` in the system's temporary directory. Mount a persistent volume
    here so a pod replaced during an outage keeps them."""
    hold_max_age_seconds: float = Field(default=86_400.0, gt=0)
    """Jobs held longer than this are flagged for review (and keep being polled)."""

    # Observability.
    metrics_refresh_interval_seconds: float = Field(default=15.0, gt=0)
    """How often each process re-reads the ledger gauges (budgets, spend, holds) from the
    database."""
    alert_webhook_url: str | None = None
    """Where budget alerts (soft limit crossed, hard limit hit) are POSTed as JSON (see
    "Observability")."""
    alert_webhook_secret: SecretStr = SecretStr("")
    """If set, each webhook body is signed: ``X-Gateway-Signature: sha256=<hex HMAC>``."""
    alert_webhook_max_attempts: int = Field(default=8, ge=1)
    """Deliveries tried before giving up (logged, counted)."""
    alert_delivery_interval_seconds: float = Field(default=5.0, gt=0)
    """How often pending alerts are sent."""
    alert_webhook_retry_base_seconds: float = Field(default=5.0, gt=0)
    """First retry delay; each further retry waits twice as long (at most an hour)."""

    # Team webhooks (signed job and budget events; README "Webhooks").
    webhook_allow_private_networks: bool = False
    """Allow webhook destinations that resolve to loopback, private, link-local or other
    non-public addresses (refused otherwise, when a subscription is created and again before
    every delivery)."""
    webhook_delivery_interval_seconds: float = Field(default=1.0, gt=0)
    """How often each replica looks for webhook deliveries that are due."""
    webhook_retry_base_seconds: float = Field(default=5.0, gt=0)
    """First retry delay of a failed delivery; each further one waits twice as long (at most
    ``GATEWAY_WEBHOOK_RETRY_MAX_SECONDS``), with jitter."""
    webhook_retry_max_seconds: float = Field(default=3600.0, gt=0)
    """Longest wait between two attempts of one delivery: once a receiver is back, its
    deliveries arrive within about this long."""
    webhook_retry_for_hours: float = Field(default=24.0, gt=0)
    """A delivery is retried until this long after its event was written, then given up."""
    webhook_timeout_seconds: float = Field(default=10.0, gt=0)
    """How long one delivery attempt may take (connect to last byte of the answer)."""
    webhook_batch_size: int = Field(default=50, ge=1)
    """Deliveries one replica claims per pass."""
    webhook_concurrency: int = Field(default=8, ge=1)
    """Deliveries in flight per replica."""
    webhook_max_subscriptions_per_team: int = Field(default=10, ge=1)
    """At most this many live subscriptions per team (409 ``webhook_limit_reached`` beyond):
    every settlement writes a delivery per subscriber, inside its transaction."""
    webhook_log_retention_days: float = Field(default=30.0, gt=1)
    """Events whose deliveries are all done (delivered or given up) are deleted, with their
    delivery log, this long after they were written (by the reconciler's pass)."""

    # Portal (the team self-service pages under /portal/).
    portal_session_idle_minutes: float = Field(default=30.0, gt=0)
    """A portal session unused this long is signed out."""
    portal_session_max_hours: float = Field(default=12.0, gt=0)
    """A portal session ends this long after sign-in, however active."""

    # Finance exports (FOCUS 1.2): who bills, who is billed.
    focus_billing_account_id: str = "video-gateway"
    """FOCUS ``BillingAccountId`` of every exported row."""
    focus_billing_account_name: str = "Video generation (billing gateway)"
    """FOCUS ``BillingAccountName`` of every exported row."""
    focus_invoice_issuer: str = "EmpirioLabs"
    """FOCUS ``InvoiceIssuer``: who invoices the charges."""
    focus_provider: str = "EmpirioLabs"
    """FOCUS ``Provider``: who provides the service."""
    focus_publisher: str = "xAI"
    """FOCUS ``Publisher``: who publishes the model."""
    focus_service_name: str = "Grok Imagine Video"
    """FOCUS ``ServiceName`` of every exported row."""

    # Requests. 16 MiB leaves room for a 10 MiB image as a base64 data URI (~13.4 MiB).
    max_request_body_bytes: int = Field(default=16 * MIB, ge=1024)
    """Body cap (16 MiB: a 10 MiB image as a base64 data URI fits); over it → 413."""
    max_header_bytes: int = Field(default=32 * 1024, ge=1024)
    """Total size of a request's headers; over it → 431. (uvicorn's httptools parser itself
    sets no limit, so a fronting proxy's header limit still bounds memory.)"""
    http_header_timeout_seconds: float = Field(default=10.0, gt=0)
    """From a connection opening (or the next request on it starting) to the end of the
    request's headers; over it → 408 ``request_timeout`` and the connection closed
    (slowloris)."""
    http_body_timeout_seconds: float = Field(default=60.0, gt=0)
    """From the end of the headers to the end of the body (a 16 MiB body needs ~2.2 Mbit/s);
    over it → 408 and closed."""
    http_max_connections: int = Field(default=1000, ge=1)
    """Open client connections per process; the next one is answered 503
    ``too_many_connections`` and closed. Keep it below the process's open-file limit minus the
    upstream and database pools."""
    shutdown_grace_seconds: float = Field(default=30.0, gt=0)
    """From SIGTERM to the process's exit, at most (match Kubernetes'
    ``terminationGracePeriodSeconds``): the drain pause, then the requests in flight
    (uvicorn's graceful timeout is what is left less 3 s), then the application's shutdown."""
    shutdown_drain_seconds: float = Field(default=5.0, ge=0)
    """After SIGTERM, how long ``/readyz`` answers 503 while the listener still accepts (so a
    load balancer can take the replica out of rotation before connections are refused; see
    "Running it")."""
    admin_port: int | None = Field(default=None, ge=1, le=65535)
    """A second listener for ``/admin/*`` and ``/metrics`` (as ``gateway serve --admin-port``):
    they answer 404 on the tenant port. Unset: one port serves all."""
    catalog_path: Path | None = None
    """A JSON model catalog replacing the built-in ``gateway/catalog/models.json`` (unset: the
    built-in one)."""

    # Logging.
    log_format: Literal["json", "text"] = "json"
    """``json`` (one object per line) or ``text`` (for people)."""
    log_level: str = "INFO"
    """Root log level."""

    def require_database_url(self) -> str:
        """The database URL, or :class:`MissingSetting` saying what to set."""
        if not self.database_url:
            raise MissingSetting(
                "GATEWAY_DATABASE_URL is not set: set it to "
                "postgresql://USER:PASSWORD@HOST:5432/DB (or sqlite:///PATH/gateway.db for a "
                "single process); `gateway demo` needs none"
            )
        return self.database_url

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
