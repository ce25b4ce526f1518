"""Headless Chromium through chromedriver (Debian packages ``chromium``, ``chromium-driver``),
spoken to over the plain WebDriver HTTP protocol: no extra Python dependency."""

from __future__ import annotations

import base64
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

from tests.support.environment import require_tool
from tests.support.processes import free_port

# The flags a sandboxed, offline machine needs (no GPU, no phoning home).
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,1800",
]
PROBE = """
return {
  resources: performance.getEntriesByType('resource').map(e => e.name),
  spend_bars: document.querySelectorAll('#spend-per-group rect.bar').length,
  daily_bars: document.querySelectorAll('#daily-spend rect.bar').length,
  table_rows: document.querySelectorAll('#chargeback tbody tr').length,
  total_due: document.getElementById('total-due').textContent,
};
"""


def _require(tool: str) -> str:
    return require_tool(
        tool, install="Debian packages chromium, chromium-driver", skipped="browser test SKIPPED"
    )


def render_in_chromium(page: Path, screenshot: Path) -> dict[str, Any]:
    driver = _require("chromedriver")
    browser = _require("chromium")
    port = free_port()
    process = subprocess.Popen(
        [driver, f"--port={port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(base + "/status", timeout=1).json()["value"]["ready"]:
                    break
            except (httpx.TransportError, ValueError, KeyError):
                pass
            assert time.monotonic() < deadline, "chromedriver did not start"
            time.sleep(0.1)
        created = httpx.post(
            base + "/session",
            timeout=60,
            json={
                "capabilities": {
                    "alwaysMatch": {
                        "goog:chromeOptions": {"binary": browser, "args": CHROMIUM_ARGS},
                    }
                }
            },
        ).json()["value"]
        session = f"{base}/session/{created['sessionId']}"
        try:
            httpx.post(session + "/url", json={"url": page.resolve().as_uri()}, timeout=60)
            seen: dict[str, Any] = httpx.post(
                session + "/execute/sync", json={"script": PROBE, "args": []}, timeout=60
            ).json()["value"]
            shot = httpx.get(session + "/screenshot", timeout=60).json()["value"]
            screenshot.write_bytes(base64.b64decode(shot))
            return seen
        finally:
            httpx.delete(session, timeout=30)
    finally:
        process.terminate()
        process.wait(timeout=10)
