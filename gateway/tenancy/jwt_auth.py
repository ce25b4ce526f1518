"""Tokens from the company's identity provider (pyjwt).

A bearer token that looks like a JWT is verified as one; anything else is looked up as a
gateway API key. Verification:

- the header's ``alg`` must be in the configured allow-list (``none`` never is), and the key
  is chosen by the algorithm's family: HS* only ever verifies with ``GATEWAY_JWT_SECRET``,
  RS*/ES*/PS* only with ``GATEWAY_JWT_PUBLIC_KEY`` or the JWKS. A token signed with HMAC using
  the public key as the secret (algorithm confusion) therefore fails;
- issuer, audience, ``exp``/``nbf``/``iat`` (with ``GATEWAY_JWT_LEEWAY_SECONDS``) and the
  required claims are checked by pyjwt;
- JWKS keys are cached for ``GATEWAY_JWT_JWKS_CACHE_SECONDS``; a token with an unknown ``kid``
  triggers one refetch (key rotation), at most every
  ``GATEWAY_JWT_JWKS_MIN_REFRESH_INTERVAL_SECONDS``, so a flood of made-up kids cannot turn
  into a flood of requests to the identity provider.

Errors: 401 ``authentication_error`` with ``invalid_token``, ``token_expired``,
``token_not_yet_valid``, ``invalid_issuer``, ``invalid_audience``, ``token_algorithm_not_allowed``,
``missing_claim``, ``unknown_signing_key``; 503 ``identity_provider_unavailable`` when the JWKS
cannot be fetched.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jwt

from gateway.config import Settings
from gateway.errors import AuthenticationFailed, ServiceUnavailable

logger = logging.getLogger(__name__)

_JWT_SHAPE = re.compile(r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")


def looks_like_jwt(token: str) -> bool:
    return _JWT_SHAPE.fullmatch(token) is not None


@dataclass(frozen=True)
class VerifiedToken:
    subject: str | None
    team: str | None
    roles: frozenset[str]
    is_admin: bool


class JwtVerifier:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.enabled = settings.jwt_enabled
        self.algorithms = settings.jwt_algorithm_list() if self.enabled else []
        self._jwks = (
            jwt.PyJWKClient(settings.jwt_jwks_url, cache_jwk_set=False, timeout=5)
            if settings.jwt_jwks_url
            else None
        )
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at = float("-inf")
        self._lock = asyncio.Lock()

    async def verify(self, token: str) -> VerifiedToken:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise _refused("malformed token", "invalid_token") from None
        algorithm = header.get("alg")
        if not isinstance(algorithm, str) or algorithm not in self.algorithms:
            raise _refused(
                f"token algorithm {str(algorithm)[:16]!r} is not allowed",
                "token_algorithm_not_allowed",
            )
        key = await self._key_for(algorithm, header.get("kid"))
        settings = self.settings
        required = [c.strip() for c in settings.jwt_required_claims.split(",") if c.strip()]
        if settings.jwt_audience:
            required.append("aud")
        required.append("iss")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                issuer=settings.jwt_issuer,
                audience=settings.jwt_audience,
                leeway=settings.jwt_leeway_seconds,
                options={"require": required, "verify_aud": bool(settings.jwt_audience)},
            )
        except jwt.ExpiredSignatureError:
            raise _refused("token has expired", "token_expired") from None
        except jwt.ImmatureSignatureError:
            raise _refused("token is not valid yet", "token_not_yet_valid") from None
        except jwt.InvalidIssuerError:
            raise _refused("token issuer is not accepted", "invalid_issuer") from None
        except jwt.InvalidAudienceError:
            raise _refused("token audience is not accepted", "invalid_audience") from None
        except jwt.MissingRequiredClaimError as exc:
            raise _refused(f"token lacks the {exc.claim!r} claim", "missing_claim") from None
        except jwt.PyJWTError:
            raise _refused("token signature or claims are invalid", "invalid_token") from None
        for name in _NUMERIC_DATE_CLAIMS:
            # RFC 7519 §2: a NumericDate is a JSON number. pyjwt alone takes "9999999999".
            value = claims.get(name)
            if name in claims and (isinstance(value, bool) or not isinstance(value, int | float)):
                raise _refused(f"token claim {name!r} must be a number", "invalid_token")
        roles = _roles(claims.get(settings.jwt_roles_claim))
        team = _claim_path(claims, settings.jwt_team_claim)
        subject = claims.get("sub")
        return VerifiedToken(
            subject=subject if isinstance(subject, str) else None,
            team=team if isinstance(team, str) and team else None,
            roles=roles,
            is_admin=settings.jwt_admin_role in roles,
        )

    async def _key_for(self, algorithm: str, kid: object) -> Any:
        settings = self.settings
        if algorithm.startswith("HS"):
            return settings.jwt_secret.get_secret_value()
        if self._jwks is None:
            return settings.jwt_public_key
        if not isinstance(kid, str) or not kid:
            raise _refused("token has no key id (kid)", "unknown_signing_key")
        return (await self._jwk(kid)).key

    async def _jwk(self, kid: str) -> jwt.PyJWK:
        now = time.monotonic()
        stale = now - self._fetched_at > self.settings.jwt_jwks_cache_seconds
        if kid in self._keys and not stale:
            return self._keys[kid]
        async with self._lock:
            now = time.monotonic()
            may_refetch = (
                now - self._fetched_at >= self.settings.jwt_jwks_min_refresh_interval_seconds
            )
            if (kid not in self._keys or stale) and may_refetch:
                await self._refetch()
        if kid not in self._keys:
            raise _refused("token is signed with an unknown key", "unknown_signing_key")
        return self._keys[kid]

    async def _refetch(self) -> None:
        assert self._jwks is not None
        jwks = self._jwks
        try:
            key_set = await asyncio.to_thread(jwks.get_jwk_set, True)
        except jwt.PyJWKClientError as exc:
            logger.error("could not fetch the identity provider's JWKS: %s", type(exc).__name__)
            self._fetched_at = time.monotonic()  # do not hammer a failing provider
            if not self._keys:
                raise ServiceUnavailable(
                    "the identity provider's keys are unavailable",
                    code="identity_provider_unavailable",
                ) from None
            return
        self._keys = {key.key_id: key for key in key_set.keys if key.key_id}
        self._fetched_at = time.monotonic()


_NUMERIC_DATE_CLAIMS = ("exp", "nbf", "iat")


def _refused(message: str, code: str) -> AuthenticationFailed:
    return AuthenticationFailed(message, code=code)


def _roles(value: object) -> frozenset[str]:
    if isinstance(value, str):
        return frozenset(value.split())
    if isinstance(value, list | tuple):
        return frozenset(item for item in value if isinstance(item, str))
    return frozenset()


def _claim_path(claims: Mapping[str, Any], path: str) -> object:
    node: object = claims
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node
