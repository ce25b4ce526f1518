"""The API documentation (issue 14): the OpenAPI document says what the gateway really does
(the submit body generated from the catalog, the answers and errors of every tenant route in
the gateway's envelope, security schemes, stable operation ids), a client generated from it
runs the seed's flow against a real gateway, and ``/docs`` renders offline in Chromium.

Also the 429s' contract: the concurrency limit says when to retry, the budget does not (a retry
cannot succeed this month), and the figures in error objects keep their JSON types."""

from __future__ import annotations

import base64
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest

from gateway.app import create_app
from gateway.catalog.spec import EnumRule, NumberRule, load_catalog
from gateway.catalog.validation import validate_submission
from gateway.errors import CONCURRENCY_RETRY_AFTER_SECONDS, ConcurrencyLimited
from tests.support.api import MODEL, SUBMIT_PATH, submit
from tests.support.browser import render_url_in_chromium
from tests.support.processes import free_port
from tests.support.servers import ServerThread, StartGateway
from tests.support.settings import gateway_settings
from tests.support.simulator import SimulatorProbe
from tests.support.tenants import Tenant, make_tenant

REPO = Path(__file__).resolve().parents[1]
POLL_PATH = "/v1/jobs/{job_id}"
USAGE_PATH = "/v1/usage"
ENVELOPES = {"#/components/schemas/ErrorEnvelope", "#/components/schemas/QuotaErrorEnvelope"}

# The seed's parameter table (seed/grok-imagine-video-1.5-api.txt), as it reads there.
SEED_PARAMETERS: dict[str, dict[str, Any]] = {
    "prompt": {"type": "string"},
    "image": {"type": "string"},
    "duration": {"type": "number", "default": 10, "minimum": 1, "maximum": 15},
    "resolution": {"type": "string", "default": "720p", "enum": ["480p", "720p"]},
    "aspect_ratio": {
        "type": "string",
        "enum": ["1:1", "16:9", "9:16", "4:3", "3:4", "3:2", "2:3"],
    },
}
# Operation ids clients are generated with: renaming one breaks every generated client.
STABLE_OPERATION_IDS = {
    ("post", SUBMIT_PATH): "createVideoGeneration",
    ("get", POLL_PATH): "getJob",
    ("get", USAGE_PATH): "getUsage",
    ("get", "/healthz"): "healthz",
    ("get", "/readyz"): "readyz",
    ("get", "/admin/teams"): "adminListTeams",
    ("post", "/admin/teams"): "adminCreateTeam",
    ("get", "/admin/teams/{name}"): "adminGetTeam",
    ("patch", "/admin/teams/{name}"): "adminUpdateTeam",
    ("post", "/admin/teams/{name}/keys"): "adminCreateKey",
    ("post", "/admin/keys/{key_id}/revoke"): "adminRevokeKey",
    ("get", "/admin/jobs/{job_id}"): "adminGetJob",
    ("get", "/admin/usage"): "adminGetUsage",
    ("get", "/admin/reports/chargeback"): "adminChargebackReport",
}
# Every status each tenant route answers itself (beside the upstream's own 4xx, passed through).
TENANT_ERRORS = {
    ("post", SUBMIT_PATH): {"400", "401", "403", "409", "413", "422", "429", "502", "503", "504"},
    ("get", POLL_PATH): {"401", "403", "404", "429", "502", "503", "504"},
    ("get", USAGE_PATH): {"401", "403", "503"},
}


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    """The document as the app builds it (no database needed), through JSON like a client."""
    app = create_app(gateway_settings("sqlite:///:memory:", "http://upstream.invalid"))
    built: dict[str, Any] = json.loads(json.dumps(app.openapi()))
    return built


def operations(document: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (method, path): operation
        for path, item in document["paths"].items()
        for method, operation in item.items()
    }


