"""Settings refuse to start in states that would be unsafe in front of real money."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from gateway.config import Settings

REAL = "a-real-secret-of-enough-length-42"


def settings(**values: Any) -> Settings:
    return Settings(_env_file=None, **values)


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({"admin_token": ""}, id="empty admin token"),
        pytest.param({"admin_token": "change-me"}, id="placeholder admin token"),
        pytest.param({"key_pepper": "short"}, id="short pepper"),
        pytest.param({"upstream_api_key": ""}, id="no upstream key"),
    ],
)
def test_production_refuses_placeholder_secrets(overrides: dict[str, Any]) -> None:
    values = {"admin_token": REAL, "key_pepper": REAL, "upstream_api_key": REAL, **overrides}
    with pytest.raises(ValidationError, match="production"):
        settings(environment="production", **values)
    settings(environment="development", **values)  # fine for development


def test_production_with_real_secrets_starts() -> None:
    configured = settings(
        environment="production", admin_token=REAL, key_pepper=REAL, upstream_api_key=REAL
    )
    assert REAL in configured.secrets()
    assert REAL not in repr(configured)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"jwt_secret": REAL, "jwt_algorithms": "HS256,none"}, "unsupported"),
        ({"jwt_public_key": "PEM", "jwt_algorithms": "HS256"}, "GATEWAY_JWT_SECRET"),
        ({"jwt_secret": REAL, "jwt_algorithms": "RS256"}, "PUBLIC_KEY"),
    ],
)
def test_incoherent_jwt_settings_refuse_to_start(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        settings(jwt_issuer="https://idp", **overrides)


def test_jwt_is_on_only_with_an_issuer_and_a_key_source() -> None:
    assert not settings(jwt_secret=REAL).jwt_enabled
    assert not settings(jwt_issuer="https://idp").jwt_enabled
    on = settings(jwt_issuer="https://idp", jwt_secret=REAL)
    assert on.jwt_enabled and on.jwt_algorithm_list() == ["HS256"]
    keyed = settings(jwt_issuer="https://idp", jwt_jwks_url="https://idp/jwks")
    assert keyed.jwt_algorithm_list() == ["RS256", "ES256"]


def test_an_unanswered_hold_is_never_released_while_its_submit_may_be_in_flight() -> None:
    """Released earlier, a submit still on the wire could create a job the ledger gave up on."""
    with pytest.raises(ValidationError, match="connect \\+ write \\+ read \\+ pool timeouts = 70"):
        settings(unanswered_submit_release_after_seconds=60)
    with pytest.raises(ValidationError, match="= 200"):
        settings(upstream_read_timeout_seconds=160, unanswered_submit_release_after_seconds=200)
    assert settings().unanswered_submit_release_after_seconds == 600  # defaults are coherent
    settings(upstream_read_timeout_seconds=160, unanswered_submit_release_after_seconds=201)


def test_a_submit_is_never_resent_while_it_may_still_be_in_flight() -> None:
    """With an upstream that honors Idempotency-Key, the reconciler re-sends unanswered
    submits: the first re-send must come after the original call is surely over."""
    with pytest.raises(ValidationError, match="RESEND_AFTER_SECONDS \\(60\\) must exceed"):
        settings(upstream_honors_idempotency_key=True, unanswered_submit_resend_after_seconds=60)
    settings(upstream_honors_idempotency_key=False, unanswered_submit_resend_after_seconds=60)
    # ...and come early enough for the re-send to end before the release (else it never comes).
    with pytest.raises(ValidationError, match="RESEND_AFTER_SECONDS \\(80\\) must be below"):
        settings(
            upstream_honors_idempotency_key=True,
            unanswered_submit_resend_after_seconds=80,
            unanswered_submit_release_after_seconds=150,
        )
    settings(
        upstream_honors_idempotency_key=True,
        unanswered_submit_resend_after_seconds=79,
        unanswered_submit_release_after_seconds=150,
    )
    assert settings(upstream_honors_idempotency_key=True).unanswered_submit_resend_after_seconds


def test_forward_and_resend_windows_end_before_the_reconciler_acts() -> None:
    plain = settings()
    assert plain.upstream_exchange_limit_seconds == 70
    assert plain.forward_window_seconds == 600 - 70  # then the release
    assert plain.resend_window_seconds == 600 - 70
    honoring = settings(upstream_honors_idempotency_key=True)
    assert honoring.forward_window_seconds == 120 - 70  # then the first re-send
    assert honoring.resend_window_seconds == 600 - 70
