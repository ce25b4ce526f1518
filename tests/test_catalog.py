"""Models are data: a second model is a catalog entry, not code; a contradictory catalog
refuses to load."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from gateway.catalog.spec import load_catalog
from tests.support.api import SUBMIT_PATH, submit
from tests.support.servers import StartGateway
from tests.support.simulator import SimulatorProbe
from tests.support.tenants import Tenant

BUILT_IN = Path(__file__).resolve().parent.parent / "gateway" / "catalog" / "models.json"


def catalog_with_second_model() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(BUILT_IN.read_text())
    data["models"].append(
        {
            "id": "acme-video-mini",
            "params": {
                "prompt": {"kind": "string", "required": True, "min_length": 1, "max_length": 200},
                "seconds": {"kind": "integer", "minimum": 2, "maximum": 6, "default": 4},
                "quality": {"kind": "enum", "values": ["draft", "final"], "default": "draft"},
                "loop": {"kind": "boolean", "default": False},
            },
            "pricing": {
                "duration_param": "seconds",
                "resolution_param": "quality",
                "rate_card": {
                    "version": "acme-1",
                    "effective_from": "2026-06-01T00:00:00Z",
                    "image_fee_micro_usd": 0,
                    "per_second_micro_usd": {"draft": 10_000, "final": 25_000},
                },
            },
        }
    )
    return data


def test_second_model_is_a_data_change(
    start_gateway: StartGateway, simulator: SimulatorProbe, tenant: Tenant, tmp_path: Path
) -> None:
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps(catalog_with_second_model()))
    server = start_gateway(catalog_path=path)
    with httpx.Client(base_url=server.url) as client:
        wrong = client.post(
            SUBMIT_PATH,
            json={"model": "acme-video-mini", "prompt": "x", "seconds": 9},
            headers=tenant.headers,
        )
        typo = client.post(
            SUBMIT_PATH,
            json={"model": "acme-video-mini", "prompt": "x", "duration": 3},
            headers=tenant.headers,
        )
        loop = client.post(
            SUBMIT_PATH,
            json={"model": "acme-video-mini", "prompt": "x", "loop": "yes"},
            headers=tenant.headers,
        )
        seed_model = submit(client, tenant, "x")
    assert (wrong.status_code, wrong.json()["error"]["code"]) == (400, "out_of_range")
    assert (typo.status_code, typo.json()["error"]["param"]) == (400, "duration")
    assert (loop.status_code, loop.json()["error"]["code"]) == (400, "invalid_type")
    assert seed_model.status_code == 200
    assert len(simulator.submits()) == 1


def test_second_model_prices_from_its_own_rate_card(tmp_path: Path) -> None:
    from gateway.catalog.validation import parse_submission
    from gateway.core.pricing import price_request

    path = tmp_path / "catalog.json"
    path.write_text(json.dumps(catalog_with_second_model()))
    catalog = load_catalog(path)
    request = parse_submission(
        b'{"model": "acme-video-mini", "prompt": "x", "quality": "final"}', catalog
    )
    spec = catalog.get("acme-video-mini")
    assert spec is not None
    assert price_request(request.billable_units(), spec.pricing.rate_card.to_rate_card()) == 100_000


@pytest.mark.parametrize(
    "break_it",
    [
        pytest.param(lambda m: m["pricing"].update(duration_param="nope"), id="unknown duration"),
        pytest.param(
            lambda m: m["pricing"]["rate_card"]["per_second_micro_usd"].pop("480p"),
            id="resolution without a rate",
        ),
        pytest.param(
            lambda m: m["pricing"]["rate_card"].update(image_fee_micro_usd=0.05),
            id="float money",
        ),
        pytest.param(
            lambda m: m["pricing"]["rate_card"]["per_second_micro_usd"].update({"720p": 168000.0}),
            id="integral float money",
        ),
        pytest.param(lambda m: m["params"]["resolution"].update(default="1080p"), id="bad default"),
        pytest.param(lambda m: m["params"]["duration"].update(kind="colour"), id="unknown kind"),
        pytest.param(
            lambda m: m["params"].update(model={"kind": "string", "max_length": 5}),
            id="model declared as a param",
        ),
    ],
)
def test_contradictory_catalog_refuses_to_load(tmp_path: Path, break_it: Any) -> None:
    data = json.loads(BUILT_IN.read_text())
    break_it(data["models"][0])
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValidationError):
        load_catalog(path)
