"""Gateway settings for in-process test gateways (the replicas' environment is
``tests.support.processes.replica_env``)."""

from __future__ import annotations

from typing import Any

from pydantic import SecretStr

from gateway.config import Settings
from tests.support.pgbouncer import for_gateway
from tests.support.simulator import UPSTREAM_KEY
from tests.support.tenants import PEPPER


def gateway_settings(database_url: str, upstream_url: str, **overrides: Any) -> Settings:
    gateway_url, pooled = for_gateway(database_url)  # through PgBouncer when the run says so
    values: dict[str, Any] = {
        "database_url": gateway_url,
        "database_pgbouncer": pooled,
        "upstream_url": upstream_url,
        "upstream_api_key": SecretStr(UPSTREAM_KEY),
        "key_pepper": SecretStr(PEPPER),
        "upstream_read_timeout_seconds": 5.0,
        "log_format": "json",
        # Tests run the reconciler explicitly (or enable it) so that timing never decides.
        "reconciler_enabled": False,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)


# Overrides that let a reconcile pass release unanswered submits at once: the release timeout
# must exceed the longest a submit can be in flight (the settings refuse it otherwise).
RELEASE_AT_ONCE: dict[str, float] = {
    "unanswered_submit_release_after_seconds": 0.01,
    "upstream_connect_timeout_seconds": 0.001,
    "upstream_write_timeout_seconds": 0.001,
    "upstream_read_timeout_seconds": 0.001,
    "upstream_pool_timeout_seconds": 0.001,
}
