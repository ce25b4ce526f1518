"""The upstream simulator as the tests run it: its API key, and a probe of what reached it."""

from __future__ import annotations

from typing import Any

import httpx

from tests.support.api import SUBMIT_PATH

# Distinctive, so a test can search every response and log line for it.
UPSTREAM_KEY = "sk-upstream-SECRET-4b1d7e9c2a6f8053"


class SimulatorProbe:
    """Reads the simulator's own record of what reached it."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.http = httpx.Client(base_url=url, timeout=10)

    def reset(self) -> None:
        self.http.post("/_simulator/reset").raise_for_status()

    def requests(self) -> list[dict[str, Any]]:
        response = self.http.get("/_simulator/requests")
        response.raise_for_status()
        records: list[dict[str, Any]] = response.json()["requests"]
        return records

    def submits(self) -> list[dict[str, Any]]:
        return [r for r in self.requests() if r["method"] == "POST" and r["path"] == SUBMIT_PATH]

    def usage(self) -> dict[str, Any]:
        response = self.http.get("/_simulator/usage")
        response.raise_for_status()
        usage: dict[str, Any] = response.json()
        return usage
