"""Tenants: API keys authenticate (Bearer or x-api-key), refusals are 401 and forward nothing,
and a team never sees another team's job. Storage behaviour runs on Postgres and SQLite."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.errors import AuthenticationFailed, Conflict, InvalidRequest, NotFound
from gateway.tenancy import authentication, service
from gateway.tenancy.keys import hash_key
from gateway.tenancy.models import ApiKey, Project
from tests.support.api import SUBMIT_PATH, submit, submit_body
from tests.support.savepoint import Database, SavepointDatabase
from tests.support.servers import StartGateway
from tests.support.simulator import SimulatorProbe
from tests.support.tenants import PEPPER, TEST_ACTOR, Tenant, in_session, make_tenant

BODY = submit_body()


def expire_key(url: str, key_id: str) -> None:
    async def _expire(session: AsyncSession) -> None:
        past = datetime.now(UTC) - timedelta(seconds=1)
        await session.execute(update(ApiKey).where(ApiKey.id == key_id).values(expires_at=past))

    in_session(url, _expire)


def revoke(database: Database, key_id: str) -> None:
    async def _revoke(session: AsyncSession) -> None:
        await service.revoke_key(session, key_id, actor=TEST_ACTOR)

    in_session(database, _revoke)


def tampered(key: str) -> str:
    last = "A" if key[-1] != "A" else "B"
    return key[:-1] + last


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        pytest.param({}, "missing_api_key", id="no header"),
        pytest.param({"Authorization": "Bearer"}, "missing_api_key", id="empty bearer"),
        pytest.param({"x-api-key": ""}, "missing_api_key", id="empty x-api-key"),
        pytest.param(
            {"Authorization": "Basic dXNlcjpwYXNz"}, "invalid_authorization", id="basic scheme"
        ),
        pytest.param(
            {"Authorization": "Bearer not-a-gateway-key"}, "invalid_api_key", id="malformed"
        ),
        pytest.param(
            {"Authorization": "Bearer gwk_aaaaaaaaaaaaaaaa_" + "x" * 43},
            "invalid_api_key",
            id="well-formed unknown id",
        ),
        pytest.param(
            {"x-api-key": "sk-upstream-looking-key"}, "invalid_api_key", id="malformed x-api-key"
        ),
    ],
)
def test_bad_credentials_are_401_and_nothing_is_forwarded(
    gateway: httpx.Client, simulator: SimulatorProbe, headers: dict[str, str], code: str
) -> None:
    for response in (
        gateway.post(SUBMIT_PATH, json=BODY, headers=headers),
        gateway.get("/v1/jobs/job_anything", headers=headers),
    ):
        assert response.status_code == 401
        assert response.json()["error"] == {
            "type": "authentication_error",
            "code": code,
            "param": None,
            "message": response.json()["error"]["message"],
        }
        assert response.headers["www-authenticate"] == "Bearer"
    assert simulator.requests() == []


def test_right_id_wrong_secret_is_refused(
    gateway: httpx.Client, simulator: SimulatorProbe, tenant: Tenant
) -> None:
    response = gateway.post(
        SUBMIT_PATH, json=BODY, headers={"Authorization": f"Bearer {tampered(tenant.key)}"}
    )
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"
    assert simulator.requests() == []


def test_revoked_key_is_refused_at_once(
    gateway: httpx.Client, simulator: SimulatorProbe, tenant: Tenant, postgres_url: str
) -> None:
    assert submit(gateway, tenant).status_code == 200
    revoke(postgres_url, tenant.key_id)
    refused = submit(gateway, tenant)
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "api_key_revoked"
    assert len(simulator.submits()) == 1


def test_expired_key_is_refused(
    gateway: httpx.Client, simulator: SimulatorProbe, tenant: Tenant, postgres_url: str
) -> None:
    expire_key(postgres_url, tenant.key_id)
    refused = gateway.post(SUBMIT_PATH, json=BODY, headers={"x-api-key": tenant.key})
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "api_key_expired"
    assert simulator.requests() == []


def test_other_teams_job_is_indistinguishable_from_an_unknown_one(
    gateway: httpx.Client, simulator: SimulatorProbe, postgres_url: str
) -> None:
    team_a = make_tenant(postgres_url, prefix="alpha")
    team_b = make_tenant(postgres_url, prefix="bravo")
    job_id = submit(gateway, team_a).json()["job_id"]
    assert gateway.get(f"/v1/jobs/{job_id}", headers=team_a.headers).status_code == 200
    polls_before = len(simulator.requests())

    foreign = gateway.get(f"/v1/jobs/{job_id}", headers=team_b.headers)
    unknown_id = job_id[:-4] + "zzzz"
    unknown = gateway.get(f"/v1/jobs/{unknown_id}", headers=team_b.headers)

    assert foreign.status_code == unknown.status_code == 404
    assert foreign.json()["error"]["code"] == unknown.json()["error"]["code"] == "job_not_found"
    assert foreign.json()["error"]["message"].replace(job_id, "ID") == unknown.json()["error"][
        "message"
    ].replace(unknown_id, "ID")
    assert len(simulator.requests()) == polls_before  # neither was forwarded


@pytest.mark.parametrize(
    "path",
    [
        "/v1/jobs/..%2F..%2Fadmin",
        "/v1/jobs/%2E%2E",
        "/v1/jobs/job%20x",
        "/v1/jobs/" + "a" * 200,
    ],
)
def test_suspicious_job_ids_never_reach_upstream(
    gateway: httpx.Client, simulator: SimulatorProbe, tenant: Tenant, path: str
) -> None:
    response = gateway.get(path, headers=tenant.headers)
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "not_found_error"
    assert simulator.requests() == []


# Storage: the service layer on both databases, in the fast tier.


@pytest.mark.fast
def test_key_is_stored_only_as_a_peppered_hash(db: SavepointDatabase) -> None:
    tenant = make_tenant(db)

    async def _row(session: AsyncSession) -> ApiKey:
        return (
            await session.execute(select(ApiKey).where(ApiKey.id == tenant.key_id))
        ).scalar_one()

    row = in_session(db, _row)
    assert tenant.key not in (row.secret_hash, row.id, row.name)
    assert row.secret_hash == hash_key(tenant.key, PEPPER)
    assert row.secret_hash != hash_key(tenant.key, "another pepper")
    assert tenant.key.startswith(f"gwk_{row.id}_")
    assert len(tenant.key) == len("gwk_") + 16 + 1 + 43


@pytest.mark.fast
def test_authentication_rules_on_each_database(db: SavepointDatabase) -> None:
    tenant = make_tenant(db)

    async def _auth(session: AsyncSession, token: str) -> str:
        principal = await authentication.authenticate_key(session, token, pepper=PEPPER)
        return principal.team_name

    assert in_session(db, lambda s: _auth(s, tenant.key)) == tenant.team
    for token, code in ((tampered(tenant.key), "invalid_api_key"),):
        with pytest.raises(AuthenticationFailed) as failure:
            in_session(db, lambda s, t=token: _auth(s, t))
        assert getattr(failure.value, "code", None) == code
    in_session(db, lambda s: authentication.authenticate_key(s, tenant.key, pepper=PEPPER))
    revoke(db, tenant.key_id)
    with pytest.raises(AuthenticationFailed) as revoked:
        in_session(db, lambda s: _auth(s, tenant.key))
    assert getattr(revoked.value, "code", None) == "api_key_revoked"


@pytest.mark.fast
def test_team_rules_on_each_database(db: SavepointDatabase) -> None:
    tenant = make_tenant(db)
    with pytest.raises(Conflict):
        in_session(db, lambda s: service.create_team(s, tenant.team, actor=TEST_ACTOR))
    for bad_name in ("", "has space", "-leading-dash", "x" * 65, "semi;colon"):
        with pytest.raises(InvalidRequest):
            in_session(db, lambda s, n=bad_name: service.create_team(s, n, actor=TEST_ACTOR))
    with pytest.raises(InvalidRequest):
        in_session(
            db,
            lambda s: service.create_team(s, "neg", monthly_budget_micro_usd=-1, actor=TEST_ACTOR),
        )
    with pytest.raises(NotFound):
        in_session(
            db,
            lambda s: service.create_key(s, "no-such-team", pepper=PEPPER, actor=TEST_ACTOR),
        )
    with pytest.raises(NotFound):
        in_session(db, lambda s: service.revoke_key(s, "nosuchkey0000000", actor=TEST_ACTOR))


@pytest.mark.fast
def test_project_and_key_rules_on_each_database(db: SavepointDatabase) -> None:
    """Project names are unique within a team only, follow the team-name rule, and a key can
    be bound only to a project of its own team; caps are positive, roles known."""
    tenant = make_tenant(db)
    other = make_tenant(db)

    def create_project(team: str, name: str, **options: int) -> Project:
        return in_session(
            db, lambda s: service.create_project(s, team, name, actor=TEST_ACTOR, **options)
        )

    created = create_project(tenant.team, "launch", monthly_budget_micro_usd=5_000_000)
    assert (created.name, created.monthly_budget_micro_usd) == ("launch", 5_000_000)
    assert create_project(other.team, "launch").team_id != created.team_id
    with pytest.raises(Conflict) as duplicate:
        create_project(tenant.team, "launch")
    assert duplicate.value.code == "project_exists"
    for bad_name in ("", "has space", "-leading-dash", "x" * 65):
        with pytest.raises(InvalidRequest):
            create_project(tenant.team, bad_name)
    with pytest.raises(InvalidRequest) as zero_cap:
        create_project(tenant.team, "zero", max_cost_per_job_micro_usd=0)
    assert zero_cap.value.param == "max_cost_per_job_usd"
    with pytest.raises(NotFound):
        create_project("no-such-team", "launch")

    def create_key(team: str, **options: str) -> service.IssuedKey:
        return in_session(
            db,
            lambda s: service.create_key(s, team, pepper=PEPPER, actor=TEST_ACTOR, **options),
        )

    bound = create_key(tenant.team, project="launch", role="manager")
    assert (bound.key.project_id, bound.key.role) == (created.id, "manager")
    with pytest.raises(InvalidRequest):
        create_key(tenant.team, role="owner")
    with pytest.raises(NotFound) as unknown:
        create_key(tenant.team, project="nope")
    assert unknown.value.code == "project_not_found"

    def update_key(changes: dict[str, object]) -> service.KeyDetails:
        return in_session(
            db, lambda s: service.update_key(s, bound.key.id, changes, actor=TEST_ACTOR)
        )

    other_project = create_project(other.team, "elsewhere")
    with pytest.raises(NotFound):  # a project of another team is not found from this key
        update_key({"project": other_project.name})
    unbound = update_key({"project": None, "role": "member"})
    assert (unbound.key.project_id, unbound.key.role, unbound.project) == (None, "member", None)
    with pytest.raises(InvalidRequest):
        update_key({"team_id": other_project.team_id})


@pytest.mark.fast
def test_revocation_is_idempotent_and_keeps_the_first_time(db: SavepointDatabase) -> None:
    tenant = make_tenant(db)
    first = in_session(
        db, lambda s: service.revoke_key(s, tenant.key_id, actor=TEST_ACTOR)
    ).revoked_at
    second = in_session(
        db, lambda s: service.revoke_key(s, tenant.key_id, actor=TEST_ACTOR)
    ).revoked_at
    assert first is not None and first == second
    keys = in_session(db, lambda s: service.list_keys(s, tenant.team))
    assert [(k.id, k.revoked_at) for k in keys] == [(tenant.key_id, first)]


def test_nul_in_the_url_is_400_and_never_reaches_the_database_or_upstream(
    gateway: httpx.Client, simulator: SimulatorProbe, tenant: Tenant
) -> None:
    for path in ("/v1/jobs/job%00x", "/v1/usage?x=%00"):
        response = gateway.get(path, headers=tenant.headers)
        assert (response.status_code, response.json()["error"]["code"]) == (400, "invalid_url")
    assert simulator.requests() == []


NEW_PEPPER = "the-next-pepper-0123456789abcdef"


def _stored_hash(database: Database, key_id: str) -> str:
    async def _read(session: AsyncSession) -> str:
        row = await session.execute(select(ApiKey.secret_hash).where(ApiKey.id == key_id))
        return str(row.scalar_one())

    return in_session(database, _read)


@pytest.mark.fast
def test_a_pepper_rotation_keeps_every_key_working_and_rehashes_it(db: SavepointDatabase) -> None:
    """GATEWAY_KEY_PEPPER_PREVIOUS: a key stored under the old pepper still works while the
    new one is in force, and its first use stores its hash under the new pepper; after the
    rotation (no previous pepper) it works under the new one, and the old one is refused."""
    tenant = make_tenant(db)

    def auth(pepper: str, previous: str | None = None) -> str:
        async def _auth(session: AsyncSession) -> str:
            principal = await authentication.authenticate_key(
                session, tenant.key, pepper=pepper, previous_pepper=previous
            )
            return principal.team_name

        return in_session(db, _auth)

    with pytest.raises(AuthenticationFailed):
        auth(NEW_PEPPER)  # the new pepper alone does not know the old hash
    assert auth(NEW_PEPPER, previous=PEPPER) == tenant.team
    assert _stored_hash(db, tenant.key_id) == hash_key(tenant.key, NEW_PEPPER)
    assert auth(NEW_PEPPER) == tenant.team
    with pytest.raises(AuthenticationFailed):
        auth(PEPPER)


def test_a_pepper_rotation_through_the_hot_path(
    start_gateway: StartGateway, simulator: SimulatorProbe, postgres_url: str
) -> None:
    tenant = make_tenant(postgres_url)
    rotating = start_gateway(key_pepper=NEW_PEPPER, key_pepper_previous=PEPPER)
    assert httpx.get(f"{rotating.url}/v1/usage", headers=tenant.headers).status_code == 200
    assert _stored_hash(postgres_url, tenant.key_id) == hash_key(tenant.key, NEW_PEPPER)
    rotated = start_gateway(key_pepper=NEW_PEPPER)
    assert httpx.get(f"{rotated.url}/v1/usage", headers=tenant.headers).status_code == 200
    old = start_gateway(key_pepper=PEPPER)
    refused = httpx.get(f"{old.url}/v1/usage", headers=tenant.headers)
    assert (refused.status_code, refused.json()["error"]["code"]) == (401, "invalid_api_key")
