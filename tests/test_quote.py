"""``POST /v1/quote`` (issue 15): the submit's body and headers, priced line by line, with the
budget levels it would be held on and whether the submit would be accepted now. A quote is
what the submit then holds, to the micro-dollar, over a table of bodies (durations,
resolutions, images, projects; on the seed's rate card and on one whose seconds' cost needs
its half-up rounding); a refusal is exactly the error the submit then answers with; the
submit's 400, 401, 403 and 413 are the quote's; and a quote holds, forwards, bills and records
nothing."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping
from decimal import Decimal
from typing import Any

import httpx
import jsonschema
import pytest

from gateway.app import create_app
from gateway.core.usd import format_usd, parse_usd
from gateway.db.engine import create_engine, create_sessionmaker
from gateway.db.session import transaction
from tests.support.api import MODEL, SUBMIT_PATH, submit_body
from tests.support.database import create_postgres_database, drop_postgres_database
from tests.support.images import PNG, data_uri
from tests.support.ledger import team_ledger
from tests.support.levels import make_key, make_project, set_team_cost_cap
from tests.support.rates import add_rates
from tests.support.servers import ServerThread, StartGateway
from tests.support.settings import gateway_settings
from tests.support.simulator import SimulatorProbe
from tests.support.tenants import TEST_ACTOR, Tenant, make_tenant

QUOTE_PATH = "/v1/quote"
IMAGE_URL = "https://images.example.com/cat.png"
SCOPE_FIELDS = {
    "scope",
    "name",
    "period",
    "budget_usd",
    "granted_usd",
    "captured_usd",
    "held_usd",
    "remaining_usd",
    "forecast_usd",
    "remaining_after_usd",
}


def post(
    client: httpx.Client,
    path: str,
    tenant: Tenant | None,
    body: Mapping[str, Any] | bytes,
    headers: Mapping[str, str] | None = None,
) -> httpx.Response:
    """``body`` (a JSON object, or raw bytes) to ``path`` as ``tenant`` (None: no key)."""
    sent = {**(tenant.headers if tenant else {}), **(headers or {})}
    if isinstance(body, bytes):
        sent.setdefault("Content-Type", "application/json")
        return client.post(path, content=body, headers=sent)
    return client.post(path, json=dict(body), headers=sent)


def quote_then_submit(
    client: httpx.Client,
    tenant: Tenant,
    body: Mapping[str, Any] | bytes,
    headers: Mapping[str, str] | None = None,
) -> tuple[httpx.Response, httpx.Response]:
    quoted = post(client, QUOTE_PATH, tenant, body, headers)
    return quoted, post(client, SUBMIT_PATH, tenant, body, headers)


def usd(text: str) -> int:
    return parse_usd(text)


def assert_adds_up(quote: dict[str, Any]) -> None:
    """The lines add up to the total, each line is its quantity times its unit price (the
    seconds' line rounded half-up once), and the answer has exactly the documented fields."""
    assert set(quote) == {
        "model",
        "rate_card_version",
        "lines",
        "total_usd",
        "accepted",
        "refusal",
        "scopes",
    }
    assert sum(usd(line["amount_usd"]) for line in quote["lines"]) == usd(quote["total_usd"])
    for line in quote["lines"]:
        exact = Decimal(line["quantity"]) * usd(line["unit_price_usd"])
        rounded = int(exact.to_integral_value(rounding="ROUND_HALF_UP"))
        assert usd(line["amount_usd"]) == rounded, line
    for scope in quote["scopes"]:
        assert set(scope) == SCOPE_FIELDS
        remaining, after = scope["remaining_usd"], scope["remaining_after_usd"]
        if remaining is None:
            assert after is None
        else:
            assert usd(remaining) - usd(quote["total_usd"]) == parse_signed(after)


def parse_signed(text: str) -> int:
    return -usd(text[1:]) if text.startswith("-") else usd(text)


def held_for(database: str, tenant: Tenant, submitted: httpx.Response) -> list[tuple[str, int]]:
    ledger = team_ledger(database, tenant.team)
    job = ledger.job_by_upstream_id(submitted.json()["job_id"])
    return ledger.entries_of(job.id)


# The table: body fields, the project header (None: none), and the price on the seed's card
# (image 0.05; 480p 0.096/s; 720p 0.168/s).
SEED_TABLE: list[tuple[dict[str, Any], str | None, str]] = [
    ({}, None, "1.680000"),  # the defaults: 10 s at 720p
    ({"duration": 1}, None, "0.168000"),
    ({"duration": 2.5, "resolution": "480p"}, None, "0.240000"),
    ({"duration": 15, "image": IMAGE_URL}, None, "2.570000"),
    ({"duration": 1.001, "resolution": "720p"}, "atlas", "0.168168"),
    (
        {"duration": 7.125, "resolution": "480p", "image": data_uri("image/png", PNG)},
        "atlas",
        "0.734000",
    ),
    ({"duration": 14.999, "aspect_ratio": "9:16"}, "atlas", "2.519832"),
]


@pytest.mark.parametrize(("fields", "project", "price"), SEED_TABLE)
def test_a_quote_is_what_the_submit_then_holds(
    gateway: httpx.Client,
    simulator: SimulatorProbe,
    postgres_url: str,
    fields: dict[str, Any],
    project: str | None,
    price: str,
) -> None:
    tenant = make_tenant(postgres_url)
    headers = {"Idempotency-Key": "quote-table-1", "X-Gateway-Tags": "user=dana"}
    if project is not None:
        make_project(postgres_url, tenant.team, project, budget_micro_usd=50_000_000)
        headers["X-Gateway-Project"] = project
    quoted, submitted = quote_then_submit(gateway, tenant, submit_body(**fields), headers)
    assert quoted.status_code == 200, quoted.text
    quote = quoted.json()
    assert_adds_up(quote)
    assert (quote["model"], quote["rate_card_version"]) == (MODEL, "seed-2026-11")
    assert (quote["total_usd"], quote["accepted"], quote["refusal"]) == (price, True, None)
    assert submitted.status_code == 200, submitted.text
    assert submitted.headers["X-Gateway-Cost-Estimate-USD"] == quote["total_usd"]
    assert held_for(postgres_url, tenant, submitted) == [("hold", usd(price))]
    expected = [("team", tenant.team)]
    if project is not None:
        expected.append(("project", project))
    expected.append(("key", tenant.key_id))
    assert [(s["scope"], s["name"]) for s in quote["scopes"]] == expected
    team = quote["scopes"][0]
    assert (team["budget_usd"], team["remaining_usd"]) == ("1000.000000", "1000.000000")
    assert team["remaining_after_usd"] == format_usd(1_000_000_000 - usd(price))
    key = quote["scopes"][-1]
    assert (key["budget_usd"], key["remaining_usd"], key["remaining_after_usd"]) == (None,) * 3
    assert quoted.headers["X-Quota-Remaining-USD"] == "1000.000000"
    lines = {line["item"]: line for line in quote["lines"]}
    resolution = fields.get("resolution", "720p")
    seconds = lines.pop(f"video_seconds_{resolution}")
    assert Decimal(seconds["quantity"]) == Decimal(str(fields.get("duration", 10)))
    if "image" in fields:
        assert lines.pop("image") == {
            "item": "image",
            "quantity": "1",
            "unit_price_usd": "0.050000",
            "amount_usd": "0.050000",
        }
    assert lines == {}


def test_a_key_bound_to_a_project_is_quoted_on_its_project(
    gateway: httpx.Client, simulator: SimulatorProbe, postgres_url: str
) -> None:
    tenant = make_tenant(postgres_url)
    make_project(postgres_url, tenant.team, "launch", budget_micro_usd=5_000_000)
    bound = make_key(postgres_url, tenant.team, project="launch", budget_micro_usd=3_000_000)
    first, _ = quote_then_submit(gateway, bound, submit_body())
    quoted, submitted = quote_then_submit(gateway, bound, submit_body(duration=5))
    assert first.status_code == quoted.status_code == submitted.status_code == 200
    quote = quoted.json()
    assert_adds_up(quote)
    assert submitted.headers["X-Gateway-Cost-Estimate-USD"] == quote["total_usd"] == "0.840000"
    assert [
        (s["scope"], s["name"], s["budget_usd"], s["held_usd"], s["remaining_after_usd"])
        for s in quote["scopes"]
    ] == [
        ("team", tenant.team, "1000.000000", "1.680000", "997.480000"),
        ("project", "launch", "5.000000", "1.680000", "2.480000"),
        ("key", bound.key_id, "3.000000", "1.680000", "0.480000"),
    ]


# A card whose seconds' cost is rarely a whole micro-dollar: 720p 0.123457/s, 480p 0.098765/s,
# image 0.040001. Half-way cases: 2.5 s at 720p (308642.5), 12.5 s at 480p (1234562.5).
ODD_CARD = {"720p": 123_457, "480p": 98_765}
ODD_TABLE: list[tuple[dict[str, Any], int]] = [
    ({"duration": 2.5}, 308_643),
    ({"duration": 12.5, "resolution": "480p"}, 1_234_563),
    ({"duration": 1.001}, 123_580),  # 123580.457
    ({"duration": 7.333, "resolution": "480p", "image": IMAGE_URL}, 724_244 + 40_001),  # .745
    ({"duration": 3.5, "image": IMAGE_URL}, 432_100 + 40_001),  # 432099.5
    ({"duration": 15, "resolution": "480p"}, 1_481_475),
    ({"duration": 14.999}, 1_851_732),  # 1851731.543
]


@pytest.fixture(scope="module")
def odd_card_gateway(simulator_server: ServerThread) -> Iterator[tuple[ServerThread, str]]:
    """A gateway on a database of its own, whose rate card in force is ``ODD_CARD``."""
    url = create_postgres_database()

    async def _add() -> None:
        engine = create_engine(url)
        try:
            async with transaction(create_sessionmaker(engine)) as session:
                await add_rates(
                    session, "odd-1", ODD_CARD, actor=TEST_ACTOR, image_fee_micro_usd=40_001
                )
        finally:
            await engine.dispose()

    asyncio.run(_add())
    server = ServerThread(create_app(gateway_settings(url, simulator_server.url))).start()
    try:
        yield server, url
    finally:
        server.stop()
        drop_postgres_database(url)


@pytest.mark.parametrize(("fields", "price"), ODD_TABLE)
def test_lines_round_as_the_price_does_and_the_submit_holds_the_total(
    odd_card_gateway: tuple[ServerThread, str],
    simulator: SimulatorProbe,
    fields: dict[str, Any],
    price: int,
) -> None:
    server, url = odd_card_gateway
    tenant = make_tenant(url)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        quoted, submitted = quote_then_submit(client, tenant, submit_body(**fields))
    assert quoted.status_code == 200 and submitted.status_code == 200, submitted.text
    quote = quoted.json()
    assert_adds_up(quote)
    assert quote["rate_card_version"] == "odd-1"
    assert quote["total_usd"] == format_usd(price)
    assert submitted.headers["X-Gateway-Cost-Estimate-USD"] == quote["total_usd"]
    assert held_for(url, tenant, submitted) == [("hold", price)]


def test_a_quote_is_what_the_submit_then_holds_on_sqlite(
    start_gateway: StartGateway, simulator: SimulatorProbe, sqlite_url: str
) -> None:
    """The demo's database: every read through the ORM, every hold on its path."""
    tenant = make_tenant(sqlite_url)
    make_project(sqlite_url, tenant.team, "atlas", budget_micro_usd=3_000_000)
    server = start_gateway(database_url=sqlite_url)
    headers = {"X-Gateway-Project": "atlas"}
    accepted = []
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for fields, _, price in SEED_TABLE[:4]:
            quoted, submitted = quote_then_submit(client, tenant, submit_body(**fields), headers)
            quote = quoted.json()
            assert_adds_up(quote)
            accepted.append(quote["accepted"])
            if quote["accepted"]:
                assert submitted.headers["X-Gateway-Cost-Estimate-USD"] == price
                assert held_for(sqlite_url, tenant, submitted) == [("hold", usd(price))]
            else:
                assert quote["refusal"] == submitted.json()["error"]
                assert quote["refusal"]["scope"] == "project"
    assert accepted == [True, True, True, False]  # 1.68 + 0.168 + 0.24 + 2.57 > 3.00


# Refusals: the quote's answer is the submit's error object, exactly.


def assert_refused_alike(quoted: httpx.Response, submitted: httpx.Response, status: int) -> None:
    assert quoted.status_code == 200, quoted.text
    quote = quoted.json()
    assert quote["accepted"] is False
    assert submitted.status_code == status, submitted.text
    assert quote["refusal"] == submitted.json()["error"]
    team = quote["scopes"][0]
    assert quoted.headers["X-Quota-Remaining-USD"] == (team["remaining_usd"] or "unlimited")


def test_a_cost_cap_is_the_refusal_the_submit_then_gets(
    gateway: httpx.Client, simulator: SimulatorProbe, postgres_url: str
) -> None:
    tenant = make_tenant(postgres_url)
    set_team_cost_cap(postgres_url, tenant.team, 2_000_000)
    make_project(postgres_url, tenant.team, "small", max_cost_per_job_micro_usd=1_000_000)
    quoted, submitted = quote_then_submit(gateway, tenant, submit_body(duration=15))
    assert_refused_alike(quoted, submitted, 400)
    assert {k: quoted.json()["refusal"][k] for k in ("code", "scope", "cap_usd")} == {
        "code": "cost_cap_exceeded",
        "scope": "team",
        "cap_usd": "2.000000",
    }
    # The smallest cap that applies: the project's, named by the header.
    headers = {"X-Gateway-Project": "small"}
    quoted, submitted = quote_then_submit(gateway, tenant, submit_body(), headers)
    assert_refused_alike(quoted, submitted, 400)
    refusal = quoted.json()["refusal"]
    assert (refusal["scope"], refusal["scope_name"], refusal["requested_usd"]) == (
        "project",
        "small",
        "1.680000",
    )
    assert simulator.submits() == []
    assert team_ledger(postgres_url, tenant.team).jobs == []


@pytest.mark.parametrize("level", ["team", "project", "key"])
def test_a_budget_without_room_is_the_refusal_the_submit_then_gets(
    gateway: httpx.Client, simulator: SimulatorProbe, postgres_url: str, level: str
) -> None:
    """Room for one 1.68 job at ``level`` (the others roomy): the second is refused, by the
    quote as by the submit, naming that level with the same figures."""
    budgets = {"team": 1_000_000_000, "project": 1_000_000_000, "key": 1_000_000_000}
    budgets[level] = 3_000_000
    tenant = make_tenant(postgres_url, budget_micro_usd=budgets["team"])
    make_project(postgres_url, tenant.team, "atlas", budget_micro_usd=budgets["project"])
    key = make_key(postgres_url, tenant.team, project="atlas", budget_micro_usd=budgets["key"])
    first, _ = quote_then_submit(gateway, key, submit_body())
    assert first.json()["accepted"] is True
    quoted, submitted = quote_then_submit(gateway, key, submit_body())
    assert_refused_alike(quoted, submitted, 429)
    refusal = quoted.json()["refusal"]
    names = {"team": tenant.team, "project": "atlas", "key": key.key_id}
    assert {k: refusal[k] for k in ("code", "scope", "scope_name", "budget_usd", "used_usd")} == {
        "code": "quota_exceeded",
        "scope": level,
        "scope_name": names[level],
        "budget_usd": "3.000000",
        "used_usd": "1.680000",
    }
    after = {s["scope"]: s["remaining_after_usd"] for s in quoted.json()["scopes"]}
    assert after[level] == "-0.360000"  # 3.00 - 1.68 - 1.68: short by that much
    assert len(simulator.submits()) == 1


def test_the_first_level_without_room_is_named_in_lock_order(
    gateway: httpx.Client, simulator: SimulatorProbe, postgres_url: str
) -> None:
    tenant = make_tenant(postgres_url, budget_micro_usd=1_000_000)
    make_project(postgres_url, tenant.team, "atlas", budget_micro_usd=1_000_000)
    key = make_key(postgres_url, tenant.team, project="atlas", budget_micro_usd=1_000_000)
    quoted, submitted = quote_then_submit(gateway, key, submit_body())
    assert_refused_alike(quoted, submitted, 429)
    assert quoted.json()["refusal"]["scope"] == "team"
    assert [s["remaining_after_usd"] for s in quoted.json()["scopes"]] == ["-0.680000"] * 3


def test_a_full_concurrency_cap_is_the_refusal_the_submit_then_gets(
    gateway: httpx.Client, simulator: SimulatorProbe, postgres_url: str
) -> None:
    tenant = make_tenant(postgres_url, max_concurrent_jobs=1)
    first, running = quote_then_submit(gateway, tenant, submit_body())
    assert first.json()["accepted"] is True and running.status_code == 200
    quoted, submitted = quote_then_submit(gateway, tenant, submit_body())
    assert_refused_alike(quoted, submitted, 429)
    refusal = quoted.json()["refusal"]
    assert (refusal["code"], refusal["jobs_in_flight"], refusal["max_concurrent_jobs"]) == (
        "concurrency_limit",
        1,
        1,
    )
    gateway.get(f"/v1/jobs/{running.json()['job_id']}", headers=tenant.headers)  # settles it
    assert post(gateway, QUOTE_PATH, tenant, submit_body()).json()["accepted"] is True


# The submit's errors are the quote's.


def test_the_submits_errors_are_the_quotes(
    gateway: httpx.Client, simulator: SimulatorProbe, postgres_url: str
) -> None:
    tenant = make_tenant(postgres_url)
    make_project(postgres_url, tenant.team, "atlas")
    make_project(postgres_url, tenant.team, "other")
    bound = make_key(postgres_url, tenant.team, project="atlas")
    cases: list[tuple[Tenant | None, Mapping[str, Any] | bytes, dict[str, str], int, str]] = [
        (tenant, submit_body(duration=20), {}, 400, "out_of_range"),
        (tenant, submit_body(promt="x"), {}, 400, "unknown_parameter"),
        (tenant, {"model": MODEL}, {}, 400, "missing_parameter"),
        (tenant, b'{"model": "x", "model": "y"}', {}, 400, "invalid_json"),
        (tenant, b"[1]", {}, 400, "invalid_body"),
        (tenant, submit_body(image="ftp://x"), {}, 400, "invalid_image_url"),
        (tenant, submit_body(), {"X-Gateway-Tags": "no equals sign"}, 400, "invalid_tags"),
        (tenant, submit_body(), {"X-Gateway-Project": "nope"}, 400, "unknown_project"),
        (tenant, submit_body(), {"X-Gateway-Project": "bad name!"}, 400, "unknown_project"),
        (bound, submit_body(), {"X-Gateway-Project": "other"}, 403, "project_not_allowed"),
        (None, submit_body(), {}, 401, "missing_api_key"),
        (None, submit_body(), {"Authorization": "Bearer gwk_nope_nope"}, 401, "invalid_api_key"),
    ]
    for who, body, headers, status, code in cases:
        quoted, submitted = quote_then_submit_as(gateway, who, body, headers)
        assert (quoted.status_code, submitted.status_code) == (status, status), (code, quoted.text)
        assert quoted.json() == submitted.json(), code
        assert quoted.json()["error"]["code"] == code
    assert simulator.submits() == []


def quote_then_submit_as(
    client: httpx.Client,
    who: Tenant | None,
    body: Mapping[str, Any] | bytes,
    headers: Mapping[str, str],
) -> tuple[httpx.Response, httpx.Response]:
    return (
        post(client, QUOTE_PATH, who, body, headers),
        post(client, SUBMIT_PATH, who, body, headers),
    )


def test_a_header_sent_twice_and_a_body_over_the_cap_are_refused_alike(
    start_gateway: StartGateway, simulator: SimulatorProbe, postgres_url: str
) -> None:
    tenant = make_tenant(postgres_url)
    server = start_gateway(max_request_body_bytes=4096)
    too_large = submit_body(prompt="x" * 5000)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        quoted, submitted = quote_then_submit(client, tenant, too_large)
        assert quoted.status_code == submitted.status_code == 413
        assert quoted.json() == submitted.json()
        twice = [("X-Gateway-Tags", "a=1"), ("X-Gateway-Tags", "b=2"), *tenant.headers.items()]
        answers = [
            client.post(path, json=submit_body(), headers=twice)
            for path in (QUOTE_PATH, SUBMIT_PATH)
        ]
        assert [a.status_code for a in answers] == [400, 400]
        assert answers[0].json() == answers[1].json()
        # An Idempotency-Key is checked as the submit checks it (sent once, its form) ...
        for bad in (
            [("Idempotency-Key", "a"), ("Idempotency-Key", "b")],
            [("Idempotency-Key", "x" * 300)],
        ):
            answers = [
                client.post(path, json=submit_body(), headers=[*bad, *tenant.headers.items()])
                for path in (QUOTE_PATH, SUBMIT_PATH)
            ]
            assert [a.status_code for a in answers] == [400, 400]
            assert answers[0].json() == answers[1].json()
        # ... and otherwise claims nothing: the same key quoted twice is two quotes.
        same = [("Idempotency-Key", "quote-twice"), *tenant.headers.items()]
        for _ in range(2):
            assert client.post(QUOTE_PATH, json=submit_body(), headers=same).status_code == 200
    assert simulator.submits() == []


def test_a_quote_holds_forwards_bills_and_records_nothing(
    gateway: httpx.Client, simulator: SimulatorProbe, postgres_url: str
) -> None:
    tenant = make_tenant(postgres_url, budget_micro_usd=2_000_000, max_concurrent_jobs=3)
    make_project(postgres_url, tenant.team, "atlas", budget_micro_usd=1_000_000)
    cases: list[tuple[dict[str, Any], dict[str, str], str | None]] = [
        ({}, {}, None),
        ({"duration": 1}, {"X-Gateway-Project": "atlas"}, None),
        ({}, {"X-Gateway-Project": "atlas"}, "project"),
        ({"duration": 15}, {}, "team"),
    ]
    for fields, headers, refused_at in cases:
        for _ in range(3):  # the same answer each time: nothing was taken
            answer = post(gateway, QUOTE_PATH, tenant, submit_body(**fields), headers)
            assert answer.status_code == 200, answer.text
            refusal = answer.json()["refusal"]
            assert (refusal["scope"] if refusal else None) == refused_at
    ledger = team_ledger(postgres_url, tenant.team)
    assert (ledger.jobs, ledger.entries, ledger.balances) == ([], [], [])
    assert simulator.requests() == []
    usage = gateway.get("/v1/usage", headers=tenant.headers).json()
    assert (usage["held_usd"], usage["captured_usd"]) == ("0.000000", "0.000000")


def test_the_quote_is_documented_with_the_submits_body(
    gateway: httpx.Client, simulator: SimulatorProbe, postgres_url: str
) -> None:
    document = gateway.get("/openapi.json").json()
    quote = document["paths"][QUOTE_PATH]["post"]
    submit = document["paths"][SUBMIT_PATH]["post"]
    assert quote["operationId"] == "createQuote"
    assert quote["requestBody"] == submit["requestBody"]
    assert {p["name"] for p in quote["parameters"]} == {p["name"] for p in submit["parameters"]}
    assert set(quote["responses"]) == {"200", "400", "401", "403", "413", "503"}
    ok = quote["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok == {"$ref": "#/components/schemas/QuoteOut"}
    schemas = document["components"]["schemas"]
    assert set(schemas["QuoteOut"]["required"]) == {
        "model",
        "rate_card_version",
        "lines",
        "total_usd",
        "accepted",
        "refusal",
        "scopes",
    }
    assert set(schemas["QuoteScopeOut"]["properties"]) == SCOPE_FIELDS
    assert quote["security"] == submit["security"]
    # Real answers, accepted and refused, match the documented schema.
    validator = jsonschema.Draft202012Validator(
        {"$ref": "#/components/schemas/QuoteOut", "components": document["components"]}
    )
    tenant = make_tenant(postgres_url, budget_micro_usd=2_000_000)
    make_project(postgres_url, tenant.team, "atlas", budget_micro_usd=1_000_000)
    bodies: list[dict[str, Any]] = [{"image": IMAGE_URL, "duration": 2}, {}]
    for fields in bodies:
        headers = {"X-Gateway-Project": "atlas"}
        answer = post(gateway, QUOTE_PATH, tenant, submit_body(**fields), headers).json()
        validator.validate(answer)
    assert answer["refusal"]["code"] == "quota_exceeded"
