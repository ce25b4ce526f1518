"""Company JWTs through the real HTTP path: each case asserts the status, the error code, and
that nothing reached the upstream when the token is refused. A local JWKS server shows key
rotation and that a flood of unknown key ids cannot turn into a flood of JWKS fetches."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from starlette.requests import Request
from starlette.responses import JSONResponse

from tests.support.api import SUBMIT_PATH, submit_body
from tests.support.servers import ServerThread, StartGateway, serving
from tests.support.simulator import SimulatorProbe
from tests.support.tenants import make_tenant

ISSUER = "https://idp.example.com"
AUDIENCE = "video-gateway"
SECRET = "hs256-shared-secret-for-tests-0123456789"
BODY = submit_body()


def _pem(private: Any) -> tuple[bytes, bytes]:
    return (
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    )


RSA_PRIVATE, RSA_PUBLIC = _pem(rsa.generate_private_key(public_exponent=65537, key_size=2048))
RSA2_PRIVATE, RSA2_PUBLIC = _pem(rsa.generate_private_key(public_exponent=65537, key_size=2048))
EC_PRIVATE, EC_PUBLIC = _pem(ec.generate_private_key(ec.SECP256R1()))


def claims(team: str | None, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    values: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "alice@example.com",
        "iat": now,
        "exp": now + 300,
        "team": team,
        "roles": ["video-user"],
    }
    values.update(overrides)
    return {k: v for k, v in values.items() if v is not None}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def unsigned(payload: dict[str, Any]) -> str:
    header = _b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    return f"{header}.{_b64(json.dumps(payload).encode())}."


def hmac_signed_with(key: bytes, payload: dict[str, Any]) -> str:
    """HS256 by hand: pyjwt rightly refuses to use a PEM public key as an HMAC secret."""
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = _b64(json.dumps(payload).encode())
    signature = hmac.new(key, f"{header}.{body}".encode(), hashlib.sha256).digest()
    return f"{header}.{body}.{_b64(signature)}"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def jwt_gateway(start: StartGateway, **settings: Any) -> ServerThread:
    settings.setdefault("jwt_issuer", ISSUER)
    settings.setdefault("jwt_audience", AUDIENCE)
    settings.setdefault("admin_token", "admin-token-for-jwt-tests-123")
    return start(**settings)


def post(server: ServerThread, token: str) -> httpx.Response:
    return httpx.post(server.url + SUBMIT_PATH, json=BODY, headers=bearer(token), timeout=30)


@pytest.fixture
def team(postgres_url: str) -> str:
    return make_tenant(postgres_url, prefix="jwt").team


@pytest.fixture
def hs_gateway(start_gateway: StartGateway) -> ServerThread:
    return jwt_gateway(start_gateway, jwt_secret=SECRET)


@pytest.fixture
def rs_gateway(start_gateway: StartGateway) -> ServerThread:
    return jwt_gateway(start_gateway, jwt_public_key=RSA_PUBLIC.decode(), jwt_algorithms="RS256")


def test_valid_hs256_token_submits_for_its_team(
    hs_gateway: ServerThread, simulator: SimulatorProbe, team: str
) -> None:
    response = post(hs_gateway, jwt.encode(claims(team), SECRET, algorithm="HS256"))
    assert response.status_code == 200, response.text
    assert len(simulator.submits()) == 1
    usage = httpx.get(
        hs_gateway.url + "/v1/usage",
        headers=bearer(jwt.encode(claims(team), SECRET, algorithm="HS256")),
    )
    assert usage.json()["team"] == team


def test_valid_rs256_token(rs_gateway: ServerThread, simulator: SimulatorProbe, team: str) -> None:
    assert (
        post(rs_gateway, jwt.encode(claims(team), RSA_PRIVATE, algorithm="RS256")).status_code
        == 200
    )


def test_valid_es256_token(
    start_gateway: StartGateway, simulator: SimulatorProbe, team: str
) -> None:
    server = jwt_gateway(start_gateway, jwt_public_key=EC_PUBLIC.decode(), jwt_algorithms="ES256")
    assert post(server, jwt.encode(claims(team), EC_PRIVATE, algorithm="ES256")).status_code == 200


@pytest.mark.parametrize(
    ("make_token", "code"),
    [
        pytest.param(
            lambda t: jwt.encode(claims(t, exp=int(time.time()) - 120), SECRET, algorithm="HS256"),
            "token_expired",
            id="expired",
        ),
        pytest.param(
            lambda t: jwt.encode(claims(t, nbf=int(time.time()) + 120), SECRET, algorithm="HS256"),
            "token_not_yet_valid",
            id="not yet valid",
        ),
        pytest.param(
            lambda t: jwt.encode(claims(t, iss="https://evil.example"), SECRET, algorithm="HS256"),
            "invalid_issuer",
            id="wrong issuer",
        ),
        pytest.param(
            lambda t: jwt.encode(claims(t, aud="another-service"), SECRET, algorithm="HS256"),
            "invalid_audience",
            id="wrong audience",
        ),
        pytest.param(
            lambda t: jwt.encode(
                claims(t), "some-other-secret-value-1234567890", algorithm="HS256"
            ),
            "invalid_token",
            id="wrong signature",
        ),
        pytest.param(lambda t: unsigned(claims(t)), "token_algorithm_not_allowed", id="alg none"),
        pytest.param(
            lambda t: jwt.encode(claims(t, exp=None), SECRET, algorithm="HS256"),
            "missing_claim",
            id="no exp",
        ),
        pytest.param(
            lambda t: jwt.encode(claims(t, sub=None), SECRET, algorithm="HS256"),
            "missing_claim",
            id="no subject",
        ),
        pytest.param(
            lambda t: jwt.encode(claims(t), SECRET, algorithm="HS256")[:-6] + "AAAAAA",
            "invalid_token",
            id="tampered",
        ),
        # RFC 7519: NumericDate is a JSON number; pyjwt alone takes int("9999999999").
        pytest.param(
            lambda t: jwt.encode(claims(t, exp=str(int(time.time()) + 300)), SECRET, "HS256"),
            "invalid_token",
            id="exp as a numeric string",
        ),
        pytest.param(
            lambda t: jwt.encode(claims(t, iat=str(int(time.time()))), SECRET, "HS256"),
            "invalid_token",
            id="iat as a numeric string",
        ),
        pytest.param(
            lambda t: jwt.encode(claims(t, nbf=str(int(time.time()) - 60)), SECRET, "HS256"),
            "invalid_token",
            id="nbf as a numeric string",
        ),
    ],
)
def test_refused_tokens_are_401_and_forward_nothing(
    hs_gateway: ServerThread, simulator: SimulatorProbe, team: str, make_token: Any, code: str
) -> None:
    response = post(hs_gateway, make_token(team))
    assert response.status_code == 401, response.text
    assert response.json()["error"]["type"] == "authentication_error"
    assert response.json()["error"]["code"] == code
    assert simulator.requests() == []


def test_expiry_has_a_small_leeway(
    hs_gateway: ServerThread, simulator: SimulatorProbe, team: str
) -> None:
    just_expired = jwt.encode(claims(team, exp=int(time.time()) - 10), SECRET, algorithm="HS256")
    assert post(hs_gateway, just_expired).status_code == 200  # within the 30 s leeway


def test_algorithm_confusion_is_refused(
    start_gateway: StartGateway, rs_gateway: ServerThread, simulator: SimulatorProbe, team: str
) -> None:
    """HS256 signed with the RS256 public key as the HMAC secret."""
    forged = hmac_signed_with(RSA_PUBLIC, claims(team))
    refused = post(rs_gateway, forged)
    assert (refused.status_code, refused.json()["error"]["code"]) == (
        401,
        "token_algorithm_not_allowed",
    )
    # Even with HS256 allowed beside RS256, HS* only ever verifies with the configured secret.
    both = jwt_gateway(
        start_gateway,
        jwt_public_key=RSA_PUBLIC.decode(),
        jwt_secret=SECRET,
        jwt_algorithms="RS256,HS256",
    )
    refused = post(both, forged)
    assert (refused.status_code, refused.json()["error"]["code"]) == (401, "invalid_token")
    assert simulator.requests() == []


def test_team_claim_missing_or_unknown_is_403(
    hs_gateway: ServerThread, simulator: SimulatorProbe
) -> None:
    no_team = post(hs_gateway, jwt.encode(claims(None), SECRET, algorithm="HS256"))
    assert (no_team.status_code, no_team.json()["error"]["code"]) == (403, "team_claim_missing")
    assert no_team.json()["error"]["type"] == "permission_error"
    unknown = post(hs_gateway, jwt.encode(claims("no-such-team"), SECRET, algorithm="HS256"))
    assert (unknown.status_code, unknown.json()["error"]["code"]) == (403, "team_not_found")
    assert simulator.requests() == []


def test_nested_team_claim_and_auto_created_teams(
    start_gateway: StartGateway, simulator: SimulatorProbe, postgres_url: str
) -> None:
    server = jwt_gateway(
        start_gateway, jwt_secret=SECRET, jwt_team_claim="org.team", jwt_auto_create_teams=True
    )
    new_team = f"auto-{int(time.time() * 1000)}"
    token = jwt.encode(claims(None, org={"team": new_team}), SECRET, algorithm="HS256")
    assert post(server, token).status_code == 200
    admin = httpx.get(
        f"{server.url}/admin/teams/{new_team}", headers=bearer("admin-token-for-jwt-tests-123")
    )
    assert admin.status_code == 200
    audit = httpx.get(
        f"{server.url}/admin/audit",
        params={"target_id": new_team},
        headers=bearer("admin-token-for-jwt-tests-123"),
    ).json()["data"]
    assert [(e["action"], e["actor"]) for e in audit] == [("team.create", "jwt:alice@example.com")]


def test_admin_role_opens_the_admin_api_and_nothing_else_does(
    hs_gateway: ServerThread, team: str
) -> None:
    admin = jwt.encode(claims(None, roles=["gateway-admin"]), SECRET, algorithm="HS256")
    member = jwt.encode(claims(team), SECRET, algorithm="HS256")
    assert httpx.get(hs_gateway.url + "/admin/teams", headers=bearer(admin)).status_code == 200
    refused = httpx.get(hs_gateway.url + "/admin/teams", headers=bearer(member))
    assert (refused.status_code, refused.json()["error"]["code"]) == (403, "admin_role_required")
    # an admin without a team claim is not a tenant
    tenant_call = post(hs_gateway, admin)
    assert (tenant_call.status_code, tenant_call.json()["error"]["code"]) == (
        403,
        "team_claim_missing",
    )


class JwksServer:
    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.hits = 0

    def publish(self, kid: str, public_pem: bytes) -> None:
        jwk = json.loads(
            jwt.algorithms.RSAAlgorithm.to_jwk(serialization.load_pem_public_key(public_pem))
        )
        self.keys.append({**jwk, "kid": kid, "use": "sig", "alg": "RS256"})

    async def handle(self, request: Request) -> JSONResponse:
        self.hits += 1
        return JSONResponse({"keys": self.keys})


@pytest.fixture
def jwks() -> Iterator[tuple[JwksServer, str]]:
    server = JwksServer()
    server.publish("key-1", RSA_PUBLIC)
    with serving("/.well-known/jwks.json", server.handle) as url:
        yield server, url


def test_jwks_key_rotation_and_refetch_rate_limit(
    start_gateway: StartGateway,
    simulator: SimulatorProbe,
    team: str,
    jwks: tuple[JwksServer, str],
) -> None:
    keys, url = jwks
    server = jwt_gateway(
        start_gateway,
        jwt_jwks_url=url,
        jwt_algorithms="RS256",
        jwt_jwks_min_refresh_interval_seconds=2,
    )
    first = jwt.encode(claims(team), RSA_PRIVATE, algorithm="RS256", headers={"kid": "key-1"})
    assert post(server, first).status_code == 200
    assert keys.hits == 1
    assert post(server, first).status_code == 200
    assert keys.hits == 1  # cached

    # The provider rotates to key-2: the first token with the new kid triggers one refetch.
    time.sleep(2.1)
    keys.publish("key-2", RSA2_PUBLIC)
    rotated = jwt.encode(claims(team), RSA2_PRIVATE, algorithm="RS256", headers={"kid": "key-2"})
    assert post(server, rotated).status_code == 200
    assert keys.hits == 2

    # Made-up kids: refused; at most one refetch per interval, however many arrive.
    for n in range(5):
        bogus = jwt.encode(claims(team), RSA2_PRIVATE, algorithm="RS256", headers={"kid": f"x{n}"})
        response = post(server, bogus)
        assert (response.status_code, response.json()["error"]["code"]) == (
            401,
            "unknown_signing_key",
        )
    assert keys.hits <= 3
    assert len(simulator.submits()) == 3
