"""A deliberately minimal upstream for the proxy benchmark: raw ``aiohttp.web`` on uvloop.

It must never be the bottleneck, so it does no validation and no authentication; it only
answers the two routes the proxies forward:

``POST /v1/videos/generations``  ``{"job_id": "<unique>", "status": "queued"}``
``GET /v1/jobs/{job_id}``        a completed job, or ``{"job_id": ..., "status": "in_progress"}``
                                 forever for a *running* job: one submitted with ``#running``
                                 in its body (e.g. in the prompt), whose id starts ``running_``
``GET /_bench/counts``           ``{"submits": n, "polls": n}`` answered so far (not counted)

Job ids are unique for the life of the process (a random prefix plus a counter), because the
gateway stores them under a unique constraint.

    python benchmarks/upstream_stub.py --port 9001
"""

from __future__ import annotations

import argparse
import itertools
import json
import secrets

import uvloop
from aiohttp import web

_JSON = "application/json"


RUNNING_MARKER = b"#running"
RUNNING_PREFIX = "running_"


def build_app() -> web.Application:
    token = secrets.token_hex(4)
    prefix = f"job_{token}_".encode()
    running_prefix = f"{RUNNING_PREFIX}{token}_".encode()
    counter = itertools.count(1)
    counts = {"submits": 0, "polls": 0}

    async def submit(request: web.Request) -> web.Response:
        counts["submits"] += 1
        raw = await request.read()
        chosen = running_prefix if RUNNING_MARKER in raw else prefix
        body = b'{"job_id": "%s%d", "status": "queued"}' % (chosen, next(counter))
        return web.Response(body=body, content_type=_JSON)

    async def poll(request: web.Request) -> web.Response:
        counts["polls"] += 1
        job_id = request.match_info["job_id"]
        if job_id.startswith(RUNNING_PREFIX):
            running = {"job_id": job_id, "status": "in_progress"}
            return web.Response(body=json.dumps(running).encode(), content_type=_JSON)
        body = {
            "job_id": job_id,
            "status": "completed",
            "video": {"url": f"https://example.invalid/videos/{job_id}.mp4", "duration": 10},
        }
        return web.Response(body=json.dumps(body).encode(), content_type=_JSON)

    async def counted(request: web.Request) -> web.Response:
        return web.Response(body=json.dumps(counts).encode(), content_type=_JSON)

    app = web.Application()
    app.router.add_post("/v1/videos/generations", submit)
    app.router.add_get("/v1/jobs/{job_id}", poll)
    app.router.add_get("/_bench/counts", counted)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    web.run_app(
        build_app(),
        host=args.host,
        port=args.port,
        access_log=None,
        print=None,
        backlog=1024,
        shutdown_timeout=1.0,
        loop=uvloop.new_event_loop(),
    )


if __name__ == "__main__":
    main()
