"""A real HTTP endpoint that receives the gateway's budget-alert webhooks (serve it with
``tests.support.servers.serving``)."""

from __future__ import annotations

import json
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response


class WebhookReceiver:
    """Records every delivery; refuses (500) its first ``fail_first`` ones."""

    def __init__(self, fail_first: int = 0) -> None:
        self.fail_first = fail_first
        self.received: list[tuple[dict[str, str], bytes, int]] = []

    async def handle(self, request: Request) -> Response:
        body = await request.body()
        status = 500 if len(self.received) < self.fail_first else 204
        self.received.append((dict(request.headers), body, status))
        return Response(status_code=status)

    def for_team(self, team: str) -> list[tuple[dict[str, str], bytes, int]]:
        """Alerts form one queue for all teams: other tests' teams may be delivered too."""
        return [r for r in self.received if json.loads(r[1])["team"] == team]

    def delivered(self, team: str) -> list[dict[str, Any]]:
        return [json.loads(body) for _, body, status in self.for_team(team) if status == 204]

    def wait_for(self, team: str, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """The team's first ``count`` delivered alerts, once they have all arrived."""
        deadline = time.monotonic() + timeout
        while len(self.delivered(team)) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{count} alerts for {team} not delivered in time")
            time.sleep(0.05)
        return self.delivered(team)
