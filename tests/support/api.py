"""The gateway's tenant API as the tests call it: the model, the submit route, and submits.

One helper per way of reaching the gateway, each with the same keyword options (the prompt,
extra ``headers`` on top of the tenant's own, and body fields such as ``duration=5``):

- ``submit(client, tenant, ...)``: through an open ``httpx.Client`` whose base URL is a gateway;
- ``submit_to(url, tenant, ...)``: on a connection of its own to the gateway at ``url``;
- ``await submit_async(client, tenant, ..., url=...)``: through an ``httpx.AsyncClient``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx

from tests.support.tenants import Tenant

MODEL = "grok-imagine-video-1-5"
SUBMIT_PATH = "/v1/videos/generations"


def submit_body(prompt: str = "a cat", **fields: Any) -> dict[str, Any]:
    """A submit's JSON body: the model, ``prompt`` and any other ``fields``."""
    return {"model": MODEL, "prompt": prompt, **fields}


def _headers(tenant: Tenant, extra: Mapping[str, str] | None) -> dict[str, str]:
    return {**tenant.headers, **(extra or {})}


def submit(
    client: httpx.Client,
    tenant: Tenant,
    prompt: str = "a cat",
    *,
    headers: Mapping[str, str] | None = None,
    **fields: Any,
) -> httpx.Response:
    """Submit as ``tenant`` through ``client`` (its base URL a gateway, its own timeout)."""
    return client.post(
        SUBMIT_PATH, json=submit_body(prompt, **fields), headers=_headers(tenant, headers)
    )


def submit_to(
    url: str,
    tenant: Tenant,
    prompt: str = "a cat",
    *,
    headers: Mapping[str, str] | None = None,
    timeout: float = 30,
    **fields: Any,
) -> httpx.Response:
    """Submit as ``tenant`` to the gateway at ``url``, on a connection of its own."""
    return httpx.post(
        url + SUBMIT_PATH,
        json=submit_body(prompt, **fields),
        headers=_headers(tenant, headers),
        timeout=timeout,
    )


async def submit_async(
    client: httpx.AsyncClient,
    tenant: Tenant,
    prompt: str = "a cat",
    *,
    url: str = "",
    headers: Mapping[str, str] | None = None,
    **fields: Any,
) -> httpx.Response:
    """Submit as ``tenant`` through an async ``client``, to the gateway at ``url`` (or to the
    client's own base URL)."""
    return await client.post(
        url + SUBMIT_PATH, json=submit_body(prompt, **fields), headers=_headers(tenant, headers)
    )
