"""Tenant-facing routes, on the upstream's own paths (HTTP only; logic in ``service``).

``tenant_router(catalog)`` builds them: the submit's documented body is generated from the
catalog the app serves (``gateway.proxy.openapi``), once, never per request."""

from __future__ import annotations

from decimal import Decimal

from fastapi import APIRouter, Request, Response

from gateway.catalog.spec import Catalog
from gateway.core.clock import utcnow
from gateway.core.pricing import ESTIMATE_HEADER
from gateway.core.usd import format_usd
from gateway.errors import GatewayError, InvalidRequest
from gateway.kit.http import read_body_capped
from gateway.proxy.openapi import (
    POLL_OPENAPI,
    POLL_RESPONSES,
    QUOTE_RESPONSES,
    SUBMIT_RESPONSES,
    USAGE_OPENAPI,
    USAGE_RESPONSES,
    QuoteLineOut,
    QuoteOut,
    QuoteRefusal,
    QuoteScopeOut,
    quote_openapi,
    submit_openapi,
)
from gateway.proxy.schemas import UsageOut, UsageScopeOut
from gateway.services import poll, quote, submit
from gateway.services.callers import Reads
from gateway.services.proxy import ProxiedResponse
from gateway.web.deps import runtime_of
from gateway.web.tenant_auth import (
    authenticated,
    remember_balance,
    remember_balance_if_unknown,
    submitter_of,
)

_SINGLE_HEADERS = (
    ("Idempotency-Key", "invalid_idempotency_key"),
    ("X-Gateway-Tags", "invalid_tags"),
    ("X-Gateway-Project", "unknown_project"),
)


def _to_response(request: Request, result: ProxiedResponse) -> Response:
    request.state.job_id = result.job_id
    if result.upstream_seconds is not None:
        request.state.upstream_ms = round(result.upstream_seconds * 1000, 2)
    if ESTIMATE_HEADER in result.headers:
        request.state.estimate_usd = result.headers[ESTIMATE_HEADER]
    if result.balance is not None:
        remember_balance(request, result.balance)
    if result.captured_micro_usd is not None:
        request.state.captured_usd = format_usd(result.captured_micro_usd)
    return Response(content=result.body, status_code=result.status_code, headers=result.headers)


# The tenant routes take the request alone: each FastAPI dependency costs a request more CPU
# than its own work (a tenth of a finished poll's, measured in benchmarks/), so the caller is
# resolved in the handler and the body, the headers and the answers are declared for the docs
# only (``gateway.proxy.openapi``).


def tenant_router(catalog: Catalog) -> APIRouter:
    """The drop-in routes, documented for ``catalog``'s models."""
    router = APIRouter(tags=["video generation"])
    router.add_api_route(
        "/v1/videos/generations",
        submit_generation,
        methods=["POST"],
        summary="Submit a video generation job",
        description="Authenticate, validate against the model's rules, price, hold the price "
        "against the team's budget, forward with the gateway's upstream key, and return the "
        "upstream's answer unchanged. A rejected request is never forwarded and never billed.",
        operation_id="createVideoGeneration",
        responses=SUBMIT_RESPONSES,
        openapi_extra=submit_openapi(catalog),
    )
    router.add_api_route(
        "/v1/jobs/{job_id}",
        get_job,
        methods=["GET"],
        summary="Poll a job",
        description="Only the owning team sees a job. A terminal answer settles the job's "
        "ledger entries exactly once; a settled job is answered from the gateway's record.",
        operation_id="getJob",
        responses=POLL_RESPONSES,
        openapi_extra=POLL_OPENAPI,
    )
    router.add_api_route(
        "/v1/usage",
        get_usage,
        methods=["GET"],
        summary="The calling team's money for the current period",
        operation_id="getUsage",
        response_model=UsageOut,
        responses=USAGE_RESPONSES,
        openapi_extra=USAGE_OPENAPI,
    )
    router.add_api_route(
        "/v1/quote",
        create_quote,
        methods=["POST"],
        summary="Price a submit without submitting it",
        description="The submit's body and headers, validated as the submit validates them: "
        "the price line by line, the budget levels it would be held on, and whether the "
        "submit would be accepted now (if not, the error it would get). Nothing is held, "
        "forwarded, billed or recorded.",
        operation_id="createQuote",
        responses=QUOTE_RESPONSES,
        openapi_extra=quote_openapi(catalog),
    )
    return router


