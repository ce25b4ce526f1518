"""The baseline: a plain FastAPI pass-through over one shared ``httpx.AsyncClient``.

It forwards the POST body of a submit (and a poll, ``GET /v1/jobs/{job_id}``) to the upstream
and returns the upstream's body, nothing more. ``BENCH_TRANSPORT`` picks the transport under
the client:

``default``  httpx's own ``AsyncHTTPTransport`` with httpx's default limits (the baseline)
``httpx``    the gateway's ``build_transport("httpx", max_connections=256)``: same class,
             the gateway's pool limits (separates "transport" from "pool size")
``aiohttp``  the gateway's ``build_transport("aiohttp", max_connections=256)``

    BENCH_UPSTREAM_URL=http://127.0.0.1:9001 python benchmarks/passthrough_app.py --port 9002
    (--workers 2: two uvicorn worker processes)
"""

from __future__ import annotations

import argparse
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import quote

import httpx
import uvicorn
from fastapi import FastAPI, Request, Response

from gateway.upstream.transport import build_transport

UPSTREAM_URL = os.environ.get("BENCH_UPSTREAM_URL", "http://127.0.0.1:9001")
TRANSPORT = os.environ.get("BENCH_TRANSPORT", "default")


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    transport: httpx.AsyncBaseTransport | None = None  # None: httpx's default transport
    if TRANSPORT == "httpx":
        transport = build_transport("httpx", max_connections=256)
    elif TRANSPORT == "aiohttp":
        transport = build_transport("aiohttp", max_connections=256)
    async with httpx.AsyncClient(base_url=UPSTREAM_URL, transport=transport) as client:
        app.state.client = client
        yield


app = FastAPI(lifespan=lifespan)


@app.post("/v1/videos/generations")
async def submit(request: Request) -> Response:
    client: httpx.AsyncClient = request.app.state.client
    upstream = await client.post(
        "/v1/videos/generations",
        content=await request.body(),
        headers={"Content-Type": "application/json"},
    )
    return Response(upstream.content, upstream.status_code, media_type="application/json")


@app.get("/v1/jobs/{job_id}")
async def poll(job_id: str, request: Request) -> Response:
    client: httpx.AsyncClient = request.app.state.client
    upstream = await client.get(f"/v1/jobs/{quote(job_id, safe='')}")
    return Response(upstream.content, upstream.status_code, media_type="application/json")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="FastAPI pass-through (benchmark baseline)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    uvicorn.run(
        # Several workers need the app by name (each worker process imports it).
        "passthrough_app:app" if args.workers > 1 else app,
        app_dir=str(Path(__file__).resolve().parent),
        workers=args.workers,
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
        server_header=False,
    )
