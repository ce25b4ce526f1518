"""Write base/prometheusrule.yaml from deploy/prometheus/gateway-alerts.yml (the one source of
the alert rules): ``python deploy/kubernetes/generate_prometheusrule.py``. The test suite fails
when the two disagree (tests/test_kubernetes.py)."""

from __future__ import annotations

from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
SOURCE = HERE.parent / "prometheus" / "gateway-alerts.yml"
TARGET = HERE / "base" / "prometheusrule.yaml"
HEADER = (
    "# Generated from deploy/prometheus/gateway-alerts.yml by\n"
    "# deploy/kubernetes/generate_prometheusrule.py: edit the rules there, then run it.\n"
)


def prometheus_rule() -> str:
    groups = yaml.safe_load(SOURCE.read_text())["groups"]
    document = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "gateway", "labels": {"role": "alert-rules"}},
        "spec": {"groups": groups},
    }
    return HEADER + yaml.safe_dump(document, sort_keys=False, width=100)


if __name__ == "__main__":
    TARGET.write_text(prometheus_rule())
