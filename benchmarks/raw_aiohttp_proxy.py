"""The ceiling: a pass-through in raw aiohttp (``aiohttp.web`` server, ``aiohttp`` client).

No ASGI framework and no httpx: this is about as little Python as a proxy can run per
request, so it shows how far the FastAPI variants are from what one core can do.

    python benchmarks/raw_aiohttp_proxy.py --port 9003 --upstream http://127.0.0.1:9001
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator

import aiohttp
import uvloop
from aiohttp import web

_CLIENT = web.AppKey("client", aiohttp.ClientSession)


def build_app(upstream_url: str) -> web.Application:
    async def client_context(app: web.Application) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(limit=256)
        async with aiohttp.ClientSession(upstream_url, connector=connector) as client:
            app[_CLIENT] = client
            yield

    async def submit(request: web.Request) -> web.Response:
        body = await request.read()
        async with request.app[_CLIENT].post(
            "/v1/videos/generations", data=body, headers={"Content-Type": "application/json"}
        ) as upstream:
            content = await upstream.read()
            return web.Response(
                body=content, status=upstream.status, content_type="application/json"
            )

    app = web.Application()
    app.cleanup_ctx.append(client_context)
    app.router.add_post("/v1/videos/generations", submit)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description="raw aiohttp pass-through (benchmark ceiling)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="upstream base URL")
    args = parser.parse_args()
    web.run_app(
        build_app(args.upstream),
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
