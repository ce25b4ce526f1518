"""A real receiver of team webhooks on loopback, as a team would write one: every delivery is
verified with the Standard Webhooks reference library (``standardwebhooks``) before it counts.

    with signed_receiver() as receiver:
        ...create a subscription to receiver.url, then receiver.secrets.append(secret)...
        receiver.wait_for(ids)

``/hook`` answers 204 to a verified delivery, 400 to one whose signature does not verify with
any of ``secrets`` (counted in ``bad_signatures``), and ``down_status`` (503) while ``down``.
``/moved`` answers 302 to ``/hook``: a sender that follows it would show up in ``hook_hits``.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from standardwebhooks import Webhook, WebhookVerificationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from tests.support.servers import running


@dataclass(frozen=True)
class Received:
    webhook_id: str
    timestamp: int
    headers: dict[str, str]
    body: bytes

    @property
    def event(self) -> dict[str, Any]:
        event: dict[str, Any] = json.loads(self.body)
        return event


@dataclass
class SignedReceiver:
    secrets: list[str] = field(default_factory=list)
    down: bool = False
    down_status: int = 503
    url: str = ""
    received: list[Received] = field(default_factory=list)
    """Verified deliveries (duplicates included), in arrival order."""
    refused_while_down: int = 0
    bad_signatures: int = 0
    hook_hits: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def moved_url(self) -> str:
        return self.url.removesuffix("/hook") + "/moved"

    async def hook(self, request: Request) -> Response:
        body = await request.body()
        headers = dict(request.headers)
        with self._lock:
            self.hook_hits += 1
            if self.down:
                self.refused_while_down += 1
                return Response(status_code=self.down_status)
        if not self._verifies(body, headers):
            with self._lock:
                self.bad_signatures += 1
            return Response(status_code=400)
        with self._lock:
            self.received.append(
                Received(headers["webhook-id"], int(headers["webhook-timestamp"]), headers, body)
            )
        return Response(status_code=204)

    async def moved(self, request: Request) -> Response:
        return RedirectResponse(self.url, status_code=302)

    def _verifies(self, body: bytes, headers: dict[str, str]) -> bool:
        for secret in list(self.secrets):
            try:
                Webhook(secret).verify(body, headers)
            except WebhookVerificationError:
                continue
            return True
        return False

    def by_id(self) -> dict[str, dict[str, Any]]:
        """Verified events after dedup by ``webhook-id`` (the first copy of each)."""
        events: dict[str, dict[str, Any]] = {}
        for delivery in list(self.received):
            events.setdefault(delivery.webhook_id, delivery.event)
        return events

    def wait_for(self, ids: Iterable[str], timeout: float = 30.0) -> dict[str, dict[str, Any]]:
        """The events with these ids, once every one has arrived."""
        wanted = set(ids)
        deadline = time.monotonic() + timeout
        while not wanted <= self.by_id().keys():
            if time.monotonic() > deadline:
                missing = sorted(wanted - self.by_id().keys())
                raise AssertionError(f"{len(missing)} events never arrived: {missing[:5]}")
            time.sleep(0.05)
        return {i: e for i, e in self.by_id().items() if i in wanted}


@contextmanager
def signed_receiver(port: int = 0, secrets: Iterable[str] = ()) -> Iterator[SignedReceiver]:
    """A receiver on ``port`` (0: a free one) that accepts deliveries signed with
    ``secrets`` (or those added to ``receiver.secrets`` later)."""
    receiver = SignedReceiver(secrets=list(secrets))
    app = Starlette(
        routes=[
            Route("/hook", receiver.hook, methods=["POST"]),
            Route("/moved", receiver.moved, methods=["POST"]),
        ]
    )
    with running(app, port) as server:
        receiver.url = server.url + "/hook"
        yield receiver
