"""The tenant hot path's direct statements (``gateway.db.direct``) against the ORM path they
stand in for: they write the same rows, and every hint they use (the rate card and the key
last seen) is checked by the database in the hold's own statement, so a change made anywhere
takes effect on the next submit."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from gateway.db.engine import create_engine
from gateway.runtime import Runtime
from tests.support.api import submit
from tests.support.database import create_postgres_database, drop_postgres_database
from tests.support.ledger import team_ledger
from tests.support.rates import add_rates
from tests.support.servers import ServerThread, StartGateway
from tests.support.simulator import SimulatorProbe
from tests.support.tenants import TEST_ACTOR, Tenant, in_session, make_tenant

ADMIN_TOKEN = "fast-path-admin-token-0123456789"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
TAGS = {"X-Gateway-Tags": "project=atlas,user=dana"}


def runtime_of(server: ServerThread) -> Runtime:
    runtime: Runtime = server.server.config.app.state.runtime
    return runtime


def direct_statements(server: ServerThread) -> list[str]:
    """Every direct statement ``server`` sends from now on."""
    sent: list[str] = []
    direct = runtime_of(server).proxy.direct
    assert direct is not None
    direct.listeners.append(lambda statement, _parameters: sent.append(statement))
    return sent


@pytest.fixture
def private_database() -> Iterator[str]:
    """A database of this test's own (its rate cards must not price other tests' jobs)."""
    url = create_postgres_database()
    try:
        yield url
    finally:
        drop_postgres_database(url)


def _job_rows(url: str, upstream_job_id: str) -> dict[str, Any]:
    """The job's row, its entries and its kept request as stored, text for JSON."""

    async def _read() -> dict[str, Any]:
        engine = create_engine(url)
        try:
            async with engine.connect() as connection:
                job = (
                    await connection.execute(
                        text(
                            "SELECT state, model, duration_ms, resolution, image_count, "
                            "estimate_micro_usd, rate_card_version, period, tags::text, "
                            "check_attempts, needs_review, upstream_http_status, "
                            "flagged_at, settled_at, terminal_body, "
                            "round(extract(epoch FROM next_check_at - created_at)) AS first_check, "
                            "created_at = updated_at AS untouched, id "
                            "FROM jobs WHERE upstream_job_id = :id"
                        ),
                        {"id": upstream_job_id},
                    )
                ).one()
                entries = (
                    await connection.execute(
                        text(
                            "SELECT kind, amount_micro_usd, rate_card_version, reason, "
                            "video_ms, upstream_cost_micro_usd, needs_review, tags::text, "
                            "period FROM ledger_entries WHERE job_id = :id ORDER BY id"
                        ),
                        {"id": job.id},
                    )
                ).all()
                kept = (
                    await connection.execute(
                        text("SELECT count(*) FROM job_requests WHERE job_id = :id"),
                        {"id": job.id},
                    )
                ).scalar_one()
        finally:
            await engine.dispose()
        row = job._asdict()
        del row["id"], row["untouched"]
        return {"job": row, "entries": [tuple(e) for e in entries], "kept": kept}

    return asyncio.run(_read())


def test_the_direct_hold_and_answer_write_what_the_orm_writes(
    start_gateway: StartGateway, simulator: SimulatorProbe, postgres_url: str
) -> None:
    direct = start_gateway()
    orm = start_gateway(database_direct_statements=False)
    assert runtime_of(orm).proxy.direct is None
    written = {}
    for name, server in (("direct", direct), ("orm", orm)):
        tenant = make_tenant(postgres_url, budget_micro_usd=50_000_000)
        with httpx.Client(base_url=server.url, timeout=30) as client:
            assert submit(client, tenant).status_code == 200  # the card and the key are seen
            if name == "direct":
                sent = direct_statements(server)
            accepted = submit(client, tenant, "same", headers=TAGS, duration=7, resolution="720p")
            assert accepted.status_code == 200, accepted.text
            usage = client.get("/v1/usage", headers=tenant.headers).json()
        written[name] = (
            _job_rows(postgres_url, accepted.json()["job_id"]),
            accepted.headers["x-gateway-cost-estimate-usd"],
            accepted.headers["x-quota-remaining-usd"],
            {k: usage[k] for k in ("budget_usd", "captured_usd", "held_usd", "remaining_usd")},
        )
    assert len(sent) == 3  # the hold, the answer, the usage read: all direct
    assert written["direct"] == written["orm"]
    rows = written["direct"][0]
    assert rows["job"]["state"] == "submitted"
    assert rows["job"]["tags"] == '{"project": "atlas", "user": "dana"}'
    assert [entry[0] for entry in rows["entries"]] == ["hold"]


