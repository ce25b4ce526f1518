"""Clients slow or broken on purpose, at the HTTP level: headers a byte at a time (slowloris),
a body that never finishes, more connections than the gateway should hold, bytes that are not
HTTP. Each is bounded and answered in the documented JSON error shape, and the gateway keeps
serving everyone else meanwhile."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time

import httpx
import pytest

from tests.support.servers import ServerThread, StartGateway
from tests.support.tenants import Tenant

LIMITS = {
    "http_header_timeout_seconds": 1.0,
    "http_body_timeout_seconds": 1.0,
    "http_max_connections": 60,
}


@pytest.fixture
def gateway(start_gateway: StartGateway) -> ServerThread:
    return start_gateway(**LIMITS)


def connect(server: ServerThread) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sock.settimeout(10)
    return sock


def read_answer(sock: socket.socket) -> tuple[int, dict[str, object], bool]:
    """(status, JSON body, closed by the server afterwards)."""
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    assert b"content-type: application/json" in head.lower(), head
    return status, json.loads(body), True


def test_slowloris_connections_are_closed_at_the_header_deadline(gateway: ServerThread) -> None:
    sockets = [connect(gateway) for _ in range(50)]
    stop = threading.Event()

    def trickle() -> None:
        # A few bytes per connection every 200 ms, never a complete header block; it stops
        # short of the deadline, so no byte arrives after the server closes (the kernel would
        # answer it with a reset that can discard the 408 before the client reads it).
        partial = b"GET /v1/usage HTTP/1.1\r\nHost: x\r\nX-Slow: "
        started = time.monotonic()
        for position in range(0, len(partial), 4):
            if time.monotonic() - started > LIMITS["http_header_timeout_seconds"] * 0.7:
                return
            for sock in sockets:
                with contextlib.suppress(OSError):
                    sock.sendall(partial[position : position + 4])
            if stop.wait(0.2):
                return

    started = time.monotonic()
    sender = threading.Thread(target=trickle)
    sender.start()
    try:
        # Everyone else is still served while the slow connections are open.
        assert httpx.get(f"{gateway.url}/healthz", timeout=5).status_code == 200
        answers = [read_answer(sock) for sock in sockets]
        elapsed = time.monotonic() - started
    finally:
        stop.set()
        sender.join()
        for sock in sockets:
            sock.close()
    assert elapsed < LIMITS["http_header_timeout_seconds"] + 1.5, elapsed
    for status, body, closed in answers:
        assert (status, closed) == (408, True)
        assert body["error"]["code"] == "request_timeout"  # type: ignore[index]


def test_a_body_that_never_finishes_is_408_at_the_body_deadline(
    gateway: ServerThread, tenant: Tenant
) -> None:
    with connect(gateway) as sock:
        sock.sendall(
            b"POST /v1/videos/generations HTTP/1.1\r\nHost: x\r\n"
            + f"Authorization: Bearer {tenant.key}\r\n".encode()
            + b'Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"model":'
        )
        started = time.monotonic()
        status, body, closed = read_answer(sock)
        elapsed = time.monotonic() - started
    assert (status, closed) == (408, True)
    assert body["error"] == {  # type: ignore[comparison-overlap]
        "type": "invalid_request_error",
        "code": "request_timeout",
        "param": None,
        "message": "the request body did not arrive in time",
    }
    assert 0.8 < elapsed < LIMITS["http_body_timeout_seconds"] + 1.5, elapsed


def test_connections_over_the_cap_are_refused_with_503(gateway: ServerThread) -> None:
    held = [connect(gateway) for _ in range(int(LIMITS["http_max_connections"]))]
    try:
        time.sleep(0.2)
        with connect(gateway) as extra:
            status, body, closed = read_answer(extra)
        assert (status, closed) == (503, True)
        assert body["error"]["code"] == "too_many_connections"  # type: ignore[index]
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.2)
    assert httpx.get(f"{gateway.url}/healthz", timeout=5).status_code == 200


@pytest.mark.parametrize(
    "garbage",
    [b"NOT HTTP AT ALL\r\n\r\n", b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n"],
)
def test_bytes_the_parser_refuses_get_a_json_400(gateway: ServerThread, garbage: bytes) -> None:
    with connect(gateway) as sock:
        sock.sendall(garbage)
        status, body, closed = read_answer(sock)
    assert (status, closed) == (400, True)
    assert body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    assert body["error"]["code"] == "invalid_http_request"  # type: ignore[index]


def test_keep_alive_requests_each_get_a_fresh_header_deadline(gateway: ServerThread) -> None:
    """The header deadline runs per request, not per connection: a client that keeps one
    connection busy for longer than the deadline is never cut off between requests."""
    with httpx.Client(base_url=gateway.url, timeout=5) as client:
        started = time.monotonic()
        while time.monotonic() - started < 2.5:
            assert client.get("/healthz").status_code == 200
            time.sleep(0.3)
