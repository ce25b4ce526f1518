"""Property-based requests generated from the gateway's own OpenAPI document (schemathesis):
for every admin and tenant route, with valid credentials, no answer is a 5xx and every
documented response matches its schema. Runs on its own database: generated admin calls
create teams and rate card versions that would otherwise re-price other tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error, response_schema_conformance

from gateway.app import create_app
from tests.support.database import create_postgres_database, drop_postgres_database
from tests.support.servers import ServerThread, running
from tests.support.settings import gateway_settings
from tests.support.tenants import Tenant, make_tenant

ADMIN = "admin-token-for-fuzzing-0123456789"


@pytest.fixture(scope="module")
def fuzz_target(
    postgres_url: str, simulator_server: ServerThread
) -> Iterator[tuple[ServerThread, Tenant]]:
    url = create_postgres_database()
    try:
        tenant = make_tenant(url, budget_micro_usd=None)
        app = create_app(gateway_settings(url, simulator_server.url, admin_token=ADMIN))
        with running(app) as server:
            yield server, tenant
    finally:
        drop_postgres_database(url)


# The document is built from the app itself (it needs no database); requests go to the live
# server of ``fuzz_target``. (schemathesis' lazy pytest loader does not run on pytest 9.)
schema = schemathesis.openapi.from_dict(
    create_app(gateway_settings("sqlite:///:memory:", "http://upstream.invalid")).openapi()
)


@schema.parametrize()
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
    ],
)
def test_no_5xx_and_documented_schemas_hold(
    case: schemathesis.Case, fuzz_target: tuple[ServerThread, Tenant]
) -> None:
    server, tenant = fuzz_target
    token = ADMIN if case.path.startswith("/admin") else tenant.key
    case.call_and_validate(
        base_url=server.url,
        headers={"Authorization": f"Bearer {token}"},
        checks=[not_a_server_error, response_schema_conformance],
    )