async def submit_generation(request: Request) -> Response:
    runtime = runtime_of(request)
    submitter = await submitter_of(request, runtime)
    headers = request.headers
    try:
        for name, code in _SINGLE_HEADERS:
            if len(headers.getlist(name)) > 1:
                # Which one would count? The one validated, or the one a proxy in between keeps?
                runtime.metrics.validation_rejections.labels(code).inc()
                raise InvalidRequest(f"{name} may be sent only once", code=code, param=name)
        raw = await read_body_capped(request, runtime.settings.max_request_body_bytes)
        result = await submit.submit_generation(
            runtime.proxy,
            submitter,
            raw,
            request_id=request.state.request_id,
            idempotency_key=headers.get("idempotency-key"),
            tags_header=headers.get("x-gateway-tags"),
            project_header=headers.get("x-gateway-project"),
            on_balance=lambda balance: remember_balance(request, balance),
        )
    except GatewayError:
        # A key seen before but not yet looked up by this request is looked up first: a
        # revoked key gets its 401, never another answer. Then, refused before a hold said
        # what is left (a 400, 409, 429, or a 503 such as a missing rate card), the balance
        # is read, as for any tenant response. A database outage is not a GatewayError here,
        # and the read is best effort.
        principal = await submitter.confirm()
        await remember_balance_if_unknown(request, runtime, principal)
        raise
    request.state.team = submitter.principal.team_name
    response = _to_response(request, result)
    await remember_balance_if_unknown(request, runtime, submitter.principal)  # a replay
    return response


async def get_job(request: Request) -> Response:
    runtime = runtime_of(request)
    job_id: str = request.path_params["job_id"]
    # The caller, its balance and the job it polls, in one round trip.
    caller = await authenticated(request, runtime, Reads(balance=True, job_id=job_id))
    assert caller.balance is not None
    remember_balance(request, caller.balance)
    result = await poll.poll_job(
        runtime.proxy, caller.principal, job_id, caller.job, request_id=request.state.request_id
    )
    return _to_response(request, result)


async def get_usage(request: Request) -> Response:
    # The caller and every level's balance (team, the key's project, the key) in one round trip.
    caller = await authenticated(request, runtime_of(request), Reads(balance=True, scopes=True))
    principal, balance, scopes = caller.principal, caller.balance, caller.scopes
    assert balance is not None  # read for every caller
    assert scopes is not None
    remember_balance(request, balance)
    remaining = balance.remaining
    now = utcnow()
    usage = UsageOut(
        team=principal.team_name,
        period=balance.period,
        budget_usd=format_usd(balance.budget) if balance.budget is not None else None,
        captured_usd=format_usd(balance.captured),
        held_usd=format_usd(balance.held),
        remaining_usd=format_usd(remaining) if remaining is not None else None,
        scopes=[UsageScopeOut.of(level, now) for level in scopes],
    )
    # Serialised here, by pydantic's own encoder: FastAPI would validate it again first.
    return Response(usage.model_dump_json(), media_type="application/json")


async def create_quote(request: Request) -> Response:
    runtime = runtime_of(request)
    principal = (await authenticated(request, runtime)).principal
    headers = request.headers
    try:
        for name, code in _SINGLE_HEADERS:  # the submit's rules, so the same 400s
            if len(headers.getlist(name)) > 1:
                runtime.metrics.validation_rejections.labels(code).inc()
                raise InvalidRequest(f"{name} may be sent only once", code=code, param=name)
        raw = await read_body_capped(request, runtime.settings.max_request_body_bytes)
        result = await quote.quote_submission(
            runtime.proxy,
            principal,
            raw,
            tags_header=headers.get("x-gateway-tags"),
            project_header=headers.get("x-gateway-project"),
            idempotency_key=headers.get("idempotency-key"),
        )
    except GatewayError:
        await remember_balance_if_unknown(request, runtime, principal)
        raise
    remember_balance(request, result.team_balance)
    return Response(_quote_out(result).model_dump_json(), media_type="application/json")


def _quote_out(result: quote.Quote) -> QuoteOut:
    now = utcnow()
    refusal = result.refusal
    return QuoteOut(
        model=result.model,
        rate_card_version=result.rate_card_version,
        lines=[
            QuoteLineOut(
                item=line.item,
                quantity=format(Decimal(line.quantity).normalize(), "f"),
                unit_price_usd=format_usd(line.unit_price_micro_usd),
                amount_usd=format_usd(line.amount_micro_usd),
            )
            for line in result.lines
        ],
        total_usd=format_usd(result.total_micro_usd),
        accepted=result.accepted,
        refusal=QuoteRefusal.model_validate(refusal.to_body()["error"]) if refusal else None,
        scopes=[
            QuoteScopeOut(
                **UsageScopeOut.of(scope.level, now).model_dump(),
                remaining_after_usd=_usd_or_none(scope.remaining_after_micro_usd),
            )
            for scope in result.scopes
        ],
    )


def _usd_or_none(micro_usd: int | None) -> str | None:
    return format_usd(micro_usd) if micro_usd is not None else None
