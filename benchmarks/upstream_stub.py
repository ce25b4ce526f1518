"""A deliberately minimal upstream for the proxy benchmark: raw ``aiohttp.web`` on uvloop.

It must never be the bottleneck, so it does no validation and no authentication; it only
answers the two routes the proxies forward:

``POST /v1/videos/generations``  ``{"job_id": "<unique>", "status": "queued"}``
``GET /v1/jobs/{job_id}``        a completed job

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


def build_app() -> web.Application:
    prefix = f"job_{secrets.token_hex(4)}_"
    counter = itertools.count(1)

    async def submit(request: web.Request) -> web.Response:
        await request.read()
        body = b'{"job_id": "%s%d", "status": "queued"}' % (prefix.encode(), next(counter))
        return web.Response(body=body, content_type=_JSON)

    async def poll(request: web.Request) -> web.Response:
        job_id = request.match_info["job_id"]
        body = {
            "job_id": job_id,
            "status": "completed",
            "video": {"url": f"https://example.invalid/videos/{job_id}.mp4", "duration": 10},
        }
        return web.Response(body=json.dumps(body).encode(), content_type=_JSON)

    app = web.Application()
    app.router.add_post("/v1/videos/generations", submit)
    app.router.add_get("/v1/jobs/{job_id}", poll)
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