def submit_body(document: dict[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = document["paths"][SUBMIT_PATH]["post"]["requestBody"]
    media: dict[str, Any] = body["content"]["application/json"]
    return media


def validator_for(document: dict[str, Any], schema: dict[str, Any]) -> jsonschema.Validator:
    """A JSON Schema 2020-12 validator (OpenAPI 3.1) that resolves the document's refs."""
    rooted = {**schema, "components": document["components"]}
    return jsonschema.Draft202012Validator(rooted)


def refs_in(node: Any) -> set[str]:
    if isinstance(node, dict):
        found = {node["$ref"]} if isinstance(node.get("$ref"), str) else set()
        return found.union(*(refs_in(value) for value in node.values()))
    if isinstance(node, list):
        return set().union(*(refs_in(value) for value in node))
    return set()


# The submit body, from the catalog


def test_every_seed_parameter_is_documented_as_the_catalog_rules_it(
    document: dict[str, Any],
) -> None:
    media = submit_body(document)
    schema = media["schema"]
    assert document["paths"][SUBMIT_PATH]["post"]["requestBody"]["required"] is True
    assert schema["type"] == "object" and schema["additionalProperties"] is False
    assert schema["required"] == ["model", "prompt"]
    assert schema["properties"]["model"]["enum"] == [MODEL]
    assert set(schema["properties"]) == {"model", *SEED_PARAMETERS}
    spec = load_catalog().get(MODEL)
    assert spec is not None
    for name, seed in SEED_PARAMETERS.items():
        documented = schema["properties"][name]
        assert documented["description"], name
        assert {key: documented.get(key) for key in seed} == seed, name
        rule = spec.params[name]
        # ...and what the seed says is what the catalog says, so it comes from the catalog.
        if isinstance(rule, NumberRule):
            assert (documented["minimum"], documented["maximum"]) == (rule.minimum, rule.maximum)
            assert documented["default"] == rule.default
        if isinstance(rule, EnumRule):
            assert documented["enum"] == list(rule.values)
            assert documented.get("default") == rule.default
    assert "default" not in schema["properties"]["aspect_ratio"]  # the source image's


def test_the_body_schema_follows_the_catalog_it_is_given(tmp_path: Path) -> None:
    """A changed catalog (a data change) changes the documented body: nothing is written down
    twice."""
    catalog = json.loads((REPO / "gateway/catalog/models.json").read_text())
    catalog["models"][0]["params"]["duration"]["maximum"] = 12
    catalog["models"][0]["params"]["resolution"]["values"].append("1080p")
    catalog["models"][0]["pricing"]["rate_card"]["per_second_micro_usd"]["1080p"] = 300_000
    path = tmp_path / "models.json"
    path.write_text(json.dumps(catalog))
    settings = gateway_settings("sqlite:///:memory:", "http://upstream.invalid", catalog_path=path)
    schema = submit_body(create_app(settings).openapi())["schema"]
    assert schema["properties"]["duration"]["maximum"] == 12
    assert schema["properties"]["resolution"]["enum"] == ["480p", "720p", "1080p"]


def test_the_examples_validate_against_the_schema_and_the_gateway_rules(
    document: dict[str, Any],
) -> None:
    media = submit_body(document)
    examples = media["examples"]
    assert set(examples) == {"text_only", "image_url", "image_data_uri"}
    validator = validator_for(document, media["schema"])
    catalog = load_catalog()
    for name, example in examples.items():
        validator.validate(example["value"])
        validate_submission(example["value"], catalog)  # the gateway's own rules, too
        assert example["summary"], name
    assert set(examples["text_only"]["value"]) == {"model", "prompt"}
    assert examples["image_url"]["value"]["image"].startswith("https://")
    data_uri = examples["image_data_uri"]["value"]["image"]
    assert data_uri.startswith("data:image/png;base64,")
    png = base64.b64decode(data_uri.partition(",")[2], validate=True)
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and png[12:16] == b"IHDR" and len(png) < 100
    # Wrong bodies are refused by the schema as by the gateway.
    for wrong in ({"model": MODEL, "prompt": "x", "duration": 20}, {"model": MODEL, "promt": "x"}):
        assert not validator.is_valid(wrong)


# Answers, errors, security, operation ids


def test_the_answers_of_submit_poll_and_usage_are_documented(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    ops = operations(document)

    def answer(key: tuple[str, str]) -> dict[str, Any]:
        ok: dict[str, Any] = ops[key]["responses"]["200"]
        return ok

    submitted = answer(("post", SUBMIT_PATH))
    assert submitted["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/JobAccepted"
    }
    assert {"X-Gateway-Cost-Estimate-USD", "X-Quota-Remaining-USD", "X-Request-ID"} <= set(
        submitted["headers"]
    )
    assert schemas["JobAccepted"]["required"] == ["job_id", "status"]
    polled = answer(("get", POLL_PATH))
    assert polled["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/JobStatus"
    }
    assert {"job_id", "status", "result", "error", "progress"} <= set(
        schemas["JobStatus"]["properties"]
    )
    usage = answer(("get", USAGE_PATH))
    assert usage["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/UsageOut"
    }
    assert set(schemas["UsageOut"]["required"]) >= {
        "team",
        "period",
        "budget_usd",
        "captured_usd",
        "held_usd",
        "remaining_usd",
        "scopes",
    }
    scope = schemas["UsageScopeOut"]
    assert schemas["UsageOut"]["properties"]["scopes"]["items"] == {
        "$ref": "#/components/schemas/UsageScopeOut"
    }
    assert set(scope["required"]) == {
        "scope",
        "name",
        "period",
        "budget_usd",
        "granted_usd",
        "captured_usd",
        "held_usd",
        "remaining_usd",
        "forecast_usd",
    }
    assert scope["properties"]["scope"]["enum"] == ["team", "project", "key"]
    poll_parameters = ops[("get", POLL_PATH)]["parameters"]
    assert [(p["name"], p["in"], p["required"]) for p in poll_parameters] == [
        ("job_id", "path", True)
    ]
    submit_headers = {p["name"] for p in ops[("post", SUBMIT_PATH)]["parameters"]}
    assert submit_headers == {"Idempotency-Key", "X-Gateway-Tags", "X-Gateway-Project"}


def test_errors_are_documented_in_the_gateway_envelope(document: dict[str, Any]) -> None:
    ops = operations(document)
    for key, statuses in TENANT_ERRORS.items():
        documented = {status for status in ops[key]["responses"] if int(status) >= 400}
        assert documented == statuses, key
    for key, operation in ops.items():
        for status, response in operation["responses"].items():
            if int(status) >= 400:
                refs = refs_in(response["content"]["application/json"]["schema"])
                assert refs and refs <= ENVELOPES, (key, status)
    concurrency = ops[("post", SUBMIT_PATH)]["responses"]["429"]
    assert "Retry-After" in concurrency["headers"]
    assert concurrency["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/QuotaErrorEnvelope"
    }
    quota = document["components"]["schemas"]["QuotaErrorObject"]["properties"]
    assert quota["jobs_in_flight"]["anyOf"][0] == {"type": "integer"}
    assert quota["budget_usd"]["anyOf"][0] == {"type": "string"}
    envelope = document["components"]["schemas"]["ErrorObject"]
    assert set(envelope["required"]) == {"type", "code", "message"}


def test_no_framework_422_is_documented(document: dict[str, Any]) -> None:
    """The gateway answers validation errors 400 in its envelope: FastAPI's 422
    ``HTTPValidationError`` would be a lie, on the tenant routes and everywhere else."""
    text = json.dumps(document)
    assert "HTTPValidationError" not in text and '"ValidationError"' not in text
    assert "ErrorBody" not in text  # one envelope schema: the admin routes' is the same
    for key in TENANT_ERRORS:
        responses = operations(document)[key]["responses"]
        if "422" in responses:  # the submit's: idempotency_key_reused
            assert "idempotency_key_reused" in responses["422"]["description"]


def test_security_schemes_give_swagger_an_authorize_button(document: dict[str, Any]) -> None:
    schemes = document["components"]["securitySchemes"]
    assert schemes["bearerAuth"] == {**schemes["bearerAuth"], "type": "http", "scheme": "bearer"}
    assert schemes["apiKeyHeader"] == {
        **schemes["apiKeyHeader"],
        "type": "apiKey",
        "in": "header",
        "name": "x-api-key",
    }
    assert schemes["adminBearer"]["scheme"] == "bearer"
    tenant = [{"bearerAuth": []}, {"apiKeyHeader": []}]
    assert document["security"] == tenant
    for key, operation in operations(document).items():
        path = key[1]
        if path.startswith("/admin"):
            assert operation["security"] == [{"adminBearer": []}], key
        elif path in ("/healthz", "/readyz"):
            assert operation["security"] == [], key
        else:
            assert operation["security"] == tenant, key


def test_operation_ids_are_stable_unique_and_camel_case(document: dict[str, Any]) -> None:
    ids = {key: operation["operationId"] for key, operation in operations(document).items()}
    assert {key: ids.get(key) for key in STABLE_OPERATION_IDS} == STABLE_OPERATION_IDS
    assert len(set(ids.values())) == len(ids)
    assert all(re.fullmatch(r"[a-z][A-Za-z0-9]*", value) for value in ids.values()), ids


# The docs pages, offline


def test_docs_pages_reference_nothing_outside_the_gateway(gateway: httpx.Client) -> None:
    for path in ("/docs", "/redoc"):
        page = gateway.get(path)
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert not re.search(r"https?://|//[a-z]", page.text), path
        assert "default-src 'self'" in page.headers["content-security-policy"]
    assert "validatorUrl" in gateway.get("/docs").text
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js", "favicon.png"):
        answer = gateway.get(f"/docs/assets/{asset}")
        assert answer.status_code == 200 and len(answer.content) > 1000, asset
    missing = gateway.get("/docs/assets/nothing.js")
    assert (missing.status_code, missing.json()["error"]["code"]) == (404, "route_not_found")


def test_docs_answer_on_the_tenant_port_with_an_admin_listener(
    start_gateway: StartGateway,
) -> None:
    """With ``--admin-port`` the docs are the tenant port's (its document leaves out the
    operator's routes, which it does not serve); the admin port serves none of it."""
    server = start_gateway(admin_port=free_port())
    with httpx.Client(base_url=server.url, timeout=30) as client:
        assert client.get("/docs").status_code == 200
        assert client.get("/docs/assets/swagger-ui-bundle.js").status_code == 200
        assert client.get("/redoc").status_code == 200
        served = client.get("/openapi.json").json()
        assert client.get("/admin/teams").status_code == 404
    assert SUBMIT_PATH in served["paths"] and "/healthz" in served["paths"]
    assert not [path for path in served["paths"] if path.startswith("/admin")]
    assert "TeamOut" not in served["components"]["schemas"]


# The 429s: when to retry, and numbers as numbers


def test_a_concurrency_refusal_carries_numbers_and_retry_after() -> None:
    refusal = ConcurrencyLimited(in_flight=3, limit=3)
    assert refusal.to_body()["error"] | {"message": ""} == {
        "type": "quota_error",
        "code": "concurrency_limit",
        "param": None,
        "message": "",
        "jobs_in_flight": 3,
        "max_concurrent_jobs": 3,
    }
    assert refusal.headers["Retry-After"] == str(CONCURRENCY_RETRY_AFTER_SECONDS)


def test_the_concurrency_limit_429_says_when_to_retry(
    gateway: httpx.Client,
    simulator: SimulatorProbe,
    postgres_url: str,
    document: dict[str, Any],
) -> None:
    tenant = make_tenant(postgres_url, max_concurrent_jobs=1)
    first = submit(gateway, tenant).json()["job_id"]
    refused = submit(gateway, tenant)
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == str(CONCURRENCY_RETRY_AFTER_SECONDS)
    error = refused.json()["error"]
    assert (error["code"], error["jobs_in_flight"], error["max_concurrent_jobs"]) == (
        "concurrency_limit",
        1,
        1,
    )
    schema = document["paths"][SUBMIT_PATH]["post"]["responses"]["429"]["content"]
    validator_for(document, schema["application/json"]["schema"]).validate(refused.json())
    gateway.get(f"/v1/jobs/{first}", headers=tenant.headers)  # settles it: nothing left open
    assert len(simulator.submits()) == 1


def test_an_exhausted_budget_429_does_not_say_retry(
    gateway: httpx.Client, simulator: SimulatorProbe, postgres_url: str
) -> None:
    tenant = make_tenant(postgres_url, budget_micro_usd=1_000_000)
    refused = submit(gateway, tenant)  # 10 s at 720p: $1.68 > $1
    assert refused.status_code == 429
    assert "retry-after" not in refused.headers
    error = refused.json()["error"]
    assert error["code"] == "quota_exceeded"
    assert (error["budget_usd"], error["used_usd"], error["requested_usd"]) == (
        "1.000000",
        "0.000000",
        "1.680000",
    )
    assert simulator.submits() == []


# A client generated from the document runs the seed's flow


def _generate_client(spec: dict[str, Any], tmp_path: Path) -> Path:
    generator = Path(sys.executable).with_name("openapi-python-client")
    assert generator.exists(), "openapi-python-client is a dev dependency (pyproject.toml)"
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    (tmp_path / "config.json").write_text(json.dumps({"post_hooks": []}))  # no ruff run
    output = tmp_path / "gateway_docs_client"
    generated = subprocess.run(
        [
            str(generator),
            "generate",
            "--path",
            str(tmp_path / "spec.json"),
            "--output-path",
            str(output),
            "--meta",
            "none",
            "--config",
            str(tmp_path / "config.json"),
        ],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert generated.returncode == 0, generated.stdout + generated.stderr
    assert "Warning" not in generated.stdout + generated.stderr, generated.stdout
    return output


def test_a_generated_client_runs_the_seed_flow(
    gateway_server: ServerThread,
    simulator: SimulatorProbe,
    tenant: Tenant,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spec = httpx.get(gateway_server.url + "/openapi.json", timeout=30).json()
    package = _generate_client(spec, tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        client_module = importlib.import_module(package.name)
        api = importlib.import_module(f"{package.name}.api.video_generation")
        models = importlib.import_module(f"{package.name}.models")
        importlib.import_module(f"{package.name}.api.video_generation.create_video_generation")
        importlib.import_module(f"{package.name}.api.video_generation.get_job")
        importlib.import_module(f"{package.name}.api.video_generation.get_usage")
        client = client_module.AuthenticatedClient(
            base_url=gateway_server.url, token=tenant.key, timeout=httpx.Timeout(30)
        )
        with client:
            body = models.CreateVideoGenerationBody(
                model=models.CreateVideoGenerationBodyModel(MODEL),
                prompt="Describe what you want Grok Imagine Video 1.5 to generate.",
            )
            submitted = api.create_video_generation.sync_detailed(client=client, body=body)
            assert submitted.status_code == 200, submitted.content
            job = submitted.parsed
            assert isinstance(job, models.JobAccepted) and job.status == "queued"
            estimate = submitted.headers["x-gateway-cost-estimate-usd"]
            assert estimate == "1.680000"  # the client sent the documented defaults

            deadline = time.monotonic() + 30
            while True:  # the seed's loop, through the generated client
                status = api.get_job.sync(client=client, job_id=job.job_id)
                assert isinstance(status, models.JobStatus)
                if status.status in ("completed", "failed"):
                    break
                assert time.monotonic() < deadline, "the job never finished"
                time.sleep(0.2)
            assert status.status == "completed" and status.job_id == job.job_id

            usage = api.get_usage.sync(client=client)
            assert isinstance(usage, models.UsageOut)
            assert (usage.team, usage.captured_usd, usage.held_usd) == (
                tenant.team,
                estimate,
                "0.000000",
            )
            missing = api.get_job.sync(client=client, job_id="job_no_such_job")
            assert isinstance(missing, models.ErrorEnvelope)
            assert missing.error.code == "job_not_found"
        with client_module.Client(
            base_url=gateway_server.url, headers={"x-api-key": tenant.key}
        ) as by_header:
            assert isinstance(api.get_usage.sync(client=by_header), models.UsageOut)
    finally:
        for name in [m for m in sys.modules if m.split(".")[0] == package.name]:
            del sys.modules[name]
    assert len(simulator.submits()) == 1


# Swagger UI, rendered in Chromium


# Deep-linked to the submit, so the page opens it: its body schema and examples render too.
SUBMIT_ANCHOR = "#/video%20generation/createVideoGeneration"
SWAGGER_RENDERED = (
    "return document.querySelectorAll('.opblock').length > 0"
    " && document.querySelectorAll('.opblock.is-open .body-param, .opblock.is-open"
    " .opblock-section-request-body').length > 0"
)
SWAGGER_PROBE = """
window.scrollTo(0, 0);  // the screenshot: title, Authorize, then the submit opened
return {
  resources: performance.getEntriesByType('resource').map(e => e.name),
  page: location.href,
  operations: document.querySelectorAll('.opblock').length,
  operation_ids: Array.from(
    document.querySelectorAll('.opblock-summary-operation-id')).map(e => e.textContent),
  authorize: document.querySelectorAll('.auth-wrapper .authorize').length,
  title: (document.querySelector('.info .title') || {}).textContent || '',
  errors: document.querySelectorAll('.errors-wrapper').length,
  open_body: (document.querySelector('.opblock.is-open .opblock-section-request-body')
    || {}).textContent || '',
};
"""


def test_swagger_ui_renders_offline_in_chromium(
    gateway_server: ServerThread, tmp_path: Path
) -> None:
    screenshot = tmp_path / "api-docs.png"
    seen = render_url_in_chromium(
        gateway_server.url + "/docs" + SUBMIT_ANCHOR,
        SWAGGER_PROBE,
        screenshot,
        ready=SWAGGER_RENDERED,
    )
    assert seen["operations"] >= 20, seen
    assert {"createVideoGeneration", "getJob", "getUsage"} <= set(seen["operation_ids"])
    assert seen["authorize"] == 1
    assert seen["title"].startswith("Video billing gateway")
    assert seen["errors"] == 0  # Swagger UI found nothing wrong with the document
    assert "grok-imagine-video-1-5" in seen["open_body"]  # the submit's example body
    loaded = seen["resources"]
    assert {f"{gateway_server.url}/openapi.json"} <= set(loaded)
    assert any(url.endswith("/docs/assets/swagger-ui-bundle.js") for url in loaded)
    outside = [url for url in loaded if not url.startswith(gateway_server.url + "/")]
    assert outside == [], "the docs page loaded something from elsewhere"
    assert screenshot.stat().st_size > 20_000
    if os.environ.get("GATEWAY_TEST_UPDATE_SCREENSHOTS") == "1":
        shutil.copyfile(screenshot, REPO / "docs" / "api-docs.png")  # the README's picture
