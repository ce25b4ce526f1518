"""The soak's short version (``benchmarks/soak.py``): a mixed load with every fault kind
injected in turn, then the books. ``GATEWAY_SOAK_SECONDS=600`` runs the full ten minutes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SECONDS = float(os.environ.get("GATEWAY_SOAK_SECONDS", "60"))
SOAK = Path(__file__).resolve().parents[2] / "benchmarks" / "soak.py"


@pytest.mark.slow
@pytest.mark.timeout(int(SECONDS) + 300)
def test_soak_with_every_fault_kind_keeps_the_books(postgres_url: str, tmp_path: Path) -> None:
    summary_path = tmp_path / "soak.json"
    finished = subprocess.run(
        [sys.executable, str(SOAK), "--seconds", str(SECONDS), "--json", str(summary_path)],
        capture_output=True,
        text=True,
        timeout=SECONDS + 280,
        check=False,
    )
    assert summary_path.exists(), finished.stdout[-3000:] + finished.stderr[-3000:]
    summary = json.loads(summary_path.read_text())
    print(json.dumps(summary, indent=2))
    assert set(summary["faults_injected"]) == {
        "db_terminate",
        "db_refuse",
        "net_cut",
        "lock_contention",
        "upstream_pause",
        "gateway_kill",
    }
    assert summary["requests_served"] > 1000
    assert summary["jobs_accepted_by_clients"] > 100
    for figure in ("jobs_lost", "double_billed", "false_refusals", "http_500", "differences"):
        assert summary[figure] == 0, (figure, summary[figure])
    assert all(
        r["seconds"] is not None and r["seconds"] < 1.0
        for r in summary["recovery_after_database_returns_s"]
    ), summary["recovery_after_database_returns_s"]
    assert finished.returncode == 0, finished.stderr[-3000:]
