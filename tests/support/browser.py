"""Headless Chromium through chromedriver (Debian packages ``chromium``, ``chromium-driver``),
spoken to over the plain WebDriver HTTP protocol: no extra Python dependency.

- ``render_in_chromium(page, screenshot)``: a local HTML file (the chargeback report);
- ``render_url_in_chromium(url, probe, screenshot, ready=...)``: a page a test server serves,
  read once a ``ready`` script says it has rendered (Swagger UI builds itself after load).

Chromium resolves no host name but 127.0.0.1 (``--host-resolver-rules``): nothing a page asks
for can leave the machine, whatever it references."""

from __future__ import annotations

import base64
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
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
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
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


class BrowserSession:
    """One WebDriver session: open a URL, run a script in the page, take a screenshot."""

    def __init__(self, url: str) -> None:
        self.url = url

    def open(self, url: str) -> None:
        httpx.post(self.url + "/url", json={"url": url}, timeout=60).raise_for_status()

    def execute(self, script: str) -> Any:
        answer = httpx.post(
            self.url + "/execute/sync", json={"script": script, "args": []}, timeout=60
        )
        return answer.json()["value"]

    def wait_for(self, script: str, timeout: float = 30) -> None:
        """Until ``script`` returns something truthy in the page."""
        deadline = time.monotonic() + timeout
        while not self.execute(script):
            assert time.monotonic() < deadline, f"the page never satisfied: {script}"
            time.sleep(0.1)

    def screenshot(self, path: Path) -> None:
        shot = httpx.get(self.url + "/screenshot", timeout=60).json()["value"]
        path.write_bytes(base64.b64decode(shot))


@contextmanager
def chromium_session() -> Iterator[BrowserSession]:
    """A headless Chromium under a chromedriver of its own, closed afterwards (skips loudly,
    or fails under ``CI=true``, when either is not installed)."""
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
            yield BrowserSession(session)
        finally:
            httpx.delete(session, timeout=30)
    finally:
        process.terminate()
        process.wait(timeout=10)


def render_in_chromium(page: Path, screenshot: Path) -> dict[str, Any]:
    """Open a local HTML file, read ``PROBE`` from it and save a screenshot."""
    with chromium_session() as browser:
        browser.open(page.resolve().as_uri())
        seen: dict[str, Any] = browser.execute(PROBE)
        browser.screenshot(screenshot)
        return seen


def render_url_in_chromium(
    url: str, probe: str, screenshot: Path, *, ready: str, timeout: float = 30
) -> dict[str, Any]:
    """Open ``url``, wait until the ``ready`` script is truthy, then return what ``probe``
    returns and save a screenshot."""
    with chromium_session() as browser:
        browser.open(url)
        browser.wait_for(ready, timeout)
        seen: dict[str, Any] = browser.execute(probe)
        browser.screenshot(screenshot)
        return seen