def test_a_rate_card_added_after_one_was_seen_prices_the_next_submit(
    start_gateway: StartGateway, simulator: SimulatorProbe, private_database: str
) -> None:
    server = start_gateway(database_url=private_database)
    tenant = make_tenant(private_database)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        before = submit(client, tenant, duration=5, resolution="480p")
        assert before.status_code == 200, before.text

        async def _double(session: Any) -> None:
            await add_rates(
                session,
                "doubled",
                {"480p": 100_000, "720p": 140_000},
                actor=TEST_ACTOR,
                effective_from=datetime.now(UTC) - timedelta(seconds=1),
            )

        in_session(private_database, _double)
        after = submit(client, tenant, duration=5, resolution="480p")
    assert after.status_code == 200, after.text
    assert before.headers["x-gateway-cost-estimate-usd"] == "0.480000"
    assert after.headers["x-gateway-cost-estimate-usd"] == "0.500000"
    versions = [job.rate_card_version for job in team_ledger(private_database, tenant.team).jobs]
    assert versions == ["seed-2026-11", "doubled"]


def _patch_team(server: ServerThread, tenant: Tenant, **changes: Any) -> None:
    patched = httpx.patch(
        f"{server.url}/admin/teams/{tenant.team}", json=changes, headers=ADMIN, timeout=30
    )
    assert patched.status_code == 200, patched.text


def test_every_change_to_a_key_seen_before_counts_on_the_next_submit(
    start_gateway: StartGateway, simulator: SimulatorProbe, postgres_url: str
) -> None:
    server = start_gateway(admin_token=ADMIN_TOKEN)
    tenant = make_tenant(postgres_url, budget_micro_usd=10_000_000)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        five_seconds = {"duration": 5, "resolution": "480p"}  # $0.48
        assert submit(client, tenant, **five_seconds).status_code == 200

        _patch_team(server, tenant, monthly_budget_usd="0.80")
        refused = submit(client, tenant, **five_seconds)
        assert (refused.status_code, refused.json()["error"]["code"]) == (429, "quota_exceeded")
        assert refused.headers["x-quota-remaining-usd"] == "0.320000"

        _patch_team(server, tenant, monthly_budget_usd="10", disabled=True)
        disabled = submit(client, tenant, **five_seconds)
        assert (disabled.status_code, disabled.json()["error"]["code"]) == (403, "team_disabled")
        _patch_team(server, tenant, disabled=False)
        assert submit(client, tenant, **five_seconds).status_code == 200

        revoked = httpx.post(
            f"{server.url}/admin/keys/{tenant.key_id}/revoke", headers=ADMIN, timeout=30
        )
        assert revoked.status_code == 200
        # A revoked key learns nothing else: not even that its request was invalid.
        for body in ({"duration": 5}, {"duration": 99}):
            answer = submit(client, tenant, **body)
            assert (answer.status_code, answer.json()["error"]["code"]) == (401, "api_key_revoked")
            assert "x-quota-remaining-usd" not in answer.headers
    ledger = team_ledger(postgres_url, tenant.team)
    assert len(ledger.jobs) == 2


def test_a_key_seen_before_is_refused_the_moment_it_expires(
    start_gateway: StartGateway, simulator: SimulatorProbe, postgres_url: str
) -> None:
    server = start_gateway()
    expires = datetime.now(UTC) + timedelta(seconds=2)
    tenant = make_tenant(postgres_url, expires_at=expires)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        assert submit(client, tenant).status_code == 200
        time.sleep(max((expires - datetime.now(UTC)).total_seconds(), 0) + 0.05)
        expired = submit(client, tenant)
    assert (expired.status_code, expired.json()["error"]["code"]) == (401, "api_key_expired")
    assert len(team_ledger(postgres_url, tenant.team).jobs) == 1
